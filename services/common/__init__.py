"""Mechanisms every Sanad service shares: storage, outbox, events, metrics, errors, config."""
