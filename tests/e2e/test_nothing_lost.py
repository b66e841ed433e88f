"""Nothing lost: a registry process killed between its write and its publish (or between
publish and acknowledgement) still gets the event out after a restart, and an idempotent
consumer handles it exactly once. Real `nameko run` processes, real broker and store."""
from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from nameko.standalone.rpc import ClusterRpcProxy

from services.common.caller import caller_context
from services.common.consumer import consumes
from services.common.storage import BaseStore, Store
from tests.factories import volunteer
from tests.processes import ServiceProcess, answers
from tests.support import wait_for

REGISTERED = "sanad.volunteer.registered.v1"


class SeenStore(BaseStore):
    def record(self, event: dict[str, Any]) -> None:
        self.db.seen.update_one({"_id": event["id"]},
                                {"$inc": {"handled": 1}, "$set": {"subject": event["subject"]}},
                                upsert=True)

    def seen(self) -> list[dict[str, Any]]:
        return list(self.db.seen.find())


class PartnerConsumer:
    """Stands for any downstream service: handles each registration once."""

    name = "e2e_partner"
    store = Store(SeenStore)

    @consumes("registry", REGISTERED)
    def on_registered(self, event: dict[str, Any]) -> None:
        self.store.record(event)


@pytest.fixture
def consumer(container_factory: Any, config: dict[str, Any]) -> Any:
    container = container_factory(PartnerConsumer, config)
    container.start()
    return container


@pytest.mark.parametrize("failpoint", ["outbox.after_write", "outbox.after_publish"])
def test_killed_process_loses_no_event_and_consumer_sees_it_once(
        failpoint: str, config: dict[str, Any], consumer: Any, processes: list[ServiceProcess],
        tap: Any, db: Any, tmp_path: Path) -> None:
    events = tap("registry")
    doomed = ServiceProcess("registry", config, tmp_path, SANAD_FAILPOINTS=failpoint).start()
    processes.append(doomed)
    wait_for(lambda: answers(config, "registry"), timeout=60)

    # Fire the registration without waiting for a reply: the process dies handling it.
    with ClusterRpcProxy(config, timeout=30,
                         context_data=caller_context(None, ["system"])) as rpc:
        rpc.registry.register_volunteer.call_async(volunteer("killed@example.org"))
        assert doomed.wait_exit(60) == -signal.SIGKILL, doomed.log()

    stored = db("registry").volunteers.find_one({"email_norm": "killed@example.org"})
    assert stored is not None, "the write committed before the crash"
    assert stored["outbox_n"] == 1, "its event is still pending in the outbox"

    healthy = ServiceProcess("registry", config, tmp_path).start()
    processes.append(healthy)
    wait_for(lambda: answers(config, "registry"), timeout=60)

    def handled() -> list[dict[str, Any]]:
        return [s for s in consumer_store(consumer).seen() if s["subject"] == stored["_id"]]

    [seen] = wait_for(handled, timeout=30)
    assert seen["handled"] == 1
    wait_for(lambda: db("registry").volunteers.find_one({"_id": stored["_id"]})["outbox_n"] == 0)
    published = [e for e in events.drain() if e["subject"] == stored["_id"]]
    if failpoint == "outbox.after_publish":
        assert len(published) == 2  # published before the crash, then again by the relay
        assert published[0]["id"] == published[1]["id"]  # the same event, deduplicated
    else:
        assert len(published) == 1
    assert [s["handled"] for s in consumer_store(consumer).seen()] == [1]


def consumer_store(container: Any) -> SeenStore:
    [store] = [d.store for d in container.dependencies if isinstance(d, Store)]
    return store


class TaskWatcher:
    """A partner consuming the tasks service's events, once each."""

    name = "e2e_task_watcher"
    store = Store(SeenStore)

    @consumes("tasks", "sanad.task.published.v1")
    def on_published(self, event: dict[str, Any]) -> None:
        self.store.record(event)


def test_tasks_killed_after_write_still_publishes_once(config: dict[str, Any],
                                                       container_factory: Any,
                                                       processes: list[ServiceProcess],
                                                       db: Any, tmp_path: Path) -> None:
    watcher = container_factory(TaskWatcher, config)
    watcher.start()
    org_id = "org_" + "a" * 28
    db("tasks").organisations.insert_one({"_id": org_id, "status": "verified", "version": 2,
                                          "name": "Known NGO"})
    doomed = ServiceProcess("tasks", config, tmp_path,
                            SANAD_FAILPOINTS="outbox.after_write").start()
    processes.append(doomed)
    coordinator = caller_context("u_c", ["coordinator"], [org_id])
    wait_for(lambda: answers(config, "tasks"), timeout=60)
    with ClusterRpcProxy(config, timeout=30, context_data=coordinator) as rpc:
        task = rpc.tasks.create_task({
            "organisation_id": org_id, "title": "Check-in calls",
            "category": "psychosocial_support", "timezone": "Africa/Cairo",
            "schedule": {"kind": "deadline", "due": "2099-01-01T12:00"}})
        rpc.tasks.publish_task.call_async(task["id"], {"version": 1})
        assert doomed.wait_exit(60) == -signal.SIGKILL, doomed.log()
    stored = db("tasks").tasks.find_one({"_id": task["id"]})
    assert stored["status"] == "open" and stored["outbox_n"] == 1

    processes.append(ServiceProcess("tasks", config, tmp_path).start())
    [seen] = wait_for(lambda: [s for s in consumer_store(watcher).seen()
                               if s["subject"] == task["id"]], timeout=60)
    assert seen["handled"] == 1
