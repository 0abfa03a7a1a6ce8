"""Time zones from the pinned `tzdata` package, never the operating system's database.

Two workers with different OS zone files would compute different local times for the same history and fail replay,
so every zone comes from the `tzdata` wheel pinned in the lock (a tzdata upgrade is a deliberate change, guarded by
the replay tests; see the README's Versioning section). The zone files are read once, when this module is imported:
the workflow sandbox refuses `open()` inside a workflow, and 600 small files (~350 KB) cost less than a lookup that
works in one process and fails in another.

Also here: reading a local date-time typed without an offset (refusing one inside a daylight-saving gap) and
showing a moment as local time with the zone's abbreviation.
"""

from __future__ import annotations

import difflib
import io
from datetime import UTC, date, datetime, time, tzinfo
from functools import cache
from importlib import resources
from zoneinfo import ZoneInfo

_TZDATA = resources.files("tzdata")
ZONE_NAMES: tuple[str, ...] = tuple(sorted(_TZDATA.joinpath("zones").read_text().split()))
_ZONE_FILES = {name: _TZDATA.joinpath("zoneinfo", *name.split("/")).read_bytes() for name in ZONE_NAMES}
_BY_LOWER = {name.lower(): name for name in ZONE_NAMES}


class UnknownZone(ValueError):
    """A zone name tzdata does not know; the message suggests the nearest names."""


def is_known(name: str) -> bool:
    return name in _ZONE_FILES


def zone(name: str) -> ZoneInfo:
    """The zone of that IANA name (`America/New_York`), from the pinned tzdata."""
    if name not in _ZONE_FILES:
        raise UnknownZone(unknown_zone_message(name))
    return _zone(name)


@cache
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo.from_file(io.BytesIO(_ZONE_FILES[name]), key=name)


def unknown_zone_message(name: str) -> str:
    """`unknown time zone 'America/NewYork' (did you mean America/New_York?)`: the nearest names by spelling,
    and the right capitalisation first, so a typo costs one glance."""
    shown = name if len(name) <= 40 else name[:37] + "..."
    exact = _BY_LOWER.get(name.lower())
    near = [exact] if exact else difflib.get_close_matches(name, ZONE_NAMES, n=3, cutoff=0.6)
    if not near:
        tail = name.rsplit("/", 1)[-1].lower()
        near = [z for z in ZONE_NAMES if z.rsplit("/", 1)[-1].lower() == tail][:3]
    hint = f" (did you mean {' or '.join(near)}?)" if near else " (use an IANA name such as America/New_York)"
    return f"unknown time zone {shown!r}{hint}"


def localize(naive: datetime, tz: tzinfo) -> datetime:
    """A wall-clock time typed in `tz` as an aware moment. A time that does not exist there (the hour skipped when
    clocks go forward) is refused: guessing would book a meeting an hour off. A time that exists twice (the hour
    repeated when clocks go back) is the first of the two, as calendars and CRMs read it."""
    moment = naive.replace(tzinfo=tz, fold=0)
    if moment.astimezone(UTC).astimezone(tz).replace(tzinfo=None) != naive:
        raise ValueError(
            f"{naive.isoformat(timespec='minutes')} does not exist in {tz}: the clocks skip that hour for daylight "
            "saving; give a time before or after it, or an offset"
        )
    return moment


def wall(day: date, at: time, tz: tzinfo) -> datetime:
    """That local date and time as an aware moment; inside a daylight-saving gap it is the moment the clocks jump
    to (02:30 on the night clocks go from 02:00 to 03:00 is 03:30), so arithmetic on dates never fails."""
    moment = datetime.combine(day, at, tzinfo=tz)
    return moment.astimezone(UTC).astimezone(tz)


def show(moment: datetime, tz: tzinfo, fmt: str = "%Y-%m-%d %H:%M %Z") -> str:
    """A moment as the people in `tz` read it: `2027-03-15 09:00 EDT`."""
    return moment.astimezone(tz).strftime(fmt)
