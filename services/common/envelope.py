"""The CloudEvents 1.0 envelope every Sanad event travels in (AMQP and webhooks alike).

Structured JSON mode: attributes and `data` in one object, so a partner receives
exactly what a service published. On AMQP the message's content type is
`application/cloudevents+json`, which is how the CloudEvents AMQP and RabbitMQ bindings
recognise structured mode; kombu learns to read and write it here (serializer
`cloudevents`, plain JSON, no kombu type tags).
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import kombu.serialization

from services.common.ids import new_id

CLOUDEVENTS_SERIALIZER = "cloudevents"
CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json"


def _encode(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


kombu.serialization.register(CLOUDEVENTS_SERIALIZER, _encode, json.loads,
                             content_type=CLOUDEVENTS_CONTENT_TYPE, content_encoding="utf-8")

SPECVERSION = "1.0"
# Versioned types: a breaking change gets a new type, old consumers keep theirs.
TYPE_PATTERN = re.compile(r"^sanad\.[a-z_]+\.[a-z_]+\.v[0-9]+\Z")
REQUIRED = ("specversion", "id", "source", "type")


@dataclass(frozen=True)
class DomainEvent:
    """What a domain change causes, before it is wrapped for the wire."""

    type: str
    subject: str
    data: Mapping[str, Any] = field(default_factory=dict)


def make_envelope(event: DomainEvent, *, source: str, now: datetime) -> dict[str, Any]:
    if not TYPE_PATTERN.match(event.type):
        raise ValueError(f"event type {event.type!r} is not like sanad.<entity>.<what>.v<N>")
    if now.tzinfo is None:
        raise ValueError("event time must be timezone-aware")
    return {
        "specversion": SPECVERSION,
        "id": new_id("evt"),
        "source": source,
        "type": event.type,
        "subject": event.subject,
        "time": now.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": dict(event.data),
    }


def check_envelope(message: Any) -> dict[str, Any]:
    """Return the envelope if it has what a consumer relies on, else raise ValueError."""
    if not isinstance(message, Mapping):
        raise ValueError("event is not a JSON object")
    missing = [name for name in REQUIRED if not message.get(name)]
    if missing:
        raise ValueError(f"event lacks {', '.join(missing)}")
    if message["specversion"] != SPECVERSION:
        raise ValueError(f"unsupported specversion {message['specversion']!r}")
    return dict(message)


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
