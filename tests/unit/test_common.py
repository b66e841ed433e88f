"""Shared mechanisms, without a broker or a store: schemas, envelope, outbox updates, ids."""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from marshmallow import fields

from services.common.caller import Caller, caller_context, parse_caller
from services.common.config import load_config, read_config, service_config_path
from services.common.envelope import DomainEvent, check_envelope, make_envelope, parse_time
from services.common.errors import Forbidden, ValidationError
from services.common.ids import check_id, new_id
from services.common.schemas import StrictSchema, Text, TimeZone, load, to_wire
from services.common.storage import new_with_outbox, visible, with_outbox

NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


class Sample(StrictSchema):
    name = Text(required=True, min_length=1, max_length=20)
    tz = TimeZone(load_default="UTC")
    extra = fields.Dict(load_default=dict)


@pytest.mark.parametrize("data", [
    {"name": "x", "$where": "1"},
    {"name": "x", "extra": {"$gt": 1}},
    {"name": "x", "extra": {"a.b": 1}},
    {"name": "x", "extra": {"deep": [{"ok": {"$set": 1}}]}},
    {"name": "x", "extra": {"nul\x00": 1}},
])
def test_operator_and_dotted_keys_are_refused_anywhere(data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as caught:
        load(Sample(), data)
    assert caught.value.details


def test_unknown_fields_deep_nesting_and_size_are_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        load(Sample(), {"name": "x", "colour": "red"})
    assert "colour" in caught.value.details
    nested: dict[str, Any] = {}
    cursor = nested
    for _ in range(12):
        cursor["a"] = {}
        cursor = cursor["a"]
    with pytest.raises(ValidationError):
        load(Sample(), {"name": "x", "extra": nested})
    with pytest.raises(ValidationError) as caught:
        load(Sample(), {"name": "x", "extra": {"blob": "x" * 70_000}})
    assert "_schema" in caught.value.details
    with pytest.raises(ValidationError):
        load(Sample(), ["not", "an", "object"])


def test_text_is_nfc_trimmed_and_free_of_control_characters() -> None:
    decomposed = "Cafe\u0301  "
    assert load(Sample(), {"name": decomposed})["name"] == "Caf\u00e9"
    # Arabic with a right-to-left mark and mixed direction is ordinary text
    assert load(Sample(), {"name": "\u200fمرحبا hello"})["name"] == "\u200fمرحبا hello"
    for bad in ("a\x00b", "a\x1bb", "", "x" * 21):
        with pytest.raises(ValidationError) as caught:
            load(Sample(), {"name": bad})
        assert "name" in caught.value.details


@pytest.mark.parametrize("zone", ["Mars/Base", "asia/beirut ", "../../etc/passwd", "+03:00"])
def test_invalid_time_zones_are_field_errors(zone: str) -> None:
    with pytest.raises(ValidationError) as caught:
        load(Sample(), {"name": "x", "tz": zone})
    assert "tz" in caught.value.details


def test_envelope_is_cloudevents_1_0() -> None:
    envelope = make_envelope(DomainEvent("sanad.volunteer.registered.v1", "vol_1", {"a": 1}),
                             source="/sanad/registry", now=NOW)
    assert envelope["specversion"] == "1.0" and envelope["id"].startswith("evt_")
    assert envelope["time"] == "2026-11-25T10:00:00.000000Z"
    assert parse_time(envelope["time"]) == NOW
    assert check_envelope(envelope) == envelope
    with pytest.raises(ValueError):
        make_envelope(DomainEvent("volunteer.registered", "x"), source="/s", now=NOW)
    with pytest.raises(ValueError):
        check_envelope({"specversion": "0.3", "id": "1", "source": "s", "type": "t"})
    with pytest.raises(ValueError):
        check_envelope("junk")


def test_cloudevents_sdk_reads_our_envelope() -> None:
    conversion = pytest.importorskip("cloudevents.core.formats.json")
    envelope = make_envelope(DomainEvent("sanad.task.published.v1", "tsk_1", {"k": "ق"}),
                             source="/sanad/tasks", now=NOW)
    import json

    event = conversion.JSONFormat().read(None, json.dumps(envelope).encode())
    assert event.get_type() == "sanad.task.published.v1"
    assert event.get_data() == {"k": "ق"}


def test_outbox_update_carries_events_with_the_change() -> None:
    events = [{"id": "evt_a", "type": "t"}, {"id": "evt_b", "type": "t"}]
    update = with_outbox({"$set": {"status": "paused"}, "$inc": {"version": 1}}, events)
    assert update["$set"]["status"] == "paused"
    assert update["$set"]["outbox.evt_a"] == {"n": 0, "event": events[0]}
    assert update["$inc"] == {"version": 1, "outbox_n": 2}
    assert with_outbox({"$set": {"a": 1}}, []) == {"$set": {"a": 1}}
    doc = new_with_outbox({"_id": "x"}, events)
    assert doc["outbox_n"] == 2 and set(doc["outbox"]) == {"evt_a", "evt_b"}
    assert visible(doc) == {"_id": "x"}


def test_ids_are_time_ordered_and_checked() -> None:
    first, second = new_id("vol"), new_id("vol")
    assert len(first) == 32 and first[:4] == "vol_"
    assert check_id(first, "vol") == first
    assert new_id("vol")[:16] >= first[:16] and second != first
    for bad in (None, 5, {"$gt": ""}, "vol_xyz", "org_" + "0" * 28):
        with pytest.raises(ValidationError):
            check_id(bad, "vol")


def test_caller_round_trips_and_refuses_by_default() -> None:
    caller = parse_caller(caller_context("u1", ["coordinator"], ["org_1"])["caller"])
    assert caller == Caller("u1", frozenset({"coordinator"}), frozenset({"org_1"}))
    assert parse_caller("{not json") == Caller()
    for odd in ("[]", '"x"', "1", "null"):
        assert parse_caller(odd) == Caller()  # valid JSON, not an identity
    with pytest.raises(Forbidden):
        Caller().require("coordinator")
    with pytest.raises(Forbidden):
        Caller().require_user()
    assert Caller(roles=frozenset({"system"})).has_any("coordinator")


def test_to_wire_makes_plain_json() -> None:
    assert to_wire({"_id": "a", "at": NOW, "list": [{"_id": "b"}]}) == {
        "id": "a", "at": "2026-11-25T10:00:00Z", "list": [{"id": "b"}]}


def test_config_interpolates_environment(tmp_path: Any, monkeypatch: Any) -> None:
    path = tmp_path / "config.yml"
    path.write_text("A: ${SANAD_T_A:fallback}\nB: ${SANAD_T_B:1}\n")
    monkeypatch.setenv("SANAD_T_A", "set")
    assert read_config(path) == {"A": "set", "B": 1}


def test_a_service_config_is_read_over_the_base(tmp_path: Any, monkeypatch: Any) -> None:
    path = tmp_path / "config.yml"
    path.write_text("OUTBOX_RELAY_SECONDS: 7\nLOGGING:\n  loggers:\n    mine: {level: DEBUG}\n")
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    config = load_config(path, max_workers=3)
    assert config["OUTBOX_RELAY_SECONDS"] == 7  # the service's value wins
    assert config["serializer"] == "json"  # the base's, untouched
    assert config["LOGGING"]["loggers"]["mine"] == {"level": "DEBUG"}
    assert config["LOGGING"]["loggers"]["kombu"] == {"level": "WARNING"}  # merged, not replaced
    assert config["LOGGING"]["root"]["level"] == "WARNING"
    assert config["max_workers"] == 3


def test_every_service_config_extends_the_base() -> None:
    for service in ("registry", "tasks"):
        config = load_config(service_config_path(service))
        assert {"AMQP_URI", "MONGO_URI", "LOGGING", "METRICS_PORT"} <= set(config)
        assert not set(read_config(service_config_path(service))) & {"LOGGING", "AMQP_URI"}


@given(st.recursive(st.text(max_size=5) | st.integers(),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=20))
def test_no_input_crashes_the_boundary(data: Any) -> None:
    try:
        load(Sample(), data)
    except ValidationError:
        pass
