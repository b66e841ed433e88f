"""A volunteer's sessions as an iCalendar feed (RFC 5545), for calendar apps to subscribe to.

Pure: the caller loads the volunteer's assignments with their tasks, passes the time in, and
serves the bytes at the volunteer's secret URL. Ended commitments stay in the feed as
CANCELLED events: a subscribed calendar only learns that an event is off by seeing it again
with that status; an event that just disappears is left standing in some apps.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from icalendar import Calendar, Event, vDuration
from icalendar.enums import STATUS

from services.common.vtimezone import vtimezone
from services.tasks.domain import ASSIGNMENT_TRANSITIONS, HOLDS_SLOT, LIVE

PRODID = "-//Sanad//Volunteering//EN"
REFRESH = timedelta(hours=1)
ENDED_TASK = frozenset({"cancelled", "expired"})
# declined, withdrawn, expired, no_show: the volunteer is no longer coming.
ENDED_ASSIGNMENT = frozenset(ASSIGNMENT_TRANSITIONS) - LIVE - {"completed"}
# Past commitments keep showing as they were kept.
CONFIRMED = HOLDS_SLOT | {"completed"}
# Clients that follow RFC 5546 ignore a copy whose SEQUENCE has not grown. Cancelling is the
# change that must not be missed and it is final (ended states are terminal), so 0 then 1.
SEQUENCE = {STATUS.CONFIRMED: 0, STATUS.TENTATIVE: 0, STATUS.CANCELLED: 1}


def volunteer_feed(entries: Iterable[Mapping[str, Any]], *, now: datetime,
                   calendar_name: str = "Sanad") -> bytes:
    """One VEVENT per session of each entry's task, with the VTIMEZONEs they name.

    An entry is `{"assignment_id", "assignment_status", "task"}`, optionally `"url"` (a
    link back to the task for the volunteer). Deadline tasks have no sessions, so no events.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    stamp = now.astimezone(UTC)
    cal = Calendar()
    cal.add("PRODID", PRODID)
    cal.add("VERSION", "2.0")
    cal.add("CALSCALE", "GREGORIAN")
    cal.add("METHOD", "PUBLISH")
    cal.add("X-WR-CALNAME", calendar_name)
    # RFC 7986 requires VALUE=DURATION here and icalendar's `refresh_interval` setter
    # leaves it out; X-PUBLISHED-TTL is the older name Outlook and Apple still read.
    cal.add("REFRESH-INTERVAL", REFRESH, parameters={"VALUE": "DURATION"})
    cal.add("X-PUBLISHED-TTL", vDuration(REFRESH))  # a bare timedelta would print "1:00:00"
    days: list[date] = []
    zones: set[str] = set()
    events: list[Event] = []
    for entry in entries:
        task = entry["task"]
        zone = ZoneInfo(task["timezone"])
        if task.get("sessions"):
            zones.add(task["timezone"])
        for session in task.get("sessions") or ():
            start, end = session["start"].astimezone(zone), session["end"].astimezone(zone)
            days += [start.date(), end.date()]
            events.append(_event(entry, session, start, end, stamp))
    if days:
        # Whole years around the sessions (not icalendar's 1970-2038 window, kilobytes per
        # zone on every hourly poll), so a zone with daylight saving keeps both STANDARD
        # and DAYLIGHT (Outlook expects the pair).
        first = datetime(min(days).year - 1, 12, 31, tzinfo=UTC)
        last = datetime(max(days).year + 1, 1, 2, tzinfo=UTC)
        for name in sorted(zones):
            cal.add_component(vtimezone(name, first, last))
    for event in events:  # after the zones they name, as calendar apps read them in order
        cal.add_component(event)
    return cal.to_ical()


def _event(entry: Mapping[str, Any], session: Mapping[str, Any], start: datetime,
           end: datetime, stamp: datetime) -> Event:
    task = entry["task"]
    status = _status(entry["assignment_status"], task["status"], session["status"])
    return Event.new(
        # Stable across renders, so a refresh updates the same event instead of adding one.
        uid=f"{entry['assignment_id']}-{session['session_id']}@sanad",
        stamp=stamp, start=start, end=end,
        summary=task["title"],
        description=(task.get("description") or "").strip() or None,
        location=_location(task),
        url=entry.get("url"),
        status=status, sequence=SEQUENCE[status])


def _status(assignment: str, task: str, session: str) -> STATUS:
    if session == "cancelled" or task in ENDED_TASK or assignment in ENDED_ASSIGNMENT:
        return STATUS.CANCELLED
    if assignment in CONFIRMED:
        return STATUS.CONFIRMED
    return STATUS.TENTATIVE  # applied, offered or waitlisted: not a commitment yet


def _location(task: Mapping[str, Any]) -> str | None:
    place = task.get("location") or {}
    if task.get("mode") not in ("onsite", "hybrid") or not place:
        return None
    return ", ".join(p for p in (place.get("region"), place.get("country")) if p) or None
