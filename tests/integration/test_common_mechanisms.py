"""services/common on real parts: outbox relay, idempotent consumer, metrics and health,
concurrent writers, and the CSV import command."""
from __future__ import annotations

import csv
import io
import json
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import eventlet
import pytest
from marshmallow import Schema, fields
from nameko.exceptions import RemoteError
from nameko.standalone.events import event_dispatcher

from services.common.consumer import consumes
from services.common.envelope import DomainEvent, make_envelope
from services.common.errors import Conflict
from services.common.metrics import metrics_of
from services.common.outbox import Outbox
from services.common.service import ServiceBase
from services.common.service import rpc as rpc_entrypoint
from services.common.storage import BaseStore, Store, new_with_outbox
from services.registry import cli
from services.registry.store import VOLUNTEERS
from tests.factories import volunteer
from tests.support import DeadLetters, metric_values, wait_for

TYPE = "sanad.volunteer.registered.v1"


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_relay_publishes_events_left_pending(registry: Any, db: Any, tap: Any) -> None:
    """As if the process died after its write: the timer relay sends the event."""
    events = tap("registry")
    old = datetime.now(UTC) - timedelta(seconds=10)
    envelope = make_envelope(DomainEvent(TYPE, "vol_x", {"volunteer_id": "vol_x"}),
                             source="/sanad/registry", now=old)
    db("registry")[VOLUNTEERS].insert_one(
        new_with_outbox({"_id": "vol_x", "status": "active", "version": 1}, [envelope]))
    [published] = events.wait(1, TYPE)
    assert published == envelope
    wait_for(lambda: db("registry")[VOLUNTEERS].find_one({"_id": "vol_x"})["outbox_n"] == 0)
    eventlet.sleep(1)  # several relay ticks later: still published once
    assert len(events.drain()) == 1


def test_relay_leaves_events_in_their_grace_for_a_grace_not_a_lease(
        registry: Any, db: Any, tap: Any) -> None:
    """A tick that meets events just written (their call is publishing them) must not
    hold them back a whole lease if that call's process dies before it publishes."""
    events = tap("registry")
    fresh = make_envelope(DomainEvent(TYPE, "vol_y", {"volunteer_id": "vol_y"}),
                          source="/sanad/registry", now=datetime.now(UTC))
    db("registry")[VOLUNTEERS].insert_one(
        new_with_outbox({"_id": "vol_y", "status": "active", "version": 1}, [fresh]))
    # the grace is 0.5 s and the lease 30 s in the test config: well before the lease
    # ends, the relay sends it
    [published] = events.wait(1, TYPE, timeout=10)
    assert published == fresh
    wait_for(lambda: db("registry")[VOLUNTEERS].find_one({"_id": "vol_y"})["outbox_n"] == 0)


class CountingStore(BaseStore):
    def count(self, event: dict[str, Any]) -> None:
        self.db.handled.update_one({"_id": event["id"]}, {"$inc": {"n": 1}}, upsert=True)


class ThingNoted(Schema):
    """The contract of the test's event type."""

    thing_id = fields.String(required=True)
    bug = fields.Boolean(load_default=False)


class Downstream:
    name = "downstream"
    store = Store(CountingStore)
    from services.common.metrics import Metrics
    metrics = Metrics()

    @consumes("upstream", "sanad.thing.noted.v1", schema=ThingNoted())
    def on_noted(self, event: dict[str, Any]) -> None:
        if event["data"]["bug"]:
            raise KeyError("a bug in the handler")  # not the event's fault
        self.store.count(event)


