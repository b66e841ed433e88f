"""The feed's VTIMEZONEs read by an independent parser (dateutil's tzical), against zoneinfo.

Every transition of each zone over the feed's span: the UTC instant just before and just
after it must give zoneinfo's wall time and offset.
"""
from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from dateutil import tz

from services.tasks.calendar import volunteer_feed
from tests.unit.test_calendar import NOW, entry, sessions

ZONES = ["America/New_York", "Europe/Paris", "Asia/Beirut", "Australia/Sydney",
         "America/Santiago", "Pacific/Auckland", "Asia/Tokyo"]
SESSIONS = [datetime(2027, 3, 16, 15, tzinfo=UTC), datetime(2028, 10, 3, 15, tzinfo=UTC)]
SPAN = (datetime(2026, 12, 30, tzinfo=UTC), datetime(2029, 1, 3, tzinfo=UTC))


def parsed(zone: str) -> tz.tzical:
    raw = volunteer_feed([entry(timezone=zone, sessions=sessions(SESSIONS))], now=NOW)
    return tz.tzical(io.StringIO(raw.decode()))


def zoneinfo_transitions(zone: str) -> list[datetime]:
    """Found by zoneinfo hour by hour, independently of the code under test."""
    info, found = ZoneInfo(zone), []
    at = SPAN[0]
    while at < SPAN[1]:
        if (at + timedelta(hours=1)).astimezone(info).utcoffset() != at.astimezone(
                info).utcoffset():
            found.append(at + timedelta(hours=1))
        at += timedelta(hours=1)
    return found


@pytest.mark.parametrize("zone", ZONES)
def test_every_transition_matches_zoneinfo(zone: str) -> None:
    parser = parsed(zone).get(zone)
    info = ZoneInfo(zone)
    changes = zoneinfo_transitions(zone)
    if zone != "Asia/Tokyo":
        assert len(changes) >= 4  # both directions, both years
    probes = [c + d for c in changes for d in (timedelta(minutes=-1), timedelta(0),
                                              timedelta(minutes=30))]
    probes += [SPAN[0] + timedelta(days=d) for d in range(3, 730, 17)]
    for instant in probes:
        want, got = instant.astimezone(info), instant.astimezone(parser)
        assert (got.replace(tzinfo=None), got.utcoffset()) == (
            want.replace(tzinfo=None), want.utcoffset()), (zone, instant)


def test_new_york_onset_is_read_with_the_offset_before_it() -> None:
    """2027-03-14 07:00Z: 02:00 EST becomes 03:00 EDT, so DTSTART is 02:00 with -0500."""
    raw = volunteer_feed([entry(timezone="America/New_York")], now=NOW).decode()
    onset = raw.split("DTSTART:20270314T")[1].split("END:DAYLIGHT")[0]
    assert onset.startswith("020000\r\n")
    assert "TZOFFSETFROM:-0500\r\n" in onset and "TZOFFSETTO:-0400\r\n" in onset
