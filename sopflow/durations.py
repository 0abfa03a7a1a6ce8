"""Durations as SOP authors write them (`14d`, `2w`, `1mo`, `36h`) and calendar arithmetic on them.

Months are calendar months, not 30 days, because "monthly site visit" means the same day next month. A day that
does not exist in the target month is clamped to its last day (Jan 31 + 1mo = Feb 28/29), the convention of
spreadsheets and CRMs users already know.
"""

from __future__ import annotations

import calendar
import re
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, model_serializer, model_validator

MAX_MONTHS = 1200
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"(\d+)(mo|y|w|d|h|m|s)")


class Duration(BaseModel):
    """A span of calendar months plus a fixed number of seconds; written and serialised as text like `1mo2d`."""

    model_config = ConfigDict(frozen=True)

    months: int = 0
    seconds: int = 0

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
        rest = self.seconds
        for unit in ("d", "h", "m", "s"):
            count, rest = divmod(rest, _UNIT_SECONDS[unit])
            if count:
                parts.append(f"{count}{unit}")
        return "".join(parts) or "0s"

    @property
    def too_long(self) -> bool:
        """No SOP waits longer than a century; a bigger number is a typo that could overflow calendar arithmetic.
        Checked when a playbook is loaded (`sopflow.playbook.check_limits`), never when a pinned one is decoded, so
        a lifecycle already running on such a playbook keeps replaying."""
        return self.months > MAX_MONTHS or self.seconds > MAX_MONTHS * 31 * 86400

    def after(self, moment: datetime) -> datetime:
        return add_months(moment, self.months) + timedelta(seconds=self.seconds)

    def before(self, moment: datetime) -> datetime:
        return add_months(moment, -self.months) - timedelta(seconds=self.seconds)


class _Parsed:
    def __init__(self, months: int, seconds: int) -> None:
        self.months = months
        self.seconds = seconds


def parse_duration(text: str) -> _Parsed:
    """Parse `1y2mo3w4d5h6m7s` (any subset, in that order of units or not); raise ValueError with the accepted form."""
    cleaned = text.strip().replace(" ", "")
    if not cleaned or _PART.sub("", cleaned):
        raise ValueError(f"invalid duration {text!r}: use a number and a unit, e.g. 14d, 2w, 1mo, 36h, 1y")
    months = seconds = 0
    for number, unit in _PART.findall(cleaned):
        if unit == "y":
            months += 12 * int(number)
        elif unit == "mo":
            months += int(number)
        else:
            seconds += int(number) * _UNIT_SECONDS[unit]
    return _Parsed(months, seconds)


def duration(text: str) -> Duration:
    return Duration.model_validate(text)


def add_months(moment: datetime, months: int) -> datetime:
    if not months:
        return moment
    index = moment.year * 12 + (moment.month - 1) + months
    year, month = divmod(index, 12)
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day)