def test_consumer_is_idempotent_rejects_malformed_events_and_dead_letters_its_failures(
        container_factory: Any, config: dict[str, Any], db: Any) -> None:
    noted = "sanad.thing.noted.v1"
    container = container_factory(Downstream, {**config, "EVENT_MAX_ATTEMPTS": 3,
                                               "EVENT_RETRY_SECONDS": 0.05})
    container.start()
    dlq = DeadLetters(config["AMQP_URI"], "downstream")
    dispatch = event_dispatcher(config)

    def event(data: dict[str, Any]) -> dict[str, Any]:
        return make_envelope(DomainEvent(noted, "thing_1", data), source="/sanad/upstream",
                             now=datetime.now(UTC))

    good, buggy = event({"thing_id": "t1"}), event({"thing_id": "t2", "bug": True})
    off_contract = event({"thing": "t3"})
    injected = event({"thing_id": {"$ne": None}})
    for message in (good, good, {"not": "an envelope"}, buggy, good, off_contract, injected):
        dispatch("upstream", noted, message)
    port = metrics_of(container).port

    def consumed() -> dict[str, float]:
        found = metric_values(port, "sanad_events_consumed_total", "outcome")
        found.pop("busy", None)  # two workers given the same event at once: one waits
        return found if sum(found.values()) >= 9 else {}

    # the buggy event was tried three times (outcome error), then dead-lettered
    assert wait_for(consumed) == {"processed": 1, "duplicate": 2, "rejected": 3, "error": 3}
    assert list(db("downstream").handled.find()) == [{"_id": good["id"], "n": 1}]
    dead = dlq.wait(4)
    assert sorted(m.get("id", "no id") for m in dead) == sorted(
        [buggy["id"], off_contract["id"], injected["id"], "no id"])
    assert metric_values(port, "sanad_events_dead_lettered_total", "reason") == {
        "malformed": 3, "handler_failed": 1}
    dlq.close()


class ThingStore(BaseStore):
    OUTBOX_COLLECTIONS = ("things",)


class Writer(ServiceBase):
    """Writes a change with its event, then refuses: the change stands, so must its event."""

    name = "writer"
    store = Store(ThingStore)
    outbox = Outbox()

    @rpc_entrypoint
    def write_then_refuse(self, thing_id: str) -> None:
        self.outbox.commit("things", thing_id, [DomainEvent("sanad.thing.written.v1", thing_id)],
                           lambda envelopes: self.store.db.things.insert_one(
                               new_with_outbox({"_id": thing_id}, envelopes)))
        raise Conflict("Refused after the write.", {})


def test_events_go_out_after_the_reply_even_when_the_call_fails(
        container_factory: Any, config: dict[str, Any], rpc: Any, db: Any, tap: Any) -> None:
    events = tap("writer")
    container_factory(Writer, config).start()
    with pytest.raises(Conflict):
        rpc("writer").write_then_refuse("thing_1")
    [published] = events.wait(1)
    assert published["subject"] == "thing_1"
    wait_for(lambda: db("writer").things.find_one({"_id": "thing_1"})["outbox_n"] == 0)


class Replier(ServiceBase):
    name = "replier"

    @rpc_entrypoint
    def echo(self, value: Any) -> Any:
        return value

    @rpc_entrypoint
    def unserialisable(self) -> Any:
        return {"when": object()}


def test_replies_are_encoded_once_and_unserialisable_results_are_reported(
        container_factory: Any, config: dict[str, Any], rpc: Any) -> None:
    container_factory(Replier, config).start()
    text = "تعليم ⁦Excel⁩ للكبار — lesson 1"
    assert rpc("replier").echo({"text": text, "n": [1, 2.5, None, True]}) == {
        "text": text, "n": [1, 2.5, None, True]}
    with pytest.raises(RemoteError) as raised:
        rpc("replier").unserialisable()
    assert raised.value.exc_type == "UnserializableValueError"
    assert rpc("replier").echo("still up") == "still up"


def test_metrics_and_health_endpoints(registry: Any, system: Any) -> None:
    system.register_volunteer(volunteer())
    port = metrics_of(registry).port
    # both counted in nameko's worker_result hooks, which run just after the reply is
    # sent: the call's, and the outbox's that publishes its event
    wait_for(lambda: "register_volunteer" in (text := http_get(port, "/metrics")[1])
             and "sanad_events_published_total{" in text)
    status, text = http_get(port, "/metrics")
    assert status == 200
    assert ('sanad_requests_total{entrypoint="register_volunteer",kind="rpc",'
            'outcome="success"} 1.0') in text
    assert 'sanad_request_duration_seconds_bucket{entrypoint="register_volunteer"' in text
    assert "sanad_outbox_backlog 0.0" in text
    assert 'sanad_events_published_total{type="sanad.volunteer.registered.v1"} 1.0' in text
    status, body = http_get(port, "/health/ready")
    assert status == 200
    assert json.loads(body)["checks"] == {"broker": "ok", "store": "ok"}
    assert http_get(port, "/health/live")[0] == 200
    assert http_get(port, "/nope")[0] == 404


