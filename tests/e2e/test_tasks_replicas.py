"""Two `nameko run` processes of the tasks service racing on the same task: slots are
never double-booked, a freed slot is offered once, and a timer job runs once."""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import eventlet
import pytest
from nameko.standalone.rpc import ClusterRpcProxy

from services.common.caller import caller_context
from services.common.errors import Conflict
from tests.factories import volunteer
from tests.processes import ServiceProcess, answers
from tests.support import wait_for

VOLUNTEERS = 200
SLOTS = 5
SYSTEM = caller_context("ops", ["system"])


@pytest.fixture
def cluster(config: dict[str, Any], tmp_path: Path) -> Iterator[dict[str, Any]]:
    fast = {"ASSIGNMENT_TIMER_SECONDS": "0.3", "RECONCILE_SECONDS": "0.5"}
    procs = [ServiceProcess("registry", config, tmp_path).start(),
             ServiceProcess("tasks", config, tmp_path, **fast).start(),
             ServiceProcess("tasks", config, tmp_path, **fast).start()]
    try:
        wait_for(lambda: answers(config, "registry"), timeout=60)
        wait_for(lambda: answers(config, "tasks"), timeout=60)
        yield config
    finally:
        for proc in procs:
            proc.stop()


def _platform(cluster: dict[str, Any], db: Any, volunteers: int
              ) -> tuple[str, list[str]]:
    """A verified organisation and `volunteers` registered volunteers, known to tasks."""
    owner = caller_context("u_owner", ["coordinator"])
    with ClusterRpcProxy(cluster, timeout=30, context_data=owner) as rpc:
        org_id = rpc.registry.register_organisation(
            {"name": "Race NGO", "country": "LB", "contact_email": "r@race.example"})["id"]
    with ClusterRpcProxy(cluster, timeout=30, context_data=SYSTEM) as rpc:
        rpc.registry.verify_organisation(org_id, {"version": 1})
        pending = [rpc.registry.register_volunteer.call_async(volunteer(f"r{n}@example.org"))
                   for n in range(volunteers)]
        vols = [reply.result()["id"] for reply in pending]
    wait_for(lambda: db("tasks").volunteers.count_documents({}) == volunteers, timeout=120)
    wait_for(lambda: (db("tasks").organisations.find_one({"_id": org_id}) or {})
             .get("status") == "verified")
    return org_id, vols


def _open_task(cluster: dict[str, Any], org_id: str, slots: int) -> dict[str, Any]:
    coordinator = caller_context("u_owner", ["coordinator"], [org_id])
    start = (datetime.now(UTC) + timedelta(days=5)).replace(tzinfo=None, microsecond=0)
    with ClusterRpcProxy(cluster, timeout=30, context_data=coordinator) as rpc:
        task = rpc.tasks.create_task({
            "organisation_id": org_id, "title": "Phone support shift",
            "category": "psychosocial_support", "timezone": "Asia/Beirut", "slots": slots,
            "schedule": {"kind": "one_off", "start": start.isoformat(),
                         "end": (start + timedelta(hours=3)).isoformat()}})
        return rpc.tasks.publish_task(task["id"], {"version": 1})


