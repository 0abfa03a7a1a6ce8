"""Cadence arithmetic: when the next touchpoint (site visit, review) is due.

Decisions, so SOP authors can predict the schedule:
- Phases are measured from the anchor (the stage's entry by default): `{until: 60d, every: 14d}` applies while the
  schedule's base lies less than 60 days after the anchor.
- The interval used is that of the phase the *base* lies in. The base is the last logged touchpoint, or the due
  date that was missed, or the anchor at first.
- A logged touchpoint resets the schedule: next due = touchpoint date + interval. A late visit therefore pushes
  later visits back instead of demanding a catch-up visit a few days later.
- A touchpoint not logged by due + grace escalates once and counts as missed; the schedule moves on from the missed
  due date, so a forgotten client keeps producing reminders and escalations instead of going quiet.
- With a time zone (`Clock.zoned`), touchpoints are dates: phases count local calendar days from the anchor's date,
  the next due date is the base's local date plus the interval, due at that date's close of business. Two visits
  logged on day 60 get the same next interval whatever the clock time; without a zone the rules compare moments
  in UTC, as lifecycles started before zones existed always did.
"""

from __future__ import annotations

from datetime import date, datetime

from sopflow.business_calendar import UTC_CLOCK, Clock
from sopflow.durations import Duration
from sopflow.playbook import Cadence


def interval_at(cadence: Cadence, anchor: datetime, base: datetime, clock: Clock = UTC_CLOCK) -> Duration:
    for phase in cadence.phases:
        if phase.until is None:
            return phase.every
        if clock.zoned:
            # Dates: the phase ends on the local date `until` after the anchor's date, whatever the times of day.
            if clock.local_date(base) < _date_after(clock, phase.until, anchor):
                return phase.every
        elif base < phase.until.after(anchor):
            return phase.every
    return cadence.phases[-1].every


def next_due(cadence: Cadence, anchor: datetime, base: datetime, clock: Clock = UTC_CLOCK) -> datetime:
    interval = interval_at(cadence, anchor, base, clock)
    if not clock.zoned:
        return interval.after(base)
    return clock.due_on(_date_after(clock, interval, base))


def _date_after(clock: Clock, span: Duration, moment: datetime) -> date:
    """The local date `span` after the moment's local date (the time of day plays no part)."""
    return clock.local_date(clock.after(span, clock.due_on(clock.local_date(moment))))


def schedule(cadence: Cadence, anchor: datetime, until: datetime, clock: Clock = UTC_CLOCK) -> list[datetime]:
    """Due dates when every touchpoint happens on its due date (or is missed): the plan staff see in advance."""
    dates = []
    due = next_due(cadence, anchor, anchor, clock)
    while due <= until:
        dates.append(due)
        due = next_due(cadence, anchor, due, clock)
    return dates
