"""How fast the forecast runs the live book forward (issue 18's target: 10,000 clients x 52 weeks under 10 s).

The book is made of every shipped scenario's client at weekly points of its life (each a real state the simulation
reached from the scenario's start with its requests), the live ones tiled to `--clients` with their own copies of
state, so the forecast reads as many distinct states as a real book. The whole book is timed as the CLI runs it
(both assumptions), in one process and spread over two (`forecast_book`); memory is the peak RSS of this process
and of a child.

    python -m bench.forecast                   # 10,000 clients, 52 weeks
    python -m bench.forecast --clients 1000 --weeks 12
"""

from __future__ import annotations

import argparse
import resource
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import emit, machine, table
from sopflow.config import PROJECT_ROOT
from sopflow.forecast import ASSUMPTIONS, Projection, Simulation, forecast_book
from sopflow.models import ClientSeed
from sopflow.playbook_checks import load_playbook
from starter.rehearse import load_scenario, request_of, resolve_dates

PLAYBOOKS = PROJECT_ROOT / "playbooks"
START = datetime(2027, 1, 4, 5, tzinfo=UTC)


def book(clients: int) -> list[ClientSeed]:
    """`clients` live clients across the shipped playbooks, each with its own copy of a state."""
    lives = [weekly_states(path) for path in sorted((PLAYBOOKS / "scenarios").glob("*.yaml"))]
    # Round-robin over the scenarios, so that a small book spans the playbooks too.
    pool = [life[week] for week in range(max(map(len, lives))) for life in lives if week < len(life)]
    return [
        seed.model_copy(
            update={"workflow_id": f"deal-B-{i}", "deal_id": f"B-{i}", "state": seed.state.model_copy(deep=True)}
        )
        for i, seed in ((i, pool[i % len(pool)]) for i in range(clients))
    ]


def weekly_states(path: Path) -> list[ClientSeed]:
    """A scenario's client each week of its life while it is live, as the forecast's simulation reached it."""
    scenario = load_scenario(path)
    playbook_id = max((p.stem for p in PLAYBOOKS.glob("*.yaml") if path.stem.startswith(f"{p.stem}_")), key=len)
    playbook = load_playbook(PLAYBOOKS / f"{playbook_id}.yaml")
    clock = scenario.clock(playbook, scenario.deal.fields)
    fields = resolve_dates(scenario.deal.fields, START, clock)
    sim = Simulation(Projection.start(playbook, scenario.deal.id, fields, START, "deal-B"), START)
    steps = sorted(((scenario.moment(s.at, START, clock), s) for s in scenario.steps), key=lambda pair: pair[0])
    states = []
    cut, end = START, clock.after(scenario.until, START)
    while cut < end and not sim.engine.closed:
        while steps and steps[0][0] <= cut and not sim.engine.closed:
            at, step = steps.pop(0)
            sim.request(request_of(step, at, clock), at)
        sim.run_until(cut)
        if not sim.engine.closed:
            state = sim.engine.state.model_copy(deep=True)
            states.append(ClientSeed(workflow_id="", deal_id="", playbook=playbook, state=state, as_of=cut))
        cut += timedelta(weeks=1)
    return states


def run(clients: int = 10_000, weeks: int = 52, processes: tuple[int, ...] = (1, 2)) -> dict[str, Any]:
    began = time.perf_counter()
    seeds = book(clients)
    built = time.perf_counter() - began
    figures = {}
    for count in processes:
        began, cpu = time.perf_counter(), time.process_time()
        result = forecast_book(seeds, START, weeks, "owner", processes=count)
        wall, cpu = time.perf_counter() - began, time.process_time() - cpu
        per = {a: result.forecasts["today", a] for a in ASSUMPTIONS}
        figures[f"{count} process{'es' if count > 1 else ''}"] = {
            "seconds": round(wall, 2),
            "parent_cpu_seconds": round(cpu, 2),
            "ms_per_client": round(wall / clients * 1000, 3),
            "items": {a: sum(sum(sum(v) for v in g.values()) for g in f.counts.values()) for a, f in per.items()},
            "faults": sum(len(f.faults) for f in per.values()),
        }
    return {
        "bench": "forecast",
        "clients": clients,
        "weeks": weeks,
        "playbooks": dict(Counter(s.playbook.id for s in seeds)),
        "book_seconds": round(built, 1),
        "figures": figures,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "children_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "machine": machine("bench.forecast"),
    }


def render(result: dict[str, Any]) -> str:
    rows = [
        [name, f["seconds"], f["ms_per_client"], f["items"]["nothing"], f["items"]["on_time"], f["faults"]]
        for name, f in result["figures"].items()
    ]
    title = (
        f"Forecast: {result['clients']:,} live clients x {result['weeks']} weeks, both assumptions "
        f"({len(result['playbooks'])} playbooks; peak RSS {result['peak_rss_mb']} MB, a child's "
        f"{result['children_peak_rss_mb']} MB; target < 10 s)"
    )
    headers = ["run", "s", "ms/client", "items (nothing)", "items (on time)", "faults"]
    return table(title, headers, rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--weeks", type=int, default=52)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="runs with these process counts")
    args = parser.parse_args(argv)
    result = run(args.clients, args.weeks, tuple(args.processes))
    emit(render(result), result)


if __name__ == "__main__":
    main()
