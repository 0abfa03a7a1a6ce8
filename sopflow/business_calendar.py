"""The lifecycle's clock: local days, business days and hours, holidays, end of (business) day, send windows.

Every rule that turns a duration into a moment goes through a `Clock`, built from the pinned playbook and the deal
(`Clock.of`). A playbook without a `timezone` gets the UTC clock, whose arithmetic is exactly the rules from before
zones existed (`Duration.after`), so running lifecycles and recorded histories keep their moments. With a zone:

- days, weeks, months and years are local calendar units: a day later is the same local time the next day (23 or
  25 hours across a daylight-saving switch); hours, minutes and seconds are exact elapsed time. A local time that
  a switch skips moves to the time the clocks jump to.
- `3bd` is the same local time on the third working day after (a working day: one of `working_days`, not a holiday);
  `4bh` counts only working hours, so 16:00 + 4bh is 11:00 the next working day with 09:00-17:00 hours.
- `end_of_day` is 23:59:59 local; `end_of_business_day` is today's closing time if that is still ahead on a working
  day, otherwise the next working day's.
- `hold` moves a notice outside the send window to the window's next opening.

All moments come out in UTC, which is what the state stores.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import lru_cache
from typing import Any

import holidays as holiday_data

from sopflow.durations import Duration, add_months
from sopflow.playbook import WEEKDAYS, BusinessCalendar, Playbook
from sopflow.zones import is_known, wall, zone

END_OF_DAY = time(23, 59, 59)
# No calendar has ten years without a working day; the bound turns a bug into an error instead of a hang.
_MAX_DAYS_SCANNED = 3660

# The `holidays` package reads its translation files when it builds a year, and the workflow sandbox refuses
# `open()`: the workflow sets this to Temporal's `sandbox_unrestricted` (the data read is pinned with the code).
holiday_guard: Callable[[], AbstractContextManager[Any]] = nullcontext


@lru_cache(maxsize=512)
def public_holidays(country: str, subdivision: str | None, year: int) -> frozenset[date]:
    """A country's (and subdivision's) public holidays in one year, observed days included, from the pinned
    `holidays` package. Raises NotImplementedError for a country or subdivision it does not know."""
    with holiday_guard():
        return frozenset(holiday_data.country_holidays(country, subdiv=subdivision, years=year))


def check_holidays(country: str, subdivision: str | None) -> str | None:
    """Why `holidays` cannot give this country/subdivision's holidays, or None when it can."""
    supported = holiday_data.list_supported_countries()
    if country not in supported:
        return f"unknown holiday country {country!r} (an ISO 3166 code such as US, GB, DE)"
    subdivisions = supported[country]
    if subdivision is not None and subdivision not in subdivisions:
        near = ", ".join(subdivisions[:12]) + (", ..." if len(subdivisions) > 12 else "")
        return f"unknown subdivision {subdivision!r} of {country} (known: {near or 'none'})"
    return None


def zone_field(playbook: Playbook) -> str | None:
    """The deal field that holds a deal's own zone (the playbook's `timezone_field` without `deal.`), if any."""
    return playbook.timezone_field.split(".", 1)[1] if playbook.timezone_field is not None else None


