"""The AsyncAPI document names every event the services publish, with its channel and
message, so partners never meet an undocumented event type."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.contracts import registry as registry_events
from services.contracts import tasks as tasks_events

DOC = yaml.safe_load((Path(__file__).parents[2] / "docs" / "asyncapi.yaml").read_text())


@pytest.mark.parametrize("event_type", sorted({*registry_events.PAYLOADS,
                                                *tasks_events.PAYLOADS}))
def test_every_published_event_has_a_documented_channel_and_message(event_type: str
                                                                    ) -> None:
    channels = [c for c in DOC["channels"].values() if c["address"] == event_type]
    assert len(channels) == 1, f"{event_type}: no (or several) channels"
    messages = [m for m in DOC["components"]["messages"].values()
                if m["name"] == event_type]
    assert len(messages) == 1, f"{event_type}: no (or several) messages"
    sends = [o for o in DOC["operations"].values() if o["action"] == "send"
             and o["channel"]["$ref"] == f"#/channels/{_key(event_type)}"]
    assert len(sends) == 1, f"{event_type}: no send operation"


def _key(event_type: str) -> str:
    return next(key for key, c in DOC["channels"].items() if c["address"] == event_type)
