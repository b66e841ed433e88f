"""Task and assignment rules: pure functions over plain dicts. No broker, store or clock.

Slots are counted on the task document (`free`, `holders`, `waitlist`) so a claim is one
conditional single-document update; `store.py` turns the decisions here into those
updates. Every function that changes something returns the events it causes.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from dateutil.rrule import rrulestr

from services.common.caller import COORDINATOR, Caller
from services.common.change import Change
from services.common.envelope import DomainEvent
from services.common.errors import Conflict, Forbidden, ValidationError
from services.contracts import tasks as events

TASK_TRANSITIONS: dict[str, frozenset[str]] = {
    "draft": frozenset({"open", "cancelled"}),
    "open": frozenset({"filled", "in_progress", "completed", "cancelled", "expired"}),
    "filled": frozenset({"open", "in_progress", "completed", "cancelled", "expired"}),
    "in_progress": frozenset({"completed", "cancelled"}),
    "completed": frozenset(), "cancelled": frozenset(), "expired": frozenset(),
}
VETTING_KINDS = ("criminal_record", "child_safeguarding", "identity", "reference")
MAX_SESSIONS = 200  # a recurring schedule expands to at most this many sessions
CLAIMABLE = ("open", "in_progress")  # a slot can be taken in these task states
EDITABLE = ("draft", "open", "filled")
ENDED = ("completed", "cancelled", "expired")

ASSIGNMENT_TRANSITIONS: dict[str, frozenset[str]] = {
    "applied": frozenset({"accepted", "declined", "withdrawn"}),
    "offered": frozenset({"accepted", "declined", "expired", "withdrawn"}),
    # offered: a freed slot kept for the first in line; accepted: a volunteer in line
    # who takes a free slot themselves
    "waitlisted": frozenset({"offered", "accepted", "withdrawn"}),
    "accepted": frozenset({"active", "completed", "withdrawn", "no_show"}),
    "active": frozenset({"completed", "withdrawn"}),
    "completed": frozenset(), "declined": frozenset(), "withdrawn": frozenset(),
    "expired": frozenset(), "no_show": frozenset(),
}
# the event each assignment state is announced with, on creation or on entering it
ANNOUNCED_AS = {
    "applied": events.ASSIGNMENT_APPLIED, "offered": events.ASSIGNMENT_OFFERED,
    "waitlisted": events.ASSIGNMENT_WAITLISTED, "accepted": events.ASSIGNMENT_ACCEPTED,
    "active": events.ASSIGNMENT_STARTED, "completed": events.ASSIGNMENT_COMPLETED,
    "declined": events.ASSIGNMENT_DECLINED, "withdrawn": events.ASSIGNMENT_WITHDRAWN,
    "expired": events.ASSIGNMENT_EXPIRED, "no_show": events.ASSIGNMENT_NO_SHOW,
}
# status flips the slots decide: each written only while the task is still in one of these
FLIPS_FROM = {"filled": ("open",), "open": ("filled",), "in_progress": ("open", "filled")}
LIVE = frozenset({"applied", "offered", "waitlisted", "accepted", "active"})
HOLDS_SLOT = frozenset({"accepted", "active"})  # plus offers made from the waitlist
URGENT = ("critical", "high")


@dataclass(frozen=True)
class Policy:
    """Timer settings from config, passed in so the rules stay testable."""

    offer_hours: float = 48
    urgent_offer_hours: float = 6
    start_grace_hours: float = 24

    def offer_expiry(self, task: Mapping[str, Any], now: datetime) -> datetime:
        hours = self.urgent_offer_hours if task.get("urgency") in URGENT else self.offer_hours
        return now + timedelta(hours=hours)


# -- schedules ---------------------------------------------------------------------------
def _utc(local: datetime | str, zone: ZoneInfo) -> datetime:
    return _wall(local).replace(tzinfo=zone).astimezone(UTC)


def _wall(value: datetime | str) -> datetime:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def stored_schedule(schedule: Mapping[str, Any]) -> dict[str, Any]:
    """Local wall-clock times kept as ISO strings: they name no instant until paired
    with the time zone, and a store would otherwise read them back as UTC."""
    return {k: (v.isoformat(timespec="minutes") if isinstance(v, datetime) else v)
            for k, v in schedule.items() if v is not None}


def expand_schedule(schedule: Mapping[str, Any], timezone: str) -> list[dict[str, Any]]:
    """Sessions in UTC from a schedule given in local wall-clock time.

    Recurrences are expanded in local time and converted one by one, so "Tuesdays at
    17:00 in Beirut" stays at 17:00 local across daylight-saving changes.
    """
    zone = ZoneInfo(timezone)
    kind = schedule["kind"]
    if kind == "deadline":
        return []
    if kind == "one_off":
        return [{"session_id": "s1", "start": _utc(schedule["start"], zone),
                 "end": _utc(schedule["end"], zone), "status": "scheduled"}]
    _check_rrule(schedule["rrule"])
    try:
        rule = rrulestr(schedule["rrule"], dtstart=_wall(schedule["start"]))
    except (ValueError, TypeError) as exc:
        raise ValidationError("Invalid input.", {"schedule": {"rrule": [str(exc)]}}) from None
    if getattr(rule, "_count", None) is None and getattr(rule, "_until", None) is None:
        raise ValidationError("Invalid input.", {"schedule": {"rrule": [
            "Give COUNT or UNTIL: a commitment has an end."]}})
    duration = timedelta(minutes=schedule["duration_minutes"])
    sessions = []
    for n, start in enumerate(rule, start=1):
        if n > MAX_SESSIONS:
            raise ValidationError("Invalid input.", {"schedule": {"rrule": [
                f"More than {MAX_SESSIONS} sessions."]}})
        begins = _utc(start, zone)  # the end is elapsed time, even across a DST change
        sessions.append({"session_id": f"s{n}", "start": begins, "end": begins + duration,
                         "status": "scheduled"})
    if not sessions:
        raise ValidationError("Invalid input.", {"schedule": {"rrule": ["No sessions."]}})
    return sessions


# The parts volunteering schedules need. Others (BYMONTH with BYMONTHDAY, BYYEARDAY...)
# can describe rules that never match, and dateutil then searches to year 9999 while
# the whole eventlet process waits.
RRULE_PARTS = frozenset({"FREQ", "INTERVAL", "COUNT", "UNTIL", "BYDAY", "BYMONTHDAY", "WKST"})
RRULE_FREQS = frozenset({"DAILY", "WEEKLY", "MONTHLY"})


_RRULE_TEXT = re.compile(r"[A-Za-z0-9=;,:+\-]{1,300}")


def _check_rrule(text: str) -> None:
    def refuse(message: str) -> ValidationError:
        return ValidationError("Invalid input.", {"schedule": {"rrule": [message]}})

    if not _RRULE_TEXT.fullmatch(text):  # no spaces, newlines or controls stored with it
        raise refuse("Write the rule with letters, digits and = ; , : + - only.")
    body = text.upper().removeprefix("RRULE:")
    try:
        parts = dict(part.split("=", 1) for part in body.split(";") if part)
    except ValueError:
        raise refuse("Write the rule as NAME=VALUE pairs separated by ';'.") from None
    unknown = sorted(set(parts) - RRULE_PARTS)
    if unknown:
        raise refuse(f"Unsupported part(s) {', '.join(unknown)}; use "
                     f"{', '.join(sorted(RRULE_PARTS))}.")
    if parts.get("FREQ") not in RRULE_FREQS:
        raise refuse("FREQ must be DAILY, WEEKLY or MONTHLY.")
    if not parts.get("INTERVAL", "1").isdigit() or not 1 <= int(parts.get("INTERVAL", "1")) <= 52:
        raise refuse("INTERVAL must be 1 to 52.")


def schedule_bounds(schedule: Mapping[str, Any], timezone: str,
                    sessions: list[dict[str, Any]]) -> tuple[datetime | None, datetime]:
    """(first start, end after which the task expires if nobody completed it)."""
    if sessions:
        return sessions[0]["start"], sessions[-1]["end"]
    return None, _utc(schedule["due"], ZoneInfo(timezone))


# -- tasks -------------------------------------------------------------------------------
def is_org_member(caller: Caller, org_id: str) -> bool:
    """A coordinator of this organisation (or a platform admin)."""
    return caller.is_admin or (org_id in caller.org_ids and caller.has_any(COORDINATOR))


def require_org_member(caller: Caller, org_id: str) -> None:
    if not is_org_member(caller, org_id):
        raise Forbidden("Not allowed.", {"organisation_id": [
            "Only a coordinator of this organisation may."]})


def task_snapshot(task: Mapping[str, Any]) -> dict[str, Any]:
    """The public view of a task in events (partners receive it too)."""
    keys = ("organisation_id", "title", "description", "category", "urgency", "mode",
            "location", "radius_km", "timezone", "required_skills", "languages",
            "skills_practised", "estimated_hours", "vetting_required", "slots", "free",
            "status", "version", "starts_at", "ends_at")
    snap = {k: task.get(k) for k in keys}
    snap["task_id"] = task["_id"]
    snap["sessions"] = [{"session_id": s["session_id"], "start": s["start"].isoformat(),
                         "end": s["end"].isoformat(), "status": s["status"]}
                        for s in task.get("sessions", [])]
    for key in ("starts_at", "ends_at"):
        if isinstance(snap[key], datetime):
            snap[key] = snap[key].isoformat()
    snap["schedule"] = stored_schedule(task.get("schedule") or {})
    return snap


def _derived(data: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    sessions = expand_schedule(data["schedule"], data["timezone"])
    starts_at, ends_at = schedule_bounds(data["schedule"], data["timezone"], sessions)
    if ends_at <= now:
        raise ValidationError("Invalid input.", {"schedule": ["Ends in the past."]})
    return {"schedule": stored_schedule(data["schedule"]), "sessions": sessions,
            "starts_at": starts_at, "ends_at": ends_at,
            # epoch ms beside the date: the expiry timer's range query stays on an index
            # on nx-27017, where a datetime range with a status filter scans
            "ends_at_ms": int(ends_at.timestamp() * 1000),
            "skill_ids": sorted({s["skill_id"] for s in data["required_skills"]}),
            "language_codes": sorted(set(data["languages"]))}


def new_task(task_id: str, data: Mapping[str, Any], caller: Caller, now: datetime
             ) -> dict[str, Any]:
    """A draft: nothing is published until `publish`."""
    require_org_member(caller, data["organisation_id"])
    return {"_id": task_id, **data, **_derived(data, now), "status": "draft", "version": 1,
            "free": data["slots"], "holders": [], "waitlist": [], "slots_rev": 0,
            "created_by": caller.user_id,
            "created_at": now, "updated_at": now}


def transition(task: Mapping[str, Any], to: str) -> None:
    if to not in TASK_TRANSITIONS[task["status"]]:
        raise Conflict(f"A {task['status']} task cannot become {to}.",
                       {"status": [f"{task['status']} -> {to} is not allowed."]})


def publish(task: Mapping[str, Any], org_status: str | None, now: datetime) -> Change:
    if task["status"] != "draft":
        raise Conflict(f"A {task['status']} task is already published.",
                       {"status": [task["status"]]})
    transition(task, "open")
    if org_status != "verified":
        raise Conflict("Only a verified organisation publishes tasks.",
                       {"organisation_id": [f"Organisation is {org_status or 'unknown'}."]})
    if task["ends_at"] <= now:
        raise Conflict("This task's schedule is already over.", {"schedule": ["In the past."]})
    after = {**task, "status": "open", "version": task["version"] + 1}
    return Change(set={"status": "open", "published_at": now, "updated_at": now},
                  events=[DomainEvent(events.TASK_PUBLISHED, task["_id"],
                                      {"task": task_snapshot(after)})])


def update_task(task: Mapping[str, Any], data: Mapping[str, Any], now: datetime) -> Change:
    if task["status"] not in EDITABLE:
        raise Conflict(f"A {task['status']} task cannot be edited.", {"status": [task["status"]]})
    if "schedule" in data:
        data = {**data, "schedule": stored_schedule(data["schedule"])}
    merged = {**task, **data}
    changes = {k: v for k, v in data.items() if task.get(k) != v}
    if "schedule" in changes or "timezone" in changes or "required_skills" in changes \
            or "languages" in changes:
        changes.update(_derived(merged, now))
    if "slots" in changes:
        taken = task["slots"] - task["free"]
        if changes["slots"] < taken:
            raise Conflict("Fewer slots than volunteers already holding one.",
                           {"slots": [f"{taken} are taken."]})
        changes["free"] = changes["slots"] - taken
    if not changes:
        return Change()
    changes["updated_at"] = now
    after = {**merged, **changes, "version": task["version"] + 1}
    evts = []
    if task["status"] != "draft":
        evts.append(DomainEvent(events.TASK_UPDATED, task["_id"],
                                {"task": task_snapshot(after),
                                 "changed": sorted(k for k in data if k in changes)}))
    return Change(set=changes, events=evts)


def end_task(task: Mapping[str, Any], to: str, reason: str | None, now: datetime) -> Change:
    """cancelled, completed or expired: sessions still ahead are cancelled too."""
    transition(task, to)
    event_type = {"cancelled": events.TASK_CANCELLED, "completed": events.TASK_COMPLETED,
                  "expired": events.TASK_EXPIRED}[to]
    sessions = [{**s, "status": "cancelled"} if s["status"] == "scheduled" and s["start"] > now
                and to != "completed" else s for s in task.get("sessions", [])]
    after = {**task, "status": to, "sessions": sessions, "version": task["version"] + 1}
    return Change(set={"status": to, "sessions": sessions, "status_reason": reason,
                       "updated_at": now, "ended_at": now,
                       "ends_at_ms": None},  # off the expiry timer's index range
                  events=[DomainEvent(event_type, task["_id"], {"task": task_snapshot(after),
                                                                "reason": reason})])


def flip(task: Mapping[str, Any], to: str) -> Change:
    """filled (no slot left), open again (one freed) or in_progress (a volunteer started):
    written by the store only while the task is in `FLIPS_FROM[to]`, so each happens once."""
    event = {"filled": fill_event, "open": reopen_event,
             "in_progress": lambda t: start_event(t["_id"])}[to](task)
    return Change(set={"status": to}, events=[event])


def fill_event(task: Mapping[str, Any]) -> DomainEvent:
    return DomainEvent(events.TASK_FILLED, task["_id"],
                       {"task_id": task["_id"], "slots": task["slots"]})


def start_event(task_id: str) -> DomainEvent:
    """The first volunteer started: the task is in progress."""
    return DomainEvent(events.TASK_STARTED, task_id, {"task_id": task_id})


def reopen_event(task: Mapping[str, Any]) -> DomainEvent:
    return DomainEvent(events.TASK_REOPENED, task["_id"],
                       {"task_id": task["_id"], "free": task["free"]})


# -- search --------------------------------------------------------------------------------
def answers(task: Mapping[str, Any], search: Mapping[str, Any]) -> bool:
    """Whether a task, as it is now, answers a search (search_tasks' loaded filters): the
    search index proposes tasks from their last event, this decides."""
    starts = task.get("starts_at")
    return (task["status"] == search["status"]
            and (not search.get("skill_id") or search["skill_id"] in task["skill_ids"])
            and (not search.get("language") or search["language"] in task["language_codes"])
            and all(not search.get(name) or task.get(name) == search[name]
                    for name in ("urgency", "mode", "organisation_id"))
            and (not search.get("starts_after")
                 or (starts is not None and starts >= search["starts_after"]))
            and (not search.get("starts_before")
                 or (starts is not None and starts < search["starts_before"])))


# -- volunteers and eligibility ----------------------------------------------------------
def check_eligible(task: Mapping[str, Any], volunteer: Mapping[str, Any] | None) -> None:
    """Hard rules for taking a slot: an active volunteer with vetting valid to the end."""
    if volunteer is None or volunteer.get("status") != "active":
        raise Conflict("This volunteer cannot take tasks now.",
                       {"volunteer_id": ["Not an active volunteer."]})
    last_day: date = task["ends_at"].date()
    problems = []
    for kind in task.get("vetting_required", []):
        check = (volunteer.get("vetting") or {}).get(kind) or {}
        until = check.get("valid_until")
        if check.get("state") != "cleared":
            problems.append(f"{kind} vetting is {check.get('state', 'missing')}.")
        elif until is not None and date.fromisoformat(until) < last_day:
            problems.append(f"{kind} vetting expires {until}, before the task ends.")
    if problems:
        raise Conflict("Vetting required by this task is not valid.", {"vetting": problems})


def vetting_gaps(volunteer: Mapping[str, Any] | None) -> list[str] | None:
    """The vetting kinds a task must not require for this volunteer to take it whatever
    its dates: all but those cleared without expiry. None: no task at all (not active).

    A sign-up puts them in its claim's condition, so the one conditional update that
    takes the slot also keeps the vetting rule; a task that needs more is decided by
    `check_eligible` on a full read."""
    if volunteer is None or volunteer.get("status") != "active":
        return None
    vetting = volunteer.get("vetting") or {}
    return [kind for kind in VETTING_KINDS
            if (vetting.get(kind) or {}).get("state") != "cleared"
            or (vetting.get(kind) or {}).get("valid_until") is not None]


def require_self(caller: Caller, volunteer_id: str) -> None:
    if not (caller.is_admin or caller.user_id == volunteer_id):
        raise Forbidden("Not allowed.", {"volunteer_id": ["Only that volunteer may."]})


# -- assignments -------------------------------------------------------------------------
def live_key(task_id: str, volunteer_id: str) -> str:
    return f"{task_id}:{volunteer_id}"


def new_assignment(assignment_id: str, task: Mapping[str, Any], volunteer_id: str,
                   status: str, now: datetime, **extra: Any) -> dict[str, Any]:
    return {"_id": assignment_id, "task_id": task["_id"], "volunteer_id": volunteer_id,
            "organisation_id": task["organisation_id"], "status": status,
            "live_key": live_key(task["_id"], volunteer_id), "version": 1, "hours": [],
            "history": [{"status": status, "at": now}], "created_at": now,
            "updated_at": now, **extra}


def move(assignment: Mapping[str, Any], to: str, now: datetime, **fields: Any
         ) -> dict[str, Any]:
    """Fields to $set for a transition; refuses what the table does not allow."""
    if to not in ASSIGNMENT_TRANSITIONS[assignment["status"]]:
        raise Conflict(f"A {assignment['status']} assignment cannot become {to}.",
                       {"status": [f"{assignment['status']} -> {to} is not allowed."]})
    history = [*assignment.get("history", []), {"status": to, "at": now}][-50:]
    return {"status": to, "history": history, "updated_at": now, **fields}


def assignment_change(assignment: Mapping[str, Any], to: str, now: datetime, *,
                      unset: Iterable[str] = (), event: Mapping[str, Any] | None = None,
                      **fields: Any) -> Change:
    """A transition the table allows, announced with the event of the state entered
    (`event`: extra event data); `fields` are set with it."""
    return Change(set=move(assignment, to, now, **fields), unset=tuple(unset),
                  events=[assignment_event(ANNOUNCED_AS[to], assignment, **(event or {}))])


def created(assignment: Mapping[str, Any], **data: Any) -> DomainEvent:
    """The event announcing a new assignment in its first state."""
    return assignment_event(ANNOUNCED_AS[assignment["status"]], assignment, **data)


def assignment_event(event_type: str, assignment: Mapping[str, Any], **data: Any
                     ) -> DomainEvent:
    payload = {"assignment_id": assignment["_id"], "task_id": assignment["task_id"],
               "volunteer_id": assignment["volunteer_id"],
               "organisation_id": assignment["organisation_id"], **data}
    return DomainEvent(event_type, assignment["_id"], payload)


def submit_hours(assignment: Mapping[str, Any], task: Mapping[str, Any], hours: float,
                 session_id: str | None, note: str | None, now: datetime) -> Change:
    if assignment["status"] not in ("accepted", "active"):
        raise Conflict("Hours are logged on an accepted assignment.",
                       {"status": [assignment["status"]]})
    sessions = {s["session_id"]: s for s in task.get("sessions", [])}
    if task["schedule"]["kind"] == "recurring":
        if session_id not in sessions:
            raise ValidationError("Invalid input.", {"session_id": [
                "Name the session these hours belong to."]})
        if any(h["session_id"] == session_id and h["status"] != "rejected"
               for h in assignment["hours"]):
            raise Conflict("Hours for this session are already logged.",
                           {"session_id": [session_id]})
        if sessions[session_id]["start"] > now:
            raise Conflict("That session has not started yet.", {"session_id": [session_id]})
    elif session_id is not None and session_id not in sessions:
        raise ValidationError("Invalid input.", {"session_id": ["No such session."]})
    entry = {"entry_id": f"h{len(assignment['hours']) + 1}", "session_id": session_id,
             "hours": hours, "note": note, "status": "submitted", "submitted_at": now}
    event = assignment_event(events.HOURS_SUBMITTED, assignment, entry_id=entry["entry_id"],
                             session_id=session_id, hours=hours)
    return Change(set={"hours": [*assignment["hours"], entry], "updated_at": now},
                  events=[event])


def decide_hours(assignment: Mapping[str, Any], task: Mapping[str, Any], entry_id: str,
                 verified: bool, reason: str | None, caller: Caller, now: datetime
                 ) -> Change:
    entries = [dict(h) for h in assignment["hours"]]
    entry = next((h for h in entries if h["entry_id"] == entry_id), None)
    if entry is None:
        raise ValidationError("Invalid input.", {"entry_id": ["No such hours entry."]})
    if entry["status"] != "submitted":
        raise Conflict(f"These hours are already {entry['status']}.", {"entry_id": [entry_id]})
    entry.update(status="verified" if verified else "rejected", decided_at=now,
                 decided_by=caller.user_id, reason=reason)
    if verified:
        event = assignment_event(events.HOURS_VERIFIED, assignment, entry_id=entry_id,
                                 session_id=entry["session_id"], hours=entry["hours"],
                                 skills_practised=list(task.get("skills_practised", [])),
                                 credit_id=f"{assignment['_id']}:{entry_id}")
    else:
        # the coordinator's reason is free text about a person: it stays on the
        # assignment (erased with the volunteer), not in an event partners keep
        event = assignment_event(events.HOURS_REJECTED, assignment, entry_id=entry_id,
                                 session_id=entry["session_id"])
    return Change(set={"hours": entries, "updated_at": now,
                       "verified_hours": verified_hours({"hours": entries})}, events=[event])


def leave_feedback(assignment: Mapping[str, Any], by: str, feedback: Mapping[str, Any],
                   now: datetime) -> Change:
    """A rating (and comment) from the volunteer or the organisation, once each."""
    if assignment["status"] != "completed":
        raise Conflict("Feedback is left after completion.",
                       {"status": [assignment["status"]]})
    if (assignment.get("feedback") or {}).get(by):
        raise Conflict("Feedback already left.", {"by": [by]})
    event = assignment_event(events.FEEDBACK_LEFT, assignment, by=by,
                             rating=feedback["rating"])
    return Change(set={f"feedback.{by}": {**feedback, "at": now}}, events=[event])


def verified_hours(assignment: Mapping[str, Any]) -> float:
    return sum(h["hours"] for h in assignment.get("hours", []) if h["status"] == "verified")


def eligible_first(waitlist: Iterable[str], volunteers: Mapping[str, Mapping[str, Any]],
                   task: Mapping[str, Any]) -> str | None:
    """The first volunteer on the waitlist who may take the slot now."""
    for volunteer_id in waitlist:
        try:
            check_eligible(task, volunteers.get(volunteer_id))
        except Conflict:
            continue
        return volunteer_id
    return None