@dataclass(frozen=True)
class Clock:
    tz: tzinfo = UTC
    calendar: BusinessCalendar | None = None
    # False: the UTC rules of playbooks without a zone, kept exactly for lifecycles started on them.
    zoned: bool = False
    _days_off: dict[int, frozenset[date]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, playbook: Playbook, fields: dict[str, Any]) -> Clock:
        """The clock of one deal: the playbook's zone, or the deal's own (`timezone_field`) when it is set."""
        if playbook.timezone is None:
            return UTC_CLOCK
        name = playbook.timezone
        key = zone_field(playbook)
        if key is not None:
            own = fields.get(key)
            if isinstance(own, str) and is_known(own):
                name = own
        calendar = playbook.calendar or _DEFAULT_CALENDAR
        cached = _CLOCKS.get((name, id(calendar)))
        if cached is None or cached.calendar is not calendar:
            if len(_CLOCKS) >= _CLOCKS_KEPT:  # decoded playbooks come and go with the workflow cache
                _CLOCKS.clear()
            cached = _CLOCKS[(name, id(calendar))] = Clock(tz=zone(name), calendar=calendar, zoned=True)
        return cached

    @classmethod
    def input_zone(cls, playbook: Playbook, fields: dict[str, Any], incoming: dict[str, Any]) -> tzinfo | None:
        """The zone a request's date-times without an offset are read in: the deal's, or the one the same request
        sets (a CRM deal created with its zone and a meeting time at once); None for a playbook without a zone."""
        if playbook.timezone is None:
            return None
        merged = dict(fields)
        key = zone_field(playbook)
        if key is not None and isinstance(incoming.get(key), str):
            merged[key] = incoming[key].strip()
        return cls.of(playbook, merged).tz

    @property
    def name(self) -> str:
        return str(self.tz)

    # --- durations ------------------------------------------------------------------------------------------

    def after(self, span: Duration, moment: datetime) -> datetime:
        if not self.zoned:
            return span.after(moment)
        if span.is_business:
            return self._business(moment, span, 1)
        return self._shift(moment, span.months, span.days) + timedelta(seconds=span.seconds)

    def before(self, span: Duration, moment: datetime) -> datetime:
        if not self.zoned:
            return span.before(moment)
        if span.is_business:
            return self._business(moment, span, -1)
        return self._shift(moment, -span.months, -span.days) - timedelta(seconds=span.seconds)

    def _business(self, moment: datetime, span: Duration, sign: int) -> datetime:
        """Business days first, then business hours (`1bd4bh`), forward (sign 1) or back (-1)."""
        if span.business_days:
            moment = self._business_days(moment, sign * span.business_days)
        if span.business_hours:
            moment = self._business_hours(moment, sign * span.business_hours)
        return moment

    def _shift(self, moment: datetime, months: int, days: int) -> datetime:
        local = self.local(moment)
        moved = add_months(local.replace(tzinfo=None), months) + timedelta(days=days)
        return wall(moved.date(), moved.time(), self.tz).astimezone(UTC)

    # --- days -----------------------------------------------------------------------------------------------

    def local(self, moment: datetime) -> datetime:
        return moment.astimezone(self.tz)

    def local_date(self, moment: datetime) -> date:
        return self.local(moment).date()

    def days_off(self, year: int) -> frozenset[date]:
        if year not in self._days_off:
            spec = self.calendar.holidays if self.calendar else None
            found: set[date] = set()
            if spec is not None:
                found.update(day for day in spec.extra if day.year == year)
                if spec.country is not None:
                    found.update(public_holidays(spec.country, spec.subdivision, year))
            self._days_off[year] = frozenset(found)
        return self._days_off[year]

    def is_working_day(self, day: date) -> bool:
        working = self.calendar.working_days if self.calendar else WEEKDAYS
        return WEEKDAYS[day.weekday()] in working and day not in self.days_off(day.year)

    def next_working_day(self, day: date, step: int = 1) -> date:
        """The first working day after `day` (before it, with step -1)."""
        for _ in range(_MAX_DAYS_SCANNED):
            day += timedelta(days=step)
            if self.is_working_day(day):
                return day
        raise ValueError(f"no working day within ten years of {day}")

    def _hours(self) -> tuple[time, time]:
        hours = (self.calendar or BusinessCalendar()).working_hours
        return hours.start, hours.end

    # --- due forms ------------------------------------------------------------------------------------------

    def end_of_day(self, moment: datetime) -> datetime:
        return wall(self.local_date(moment), END_OF_DAY, self.tz).astimezone(UTC)

    def end_of_business_day(self, moment: datetime) -> datetime:
        """ "The same day": today's closing time if the moment is on a working day before it closes (before opening
        counts), otherwise the next working day's closing time."""
        local, (_, close) = self.local(moment), self._hours()
        day = local.date()
        if not (self.is_working_day(day) and local.time() <= close):
            day = self.next_working_day(day)
        return wall(day, close, self.tz).astimezone(UTC)

    def due_on(self, day: date) -> datetime:
        """A date-only due date ("visit due on the 12th", a launch day): the close of business that local date."""
        return wall(day, self._hours()[1], self.tz).astimezone(UTC)

    def on_date(self, day: date, like: datetime) -> datetime:
        """A date field read as a moment: with a zone, that local date's close of business (a date is a day, not
        an instant); without one, that day at the time of `like` in UTC, as before zones existed."""
        if self.zoned:
            return self.due_on(day)
        return datetime.combine(day, like.timetz())

    # --- send window ----------------------------------------------------------------------------------------

    def hold(self, moment: datetime) -> datetime:
        """The moment itself inside the send window (both ends included: a task due at the 17:00 close is reported
        at 17:00), else the window's next opening."""
        window = self.calendar.send_window if self.zoned and self.calendar else None
        if window is None:
            return moment
        local = self.local(moment)
        day = local.date()

        def open_on(candidate: date) -> bool:
            return window.days == "every_day" or self.is_working_day(candidate)

        if open_on(day) and window.start <= local.time() <= window.end:
            return moment
        if not (open_on(day) and local.time() < window.start):
            for _ in range(_MAX_DAYS_SCANNED):
                day += timedelta(days=1)
                if open_on(day):
                    break
        return wall(day, window.start, self.tz).astimezone(UTC)

    # --- business days and hours ----------------------------------------------------------------------------

    def _business_days(self, moment: datetime, count: int) -> datetime:
        local = self.local(moment)
        day, step = local.date(), 1 if count > 0 else -1
        for _ in range(abs(count)):
            day = self.next_working_day(day, step)
        return wall(day, local.time().replace(tzinfo=None), self.tz).astimezone(UTC)

    def _business_hours(self, moment: datetime, count: int) -> datetime:
        """Walk working hours forward (or back) from the moment; a moment outside them starts at the next opening
        (or, backwards, the previous close)."""
        opening, close = self._hours()
        local = self.local(moment).replace(tzinfo=None)
        remaining = timedelta(hours=abs(count))
        day, at = local.date(), local.time()
        forward = count > 0
        for _ in range(_MAX_DAYS_SCANNED):
            if forward:
                if not self.is_working_day(day) or at >= close:
                    day, at = self.next_working_day(day), opening
                at = max(at, opening)
                available = _between(day, at, close)
                if remaining <= available:
                    end = datetime.combine(day, at) + remaining
                    return wall(end.date(), end.time(), self.tz).astimezone(UTC)
                remaining -= available
                day, at = self.next_working_day(day), opening
            else:
                if not self.is_working_day(day) or at <= opening:
                    day, at = self.next_working_day(day, -1), close
                at = min(at, close)
                available = _between(day, opening, at)
                if remaining <= available:
                    start = datetime.combine(day, at) - remaining
                    return wall(start.date(), start.time(), self.tz).astimezone(UTC)
                remaining -= available
                day, at = self.next_working_day(day, -1), close
        raise ValueError(f"{count}bh from {moment} does not fit in ten years of working hours")


def _between(day: date, start: time, end: time) -> timedelta:
    return datetime.combine(day, end) - datetime.combine(day, start)


UTC_CLOCK = Clock()
_DEFAULT_CALENDAR = BusinessCalendar()
# One clock per zone and calendar object (a pinned playbook's, shared by its lifecycle's every step), so the days off
# of a year are computed once; public holidays are cached across calendars by `public_holidays`.
_CLOCKS: dict[tuple[str, int], Clock] = {}
_CLOCKS_KEPT = 1024
