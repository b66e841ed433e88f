"""What every contract module shares: the base of event payload schemas and field rules."""
from __future__ import annotations

from marshmallow import EXCLUDE, Schema, validate

# ids like services.common.ids makes them (`\Z`: a trailing newline is no part of an id)
ID = validate.Regexp(r"[a-z]{2,5}_[0-9a-z]{1,40}\Z", error="Not a Sanad id.")
VERSION = validate.Range(min=1, max=2**63 - 1)


class Data(Schema):
    """An event's `data`."""

    class Meta:
        unknown = EXCLUDE  # consumers tolerate fields added later
