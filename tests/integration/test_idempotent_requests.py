"""A request sent twice with the caller's idempotency key writes once and answers the first
result again (the redelivery of a killed worker's request: tests/e2e/test_redelivered_rpc.py)."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from services.common.errors import Conflict
from tests.factories import volunteer

if TYPE_CHECKING:
    from tests.integration.world import World


def test_a_registration_sent_twice_with_one_key_registers_once(platform: Any, rpc: Any,
                                                                db: Any, tap: Any) -> None:
    events = tap("registry")
    first = rpc("registry", roles=(), idempotency_key="signup-7f3a9c21")
    again = rpc("registry", roles=(), idempotency_key="signup-7f3a9c21")
    created = first.register_volunteer(volunteer("once@example.org"))
    assert again.register_volunteer(volunteer("once@example.org")) == created
    assert db("registry").volunteers.count_documents({}) == 1
    registered = events.wait(1, "sanad.volunteer.registered.v1")
    assert [e["subject"] for e in registered] == [created["id"]]
    assert "request_key" not in created


def test_one_key_from_two_callers_is_two_requests(platform: Any, rpc: Any, db: Any) -> None:
    orgs = [rpc("registry", roles=("coordinator",), user_id=user,
                idempotency_key="new-org-000001").register_organisation(
                    {"name": f"Relief {user}", "country": "JO",
                     "contact_email": f"{user}@relief.example"})
            for user in ("u_one", "u_two")]
    assert orgs[0]["id"] != orgs[1]["id"]
    assert db("registry").organisations.count_documents({}) == 2


def test_a_task_created_and_published_twice_with_one_key_is_one_task(
        world: World, rpc: Any, db: Any, tap: Any) -> None:
    org = {"id": world.org_id}
    start = (datetime.now(UTC) + timedelta(days=7)).replace(tzinfo=None, microsecond=0)
    data = {"organisation_id": org["id"], "title": "دعم دراسي", "category": "tutoring",
            "timezone": "Asia/Beirut", "slots": 2,
            "schedule": {"kind": "one_off", "start": start.isoformat(),
                         "end": (start + timedelta(hours=2)).isoformat()}}

    def coordinator(key: str) -> Any:
        return rpc("tasks", roles=("coordinator",), user_id="u_coord", org_ids=(org["id"],),
                   idempotency_key=key)

    task = coordinator("create-task-1").create_task(data)
    assert coordinator("create-task-1").create_task(data) == task
    assert db("tasks").tasks.count_documents({}) == 1

    events = tap("tasks")
    published = coordinator("publish-task-1").publish_task(task["id"], {"version": 1})
    # the retry finds its own write, not a stale version
    assert coordinator("publish-task-1").publish_task(task["id"], {"version": 1}) == published
    assert published["status"] == "open" and published["version"] == 2
    assert len(events.wait(1, "sanad.task.published.v1")) == 1
    # a new request at the old version is still refused
    with pytest.raises(Conflict):
        coordinator("publish-task-2").publish_task(task["id"], {"version": 1})
