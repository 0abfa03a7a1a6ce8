"""The forecast is honest: its pure simulation of a lifecycle (`sopflow.forecast.Simulation`) writes the same
timeline as the real workflow and activities on the time-skipping server.

Every shipped scenario is replayed by the simulation from the rehearsal's start with the scenario's own requests, and
each timeline entry (emails, reminders, due dates, stage moves, tasks, visits, escalations) must match the
rehearsal's in order, kind, stage and detail. What only the workflow can know is left out: how an email's delivery
went (status, subject, message id) and a hand-off's workflow id, filled in after the activity ran. Moments may differ
by the rehearsal's real time between its steps (milliseconds; scenarios keep a minute's margin:
test_scenario_timing.py), so moments match within MARGIN.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sopflow.models import JournalEntry
from starter.rehearse import simulate
from tests.conftest import SCENARIOS, rehearse_shipped

SHIPPED = sorted(SCENARIOS.glob("*.yaml"))
MARGIN = timedelta(seconds=60)
# Filled in by the workflow after its activity ran: the outcome of a delivery, a hand-off or a notice.
OUTCOMES = {"status", "subject", "message_id", "refused", "error", "workflow_id"}
# The workflow's own bookkeeping, which the simulation does not run (one run per year).
NOT_SIMULATED = {"continued_as_new"}
PLACEMENT = {"at", "day", "local", "kind", "stage"}


def _moment(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) and len(value) >= 19 else None
    except ValueError:
        return None


def _same_value(real: Any, simulated: Any) -> bool:
    if real == simulated:
        return True
    a, b = _moment(real), _moment(simulated)
    return a is not None and b is not None and abs(a - b) <= MARGIN


def _difference(real: dict[str, Any], simulated: JournalEntry) -> str | None:
    """Why a rehearsal's entry and the simulation's differ (None: they are the same entry)."""
    if (real["kind"], real["stage"]) != (simulated.kind, simulated.stage):
        return f"{real['kind']} in {real['stage']} vs {simulated.kind} in {simulated.stage}"
    if abs(datetime.fromisoformat(real["at"]) - simulated.at) > MARGIN:
        return f"at {real['at']} vs {simulated.at.isoformat()}"
    detail = {k: v for k, v in real.items() if k not in PLACEMENT | OUTCOMES}
    other = {k: v for k, v in simulated.detail.items() if k not in OUTCOMES}
    if detail.keys() != other.keys():
        return f"keys {sorted(detail)} vs {sorted(other)}"
    changed = [k for k in detail if not _same_value(detail[k], other[k])]
    return f"{changed[0]}: {detail[changed[0]]!r} vs {other[changed[0]]!r}" if changed else None


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
async def test_the_forecast_simulation_writes_the_rehearsals_timeline_for_every_shipped_scenario(path: Path) -> None:
    shipped = await rehearse_shipped(path)
    rehearsal = shipped.result
    sim, refused = simulate(shipped.inp, shipped.scenario, rehearsal.started_at)

    real = [e for e in rehearsal.timeline if e["kind"] not in NOT_SIMULATED | {"rejected"}]
    simulated = [e for e in sim.entries if e.kind not in NOT_SIMULATED]
    differences = [
        f"entry {i}: {why}"
        for i, (a, b) in enumerate(zip(real, simulated, strict=False))
        if (why := _difference(a, b)) is not None
    ]
    assert differences[:1] == []
    assert len(simulated) == len(real)
    assert sim.engine.fault is None
    # The same steps are refused, at the same moments.
    rejected = [datetime.fromisoformat(e["at"]) for e in rehearsal.of_kind("rejected")]
    assert len(refused) == len(rejected)
    assert all(abs(a - at) <= MARGIN for a, (at, _) in zip(rejected, refused, strict=True))


async def test_a_difference_in_one_rule_is_caught(tmp_path: Path) -> None:
    """The comparison is not vacuous: a simulation whose visits come a day late differs from the rehearsal."""
    shipped = await rehearse_shipped(SCENARIOS / "safe_balance_happy_path.yaml")
    sim, _ = simulate(shipped.inp, shipped.scenario, shipped.result.started_at + timedelta(days=1))
    real = [e for e in shipped.result.timeline if e["kind"] not in NOT_SIMULATED | {"rejected"}]
    assert any(_difference(a, b) for a, b in zip(real, sim.entries, strict=False))
