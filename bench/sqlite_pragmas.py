"""SQLite pragmas: what `sopflow dev`'s `--sqlite-pragma journal_mode=wal --sqlite-pragma synchronous=normal` are
worth against the dev server's defaults (rollback journal, synchronous=full), everything else equal.

The same throughput phases as `bench.throughput` (Safe Balance lifecycles to ongoing management, then the bare
workflow doing the same Temporal work), each on a fresh server started by `starter.devstack` with and without the
pragmas. Unit: history events per second, as in `bench.throughput`.

    python -m bench.sqlite_pragmas                 # 200 clients per phase
    python -m bench.sqlite_pragmas --clients 20    # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime
from typing import Any

from bench.common import emit, exit_now, machine, table
from bench.safe_balance import bare_plan, lifecycle, playbook, today
from bench.throughput import bare_phase, engine_phase
from starter.devserver import SQLITE_PRAGMAS

TARGET_RATIO = 1.8


async def run(clients: int = 200, concurrency: int = 50, visits: int = 3) -> dict[str, Any]:
    """With and without back to back for each workflow, so a change of load on the shared machine hits both."""
    plan = bare_plan(playbook(), lifecycle(0, visits, today()), datetime.now(UTC))
    engine_with, _ = await engine_phase(clients, concurrency, visits, SQLITE_PRAGMAS)
    engine_without, _ = await engine_phase(clients, concurrency, visits, ())
    bare_with = await bare_phase(plan, clients, concurrency, SQLITE_PRAGMAS)
    bare_without = await bare_phase(plan, clients, concurrency, ())
    engine_ratio = engine_with.events_per_s / engine_without.events_per_s
    bare_ratio = bare_with.events_per_s / bare_without.events_per_s
    return {
        "bench": "sqlite_pragmas",
        "transition": "history event",
        "pragmas": list(SQLITE_PRAGMAS),
        "clients": clients,
        "concurrency": concurrency,
        "visits": visits,
        "engine": {"with": engine_with.as_dict(), "without": engine_without.as_dict()},
        "bare": {"with": bare_with.as_dict(), "without": bare_without.as_dict()},
        "ratio_engine": round(engine_ratio, 2),
        "ratio_bare": round(bare_ratio, 2),
        "target_ratio": TARGET_RATIO,
        "target_met": engine_ratio >= TARGET_RATIO,
        "machine": machine("bench.sqlite_pragmas"),
    }


def render(result: dict[str, Any]) -> str:
    rows: list[list[object]] = []
    for kind in ("engine", "bare"):
        with_, without = result[kind]["with"], result[kind]["without"]
        rows.append(
            [
                kind,
                without["events_per_s"],
                with_["events_per_s"],
                f"{result['ratio_' + kind]:.2f}",
                f"{without['server_cpu_seconds']} / {with_['server_cpu_seconds']}",
                f"{without['worker_cpu_seconds']} / {with_['worker_cpu_seconds']}",
            ]
        )
    verdict = "met" if result["target_met"] else "MISSED"
    title = (
        f"SQLite pragmas ({', '.join(result['pragmas'])}) vs the dev server's defaults: {result['clients']} "
        f"lifecycles per phase, {result['concurrency']} at a time; "
        f"target engine >= {result['target_ratio']}x: {verdict}"
    )
    headers = ["workflow", "default, events/s", "pragmas, events/s", "ratio", "server CPU s", "worker CPU s"]
    return table(title, headers, rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--visits", type=int, default=3)
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.clients, args.concurrency, args.visits))
    emit(render(result), result)
    exit_now(0)


if __name__ == "__main__":
    main()
