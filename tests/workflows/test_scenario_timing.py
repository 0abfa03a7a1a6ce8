"""Shipped scenarios say what they mean: no step completes a task at the very moment it falls due.

A rehearsal's clock moves in real time between its steps (the time-skipping server skips only while it waits), so
a task opened "at 176d" falls due a few milliseconds after "179d", and a step "at 179d" lands a few milliseconds
before or after that, depending on the machine's speed. The engine orders the two strictly by time, so such a step
is a coin toss between "done on time" and "overdue". Scenarios do their tasks at least a minute from the due moment.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from sopflow.playbook_checks import load_playbook
from tests.conftest import SCENARIOS, TEMPLATES, checked_in_scenario, playbook_of, rehearse_shipped, run

SHIPPED = sorted(SCENARIOS.glob("*.yaml"))
MARGIN_SECONDS = 60


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
async def test_no_scenario_step_completes_a_task_at_the_moment_it_falls_due(path):
    result = (await rehearse_shipped(path)).result
    due: dict[str, datetime] = {}
    ambiguous = []
    for entry in result.timeline:
        if entry["kind"] != "task":
            continue
        if entry.get("due_at"):
            due[entry["task"]] = datetime.fromisoformat(entry["due_at"])
        if entry.get("status") == "done" and entry["task"] in due:
            gap = (datetime.fromisoformat(entry["at"]) - due[entry["task"]]).total_seconds()
            if abs(gap) < MARGIN_SECONDS:
                ambiguous.append(f"{entry['task']} done {gap:+.3f} s from its due moment (day {entry['day']})")
    assert ambiguous == []


async def test_a_rehearsal_starts_at_local_midnight_so_times_of_day_in_a_scenario_mean_the_same_at_any_hour(ts_env):
    path = SCENARIOS / "financial_servicing_neglected.yaml"
    deal, steps, until = checked_in_scenario(path.stem)
    result = await run(ts_env, load_playbook(playbook_of(path), TEMPLATES), steps, until=until, deal=deal)
    assert result.timeline[0]["local"][11:16] == "00:00"
    logged = next(e for e in result.timeline if e["kind"] == "form" and e["form"] == "meeting_log")
    booked = next(e for e in result.timeline if e["kind"] == "appointment")
    # The meeting is logged after it was held.
    assert datetime.fromisoformat(booked["starts_at"]) < datetime.fromisoformat(logged["at"])
