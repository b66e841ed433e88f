"""What a domain rule decides: fields to set and unset on one record, and the events the
change causes. Every domain function that changes a record returns one; the service
hands it to `self.outbox.commit`, which writes fields and events in one write."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.common.envelope import DomainEvent


@dataclass(frozen=True)
class Change:
    set: Mapping[str, Any] = field(default_factory=dict)
    unset: Sequence[str] = field(default_factory=list)
    events: Sequence[DomainEvent] = field(default_factory=list)

    @property
    def writes(self) -> bool:
        """Whether there is anything to write (fields or events)."""
        return bool(self.set or self.unset or self.events)
