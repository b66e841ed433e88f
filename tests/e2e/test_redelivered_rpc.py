"""A redelivered RPC request writes once: a tasks process killed after its write and before
its reply leaves the request unacknowledged, RabbitMQ gives it to the next process, and that
one answers what the first wrote (issue 16, item 12). Real processes, broker and store."""
from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from nameko.standalone.rpc import ClusterRpcProxy

from services.common.caller import caller_context
from tests.processes import ServiceProcess, started

ORG_ID = "org_" + "b" * 28
KILLED_AFTER_WRITE = {"SANAD_FAILPOINTS": "outbox.after_commit"}


def test_a_request_redelivered_after_a_kill_creates_and_publishes_once(
        config: dict[str, Any], processes: list[ServiceProcess], db: Any, tap: Any,
        tmp_path: Path) -> None:
    tasks_db = db("tasks")
    tasks_db.organisations.insert_one({"_id": ORG_ID, "status": "verified", "version": 2,
                                       "name": "Known NGO"})
    events = tap("tasks")
    coordinator = caller_context("u_c", ["coordinator"], [ORG_ID])
    with ClusterRpcProxy(config, timeout=60, context_data=coordinator) as rpc:
        processes.append(doomed := started(config, tmp_path, "tasks", **KILLED_AFTER_WRITE))
        reply = rpc.tasks.create_task.call_async({
            "organisation_id": ORG_ID, "title": "Check-in calls",
            "category": "psychosocial_support", "timezone": "Africa/Cairo",
            "schedule": {"kind": "deadline", "due": "2099-01-01T12:00"}})
        assert doomed.wait_exit(60) == -signal.SIGKILL, doomed.log()
        assert tasks_db.tasks.count_documents({}) == 1, "the write committed before the kill"

        processes.append(healthy := started(config, tmp_path, "tasks"))
        task = reply.result()  # answered by the healthy process, from the redelivery
        assert tasks_db.tasks.count_documents({}) == 1
        assert task["id"] == tasks_db.tasks.find_one()["_id"]
        healthy.stop()

        processes.append(doomed := started(config, tmp_path, "tasks", **KILLED_AFTER_WRITE))
        reply = rpc.tasks.publish_task.call_async(task["id"], {"version": 1})
        assert doomed.wait_exit(60) == -signal.SIGKILL, doomed.log()
        processes.append(started(config, tmp_path, "tasks"))
        published = reply.result()  # its own write, not a stale version
        assert published["status"] == "open" and published["version"] == 2

    [event] = events.wait(1, "sanad.task.published.v1", timeout=30)
    assert event["subject"] == task["id"]
    assert [e["type"] for e in events.drain()].count("sanad.task.published.v1") == 1
