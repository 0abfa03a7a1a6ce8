"""Durations as SOP authors write them (`14d`, `2w`, `1mo`, `36h`, `3bd`, `4bh`) and calendar arithmetic on them.

Months are calendar months, not 30 days, because "monthly site visit" means the same day next month. A day that
does not exist in the target month is clamped to its last day (Jan 31 + 1mo = Feb 28/29), the convention of
spreadsheets and CRMs users already know.

Days and weeks are kept apart from hours, minutes and seconds: in a playbook with a time zone a day is a calendar
day (the same local time the next day, 23 or 25 hours across a daylight-saving switch) while `1h` is always an
hour. Business days (`bd`) and business hours (`bh`) need the playbook's business calendar, so only
`sopflow.business_calendar.Clock` applies them; `after`/`before` here are the UTC rules of playbooks without a zone.
"""

from __future__ import annotations

import calendar
import re
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, model_serializer, model_validator

MAX_MONTHS = 1200
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}
_PART = re.compile(r"(\d+)(mo|y|w|bd|bh|d|h|m|s)")
_FORM = "use a number and a unit, e.g. 14d, 2w, 1mo, 36h, 1y, 3bd (business days), 4bh (business hours)"


class Duration(BaseModel):
    """Calendar months and days plus a fixed number of seconds, or business days and hours; written and serialised
    as text like `1mo2d` (the text keeps `36h` apart from `1d12h`, which differ across a daylight-saving switch)."""

    model_config = ConfigDict(frozen=True)

    months: int = 0
    days: int = 0
    seconds: int = 0
    business_days: int = 0
    business_hours: int = 0

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_duration(value).__dict__
        return value

    @model_serializer
    def _serialise(self) -> str:
        return str(self)

    def __str__(self) -> str:
        parts = []
        years, months = divmod(self.months, 12)
        if years:
            parts.append(f"{years}y")
        if months:
            parts.append(f"{months}mo")
        if self.days:
            parts.append(f"{self.days}d")
        rest = self.seconds
        for unit in ("h", "m", "s"):
            count, rest = divmod(rest, _UNIT_SECONDS[unit])
            if count:
                parts.append(f"{count}{unit}")
        if self.business_days:
            parts.append(f"{self.business_days}bd")
        if self.business_hours:
            parts.append(f"{self.business_hours}bh")
        return "".join(parts) or "0s"

    @property
    def words(self) -> str:
        """`3 business days`, `1 month 2 days`, `36 hours`: how `playbook show` and the graph say it."""
        parts = []
        years, months = divmod(self.months, 12)
        units = [(years, "year"), (months, "month"), (self.days, "day")]
        hours, rest = divmod(self.seconds, 3600)
        minutes, seconds = divmod(rest, 60)
        units += [(hours, "hour"), (minutes, "minute"), (seconds, "second")]
        units += [(self.business_days, "business day"), (self.business_hours, "business hour")]
        for count, noun in units:
            if count:
                parts.append(f"{count} {noun}{'' if count == 1 else 's'}")
        return " ".join(parts) or "no time"

    @property
    def is_business(self) -> bool:
        return bool(self.business_days or self.business_hours)

    @property
    def fixed(self) -> timedelta:
        """Days and the fixed part as one span: what a day is in UTC, where every day has 24 hours."""
        return timedelta(days=self.days, seconds=self.seconds)

    @property
    def too_long(self) -> bool:
        """No SOP waits longer than a century; a bigger number is a typo that could overflow calendar arithmetic.
        Checked when a playbook is loaded (`sopflow.playbook.check_limits`), never when a pinned one is decoded, so
        a lifecycle already running on such a playbook keeps replaying."""
        longest = MAX_MONTHS * 31 * 86400
        return (
            self.months > MAX_MONTHS
            or self.days * 86400 + self.seconds > longest
            or self.business_days > MAX_MONTHS * 31
            or self.business_hours * 3600 > longest
        )

    def after(self, moment: datetime) -> datetime:
        self._no_business_units()
        return add_months(moment, self.months) + self.fixed

    def before(self, moment: datetime) -> datetime:
        self._no_business_units()
        return add_months(moment, -self.months) - self.fixed

    def _no_business_units(self) -> None:
        if self.is_business:
            raise ValueError(f"{self} counts business time: it needs a business calendar (a playbook timezone)")


class _Parsed:
    def __init__(self, **parts: int) -> None:
        self.__dict__.update(parts)


def parse_duration(text: str) -> _Parsed:
    """Parse `1y2mo3w4d5h6m7s` or `3bd4bh` (any subset, in any order); raise ValueError with the accepted form.

    Business units stand alone: "3 business days and a calendar week" has no meaning an SOP author could predict,
    and zero business days (`0bd`) is refused as the typo it is (a task due at once needs no business calendar).
    """
    cleaned = text.strip().replace(" ", "")
    if not cleaned or _PART.sub("", cleaned):
        raise ValueError(f"invalid duration {text!r}: {_FORM}")
    parts = {"months": 0, "days": 0, "seconds": 0, "business_days": 0, "business_hours": 0}
    for number, unit in _PART.findall(cleaned):
        count = int(number)
        if unit in ("bd", "bh"):
            if count == 0:
                raise ValueError(f"invalid duration {text!r}: zero business {'days' if unit == 'bd' else 'hours'}")
            parts["business_days" if unit == "bd" else "business_hours"] += count
        elif unit in ("y", "mo"):
            parts["months"] += count * (12 if unit == "y" else 1)
        elif unit in ("w", "d"):
            parts["days"] += count * (7 if unit == "w" else 1)
        else:
            parts["seconds"] += count * _UNIT_SECONDS[unit]
    if (parts["business_days"] or parts["business_hours"]) and (parts["months"] or parts["days"] or parts["seconds"]):
        raise ValueError(f"invalid duration {text!r}: business days and hours cannot be mixed with calendar units")
    return _Parsed(**parts)


def duration(text: str) -> Duration:
    return Duration.model_validate(text)


def add_months(moment: datetime, months: int) -> datetime:
    if not months:
        return moment
    index = moment.year * 12 + (moment.month - 1) + months
    year, month = divmod(index, 12)
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day)
