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
"""

from __future__ import annotations

from datetime import datetime

from sopflow.durations import Duration
from sopflow.playbook import Cadence


def interval_at(cadence: Cadence, anchor: datetime, base: datetime) -> Duration:
    for phase in cadence.phases:
        if phase.until is None or base < phase.until.after(anchor):
            return phase.every
    return cadence.phases[-1].every


def next_due(cadence: Cadence, anchor: datetime, base: datetime) -> datetime:
    return interval_at(cadence, anchor, base).after(base)


def schedule(cadence: Cadence, anchor: datetime, until: datetime) -> list[datetime]:
    """Due dates when every touchpoint happens on its due date (or is missed): the plan staff see in advance."""
    dates = []
    due = next_due(cadence, anchor, anchor)
    while due <= until:
        dates.append(due)
        due = next_due(cadence, anchor, due)
    return dates
