"""Tasks service with the registry, in-process, on the real broker and store."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import eventlet
import pytest

from services.common.errors import Conflict, Forbidden, ValidationError
from services.registry.service import RegistryService
from services.tasks.service import TasksService
from tests.integration.world import World
from tests.support import wait_for


def test_task_lifecycle_and_events(world: World, tap: Any) -> None:
    events = tap("tasks")
    draft = world.task(publish=False)
    assert draft["status"] == "draft" and draft["free"] == 2
    assert draft["sessions"][0]["session_id"] == "s1"
    with pytest.raises(Forbidden):
        world.rpc("tasks", roles=("coordinator",), user_id="u_x",
                  org_ids=("org_" + "1" * 28,)).publish_task(draft["id"], {"version": 1})
    opened = world.coordinator.publish_task(draft["id"], {"version": 1})
    assert opened["status"] == "open"
    with pytest.raises(Conflict):
        world.coordinator.publish_task(draft["id"], {"version": 2})  # already open
    updated = world.coordinator.update_task(draft["id"], {"version": 2, "urgency": "high"})
    assert updated["urgency"] == "high"
    with pytest.raises(Conflict):
        world.coordinator.update_task(draft["id"], {"version": 2, "urgency": "low"})
    found = wait_for(lambda: world.system.search_tasks(
        {"skill_id": "sk_math_tutoring", "language": "ar"})["items"])  # index: by event
    assert [t["id"] for t in found] == [draft["id"]]
    assert world.system.search_tasks({"language": "fr"})["items"] == []
    cancelled = world.coordinator.cancel_task(draft["id"], {"version": 3, "reason": "rain"})
    assert cancelled["status"] == "cancelled"
    assert cancelled["sessions"][0]["status"] == "cancelled"
    types = [e["type"] for e in events.wait(3)]
    assert types == ["sanad.task.published.v1", "sanad.task.updated.v1",
                     "sanad.task.cancelled.v1"]


def test_publish_needs_a_verified_organisation(world: World, rpc: Any, db: Any) -> None:
    owner = rpc("registry", roles=("coordinator",), user_id="u_new")
    org = owner.register_organisation({"name": "New NGO", "country": "JO",
                                       "contact_email": "a@new.example"})
    wait_for(lambda: db("tasks").organisations.find_one({"_id": org["id"]}))
    coordinator = rpc("tasks", roles=("coordinator",), user_id="u_new", org_ids=(org["id"],))
    start = (datetime.now(UTC) + timedelta(days=3)).replace(tzinfo=None, microsecond=0)
    task = coordinator.create_task({
        "organisation_id": org["id"], "title": "Translate leaflets", "category": "translation",
        "timezone": "Asia/Amman", "schedule": {"kind": "deadline", "due": start.isoformat()}})
    with pytest.raises(Conflict) as caught:
        coordinator.publish_task(task["id"], {"version": 1})
    assert "organisation_id" in caught.value.details


def test_search_pages_follow_the_tasks_as_they_change(world: World) -> None:
    """Skill/language searches read the index kept from task events; other searches read
    the tasks. Both page by cursor and show a task as it is now."""
    ids = [world.task(slots=1)["id"] for _ in range(5)]
    french = world.task(languages=["fr"])["id"]
    draft = world.task(publish=False)["id"]

    def pages(filters: dict[str, Any]) -> list[list[str]]:
        out, cursor = [], None
        while True:
            page = world.system.search_tasks({**filters, "limit": 2, "cursor": cursor})
            out.append([t["id"] for t in page["items"]])
            if not (cursor := page["next_cursor"]):
                return out

    by_skill = {"skill_id": "sk_math_tutoring", "language": "ar"}
    wait_for(lambda: len(world.system.search_tasks(by_skill)["items"]) == 5)
    assert pages(by_skill) == [ids[:2], ids[2:4], ids[4:]]
    assert [i for page in pages({"skill_id": "sk_math_tutoring"}) for i in page] == [
        *ids, french]
    assert pages({"language": "fr"}) == [[french]]
    assert [i for page in pages({}) for i in page] == [*ids, french]
    assert "description" not in world.system.search_tasks({})["items"][0]  # a summary
    coordinator_drafts = world.coordinator.search_tasks(
        {"status": "draft", "skill_id": "sk_math_tutoring"})["items"]
    assert [t["id"] for t in coordinator_drafts] == [draft]

    vol = world.volunteer(1)
    world.as_volunteer(vol).accept(ids[1], vol)  # its only slot: filled
    wait_for(lambda: world.system.search_tasks({**by_skill, "status": "filled"})["items"])
    assert [i for page in pages(by_skill) for i in page] == [ids[0], *ids[2:]]
    task = world.system.get_task(ids[3])
    world.coordinator.update_task(ids[3], {"version": task["version"], "languages": ["en"]})
    wait_for(lambda: world.system.search_tasks({"language": "en"})["items"])
    assert [i for page in pages(by_skill) for i in page] == [ids[0], ids[2], ids[4]]


def test_search_index_takes_only_newer_revisions_and_the_task_decides(
        world: World, db: Any) -> None:
    from services.tasks.store import TasksStore

    task = world.task()
    index = db("tasks").task_index
    wait_for(lambda: index.count_documents({"task_id": task["id"]}) == 3)
    # a newer sync got there first: this (older) one changes nothing
    index.update_many({"task_id": task["id"]}, {"$set": {"task_rev": 10**6}})
    before = sorted(index.find({"task_id": task["id"]}), key=lambda e: e["_id"])
    TasksStore(db("tasks")).index_task(task["id"])
    assert sorted(index.find({"task_id": task["id"]}), key=lambda e: e["_id"]) == before
    # an entry that lags its task finds nothing the task does not match now
    index.insert_one({"_id": f"{task['id']}|*|fr", "key": "open|*|fr", "task_id": task["id"],
                      "task_rev": 0})
    assert world.system.search_tasks({"language": "fr"})["items"] == []
    assert [t["id"] for t in world.system.search_tasks({"language": "ar"})["items"]] == [
        task["id"]]


def test_an_ended_task_ends_its_assignments_even_after_a_crash_half_way(
        world: World, db: Any, config: dict[str, Any], tap: Any) -> None:
    from nameko.standalone.events import event_dispatcher

    from services.common.envelope import DomainEvent, make_envelope

    events = tap("tasks")
    task = world.task(slots=2)
    vols = [world.volunteer(n) for n in range(2)]
    held = [world.as_volunteer(v).accept(task["id"], v) for v in vols]
    version = world.system.get_task(task["id"])["version"]
    world.coordinator.complete_task(task["id"], {"version": version})
    assert {a["status"] for a in world.system.list_assignments(task_id=task["id"])} == {
        "completed"}
    done = events.wait(2, "sanad.assignment.completed.v1")
    assert sorted(e["data"]["assignment_id"] for e in done) == sorted(a["id"] for a in held)

    # a process that died after cancelling the task, before withdrawing its assignments:
    # the event, delivered by the outbox, finishes the job
    other = world.task(slots=1)
    vol = world.volunteer(3)
    stuck = world.as_volunteer(vol).accept(other["id"], vol)
    from services.tasks.domain import task_snapshot

    db("tasks").tasks.update_one({"_id": other["id"]}, {"$set": {"status": "cancelled"}})
    cancelled = db("tasks").tasks.find_one({"_id": other["id"]})
    event = DomainEvent("sanad.task.cancelled.v1", other["id"],
                        {"task": task_snapshot(cancelled), "reason": "test"})
    event_dispatcher(config)("tasks", event.type, make_envelope(
        event, source="/sanad/tasks", now=datetime.now(UTC)))
    wait_for(lambda: world.system.list_assignments(task_id=other["id"])[0]["status"]
             == "withdrawn")
    assert events.wait(1, "sanad.assignment.withdrawn.v1")[0]["data"]["assignment_id"] \
        == stuck["id"]


def test_claims_fill_the_task_and_waitlist_promotes_on_withdrawal(world: World,
                                                                  tap: Any) -> None:
    events = tap("tasks")
    task = world.task(slots=2)
    vols = [world.volunteer(n) for n in range(4)]
    first = world.as_volunteer(vols[0]).accept(task["id"], vols[0])
    assert first["status"] == "accepted"
    assert world.as_volunteer(vols[0]).accept(task["id"], vols[0])["id"] == first["id"]
    world.as_volunteer(vols[1]).accept(task["id"], vols[1])
    assert world.system.get_task(task["id"])["status"] == "filled"
    with pytest.raises(Conflict):
        world.as_volunteer(vols[2]).accept(task["id"], vols[2])
    waiting = world.as_volunteer(vols[2]).join_waitlist(task["id"], vols[2])
    assert waiting["status"] == "waitlisted"
    world.as_volunteer(vols[3]).join_waitlist(task["id"], vols[3])
    with pytest.raises(Forbidden):
        world.as_volunteer(vols[3]).withdraw(first["id"])

    world.as_volunteer(vols[0]).withdraw(first["id"])
    offers = world.system.list_assignments(volunteer_id=vols[2])
    assert offers[0]["status"] == "offered" and offers[0]["offer_kind"] == "reserved"
    assert world.system.get_task(task["id"])["status"] == "filled"  # kept for the offer
    accepted = world.as_volunteer(vols[2]).accept(task["id"], vols[2])
    assert accepted["status"] == "accepted"
    types = [e["type"] for e in events.wait(9)]
    assert types.count("sanad.task.filled.v1") == 1
    assert types.count("sanad.assignment.offered.v1") == 1
    assert "sanad.task.reopened.v1" not in types


def test_an_application_is_accepted_by_the_organisation_not_the_volunteer(
        world: World, tap: Any) -> None:
    events = tap("tasks")
    task = world.task(slots=1)
    vol, other = world.volunteer(1), world.volunteer(2)
    applied = world.as_volunteer(vol).apply(task["id"], vol)
    assert applied["status"] == "applied"
    with pytest.raises(Conflict):  # one live assignment per volunteer and task
        world.as_volunteer(vol).apply(task["id"], vol)
    with pytest.raises(Forbidden):  # applying is asking; the organisation says yes
        world.as_volunteer(vol).accept(task["id"], vol)
    with pytest.raises(Forbidden):  # nobody can sign up someone else
        world.as_volunteer(other).accept(task["id"], vol)
    with pytest.raises(Forbidden):  # a coordinator accepts applications, not sign-ups
        world.coordinator.accept(task["id"], other)
    accepted = world.coordinator.accept(task["id"], vol)
    assert accepted["id"] == applied["id"] and accepted["status"] == "accepted"
    assert world.system.get_task(task["id"])["status"] == "filled"
    types = [e["type"] for e in events.wait(4)]
    assert types == ["sanad.task.published.v1", "sanad.assignment.applied.v1",
                     "sanad.assignment.accepted.v1", "sanad.task.filled.v1"]


def test_vetting_required_tasks_need_valid_vetting(world: World, rpc: Any, db: Any) -> None:
    task = world.task(slots=3, vetting_required=["child_safeguarding"])
    unvetted = world.volunteer(1)
    with pytest.raises(Conflict) as caught:
        world.as_volunteer(unvetted).accept(task["id"], unvetted)
    assert "vetting" in caught.value.details
    soon = (datetime.now(UTC) + timedelta(days=2)).date().isoformat()
    world.registry.set_vetting(unvetted, {"kind": "child_safeguarding", "state": "cleared",
                                          "valid_until": soon, "version": 1})
    wait_for(lambda: db("tasks").volunteers.find_one({"_id": unvetted})["version"] == 2)
    with pytest.raises(Conflict):  # expires before the task's session
        world.as_volunteer(unvetted).accept(task["id"], unvetted)
    world.registry.set_vetting(unvetted, {"kind": "child_safeguarding", "state": "cleared",
                                          "valid_until": "2099-12-31", "version": 2})
    wait_for(lambda: db("tasks").volunteers.find_one({"_id": unvetted})["version"] == 3)
    assert world.as_volunteer(unvetted).accept(task["id"], unvetted)["status"] == "accepted"
    # cleared for good: the sign-up's own claim keeps the rule, and refuses other kinds
    lifelong = world.volunteer(2)
    world.registry.set_vetting(lifelong, {"kind": "child_safeguarding", "state": "cleared",
                                          "valid_until": None, "version": 1})
    wait_for(lambda: db("tasks").volunteers.find_one({"_id": lifelong})["version"] == 2)
    assert world.as_volunteer(lifelong).accept(task["id"], lifelong)["status"] == "accepted"
    checked = world.task(slots=1, vetting_required=["child_safeguarding", "identity"])
    with pytest.raises(Conflict) as caught:
        world.as_volunteer(lifelong).accept(checked["id"], lifelong)
    assert caught.value.details == {"vetting": ["identity vetting is missing."]}
    assert db("tasks").tasks.find_one({"_id": checked["id"]})["holders"] == []


def test_a_paused_volunteer_is_refused_and_holds_no_slot(world: World, db: Any) -> None:
    task = world.task(slots=1)
    vol = world.volunteer(1)
    world.registry.pause_volunteer(vol, {"version": 1, "reason": "exams"})
    wait_for(lambda: db("tasks").volunteers.find_one({"_id": vol})["status"] == "paused")
    with pytest.raises(Conflict) as caught:
        world.as_volunteer(vol).accept(task["id"], vol)
    assert caught.value.details == {"volunteer_id": ["Not an active volunteer."]}
    stored = db("tasks").tasks.find_one({"_id": task["id"]})
    assert stored["holders"] == [] and stored["free"] == 1 and stored["status"] == "open"
    other = world.volunteer(2)
    assert world.as_volunteer(other).accept(task["id"], other)["status"] == "accepted"


def test_hours_are_verified_and_credited_in_the_registry(world: World) -> None:
    task = world.task(slots=1)
    vol = world.volunteer(1)
    me = world.as_volunteer(vol)
    assignment = me.accept(task["id"], vol)
    me.start(assignment["id"])
    logged = me.submit_hours(assignment["id"], {"hours": 2.5})
    entry = logged["hours"][0]["entry_id"]
    with pytest.raises(Forbidden):
        me.verify_hours(assignment["id"], {"entry_id": entry})
    verified = world.coordinator.verify_hours(assignment["id"], {"entry_id": entry})
    assert verified["verified_hours"] == 2.5
    with pytest.raises(Conflict):
        world.coordinator.verify_hours(assignment["id"], {"entry_id": entry})

    def credited() -> dict[str, Any] | None:
        record = world.registry.get_volunteer(vol)
        return record if record["verified_hours"] else None

    record = wait_for(credited)
    assert record["verified_hours"] == 2.5
    assert record["hours_by_skill"] == {"sk_math_tutoring": 2.5, "sk_online_collaboration": 2.5}
    completed = world.coordinator.complete_task(task["id"], {"version": 2})
    assert completed["status"] == "completed"
    feedback = me.leave_feedback(assignment["id"], {"rating": 5, "comment": "شكراً"})
    assert feedback["feedback"]["volunteer"]["rating"] == 5
    with pytest.raises(Conflict):
        me.leave_feedback(assignment["id"], {"rating": 4})
    world.coordinator.leave_feedback(assignment["id"], {"rating": 4, "comment": "reliable"})
    shown = wait_for(lambda: len(world.registry.get_volunteer(vol).get("feedback", [])) == 2
                     and world.registry.get_volunteer(vol)["feedback"])
    assert sorted((f["by"], f["rating"]) for f in shown) == [("organisation", 4),
                                                             ("volunteer", 5)]
    assert "reliable" not in repr(shown)  # comments stay with the tasks service


def test_offers_expire_on_the_timer(world: World, platform: dict[str, Any]) -> None:
    task = world.task(slots=1, urgency="critical")
    vol = world.volunteer(1)
    offer = world.coordinator.offer(task["id"], {"volunteer_id": vol})
    assert offer["status"] == "offered"
    assert offer["offer_expires_at"] < (datetime.now(UTC) + timedelta(hours=7)).isoformat()
    # make the offer due now, as if its 6 hours had passed (a replace keeps the datetime
    # type on nx-27017, where `$set` would not)
    stored = world.db("tasks").assignments.find_one({"_id": offer["id"]})
    stored["due_at"] = datetime.now(UTC) - timedelta(seconds=1)
    world.db("tasks").assignments.replace_one({"_id": offer["id"]}, stored)
    wait_for(lambda: world.system.list_assignments(volunteer_id=vol)[0]["status"]
             == "expired")
    with pytest.raises(Conflict):
        world.system.decline(offer["id"])


def test_erasure_in_registry_withdraws_and_frees_the_slot(world: World, tap: Any) -> None:
    events = tap("tasks")
    task = world.task(slots=1)
    vol = world.volunteer(1)
    world.as_volunteer(vol).accept(task["id"], vol)
    world.registry.erase_volunteer(vol)
    withdrawn = events.wait(1, "sanad.assignment.withdrawn.v1")[0]
    assert withdrawn["data"]["reason"] == "volunteer erased"
    wait_for(lambda: world.system.get_task(task["id"])["free"] == 1)
    assert world.system.get_task(task["id"])["status"] == "open"
    assert world.db("tasks").volunteers.find_one({"_id": vol})["status"] == "erased"


def test_concurrent_accepts_never_oversell(world: World) -> None:
    task = world.task(slots=3)
    vols = [world.volunteer(n) for n in range(12)]
    proxies = [(vid, world.as_volunteer(vid)) for vid in vols]

    def attempt(pair: tuple[str, Any]) -> str:
        vid, proxy = pair
        try:
            proxy.accept(task["id"], vid)
            return "accepted"
        except Conflict:
            return "refused"

    outcomes = list(eventlet.GreenPool(12).imap(attempt, proxies))
    assert outcomes.count("accepted") == 3
    final = world.system.get_task(task["id"])
    assert final["free"] == 0 and final["status"] == "filled"


@pytest.mark.parametrize(("patch", "field"), [
    ({"title": "x"}, "title"), ({"category": "astrology"}, "category"),
    ({"timezone": "Moon/Base"}, "timezone"), ({"slots": 0}, "slots"),
    ({"urgency": "yesterday"}, "urgency"), ({"mode": "onsite"}, "location"),
    ({"required_skills": [{"skill_id": "Data Analysis"}]}, "required_skills"),
    ({"schedule": {"kind": "recurring", "start": "2030-01-01T17:00"}}, "schedule"),
    ({"schedule": {"kind": "recurring", "start": "2030-01-01T17:00",
                   "rrule": "FREQ=WEEKLY", "duration_minutes": 60}}, "schedule"),
    ({"schedule": {"kind": "one_off", "start": "2020-01-01T10:00",
                   "end": "2020-01-01T11:00"}}, "schedule"),
    ({"title": {"$gt": ""}}, "title"), ({"organisation_id": "org_../../x"}, "organisation_id"),
    ({"extra": 1}, "extra"),
])
def test_invalid_tasks_are_refused_by_field(world: World, patch: dict[str, Any],
                                            field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        world.task(publish=False, **patch)
    assert [k for k in caught.value.details if k.split(".")[0] == field], caught.value.details
    assert world.db("tasks").tasks.count_documents({}) == 0


def http_port(container: Any) -> int:
    from nameko.web.server import WebServer

    [server] = [e for e in container.subextensions if isinstance(e, WebServer)]
    return server._sock.getsockname()[1]


def test_calendar_feed_at_a_secret_rotatable_url(container_factory: Any,
                                                 config: dict[str, Any], rpc: Any,
                                                 db: Any) -> None:
    import urllib.error
    import urllib.request

    from icalendar import Calendar

    container_factory(RegistryService, config).start()
    tasks = container_factory(TasksService, config)
    tasks.start()
    world = World(rpc, db)
    start = (datetime.now(UTC) + timedelta(days=2)).replace(
        hour=17, minute=0, second=0, microsecond=0, tzinfo=None)
    task = world.task(slots=2, schedule={
        "kind": "recurring", "start": start.isoformat(), "rrule": "FREQ=WEEKLY;COUNT=3",
        "duration_minutes": 60})
    vol = world.volunteer(1)
    me = world.as_volunteer(vol)
    me.accept(task["id"], vol)
    with pytest.raises(Forbidden):
        world.as_volunteer(world.volunteer(2)).rotate_calendar_link(vol)
    link = me.rotate_calendar_link(vol)["path"]
    base = f"http://127.0.0.1:{http_port(tasks)}"
    with urllib.request.urlopen(base + link, timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/calendar")
        feed = Calendar.from_ical(resp.read())
    events = [c for c in feed.walk("VEVENT")]
    assert len(events) == 3
    assert events[0]["SUMMARY"] == "دعم دراسي في الرياضيات"
    assert events[0].decoded("DTSTART").hour == 17  # local time, TZID Asia/Beirut
    assert str(events[0]["DTSTART"].params["TZID"]) == "Asia/Beirut"
    world.coordinator.cancel_task(task["id"], {"version": 2})
    with urllib.request.urlopen(base + link, timeout=5) as resp:
        statuses = {str(e["STATUS"]) for e in Calendar.from_ical(resp.read()).walk("VEVENT")}
    assert statuses == {"CANCELLED"}
    me.rotate_calendar_link(vol)
    with pytest.raises(urllib.error.HTTPError) as gone:
        urllib.request.urlopen(base + link, timeout=5)
    assert gone.value.code == 404


def test_calendar_token_never_reaches_the_log(container_factory: Any, config: dict[str, Any],
                                             rpc: Any, db: Any,
                                             caplog: pytest.LogCaptureFixture) -> None:
    import logging
    import urllib.error
    import urllib.request

    container_factory(RegistryService, config).start()
    tasks = container_factory(TasksService, config)
    tasks.start()
    world = World(rpc, db)
    vol = world.volunteer(1)
    link = world.as_volunteer(vol).rotate_calendar_link(vol)["path"]
    token = link.removeprefix("/calendar/").removesuffix(".ics")
    base = f"http://127.0.0.1:{http_port(tasks)}"
    caplog.set_level(logging.DEBUG)  # everything any logger writes, the access log included
    with urllib.request.urlopen(base + link + "?x=1", timeout=5) as resp:
        assert resp.status == 200
    for method, path, code in (("GET", "/calendar/not-a-link.ics", 404),
                               ("POST", link, 405)):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(base + path, method=method,
                                                          data=b"" if method == "POST"
                                                          else None), timeout=5)
        assert refused.value.code == code
    tasks.stop()  # every request handled and logged
    access = [r.getMessage() for r in caplog.records if r.name == "nameko.web.server"]
    assert sum("/calendar/<secret:token>.ics" in line for line in access) == 3, access
    assert token not in caplog.text and "not-a-link" not in caplog.text


def test_open_badges_credential_issued_verified_and_revoked(container_factory: Any,
                                                             config: dict[str, Any],
                                                             rpc: Any, db: Any) -> None:
    import urllib.error
    import urllib.request

    import jwt
    from joserfc import jwt as jose_jwt
    from joserfc.jwk import RSAKey
    from jwt.algorithms import RSAAlgorithm
    from openbadgeslib.ob3.verifier import OB3Verifier

    from services.tasks import credentials

    container_factory(RegistryService, config).start()
    tasks = container_factory(TasksService, config)
    tasks.start()
    base = f"http://127.0.0.1:{http_port(tasks)}"
    world = World(rpc, db)
    task = world.task(slots=1)
    vol = world.volunteer(1)
    me = world.as_volunteer(vol)
    assignment = me.accept(task["id"], vol)
    logged = me.submit_hours(assignment["id"], {"hours": 3})
    with pytest.raises(Conflict):  # nothing verified yet
        me.issue_credential(assignment["id"])
    world.coordinator.verify_hours(assignment["id"],
                                   {"entry_id": logged["hours"][0]["entry_id"]})
    issued = me.issue_credential(assignment["id"])
    assert me.issue_credential(assignment["id"])["credential_id"] == issued["credential_id"]

    def fetch(url: str) -> bytes:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.read()

    jwks = json.loads(fetch(base + "/credentials/jwks.json"))
    served = {}

    def status_lists(url: str) -> str:
        path = url.split("127.0.0.1:8102", 1)[-1]  # the configured public URL
        served[url] = fetch(base + path).decode()
        return served[url]

    now = datetime.now(UTC)
    report = credentials.verify(issued["token"], jwks, status_lists, now=now)
    assert report["valid"] and report["revoked"] is False, report["errors"]
    subject = report["credential"]["credentialSubject"]
    assert subject["id"] == f"urn:sanad:volunteer:{vol}"
    assert subject["result"][0]["value"] == "3"
    achievement = subject["achievement"]
    assert achievement["creator"]["name"] == "Tutors Without Borders"
    # skill names in the three languages, from the registry's taxonomy
    assert {"تدريس الرياضيات", "Mathematics tutoring", "Soutien en mathématiques",
            "Online collaboration"} <= set(achievement["tag"])

    # independent verifiers, with the key the token's kid dereferences to (a URI: the
    # served JWKS, the key's name as fragment): Open Badges 3.0's, and joserfc at defaults
    url, _, name = jwt.get_unverified_header(issued["token"])["kid"].partition("#")
    assert url == issued["jwks_url"] == "http://127.0.0.1:8102/credentials/jwks.json"
    [jwk] = [k for k in json.loads(fetch(base + "/credentials/jwks.json"))["keys"]
             if k["kid"] == name]
    checked = OB3Verifier(pubkey_pem=RSAAlgorithm.from_jwk(jwk)).verify(issued["token"])
    assert checked is not None  # it raises OB3VerificationError when it refuses
    claims = jose_jwt.decode(issued["token"], RSAKey.import_key(jwk)).claims
    assert claims["jti"] == issued["credential_id"]

    with pytest.raises(urllib.error.HTTPError) as unknown:
        fetch(base + "/credentials/status/99")
    assert unknown.value.code == 404

    world.coordinator.revoke_credential(issued["credential_id"],
                                        {"version": 1, "reason": "hours were not real"})
    revoked = credentials.verify(issued["token"], jwks, status_lists, now=now)
    assert revoked["revoked"] is True and revoked["valid"] is False


@pytest.mark.parametrize(("call", "args", "field"), [
    ("submit_hours", ({"hours": 0},), "hours"),
    ("submit_hours", ({"hours": 25},), "hours"),
    ("submit_hours", ({"hours": "three"},), "hours"),
    ("submit_hours", ({"hours": 1, "session_id": "s1; drop"},), "session_id"),
    ("submit_hours", ({"hours": 1, "$inc": {"hours": 9}},), "$inc"),
    ("submit_hours", ({"hours": 1, "note": "x" * 501},), "note"),
    ("leave_feedback", ({"rating": 6},), "rating"),
    ("leave_feedback", ({"rating": 3, "comment": "\x00"},), "comment"),
    ("verify_hours", ({"entry_id": {"$ne": None}},), "entry_id"),
])
def test_invalid_assignment_input_is_refused_by_field(world: World, call: str,
                                                      args: tuple[Any, ...],
                                                      field: str) -> None:
    task = world.task(slots=1)
    vol = world.volunteer(1)
    assignment = world.as_volunteer(vol).accept(task["id"], vol)
    with pytest.raises(ValidationError) as caught:
        getattr(world.system, call)(assignment["id"], *args)
    assert [k for k in caught.value.details if k.split(".")[0] == field], caught.value.details
    assert world.system.list_assignments(volunteer_id=vol)[0]["version"] == \
        assignment["version"]


@pytest.mark.parametrize("bad_id", [{"$gt": ""}, "tsk_../x", "org_" + "0" * 28, None, 42])
def test_ids_are_checked_before_any_lookup(world: World, bad_id: Any) -> None:
    with pytest.raises(ValidationError):
        world.system.get_task(bad_id)
    with pytest.raises(ValidationError):
        world.system.accept("tsk_" + "0" * 28, bad_id)
    with pytest.raises(ValidationError):
        world.system.withdraw(bad_id)


def test_edits_racing_with_claims_never_lose_a_claim(world: World, db: Any) -> None:
    task = world.task(slots=8)
    vols = [world.volunteer(n) for n in range(8)]

    def claim(vid: str) -> str:
        return world.as_volunteer(vid).accept(task["id"], vid)["status"]

    editors = [world.rpc("tasks", roles=("coordinator",), user_id="u_coord",
                         org_ids=(world.org_id,)) for _ in range(4)]

    def edit(n: int) -> str:
        me = editors[n]  # one proxy per greenthread: a proxy is not shared
        for _attempt in range(20):
            current = me.get_task(task["id"])
            try:
                me.update_task(task["id"], {
                    "version": current["version"],
                    "urgency": "high" if current["urgency"] == "normal" else "normal"})
                return "edited"
            except Conflict:
                continue
        return "gave up"

    pool = eventlet.GreenPool(12)
    claims = [pool.spawn(claim, vid) for vid in vols]
    edits = [pool.spawn(edit, n) for n in range(4)]
    assert [c.wait() for c in claims] == ["accepted"] * 8
    assert [e.wait() for e in edits] == ["edited"] * 4
    stored = db("tasks").tasks.find_one({"_id": task["id"]})
    assert sorted(stored["holders"]) == sorted(vols)
    assert stored["free"] == 0 and stored["status"] == "filled"
    assert stored["version"] == task["version"] + 4


def test_a_published_task_is_not_published_again(world: World) -> None:
    task = world.task(slots=1)
    vol = world.volunteer(1)
    world.as_volunteer(vol).accept(task["id"], vol)  # now filled
    with pytest.raises(Conflict):
        world.coordinator.publish_task(task["id"], {"version": task["version"]})


def test_tasks_past_their_deadline_expire_on_the_timer(world: World, tap: Any) -> None:
    events = tap("tasks")
    due = (datetime.now(UTC) + timedelta(seconds=3)).replace(tzinfo=None, microsecond=0)
    task = world.task(slots=2, timezone="UTC",
                      schedule={"kind": "deadline", "due": due.isoformat()})
    vol = world.volunteer(1)
    world.as_volunteer(vol).accept(task["id"], vol)
    [expired] = events.wait(1, "sanad.task.expired.v1", timeout=20)
    assert expired["subject"] == task["id"]
    assert world.system.get_task(task["id"])["status"] == "expired"
    [mine] = world.system.list_assignments(volunteer_id=vol)
    assert mine["status"] == "withdrawn"


def test_key_rotation_keeps_old_credentials_verifiable(container_factory: Any,
                                                       config: dict[str, Any], rpc: Any,
                                                       db: Any, tmp_path: Any) -> None:
    import urllib.request

    from services.tasks import credentials

    keys = tmp_path / "keys"
    cfg = {**config, "CREDENTIAL_KEYS_DIR": str(keys)}
    credentials.generate_key(keys, "2026-01-01")
    container_factory(RegistryService, cfg).start()
    first = container_factory(TasksService, cfg)
    first.start()
    world = World(rpc, db)
    task = world.task(slots=2)

    def verified_assignment(n: int) -> tuple[Any, dict[str, Any]]:
        vol = world.volunteer(n)
        me = world.as_volunteer(vol)
        assignment = me.accept(task["id"], vol)
        entry = me.submit_hours(assignment["id"], {"hours": 1.5})["hours"][0]["entry_id"]
        world.coordinator.verify_hours(assignment["id"], {"entry_id": entry})
        return me, assignment

    me, assignment = verified_assignment(1)
    old = me.issue_credential(assignment["id"])["token"]
    first.stop()  # rotate: a newer key joins the folder, the old one stays

    credentials.generate_key(keys, "2026-07-01")
    second = container_factory(TasksService, cfg)
    second.start()
    me2, assignment2 = verified_assignment(2)
    new = me2.issue_credential(assignment2["id"])["token"]
    keys_url = "http://127.0.0.1:8102/credentials/jwks.json#"
    assert jwt_kid(old) == keys_url + "2026-01-01" and jwt_kid(new) == keys_url + "2026-07-01"
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port(second)}"
                                "/credentials/jwks.json", timeout=5) as resp:
        jwks = json.loads(resp.read())
    assert sorted(k["kid"] for k in jwks["keys"]) == ["2026-01-01", "2026-07-01"]
    for token in (old, new):
        assert credentials.verify(token, jwks, now=datetime.now(UTC))["valid"]


def jwt_kid(token: str) -> str:
    import jwt

    return jwt.get_unverified_header(token)["kid"]


def test_accept_racing_an_expired_offer_gives_the_slot_back(world: World, db: Any,
                                                            slot_keeper: Any) -> None:
    """The offer expires between accept's read and its claim: no slot kept, nothing
    announced (the service's own steps, driven in the losing order)."""
    from services.tasks.store import TasksStore

    task = world.task(slots=1)
    vol = world.volunteer(1)
    offer = world.coordinator.offer(task["id"], {"volunteer_id": vol})
    store = TasksStore(db("tasks"))
    stale = store.assignment(offer["id"])  # what accept read
    keeper = slot_keeper(store, datetime.now(UTC))
    keeper.expire_due(stale)  # the timer wins the race
    with pytest.raises(Conflict):
        keeper.accept(store.task(task["id"]), vol, stale)
    after = db("tasks").tasks.find_one({"_id": task["id"]})
    assert after["free"] == 1 and after["holders"] == []
    pending = [e["event"]["type"] for e in (after.get("outbox") or {}).values()]
    assert "sanad.assignment.accepted.v1" not in pending
    assert store.assignment(offer["id"])["status"] == "expired"


def test_a_crash_between_a_claims_two_writes_leaves_no_slot_lost(world: World,
                                                                 db: Any, slot_keeper: Any) -> None:
    """The slot is taken, the process dies before the assignment is written: the audit
    gives the slot back once no claim can still be on its way, never while one may be;
    until then the volunteer's retry is refused like any second claim."""
    from services.tasks import domain as tasks_domain
    from services.tasks.slots import AUDIT_AFTER
    from services.tasks.store import TasksStore

    store = TasksStore(db("tasks"))

    def crashed_claim(task_id: str, vid: str) -> None:  # the first write alone
        assert store.claim_slot(task_id, vid, tasks_domain.CLAIMABLE, slot_keeper(
            store, datetime.now(UTC)).audit_at_ms) is not None

    task = world.task(slots=3)
    retrying, gone, late = (world.volunteer(n) for n in range(3))
    crashed_claim(task["id"], retrying)
    with pytest.raises(Conflict):
        world.as_volunteer(retrying).accept(task["id"], retrying)
    crashed_claim(task["id"], gone)
    slot_keeper(store, datetime.now(UTC)).reconcile(store.task(task["id"]))  # too soon
    assert db("tasks").tasks.find_one({"_id": task["id"]})["holders"] == [retrying, gone]

    snapshot = store.task(task["id"])  # what a replica's audit read, before ...
    eventlet.sleep(0.01)
    crashed_claim(task["id"], late)  # ... another claim: its assignment may be on its way
    later = datetime.now(UTC) + AUDIT_AFTER + timedelta(seconds=1)
    slot_keeper(store, later).reconcile(snapshot)
    stored = db("tasks").tasks.find_one({"_id": task["id"]})
    assert stored["holders"] == [retrying, gone, late]  # nothing given back on that read

    assert [t["_id"] for t in store.tasks_to_audit(later, 10)] == [task["id"]]
    for due in store.tasks_to_audit(later, 10):  # the timer's pass, once every claim is old
        slot_keeper(store, later).reconcile(due)
        store.audited(due["_id"], due["claims_audit_ms"])
    stored = db("tasks").tasks.find_one({"_id": task["id"]})
    assert stored["holders"] == [] and stored["free"] == 3
    assert stored["status"] == "open" and stored["claims_audit_ms"] == 0
    assert store.tasks_to_audit(later, 10) == []
    assert world.as_volunteer(retrying).accept(task["id"], retrying)["status"] == "accepted"
    assert [(a["volunteer_id"], a["status"]) for a in world.system.list_assignments(
        task_id=task["id"])] == [(retrying, "accepted")]


def test_a_sign_up_landing_after_its_task_ended_is_closed_by_the_audit(
        world: World, db: Any, containers: dict[str, Any], slot_keeper: Any) -> None:
    """The task ends between a sign-up's claim and its insert: the end closed the live
    assignments before this one existed; the reconcile timer's audit closes it."""
    from nameko.testing.services import entrypoint_hook

    from services.common.caller import Caller
    from services.tasks.store import TasksStore

    task = world.task(slots=2)
    vol = world.volunteer(1)

    class EndedMeanwhile(TasksStore):
        def claim_slot(self, *args: Any, **kwargs: Any) -> Any:
            taken = super().claim_slot(*args, **kwargs)
            # the coordinator's cancel, as far as it gets before the insert lands
            db("tasks").tasks.update_one({"_id": task["id"]},
                                         {"$set": {"status": "cancelled"}})
            return taken

    late = slot_keeper(EndedMeanwhile(db("tasks")), datetime.now(UTC)).sign_up(
        task["id"], vol, [], Caller(vol))
    assert late is not None and late["status"] == "accepted"
    db("tasks").tasks.update_one({"_id": task["id"]}, {"$set": {"claims_audit_ms": 1}})
    with entrypoint_hook(containers["tasks"], "reconcile_slots") as reconcile:
        reconcile()
    store = TasksStore(db("tasks"))
    assert store.assignment(late["_id"])["status"] == "withdrawn"
    stored = db("tasks").tasks.find_one({"_id": task["id"]})
    assert stored["holders"] == [] and stored["claims_audit_ms"] == 0


def test_a_freed_slot_goes_to_the_line_not_to_a_sign_up_racing_its_promotion(
        world: World, db: Any, tap: Any, slot_keeper: Any) -> None:
    """A release gave its slot back and has not promoted yet (or its promotion lost a
    race): a direct sign-up arriving then is refused, and the first eligible waiter, not a
    paused one ahead of them, gets the slot, once. With no eligible waiter, the slot is
    anyone's."""
    from services.tasks.store import TasksStore

    store = TasksStore(db("tasks"))
    events = tap("tasks")
    task = world.task(slots=1)
    holder, paused, waiter, newcomer = (world.volunteer(n) for n in range(4))
    world.as_volunteer(holder).accept(task["id"], holder)
    for vid in (paused, waiter):
        world.as_volunteer(vid).join_waitlist(task["id"], vid)
    paused_doc = db("tasks").volunteers.find_one({"_id": paused})
    db("tasks").volunteers.update_one({"_id": paused}, {"$set": {
        "status": "paused", "version": paused_doc["version"] + 1}})

    # a release's first step, then its promotion lost a race and the task reopened
    assert store.release_slot(task["id"], holder, []) is not None
    slot_keeper(store, datetime.now(UTC)).settle(store.task(task["id"]))
    assert store.task(task["id"])["status"] == "open"
    with pytest.raises(Conflict, match="waiting"):
        world.as_volunteer(newcomer).accept(task["id"], newcomer)
    stored = db("tasks").tasks.find_one({"_id": task["id"]})
    assert stored["holders"] == [waiter] and stored["waitlist"] == [paused]
    [offer] = [a for a in world.system.list_assignments(task_id=task["id"])
               if a["status"] == "offered"]
    assert offer["volunteer_id"] == waiter and offer["offer_kind"] == "reserved"
    offers = [e for e in events.wait(1, "sanad.assignment.offered.v1")]
    assert [e["data"]["volunteer_id"] for e in offers] == [waiter]

    # the waiter turns the offer down; the only one left in line is paused: anyone may sign up
    world.as_volunteer(waiter).decline(offer["id"])
    assert world.as_volunteer(newcomer).accept(task["id"], newcomer)["status"] == "accepted"
    stored = db("tasks").tasks.find_one({"_id": task["id"]})
    assert stored["holders"] == [newcomer] and stored["waitlist"] == [paused]
