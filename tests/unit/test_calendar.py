"""The volunteer's iCalendar feed, read back with icalendar as a calendar app would."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from icalendar import Calendar

from services.tasks.calendar import volunteer_feed
from services.tasks.domain import expand_schedule

NOW = datetime(2027, 3, 1, 8, 0, tzinfo=UTC)
WEEKLY = {"kind": "recurring", "start": "2027-03-16T17:00",
          "rrule": "FREQ=WEEKLY;BYDAY=TU;COUNT=4", "duration_minutes": 90}
# 17:00 in Beirut is 15:00 UTC before the change on 28 March 2027 and 14:00 UTC after it.
STARTS = [datetime(2027, 3, 16, 15, tzinfo=UTC), datetime(2027, 3, 23, 15, tzinfo=UTC),
          datetime(2027, 3, 30, 14, tzinfo=UTC), datetime(2027, 4, 6, 14, tzinfo=UTC)]


def sessions(starts: list[datetime] = STARTS) -> list[dict[str, Any]]:
    return [{"session_id": f"s{n}", "start": s, "end": s + timedelta(minutes=90),
             "status": "scheduled"} for n, s in enumerate(starts, start=1)]


def task(**overrides: Any) -> dict[str, Any]:
    data = {"_id": "tsk_" + "1" * 28, "organisation_id": "org_" + "a" * 28,
            "title": "Homework club", "description": "Help with maths.\n",
            "status": "open", "mode": "onsite", "timezone": "Asia/Beirut",
            "location": {"country": "LB", "region": "Beirut"}, "sessions": sessions()}
    data.update(overrides)
    return data


def entry(status: str = "accepted", assignment_id: str = "asg_1", **task_overrides: Any
          ) -> dict[str, Any]:
    return {"assignment_id": assignment_id, "assignment_status": status,
            "task": task(**task_overrides)}


def feed(*entries: dict[str, Any]) -> Calendar:
    return Calendar.from_ical(volunteer_feed(entries, now=NOW))


def test_test_sessions_are_what_the_schedule_expands_to() -> None:
    assert sessions() == expand_schedule(WEEKLY, "Asia/Beirut")


def test_calendar_header_and_one_event_per_session() -> None:
    raw = volunteer_feed([entry()], now=NOW, calendar_name="Sanad — Rana")
    cal = Calendar.from_ical(raw)
    assert isinstance(raw, bytes)
    assert (cal["PRODID"], cal["VERSION"], cal["CALSCALE"], cal["METHOD"]) == (
        "-//Sanad//Volunteering//EN", "2.0", "GREGORIAN", "PUBLISH")
    assert cal["X-WR-CALNAME"] == "Sanad — Rana"
    assert b"REFRESH-INTERVAL;VALUE=DURATION:PT1H\r\n" in raw
    assert b"X-PUBLISHED-TTL:PT1H\r\n" in raw
    assert len(cal.events) == 4
    assert all(e.DTSTAMP == NOW for e in cal.events)
    assert {e["STATUS"] for e in cal.events} == {"CONFIRMED"}
    assert {e["SEQUENCE"] for e in cal.events} == {0}


def test_wall_time_stays_17_00_in_beirut_across_the_dst_change() -> None:
    raw = volunteer_feed([entry()], now=NOW)
    for day in ("20270316", "20270323", "20270330", "20270406"):
        assert f"DTSTART;TZID=Asia/Beirut:{day}T170000\r\n".encode() in raw
        assert f"DTEND;TZID=Asia/Beirut:{day}T183000\r\n".encode() in raw
    starts = [e.start for e in Calendar.from_ical(raw).events]
    assert [s.astimezone(UTC) for s in starts] == STARTS
    assert {s.utcoffset() for s in starts} == {timedelta(hours=2), timedelta(hours=3)}


def test_the_zone_used_is_described_by_a_vtimezone() -> None:
    cal = feed(entry())
    assert [tz["TZID"] for tz in cal.timezones] == ["Asia/Beirut"]
    assert cal.get_missing_tzids() == set()
    assert {c.name for c in cal.timezones[0].subcomponents} == {"STANDARD", "DAYLIGHT"}


def test_a_summer_only_feed_still_describes_both_observances() -> None:
    cal = feed(entry(sessions=sessions([datetime(2027, 7, 6, 14, tzinfo=UTC)])))
    assert {c.name for c in cal.timezones[0].subcomponents} == {"STANDARD", "DAYLIGHT"}
    assert cal.events[0].start.utcoffset() == timedelta(hours=3)


def test_two_zones_give_two_vtimezones() -> None:
    paris = [datetime(2027, 5, 4, 16, tzinfo=UTC)]
    cal = feed(entry(), entry(assignment_id="asg_2", timezone="Europe/Paris",
                              sessions=sessions(paris), mode="remote"))
    assert sorted(tz["TZID"] for tz in cal.timezones) == ["Asia/Beirut", "Europe/Paris"]
    assert len(cal.events) == 5


def test_a_cancelled_session_is_kept_as_cancelled_with_a_higher_sequence() -> None:
    data = entry()
    data["task"]["sessions"][1]["status"] = "cancelled"
    by_uid = {str(e["UID"]): e for e in feed(data).events}
    assert len(by_uid) == 4
    assert by_uid["asg_1-s2@sanad"]["STATUS"] == "CANCELLED"
    assert by_uid["asg_1-s2@sanad"]["SEQUENCE"] > by_uid["asg_1-s1@sanad"]["SEQUENCE"]
    assert by_uid["asg_1-s1@sanad"]["STATUS"] == "CONFIRMED"


@pytest.mark.parametrize("status", ["withdrawn", "declined", "expired", "no_show"])
def test_an_ended_assignment_cancels_all_its_events(status: str) -> None:
    cal = feed(entry(status), entry(assignment_id="asg_2", title="Other"))
    mine = [e for e in cal.events if str(e["UID"]).startswith("asg_1-")]
    assert len(mine) == 4
    assert {e["STATUS"] for e in mine} == {"CANCELLED"}
    assert {e["SEQUENCE"] for e in mine} == {1}
    others = [e for e in cal.events if str(e["UID"]).startswith("asg_2-")]
    assert {e["STATUS"] for e in others} == {"CONFIRMED"}


@pytest.mark.parametrize("status", ["cancelled", "expired"])
def test_an_ended_task_cancels_its_events(status: str) -> None:
    data = entry()
    data["task"]["status"] = status
    assert {e["STATUS"] for e in feed(data).events} == {"CANCELLED"}


def test_not_yet_accepted_is_tentative_and_completed_is_confirmed() -> None:
    assert {e["STATUS"] for e in feed(entry("offered")).events} == {"TENTATIVE"}
    assert {e["STATUS"] for e in feed(entry("completed")).events} == {"CONFIRMED"}


def test_arabic_title_round_trips() -> None:
    title = "نادي الواجبات المدرسية — بيروت"
    cal = feed(entry(title=title, description="  مساعدة في الرياضيات  "))
    assert {str(e["SUMMARY"]) for e in cal.events} == {title}
    assert {str(e["DESCRIPTION"]) for e in cal.events} == {"مساعدة في الرياضيات"}


def test_uids_and_bytes_are_stable_across_renders() -> None:
    first = volunteer_feed([entry()], now=NOW)
    again = volunteer_feed([entry()], now=NOW)
    assert first == again
    assert [str(e["UID"]) for e in Calendar.from_ical(first).events] == [
        f"asg_1-s{n}@sanad" for n in range(1, 5)]


def test_long_description_is_folded_and_still_parses() -> None:
    text = ("Bring a laptop. " * 20 + "أحضر حاسوبك. " * 20 + "\nSecond line; with, escapes").strip()
    raw = volunteer_feed([entry(description=text)], now=NOW)
    lines = raw.split(b"\r\n")
    assert all(len(line) <= 75 for line in lines)
    for line in lines:
        line.decode("utf-8")  # raises if a fold split a multi-byte character
    assert any(line.startswith(b" ") for line in lines)
    assert {str(e["DESCRIPTION"]) for e in Calendar.from_ical(raw).events} == {text}


def test_location_only_for_onsite_and_hybrid() -> None:
    assert {e["LOCATION"] for e in feed(entry()).events} == {"Beirut, LB"}
    assert {e["LOCATION"] for e in feed(entry(mode="hybrid", location={"country": "LB"})).events
            } == {"LB"}
    assert all("LOCATION" not in e for e in feed(entry(mode="remote")).events)


def test_url_is_optional() -> None:
    data = {**entry(), "url": "https://sanad.example/tasks/tsk_1"}
    assert {e["URL"] for e in feed(data).events} == {"https://sanad.example/tasks/tsk_1"}
    assert all("URL" not in e for e in feed(entry()).events)


def test_deadline_tasks_and_no_entries_give_a_valid_empty_calendar() -> None:
    cal = feed(entry(sessions=[]))
    assert cal.events == [] and cal.timezones == []
    assert Calendar.from_ical(volunteer_feed([], now=NOW))["METHOD"] == "PUBLISH"


def test_now_must_be_aware() -> None:
    with pytest.raises(ValueError, match="aware"):
        volunteer_feed([entry()], now=datetime(2027, 3, 1, 8, 0))