def test_two_replicas_race_for_five_slots(cluster: dict[str, Any], db: Any,
                                          tap: Any) -> None:
    events = tap("tasks")
    org_id, vols = _platform(cluster, db, VOLUNTEERS)
    task = _open_task(cluster, org_id, SLOTS)

    def accept(chunk: list[str]) -> list[str]:
        outcomes = []
        with ClusterRpcProxy(cluster, timeout=60, context_data=SYSTEM) as rpc:
            for vid in chunk:
                try:
                    rpc.tasks.accept(task["id"], vid)
                    outcomes.append("accepted")
                except Conflict:
                    outcomes.append("refused")
        return outcomes

    chunks = [vols[n::50] for n in range(50)]  # 50 concurrent callers, 200 accepts
    outcomes = Counter(o for chunk in eventlet.GreenPool(50).imap(accept, chunks) for o in chunk)
    assert outcomes == {"accepted": SLOTS, "refused": VOLUNTEERS - SLOTS}
    stored = db("tasks").tasks.find_one({"_id": task["id"]})
    assert stored["free"] == 0 and len(stored["holders"]) == SLOTS
    assert stored["status"] == "filled"

    # Five wait; one holder withdraws: exactly one offer goes out, to the first in line.
    holders = list(stored["holders"])
    waiting = [v for v in vols if v not in holders][:5]
    with ClusterRpcProxy(cluster, timeout=30, context_data=SYSTEM) as rpc:
        for vid in waiting:
            rpc.tasks.join_waitlist(task["id"], vid)
        mine = rpc.tasks.list_assignments(volunteer_id=holders[0])
        rpc.tasks.withdraw(mine[0]["id"])
        eventlet.sleep(2)  # reconcile timers of both replicas run several times meanwhile
        offered = [a for a in rpc.tasks.list_assignments(task_id=task["id"])
                   if a["status"] == "offered"]
    assert [a["volunteer_id"] for a in offered] == [waiting[0]]

    # The offer expires: both replicas' timers see it; it expires once, the next is offered.
    raw = db("tasks").assignments.find_one({"_id": offered[0]["id"]})
    raw["due_at"] = datetime.now(UTC) - timedelta(seconds=1)
    db("tasks").assignments.replace_one({"_id": raw["_id"]}, raw)

    def second_offer() -> list[dict[str, Any]]:
        found = [e for e in events.drain() if e["type"] == "sanad.assignment.offered.v1"]
        return found if len(found) >= 2 else []

    offers = wait_for(second_offer, timeout=90)
    eventlet.sleep(2)
    types = Counter(e["type"] for e in events.drain())
    assert types["sanad.task.filled.v1"] == 1
    assert types["sanad.assignment.accepted.v1"] == SLOTS
    assert types["sanad.assignment.expired.v1"] == 1
    assert types["sanad.assignment.offered.v1"] == 2
    assert [o["data"]["volunteer_id"] for o in offers] == waiting[:2]
    final = db("tasks").tasks.find_one({"_id": task["id"]})
    assert final["free"] == 0 and len(final["holders"]) == SLOTS


def test_withdrawals_racing_sign_ups_never_overtake_the_waitlist(cluster: dict[str, Any],
                                                                 db: Any, tap: Any) -> None:
    """Holders withdraw while newcomers sign up directly, through both replicas: every
    freed slot goes to the first waiters in line, each offered once; no sign-up gets in."""
    events = tap("tasks")
    org_id, vols = _platform(cluster, db, 50)
    holders, waiting, newcomers = vols[:SLOTS], vols[SLOTS:SLOTS + 15], vols[SLOTS + 15:]
    task = _open_task(cluster, org_id, SLOTS)
    with ClusterRpcProxy(cluster, timeout=30, context_data=SYSTEM) as rpc:
        held = [rpc.tasks.accept(task["id"], vid)["id"] for vid in holders]
        for vid in waiting:
            rpc.tasks.join_waitlist(task["id"], vid)

    def act(call: tuple[str, str]) -> str:
        what, which = call
        with ClusterRpcProxy(cluster, timeout=60, context_data=SYSTEM) as rpc:
            try:
                if what == "withdraw":
                    rpc.tasks.withdraw(which)
                else:
                    rpc.tasks.accept(task["id"], which)
                return f"{what}:done"
            except Conflict:
                return f"{what}:refused"

    calls = [("withdraw", a) for a in held] + [("accept", v) for v in newcomers]
    calls = [calls[n] for n in (*range(0, len(calls), 2), *range(1, len(calls), 2))]
    outcomes = Counter(eventlet.GreenPool(len(calls)).imap(act, calls))
    assert outcomes == {"withdraw:done": SLOTS, "accept:refused": len(newcomers)}

    eventlet.sleep(2)  # both replicas' reconcile timers run meanwhile
    stored = db("tasks").tasks.find_one({"_id": task["id"]})
    assert sorted(stored["holders"]) == sorted(waiting[:SLOTS])
    assert stored["waitlist"] == waiting[SLOTS:] and stored["free"] == 0
    offered = [e["data"]["volunteer_id"] for e in events.drain()
               if e["type"] == "sanad.assignment.offered.v1"]
    assert sorted(offered) == sorted(waiting[:SLOTS])  # once each
