"""VTIMEZONE components (RFC 5545 §3.6.5) built from the tz database through `zoneinfo`.

icalendar's generated zones write each observance's DTSTART as the wall time after the
change, but RFC 5545 reads DTSTART with TZOFFSETFROM, the offset before it: every
daylight-saving onset came out one hour late. Here each observance is one transition of
the zone, its DTSTART the local wall time just before the change.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from icalendar import Timezone, TimezoneDaylight, TimezoneStandard

# Sampling step for finding transitions: tzdata has none closer together than weeks.
STEP = timedelta(hours=12)
LOOKBACK = timedelta(days=366)

Observance = tuple[timedelta, timedelta, str | None, bool]  # from, to, name, is daylight


def _state(zone: ZoneInfo, instant: datetime) -> tuple[timedelta, str | None, bool]:
    local = instant.astimezone(zone)
    return local.utcoffset() or timedelta(0), local.tzname(), bool(local.dst())


@lru_cache(maxsize=256)
def transitions(name: str, start: datetime, end: datetime
                ) -> tuple[tuple[datetime, Observance], ...]:
    """Each change of offset, name or daylight flag up to `end`, by its UTC instant.

    The first entry is the last change before `start` (within a year), so that the
    observance in force at `start` has its true TZOFFSETFROM: parsers such as dateutil
    take its daylight saving amount from TZOFFSETTO - TZOFFSETFROM. A zone with no change
    in that year starts with its state at `start`, from and to offsets equal.
    """
    zone = ZoneInfo(name)
    offset, abbr, dst = _state(zone, start)
    found: list[tuple[datetime, Observance]] = [(start, (offset, offset, abbr, dst))]
    before = start - LOOKBACK
    at = _state(zone, before)
    while before < end:
        after = min(before + STEP, end)
        if _state(zone, after) != at:
            high = _bisect(zone, before, after, at)
            new = _state(zone, high)
            if high <= start:
                found = []
            found.append((high, (at[0], new[0], new[1], new[2])))
            at = new
        before = after
    return tuple(found)


def _bisect(zone: ZoneInfo, low_at: datetime, high_at: datetime,
            state: tuple[timedelta, str | None, bool]) -> datetime:
    """The first whole second after `low_at` whose state is not `state` (tzdata instants
    are whole seconds)."""
    low, high = int(low_at.timestamp()), int(high_at.timestamp())
    while high - low > 1:
        mid = (low + high) // 2
        if _state(zone, datetime.fromtimestamp(mid, UTC)) == state:
            low = mid
        else:
            high = mid
    return datetime.fromtimestamp(high, UTC)


def vtimezone(name: str, first: datetime, last: datetime) -> Timezone:
    """The zone's VTIMEZONE covering UTC instants from `first` to `last`."""
    tz = Timezone()
    tz.add("TZID", name)
    for instant, (before, after, abbr, daylight) in transitions(
            name, first.astimezone(UTC), last.astimezone(UTC)):
        part = TimezoneDaylight() if daylight else TimezoneStandard()
        # The wall time of the instant read with the offset in force until then.
        part.add("DTSTART", (instant + before).replace(tzinfo=None))
        part.add("TZOFFSETFROM", before)
        part.add("TZOFFSETTO", after)
        if abbr:
            part.add("TZNAME", abbr)
        tz.add_component(part)
    return tz
