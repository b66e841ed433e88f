"""Published contracts: each publisher's event types and payload schemas.

Any service may import these (a consumer validates what it receives against them); a
contract module imports nothing from any service. Breaking a payload means a new `.vN`
type; adding an optional field does not.
"""
from __future__ import annotations

from marshmallow import Schema

from services.contracts import registry, tasks

PAYLOADS: dict[str, type[Schema]] = {**registry.PAYLOADS, **tasks.PAYLOADS}


def payload_schema(event_type: str) -> Schema:
    """The schema of an event type's `data`; KeyError for a type no contract defines."""
    return _SCHEMAS[event_type]


_SCHEMAS: dict[str, Schema] = {name: schema() for name, schema in PAYLOADS.items()}
