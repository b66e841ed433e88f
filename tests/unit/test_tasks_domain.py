"""Task and assignment rules without broker or store: time is passed in, milliseconds each."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from services.common.caller import Caller
from services.common.change import Change
from services.common.errors import Conflict, Forbidden, ValidationError
from services.common.schemas import load
from services.contracts import tasks as events
from services.tasks import domain
from services.tasks.domain import MAX_SESSIONS
from services.tasks.schemas import TASK_STATUSES, CreateTaskSchema

NOW = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)
ORG = "org_" + "a" * 28
OTHER_ORG = "org_" + "b" * 28
COORDINATOR = Caller("u_coord", frozenset({"coordinator"}), frozenset({ORG}))
ADMIN = Caller("u_admin", frozenset({"platform_admin"}))
BEIRUT = ZoneInfo("Asia/Beirut")
PARIS = ZoneInfo("Europe/Paris")
WEEKLY = {"kind": "recurring", "start": "2027-03-09T17:00",
          "rrule": "FREQ=WEEKLY;BYDAY=TU;COUNT=8", "duration_minutes": 90}
# The eight Tuesdays of WEEKLY: 9, 16, 23, 30 March and 6, 13, 20, 27 April 2027.
AFTER_S2 = datetime(2027, 3, 17, 12, 0, tzinfo=UTC)  # s1 and s2 have started, s3 has not


def payload(**overrides: Any) -> dict[str, Any]:
    data = {"organisation_id": ORG, "title": "Homework club", "category": "tutoring",
            "timezone": "Asia/Beirut", "schedule": WEEKLY,
            "required_skills": [{"skill_id": "sk_tutoring"}, {"skill_id": "sk_arabic"},
                                {"skill_id": "sk_tutoring", "min_level": "advanced"}],
            "languages": ["AR", "en", "ar"], "skills_practised": ["sk_tutoring"],
            "slots": 3}
    data.update(overrides)
    return load(CreateTaskSchema(), data)


def schedule(**fields: Any) -> dict[str, Any]:
    """A validated schedule (naive local datetimes), through the real schema."""
    return payload(schedule=fields)["schedule"]


def make_task(status: str = "draft", **overrides: Any) -> dict[str, Any]:
    task = domain.new_task("tsk_1", payload(**overrides), COORDINATOR, NOW)
    task["status"] = status
    return task


def assignment(status: str = "accepted", **extra: Any) -> dict[str, Any]:
    return domain.new_assignment("asg_1", make_task("open"), "vol_1", status, NOW, **extra)


def local(moment: datetime, zone: ZoneInfo) -> datetime:
    return moment.astimezone(zone)


# -- transition tables ---------------------------------------------------------------------
def test_the_task_table_names_every_status() -> None:
    assert set(domain.TASK_TRANSITIONS) == set(TASK_STATUSES)
    for targets in domain.TASK_TRANSITIONS.values():
        assert targets <= set(TASK_STATUSES)
    targets = {t for ts in domain.ASSIGNMENT_TRANSITIONS.values() for t in ts}
    assert targets <= set(domain.ASSIGNMENT_TRANSITIONS)


@pytest.mark.parametrize("to", TASK_STATUSES)
@pytest.mark.parametrize("status", TASK_STATUSES)
def test_task_transition(status: str, to: str) -> None:
    task = {"_id": "tsk_1", "status": status}
    if to in domain.TASK_TRANSITIONS[status]:
        domain.transition(task, to)
    else:
        with pytest.raises(Conflict) as refused:
            domain.transition(task, to)
        assert refused.value.details == {"status": [f"{status} -> {to} is not allowed."]}


ASSIGNMENT_STATUSES = tuple(domain.ASSIGNMENT_TRANSITIONS)


@pytest.mark.parametrize("to", ASSIGNMENT_STATUSES)
@pytest.mark.parametrize("status", ASSIGNMENT_STATUSES)
def test_assignment_move(status: str, to: str) -> None:
    doc = {"_id": "asg_1", "status": status, "history": [{"status": status, "at": NOW}]}
    later = NOW + timedelta(minutes=5)
    if to in domain.ASSIGNMENT_TRANSITIONS[status]:
        set_ = domain.move(doc, to, later, reason="why")
        assert set_ == {"status": to, "updated_at": later, "reason": "why",
                        "history": [{"status": status, "at": NOW},
                                    {"status": to, "at": later}]}
        assert doc["history"] == [{"status": status, "at": NOW}]  # input left alone
    else:
        with pytest.raises(Conflict):
            domain.move(doc, to, later)


def test_move_keeps_the_last_fifty_history_entries() -> None:
    doc = {"status": "applied", "history": [{"status": "applied", "at": NOW}] * 60}
    history = domain.move(doc, "accepted", NOW)["history"]
    assert len(history) == 50 and history[-1]["status"] == "accepted"


# -- schedules -----------------------------------------------------------------------------
def test_one_off_window_is_converted_from_local_time_to_utc() -> None:
    sched = schedule(kind="one_off", start="2026-12-01T17:00", end="2026-12-01T19:30")
    [session] = domain.expand_schedule(sched, "Asia/Beirut")  # UTC+2 in winter
    assert session == {"session_id": "s1", "status": "scheduled",
                       "start": datetime(2026, 12, 1, 15, 0, tzinfo=UTC),
                       "end": datetime(2026, 12, 1, 17, 30, tzinfo=UTC)}
    summer = schedule(kind="one_off", start="2027-07-01T17:00", end="2027-07-01T18:00")
    [session] = domain.expand_schedule(summer, "Asia/Beirut")  # UTC+3 in summer
    assert session["start"] == datetime(2027, 7, 1, 14, 0, tzinfo=UTC)


def test_a_deadline_has_no_sessions_and_ends_at_the_due_time() -> None:
    sched = schedule(kind="deadline", due="2027-01-15T23:59")
    assert domain.expand_schedule(sched, "Asia/Beirut") == []
    task = make_task(schedule={"kind": "deadline", "due": "2027-01-15T23:59"})
    assert task["sessions"] == [] and task["starts_at"] is None
    assert task["ends_at"] == datetime(2027, 1, 15, 21, 59, tzinfo=UTC)


def test_weekly_sessions_stay_at_local_time_across_beirut_spring_change() -> None:
    sessions = domain.expand_schedule(schedule(**WEEKLY), "Asia/Beirut")
    assert [s["session_id"] for s in sessions] == [f"s{n}" for n in range(1, 9)]
    assert all(s["status"] == "scheduled" for s in sessions)
    for session in sessions:
        start = local(session["start"], BEIRUT)
        assert (start.hour, start.minute, start.strftime("%a")) == (17, 0, "Tue")
        assert session["start"].tzinfo == UTC
        assert session["end"] - session["start"] == timedelta(minutes=90)
    # Lebanon moves to summer time on Sunday 28 March 2027: UTC+2 before, UTC+3 after.
    before = [s for s in sessions if s["start"] < datetime(2027, 3, 28, tzinfo=UTC)]
    after = [s for s in sessions if s["start"] > datetime(2027, 3, 28, tzinfo=UTC)]
    assert len(before) == 3 and len(after) == 5
    assert {s["start"].hour for s in before} == {15}
    assert {s["start"].hour for s in after} == {14}
    assert sessions[0]["start"] == datetime(2027, 3, 9, 15, 0, tzinfo=UTC)
    assert sessions[-1]["start"] == datetime(2027, 4, 27, 14, 0, tzinfo=UTC)


def test_weekly_sessions_stay_at_local_time_across_paris_autumn_change() -> None:
    sched = schedule(kind="recurring", start="2027-10-12T18:30",
                     rrule="FREQ=WEEKLY;BYDAY=TU;COUNT=4", duration_minutes=60)
    sessions = domain.expand_schedule(sched, "Europe/Paris")
    for session in sessions:
        start = local(session["start"], PARIS)
        assert (start.hour, start.minute) == (18, 30)
    # France goes back to winter time on Sunday 31 October 2027: UTC+2, then UTC+1.
    assert [s["start"].hour for s in sessions] == [16, 16, 16, 17]
    assert sessions[2]["start"].hour != sessions[3]["start"].hour


def test_until_bounds_a_recurrence() -> None:
    sched = schedule(kind="recurring", start="2027-03-09T17:00",
                     rrule="FREQ=WEEKLY;BYDAY=TU;UNTIL=20270330T235959", duration_minutes=60)
    sessions = domain.expand_schedule(sched, "Asia/Beirut")
    assert [local(s["start"], BEIRUT).day for s in sessions] == [9, 16, 23, 30]


def test_an_unbounded_recurrence_is_refused() -> None:
    sched = schedule(kind="recurring", start="2027-03-09T17:00", rrule="FREQ=WEEKLY;BYDAY=TU",
                     duration_minutes=60)
    with pytest.raises(ValidationError) as refused:
        domain.expand_schedule(sched, "Asia/Beirut")
    assert "rrule" in refused.value.details["schedule"]


@pytest.mark.parametrize("rrule", ["FREQ=FORTNIGHTLY;COUNT=2", "BYDAY=TU;COUNT=3",
                                   "FREQ=WEEKLY;BYDAY=XX;COUNT=2", "FREQ=WEEKLY;COUNT=x",
                                   "every tuesday", "FREQ=WEEKLY;COUNT=0"])
def test_a_malformed_recurrence_is_refused(rrule: str) -> None:
    sched = schedule(kind="recurring", start="2027-03-09T17:00", rrule=rrule,
                     duration_minutes=60)
    with pytest.raises(ValidationError) as refused:
        domain.expand_schedule(sched, "Asia/Beirut")
    assert refused.value.details["schedule"]["rrule"]


def test_more_than_max_sessions_is_refused() -> None:
    at_limit = schedule(kind="recurring", start="2027-03-09T17:00",
                        rrule=f"FREQ=DAILY;COUNT={MAX_SESSIONS}", duration_minutes=60)
    assert len(domain.expand_schedule(at_limit, "Asia/Beirut")) == MAX_SESSIONS
    over = {**at_limit, "rrule": f"FREQ=DAILY;COUNT={MAX_SESSIONS + 1}"}
    with pytest.raises(ValidationError) as refused:
        domain.expand_schedule(over, "Asia/Beirut")
    assert refused.value.details["schedule"]["rrule"] == [f"More than {MAX_SESSIONS} sessions."]
    far = {**at_limit, "rrule": "FREQ=DAILY;UNTIL=20991231T000000"}
    with pytest.raises(ValidationError):
        domain.expand_schedule(far, "Asia/Beirut")


def test_a_session_across_the_dst_change_lasts_its_duration() -> None:
    # Lebanon's clocks jump from 00:00 to 01:00 on Sunday 28 March 2027; a two-hour
    # session from 23:00 on the Saturday ends at 02:00 local, two real hours later.
    sched = schedule(kind="recurring", start="2027-03-27T23:00",
                     rrule="FREQ=DAILY;COUNT=1", duration_minutes=120)
    [session] = domain.expand_schedule(sched, "Asia/Beirut")
    assert session["end"] - session["start"] == timedelta(minutes=120)


def test_a_recurrence_that_never_matches_is_refused() -> None:
    # measured in bench, not here: tests never assert on timing
    sched = schedule(kind="recurring", start="2027-03-09T17:00",
                     rrule="FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30;COUNT=1", duration_minutes=60)
    with pytest.raises(ValidationError):
        domain.expand_schedule(sched, "Asia/Beirut")


# -- tasks ---------------------------------------------------------------------------------
def test_new_task_is_a_draft_with_derived_fields() -> None:
    task = domain.new_task("tsk_1", payload(), COORDINATOR, NOW)
    assert task["_id"] == "tsk_1" and task["status"] == "draft" and task["version"] == 1
    assert task["free"] == 3 and task["holders"] == [] and task["waitlist"] == []
    assert task["skill_ids"] == ["sk_arabic", "sk_tutoring"]
    assert task["language_codes"] == ["ar", "en"]
    assert len(task["sessions"]) == 8
    assert task["starts_at"] == datetime(2027, 3, 9, 15, 0, tzinfo=UTC)
    assert task["ends_at"] == datetime(2027, 4, 27, 15, 30, tzinfo=UTC)
    assert task["created_by"] == "u_coord" and task["created_at"] == NOW
    # the schedule is kept as given: local wall-clock times, naming no instant
    assert task["schedule"] == {"kind": "recurring", "start": "2027-03-09T17:00",
                                "rrule": "FREQ=WEEKLY;BYDAY=TU;COUNT=8",
                                "duration_minutes": 90}


@pytest.mark.parametrize("caller", [
    ADMIN, Caller("svc", frozenset({"system"})),
    Caller("u_c", frozenset({"coordinator", "volunteer"}), frozenset({OTHER_ORG, ORG}))])
def test_new_task_by_coordinator_of_the_organisation_or_admin(caller: Caller) -> None:
    assert domain.new_task("tsk_1", payload(), caller, NOW)["created_by"] == caller.user_id


@pytest.mark.parametrize("caller", [
    Caller(),
    Caller("u_vol", frozenset({"volunteer"}), frozenset({ORG})),
    Caller("u_c", frozenset({"coordinator"}), frozenset({OTHER_ORG})),
    Caller("u_c", frozenset({"coordinator"}))])
def test_new_task_by_anyone_else_is_forbidden(caller: Caller) -> None:
    with pytest.raises(Forbidden) as refused:
        domain.new_task("tsk_1", payload(), caller, NOW)
    assert "organisation_id" in refused.value.details


def test_new_task_ending_in_the_past_is_refused() -> None:
    later = datetime(2027, 4, 27, 15, 30, tzinfo=UTC)  # the moment the last session ends
    with pytest.raises(ValidationError) as refused:
        domain.new_task("tsk_1", payload(), COORDINATOR, later)
    assert "schedule" in refused.value.details
    past = payload(schedule={"kind": "deadline", "due": "2026-11-01T12:00"})
    with pytest.raises(ValidationError):
        domain.new_task("tsk_1", past, COORDINATOR, NOW)


def test_publish_by_a_verified_organisation_emits_the_snapshot() -> None:
    task = make_task()
    change = domain.publish(task, "verified", NOW)
    assert change.set == {"status": "open", "published_at": NOW, "updated_at": NOW}
    [event] = change.events
    assert event.type == events.TASK_PUBLISHED == "sanad.task.published.v1"
    assert event.subject == "tsk_1"
    loaded = events.TaskChanged().load(event.data)
    snapshot = loaded["task"]
    assert snapshot["task_id"] == "tsk_1" and snapshot["status"] == "open"
    assert snapshot["version"] == 2 and snapshot["free"] == 3
    assert snapshot["ends_at"] == "2027-04-27T15:30:00+00:00"
    assert len(snapshot["sessions"]) == 8
    assert event.data["task"]["schedule"]["start"] == "2027-03-09T17:00"
    assert task["status"] == "draft"  # the input is not changed


@pytest.mark.parametrize("org_status", ["pending", "suspended", "rejected", None])
def test_publish_needs_a_verified_organisation(org_status: str | None) -> None:
    with pytest.raises(Conflict) as refused:
        domain.publish(make_task(), org_status, NOW)
    assert "organisation_id" in refused.value.details


def test_publish_refuses_a_published_or_finished_task() -> None:
    with pytest.raises(Conflict):
        domain.publish(make_task("open"), "verified", NOW)
    with pytest.raises(Conflict):
        domain.publish(make_task(), "verified", datetime(2027, 5, 1, tzinfo=UTC))


def test_update_refuses_fewer_slots_than_taken_and_recomputes_free() -> None:
    task = {**make_task("open"), "slots": 3, "free": 1}  # two taken
    with pytest.raises(Conflict) as refused:
        domain.update_task(task, {"slots": 1}, NOW)
    assert refused.value.details == {"slots": ["2 are taken."]}
    assert domain.update_task(task, {"slots": 2}, NOW).set["free"] == 0
    assert domain.update_task(task, {"slots": 5}, NOW).set["free"] == 3


def test_update_of_a_draft_has_no_event() -> None:
    change = domain.update_task(make_task(), {"title": "Homework club (Akkar)"}, NOW)
    assert change.set == {"title": "Homework club (Akkar)", "updated_at": NOW}
    assert change.events == []


def test_update_of_an_open_task_emits_what_changed() -> None:
    task = make_task("open")
    change = domain.update_task(task, {"title": "Reading club", "slots": 4,
                                       "category": "tutoring"}, NOW)
    assert change.set == {"title": "Reading club", "slots": 4, "free": 4, "updated_at": NOW}
    [event] = change.events
    assert event.type == events.TASK_UPDATED
    loaded = events.TaskChanged().load(event.data)
    assert loaded["changed"] == ["slots", "title"]  # unchanged category left out
    assert loaded["task"]["version"] == 2 and loaded["task"]["title"] == "Reading club"
    assert loaded["task"]["free"] == 4


def test_update_of_the_schedule_recomputes_sessions() -> None:
    task = make_task("open")
    new = schedule(kind="one_off", start="2027-01-10T10:00", end="2027-01-10T12:00")
    change = domain.update_task(task, {"schedule": new}, NOW)
    assert [s["session_id"] for s in change.set["sessions"]] == ["s1"]
    assert change.set["starts_at"] == datetime(2027, 1, 10, 8, 0, tzinfo=UTC)
    assert change.set["ends_at"] == datetime(2027, 1, 10, 10, 0, tzinfo=UTC)
    assert change.events[0].data["changed"] == ["schedule"]
    past = schedule(kind="one_off", start="2026-01-10T10:00", end="2026-01-10T12:00")
    with pytest.raises(ValidationError):
        domain.update_task(task, {"schedule": past}, NOW)


def test_update_without_a_change_is_empty() -> None:
    task = make_task("open")
    same = {"title": task["title"], "slots": task["slots"], "schedule": task["schedule"],
            "languages": task["languages"]}
    assert domain.update_task(task, same, NOW) == Change()
    # the schedule as the update schema loads it (datetimes, None fields) is the same too
    loaded = payload()["schedule"]
    assert domain.update_task(task, {"schedule": loaded}, NOW) == Change()
    assert domain.update_task(task, {}, NOW) == Change()


@pytest.mark.parametrize("status", ["in_progress", "completed", "cancelled", "expired"])
def test_update_of_a_task_past_editing_is_refused(status: str) -> None:
    with pytest.raises(Conflict):
        domain.update_task(make_task(status), {"title": "Another"}, NOW)


def test_cancel_cancels_sessions_still_ahead() -> None:
    task = make_task("in_progress")
    change = domain.end_task(task, "cancelled", "no tutors", AFTER_S2)
    assert [s["status"] for s in change.set["sessions"]] == ["scheduled"] * 2 + \
        ["cancelled"] * 6
    assert change.set["status"] == "cancelled" and change.set["ended_at"] == AFTER_S2
    assert change.set["status_reason"] == "no tutors"
    [event] = change.events
    assert event.type == events.TASK_CANCELLED
    loaded = events.TaskChanged().load(event.data)
    assert loaded["reason"] == "no tutors" and loaded["task"]["status"] == "cancelled"
    assert [s["status"] for s in loaded["task"]["sessions"]][2:] == ["cancelled"] * 6
    assert all(s["status"] == "scheduled" for s in task["sessions"])  # input left alone


def test_complete_keeps_sessions_and_expire_cancels_them() -> None:
    completed = domain.end_task(make_task("in_progress"), "completed", None, AFTER_S2)
    assert all(s["status"] == "scheduled" for s in completed.set["sessions"])
    assert completed.events[0].type == events.TASK_COMPLETED
    expired = domain.end_task(make_task("open"), "expired", None, AFTER_S2)
    assert [s["status"] for s in expired.set["sessions"]].count("cancelled") == 6
    assert expired.events[0].type == events.TASK_EXPIRED
    with pytest.raises(Conflict):
        domain.end_task(make_task("cancelled"), "completed", None, AFTER_S2)


def test_fill_and_reopen_events() -> None:
    task = {**make_task("filled"), "free": 0}
    events.TaskSlots().load(domain.fill_event(task).data)
    assert domain.fill_event(task).type == events.TASK_FILLED
    assert domain.reopen_event({**task, "free": 1}).data == {"task_id": "tsk_1", "free": 1}


# -- eligibility ---------------------------------------------------------------------------
def vetted_task() -> dict[str, Any]:
    return make_task("open", vetting_required=["criminal_record", "child_safeguarding"])


def volunteer(status: str = "active", **vetting: Any) -> dict[str, Any]:
    cleared = {"state": "cleared", "valid_until": "2027-12-31"}
    return {"_id": "vol_1", "status": status,
            "vetting": {"criminal_record": cleared, "child_safeguarding": cleared, **vetting}}


@pytest.mark.parametrize("candidate", [None, volunteer("paused"), volunteer("erased"),
                                       {"_id": "vol_1"}])
def test_only_an_active_volunteer_is_eligible(candidate: dict[str, Any] | None) -> None:
    with pytest.raises(Conflict) as refused:
        domain.check_eligible(vetted_task(), candidate)
    assert "volunteer_id" in refused.value.details


@pytest.mark.parametrize("vetting, problem", [
    ({"child_safeguarding": None}, "child_safeguarding vetting is missing."),
    ({"child_safeguarding": {"state": "pending"}}, "child_safeguarding vetting is pending."),
    ({"criminal_record": {"state": "rejected", "valid_until": "2030-01-01"}},
     "criminal_record vetting is rejected."),
    ({"criminal_record": {"state": "cleared", "valid_until": "2027-04-26"}},
     "criminal_record vetting expires 2027-04-26, before the task ends."),
])
def test_vetting_must_be_cleared_until_the_task_ends(vetting: dict[str, Any],
                                                     problem: str) -> None:
    with pytest.raises(Conflict) as refused:
        domain.check_eligible(vetted_task(), volunteer(**vetting))
    assert refused.value.details == {"vetting": [problem]}


def test_vetting_with_no_record_at_all_is_missing() -> None:
    with pytest.raises(Conflict) as refused:
        domain.check_eligible(vetted_task(), {"_id": "vol_1", "status": "active"})
    assert len(refused.value.details["vetting"]) == 2


@pytest.mark.parametrize("valid_until", ["2027-04-27", "2030-01-01", None])
def test_valid_vetting_is_accepted(valid_until: str | None) -> None:
    check = {"state": "cleared", "valid_until": valid_until}
    domain.check_eligible(vetted_task(), volunteer(criminal_record=check))
    domain.check_eligible(make_task("open"), {"status": "active"})  # nothing required


def test_eligible_first_skips_the_ineligible() -> None:
    task = vetted_task()
    volunteers = {"vol_paused": volunteer("paused"),
                  "vol_expired": volunteer(criminal_record={"state": "cleared",
                                                            "valid_until": "2027-01-01"}),
                  "vol_ok": volunteer(), "vol_also_ok": volunteer()}
    waitlist = ["vol_gone", "vol_paused", "vol_expired", "vol_ok", "vol_also_ok"]
    assert domain.eligible_first(waitlist, volunteers, task) == "vol_ok"
    assert domain.eligible_first(waitlist[:3], volunteers, task) is None
    assert domain.eligible_first([], volunteers, task) is None


def test_require_self() -> None:
    domain.require_self(Caller("vol_1"), "vol_1")
    domain.require_self(ADMIN, "vol_1")
    with pytest.raises(Forbidden):
        domain.require_self(Caller("vol_2", frozenset({"volunteer"})), "vol_1")


# -- hours ---------------------------------------------------------------------------------
def test_new_assignment_shape() -> None:
    doc = assignment("offered", due_at=NOW)
    assert doc["live_key"] == "tsk_1:vol_1" and doc["organisation_id"] == ORG
    assert doc["history"] == [{"status": "offered", "at": NOW}] and doc["due_at"] == NOW
    events.AssignmentChanged().load(
        domain.assignment_event(events.ASSIGNMENT_OFFERED, doc, source="coordinator").data)


def submitted(*args: Any) -> tuple[dict[str, Any], Any]:
    """The hours entry a submission adds, and its event."""
    change = domain.submit_hours(*args)
    [event] = change.events
    assert change.set["updated_at"] == args[-1]
    return change.set["hours"][-1], event


def decided(*args: Any) -> tuple[list[dict[str, Any]], Any]:
    change = domain.decide_hours(*args)
    [event] = change.events
    assert change.set["verified_hours"] == domain.verified_hours({"hours": change.set["hours"]})
    return change.set["hours"], event


def test_submit_hours_for_a_started_session() -> None:
    entry, event = submitted(assignment(), make_task("in_progress"), 1.5, "s2",
                                       "went well", AFTER_S2)
    assert entry == {"entry_id": "h1", "session_id": "s2", "hours": 1.5, "note": "went well",
                     "status": "submitted", "submitted_at": AFTER_S2}
    assert event.type == events.HOURS_SUBMITTED and event.subject == "asg_1"
    loaded = events.HoursChanged().load(event.data)
    assert loaded["entry_id"] == "h1" and loaded["hours"] == 1.5
    assert "went well" not in repr(event.data)


@pytest.mark.parametrize("session_id", [None, "s9", "s0"])
def test_recurring_hours_name_a_real_session(session_id: str | None) -> None:
    with pytest.raises(ValidationError) as refused:
        domain.submit_hours(assignment(), make_task("in_progress"), 1.0, session_id, None,
                            AFTER_S2)
    assert "session_id" in refused.value.details


def test_hours_for_a_session_not_started_are_refused() -> None:
    with pytest.raises(Conflict):
        domain.submit_hours(assignment(), make_task("in_progress"), 1.0, "s3", None, AFTER_S2)


def test_hours_for_the_same_session_twice_are_refused_unless_rejected() -> None:
    task = make_task("in_progress")
    doc = assignment("active")
    entry, _ = submitted(doc, task, 1.0, "s1", None, AFTER_S2)
    doc["hours"] = [entry]
    with pytest.raises(Conflict):
        domain.submit_hours(doc, task, 1.0, "s1", None, AFTER_S2)
    doc["hours"] = [{**entry, "status": "verified"}]
    with pytest.raises(Conflict):
        domain.submit_hours(doc, task, 1.0, "s1", None, AFTER_S2)
    doc["hours"] = [{**entry, "status": "rejected"}]
    again, _ = submitted(doc, task, 1.0, "s1", None, AFTER_S2)
    assert again["entry_id"] == "h2"


def test_one_off_hours_need_no_session_but_a_named_one_must_exist() -> None:
    task = make_task("in_progress", schedule={"kind": "one_off", "start": "2027-01-10T10:00",
                                               "end": "2027-01-10T12:00"})
    after = datetime(2027, 1, 10, 12, tzinfo=UTC)
    entry, _ = submitted(assignment(), task, 2.0, None, None, after)
    assert entry["session_id"] is None
    assert submitted(assignment(), task, 2.0, "s1", None, after)[0]["hours"] == 2.0
    with pytest.raises(ValidationError):
        domain.submit_hours(assignment(), task, 2.0, "s2", None, after)


@pytest.mark.parametrize("status", sorted(set(ASSIGNMENT_STATUSES) - {"accepted", "active"}))
def test_hours_need_an_accepted_or_active_assignment(status: str) -> None:
    with pytest.raises(Conflict):
        domain.submit_hours(assignment(status), make_task("in_progress"), 1.0, "s1", None,
                            AFTER_S2)


def with_hours(*statuses: str) -> dict[str, Any]:
    doc = assignment("active")
    doc["hours"] = [{"entry_id": f"h{n}", "session_id": f"s{n}", "hours": float(n),
                     "note": None, "status": status, "submitted_at": AFTER_S2}
                    for n, status in enumerate(statuses, start=1)]
    return doc


def test_verifying_hours_credits_skills_practised() -> None:
    doc = with_hours("submitted", "submitted")
    entries, event = decided(doc, make_task("in_progress"), "h2", True, None,
                                         COORDINATOR, AFTER_S2)
    assert [e["status"] for e in entries] == ["submitted", "verified"]
    assert entries[1]["decided_by"] == "u_coord" and entries[1]["decided_at"] == AFTER_S2
    assert doc["hours"][1]["status"] == "submitted"  # input left alone
    assert event.type == events.HOURS_VERIFIED
    loaded = events.HoursChanged().load(event.data)
    assert loaded["skills_practised"] == ["sk_tutoring"]
    assert loaded["credit_id"] == "asg_1:h2"
    assert loaded["hours"] == 2.0 and loaded["session_id"] == "s2"


def test_rejecting_hours() -> None:
    entries, event = decided(with_hours("submitted"), make_task("in_progress"),
                                         "h1", False, "not at that session", COORDINATOR,
                                         AFTER_S2)
    assert entries[0]["status"] == "rejected"
    assert entries[0]["reason"] == "not at that session"
    assert event.type == events.HOURS_REJECTED
    # the reason is free text about a person: kept on the assignment, not in the event
    assert "reason" not in event.data
    assert "credit_id" not in event.data and "skills_practised" not in event.data


@pytest.mark.parametrize("decided", ["verified", "rejected"])
@pytest.mark.parametrize("verify", [True, False])
def test_hours_are_decided_once(decided: str, verify: bool) -> None:
    with pytest.raises(Conflict):
        domain.decide_hours(with_hours(decided), make_task("in_progress"), "h1", verify, None,
                            COORDINATOR, AFTER_S2)


def test_deciding_unknown_hours_is_refused() -> None:
    with pytest.raises(ValidationError):
        domain.decide_hours(with_hours("submitted"), make_task("in_progress"), "h7", True,
                            None, COORDINATOR, AFTER_S2)


def test_verified_hours_sum_only_verified_entries() -> None:
    # h1..h5 carry 1.0..5.0 hours
    doc = with_hours("verified", "submitted", "verified", "rejected", "verified")
    assert domain.verified_hours(doc) == 9.0
    assert domain.verified_hours({"hours": []}) == 0
    assert domain.verified_hours({}) == 0


# -- policy --------------------------------------------------------------------------------
@pytest.mark.parametrize("urgency, hours", [("critical", 6), ("high", 6), ("normal", 48),
                                            ("low", 48), (None, 48)])
def test_offer_expiry_is_shorter_when_urgent(urgency: str | None, hours: float) -> None:
    assert domain.Policy().offer_expiry({"urgency": urgency}, NOW) == \
        NOW + timedelta(hours=hours)


def test_offer_expiry_follows_the_configured_policy() -> None:
    policy = domain.Policy(offer_hours=24, urgent_offer_hours=2)
    task = make_task("open", urgency="critical")
    assert policy.offer_expiry(task, NOW) == NOW + timedelta(hours=2)
    assert policy.offer_expiry({**task, "urgency": "normal"}, NOW) == NOW + timedelta(hours=24)
    assert policy.offer_expiry(task, NOW) < policy.offer_expiry({"urgency": "low"}, NOW)


def test_a_sign_up_claims_only_where_vetting_cannot_stand_in_the_way() -> None:
    """The kinds a sign-up's claim refuses outright: all but those cleared for good."""
    forever = {"state": "cleared", "valid_until": None}
    assert domain.vetting_gaps(volunteer(criminal_record=forever)) == [
        "child_safeguarding", "identity", "reference"]  # dated: the full read decides
    assert domain.vetting_gaps(volunteer(criminal_record=forever, child_safeguarding={
        "state": "pending", "valid_until": None})) == [
        "child_safeguarding", "identity", "reference"]
    assert domain.vetting_gaps({"_id": "vol_1", "status": "active"}) == [
        "criminal_record", "child_safeguarding", "identity", "reference"]
    everything = {kind: forever for kind in
                  ("criminal_record", "child_safeguarding", "identity", "reference")}
    assert domain.vetting_gaps(volunteer(**everything)) == []
    for candidate in (None, volunteer("paused"), volunteer("erased")):
        assert domain.vetting_gaps(candidate) is None