def test_concurrent_registrations_of_one_email_create_one(registry: Any, rpc: Any,
                                                          db: Any) -> None:
    proxies = [rpc("registry") for _ in range(16)]

    def attempt(proxy: Any) -> str:
        try:
            proxy.register_volunteer(volunteer("race@example.org"))
            return "created"
        except Conflict:
            return "conflict"

    outcomes = list(eventlet.GreenPool(16).imap(attempt, proxies))
    assert sorted(outcomes) == ["conflict"] * 15 + ["created"]
    assert db("registry")[VOLUNTEERS].count_documents({}) == 1


def test_concurrent_updates_one_version_one_winner(registry: Any, rpc: Any) -> None:
    vol = rpc("registry").register_volunteer(volunteer())
    proxies = [rpc("registry") for _ in range(8)]

    def attempt(n_proxy: tuple[int, Any]) -> str:
        n, proxy = n_proxy
        try:
            proxy.update_volunteer(vol["id"], {"version": 1, "about": f"writer {n}"})
            return "ok"
        except Conflict:
            return "conflict"

    outcomes = list(eventlet.GreenPool(8).imap(attempt, enumerate(proxies)))
    assert sorted(outcomes) == ["conflict"] * 7 + ["ok"]
    assert rpc("registry").get_volunteer(vol["id"])["version"] == 2


def test_csv_import_reports_every_row(registry: Any, config: dict[str, Any], tmp_path: Path,
                                      db: Any, rpc: Any) -> None:
    source = tmp_path / "volunteers.csv"
    rows = [
        ["Email", "Name", "Languages", "Skills", "Availability", "Timezone", "Country"],
        ["lina@example.org", "لينا", "ar:native; fr:fluent", "ترجمة:expert; Excel",
         "tue 17:00-19:00", "Asia/Beirut", "LB"],
        ["omar@example.org", "Omar", "ar:native", "Tutoring", "", "Africa/Cairo", "EG"],
        ["not-an-email", "X", "", "", "", "UTC", ""],
        ["LINA@example.org", "Lina H.", "ar:native", "Translation", "", "Asia/Beirut", "LB"],
        ["zed@example.org", "Zed", "", "", "", "Mars/Base", ""],
        ["amal@example.org", "Amal", "", "", "someday", "UTC", ""],
    ]
    with source.open("w", encoding="utf-8-sig", newline="") as fh:
        csv.writer(fh).writerows(rows)
    report = tmp_path / "report.csv"
    progress = io.StringIO()
    totals = cli.import_file(source, "2026-01", report, config, "u_coord", out=progress)
    assert totals == {"created": 2, "updated": 1, "rejected": 3}
    assert "imported 6 rows" in progress.getvalue()
    lines = list(csv.DictReader(report.open(encoding="utf-8")))
    assert [line["outcome"] for line in lines] == ["created", "created", "rejected",
                                                   "updated", "rejected", "rejected"]
    assert [line["row"] for line in lines] == ["2", "3", "4", "5", "6", "7"]
    assert "email" in json.loads(lines[2]["errors"])
    assert "availability" in json.loads(lines[4]["errors"])
    # a volunteer who registered themselves is not overwritten by an NGO's spreadsheet
    rpc("registry", roles=("volunteer",), user_id="u_self").register_volunteer(
        volunteer("self@example.org"))
    again = tmp_path / "again.csv"
    with again.open("w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows([["email", "name", "timezone"],
                                  ["SELF@example.org", "Someone Else", "UTC"]])
    assert cli.import_file(again, "2026-01", None, config, "u_coord",
                           out=io.StringIO()) == {"rejected": 1}
    lina = db("registry")[VOLUNTEERS].find_one({"email_norm": "lina@example.org"})
    assert lina["name"] == "Lina H." and lina["source"] == "import"
    # blank cells in the second row kept what the first one gave
    assert [w["day"] for w in lina["availability"]["windows"]] == ["tue"]
    assert lina["skills"][0]["skill_id"] == "sk_translation"
    assert lina["consent"]["terms_version"] == "2026-01"


@pytest.mark.parametrize("argv", [["import", "/nonexistent.csv", "--terms-version", "1"]])
def test_cli_refuses_a_missing_file(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(argv)
