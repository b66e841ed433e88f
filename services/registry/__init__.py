"""Registry: volunteers, organisations, beneficiaries, consent, export and erasure."""
