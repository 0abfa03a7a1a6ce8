"""Throughput: N Safe Balance clients driven to ongoing management through the real engine, against a minimal
hand-written workflow doing the same Temporal work (`bench.bare`), on fresh dev servers with `sopflow dev`'s
settings.

Unit ("transition"): one history event written by the server. It is what the dev server persists to SQLite (the
limit on this machine), it is counted exactly from the histories afterwards, and it is the same unit for the engine
and the bare workflow. Rate = history events of the measured clients / (last event time - first event time), both
read from those histories. Lifecycles/s over the same window is reported too: it is the stricter comparison when
the engine writes more events per client than the bare workflow (its search attribute upserts).

    python -m bench.throughput                 # 500 clients
    python -m bench.throughput --clients 50    # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from temporalio.client import Client, WorkflowHandle

from bench.bare import BareLifecycle, BarePlan
from bench.common import (
    BenchError,
    DevServer,
    HistoryCounts,
    count_histories,
    cpu_seconds,
    dev_server,
    emit,
    exit_now,
    fetch_histories,
    machine,
    rss_mb,
    table,
    wait_quiet,
    worker_process,
)
from bench.safe_balance import EMAILS_TO_ONGOING, bare_plan, in_parallel, lifecycle, playbook, send, start, today
from sopflow.constants import TASK_QUEUE
from sopflow.mailsink import MailSink
from starter.devserver import SQLITE_PRAGMAS

BARE_TASK_QUEUE = "bench-bare"
TARGET_RATIO = 0.9


@dataclass
class Phase:
    """One measured run: N clients on a fresh server, with the server's and the worker's cost over the window."""

    name: str
    clients: int
    concurrency: int
    counts: HistoryCounts
    wall_seconds: float
    server_cpu_seconds: float
    worker_cpu_seconds: float
    server_rss_mb: float
    worker_rss_mb: float
    emails: int | None = None
    plan: dict[str, int] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.counts.span_seconds

    @property
    def events_per_s(self) -> float:
        return self.counts.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def lifecycles_per_s(self) -> float:
        return self.clients / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "clients": self.clients,
            "concurrency": self.concurrency,
            "events": self.counts.events,
            "seconds": round(self.seconds, 3),
            "wall_seconds": round(self.wall_seconds, 3),
            "events_per_s": round(self.events_per_s, 1),
            "lifecycles_per_s": round(self.lifecycles_per_s, 2),
            "per_client": {k: round(v, 2) for k, v in self.counts.summary().items()},
            "server_cpu_seconds": round(self.server_cpu_seconds, 2),
            "worker_cpu_seconds": round(self.worker_cpu_seconds, 2),
            "server_rss_mb": round(self.server_rss_mb, 1),
            "worker_rss_mb": round(self.worker_rss_mb, 1),
            "emails": self.emails,
            "plan": self.plan,
        }


async def _measure(
    name: str,
    server: DevServer,
    worker_pid: int,
    clients: int,
    concurrency: int,
    drive: Callable[[int], Awaitable[WorkflowHandle[Any, Any]]],
) -> Phase:
    """Run `drive(i)` for every client, wait until all are quiet, and read the histories and /proc."""
    cpu_server, cpu_worker = cpu_seconds(server.pid), cpu_seconds(worker_pid)
    started = time.perf_counter()
    handles: list[WorkflowHandle[Any, Any]] = await in_parallel(clients, concurrency, drive)
    for handle in handles:
        await wait_quiet(handle)
    wall = time.perf_counter() - started
    server_cpu, worker_cpu = cpu_seconds(server.pid) - cpu_server, cpu_seconds(worker_pid) - cpu_worker
    server_rss, worker_rss = rss_mb(server.pid), rss_mb(worker_pid)
    return Phase(
        name=name,
        clients=clients,
        concurrency=concurrency,
        counts=count_histories(await fetch_histories(handles)),  # after the readings: not the measured work
        wall_seconds=wall,
        server_cpu_seconds=server_cpu,
        worker_cpu_seconds=worker_cpu,
        server_rss_mb=server_rss,
        worker_rss_mb=worker_rss,
    )


async def engine_phase(
    clients: int, concurrency: int, visits: int, sqlite_pragmas: Sequence[str] = SQLITE_PRAGMAS
) -> tuple[Phase, BarePlan]:
    """N engine lifecycles to ongoing management; also returns the bare plan, checked against a real lifecycle.

    The warm-up client (not measured) is driven one request at a time, waiting for each request's work, so its
    history shows exactly the work the plan says each request causes; it also warms the worker (sandbox, imports)
    before the clock starts.
    """
    book, day = playbook(), today()
    plan = bare_plan(book, lifecycle(0, visits, day), datetime.now(UTC))
    async with dev_server(sqlite_pragmas) as server:
        with MailSink() as sink:
            records = server.home / "records.db"
            async with worker_process(server, "engine", TASK_QUEUE, records_db=records, smtp_port=sink.port) as w:
                warm = await start(server.client, book, "WARM-0")
                await wait_quiet(warm)
                for request in lifecycle(0, visits, day):
                    await send(warm, request)
                    await wait_quiet(warm)
                seen = count_histories([await warm.fetch_history()]).summary()
                expected = plan.totals()
                if any(seen[key] != value for key, value in expected.items()):
                    raise BenchError(f"the bare plan {expected} does not match the engine's history {seen}")
                per_client = len(sink.messages)
                if per_client != EMAILS_TO_ONGOING + visits:
                    raise BenchError(
                        f"the warm-up lifecycle sent {per_client} emails, not {EMAILS_TO_ONGOING + visits}"
                    )

                async def drive(i: int) -> WorkflowHandle[Any, Any]:
                    handle = await start(server.client, book, f"B-{i + 1}")
                    for request in lifecycle(i + 1, visits, day):
                        await send(handle, request)
                    return handle

                phase = await _measure("engine", server, w.pid, clients, concurrency, drive)
                phase.emails = len(sink.messages) - per_client
                phase.plan = plan.totals()
                if phase.emails != clients * per_client or sink.duplicates:
                    raise BenchError(
                        f"{phase.emails} emails (+{sink.duplicates} duplicates) for {clients} clients, "
                        f"expected {clients * per_client}"
                    )
    return phase, plan


async def bare_phase(
    plan: BarePlan, clients: int, concurrency: int, sqlite_pragmas: Sequence[str] = SQLITE_PRAGMAS
) -> Phase:
    """N bare lifecycles, each doing the plan's updates, signals, activities and timers, on a fresh server."""
    async with dev_server(sqlite_pragmas) as server, worker_process(server, "bare", BARE_TASK_QUEUE) as w:
        await _bare_lifecycle(server.client, plan, "bare-warm")  # sandbox and imports, as for the engine

        async def drive(i: int) -> WorkflowHandle[Any, Any]:
            return await _bare_lifecycle(server.client, plan, f"bare-{i + 1}")

        phase = await _measure("bare", server, w.pid, clients, concurrency, drive)
        phase.plan = plan.totals()
    return phase


async def _bare_lifecycle(client: Client, plan: BarePlan, workflow_id: str) -> WorkflowHandle[Any, Any]:
    first, *rest = plan.steps
    handle = await client.start_workflow(BareLifecycle.run, first, id=workflow_id, task_queue=BARE_TASK_QUEUE)
    for step in rest:
        if step.kind == "signal":
            await handle.signal(BareLifecycle.event, step)
        else:
            await handle.execute_update(BareLifecycle.request, step)
    return handle


async def run(clients: int = 500, concurrency: int = 50, visits: int = 3) -> dict[str, Any]:
    """Engine first (its warm-up gives the bare plan), then bare, each on its own fresh server."""
    engine, plan = await engine_phase(clients, concurrency, visits)
    bare = await bare_phase(plan, clients, concurrency)
    events_ratio = engine.events_per_s / bare.events_per_s if bare.events_per_s else 0.0
    lifecycles_ratio = engine.lifecycles_per_s / bare.lifecycles_per_s if bare.lifecycles_per_s else 0.0
    return {
        "bench": "throughput",
        "transition": "history event",
        "clients": clients,
        "concurrency": concurrency,
        "visits": visits,
        "sqlite_pragmas": list(SQLITE_PRAGMAS),
        "engine": engine.as_dict(),
        "bare": bare.as_dict(),
        "bare_plan": [asdict(s) for s in plan.steps],
        "bare_plan_totals": plan.totals(),
        "ratio_events_per_s": round(events_ratio, 3),
        "ratio_lifecycles_per_s": round(lifecycles_ratio, 3),
        "target_ratio": TARGET_RATIO,
        "target_met": events_ratio >= TARGET_RATIO and lifecycles_ratio >= TARGET_RATIO,
        "machine": machine("bench.throughput"),
    }


def render(result: dict[str, Any]) -> str:
    engine, bare = result["engine"], result["bare"]

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}" if b else "-"

    rows: list[list[object]] = [
        ["history events (transitions)", engine["events"], bare["events"], ratio(engine["events"], bare["events"])],
        ["window, s (first to last event)", engine["seconds"], bare["seconds"], ""],
        ["transitions/s", engine["events_per_s"], bare["events_per_s"], f"{result['ratio_events_per_s']:.2f}"],
        [
            "lifecycles/s",
            engine["lifecycles_per_s"],
            bare["lifecycles_per_s"],
            f"{result['ratio_lifecycles_per_s']:.2f}",
        ],
    ]
    for key in ("events", "workflow_tasks", "updates", "signals", "activities", "timers", "search_attribute_upserts"):
        a, b = engine["per_client"][key], bare["per_client"][key]
        rows.append([f"per client: {key}", a, b, ratio(a, b)])
    rows += [
        ["server CPU, s", engine["server_cpu_seconds"], bare["server_cpu_seconds"], ""],
        ["worker CPU, s", engine["worker_cpu_seconds"], bare["worker_cpu_seconds"], ""],
        ["server RSS, MB", engine["server_rss_mb"], bare["server_rss_mb"], ""],
        ["worker RSS, MB", engine["worker_rss_mb"], bare["worker_rss_mb"], ""],
        ["emails received by the sink", engine["emails"], "-", ""],
    ]
    verdict = "met" if result["target_met"] else "MISSED"
    title = (
        f"Throughput: {result['clients']} Safe Balance lifecycles to ongoing management ({result['visits']} site "
        f"visits each), {result['concurrency']} at a time; target engine/bare >= {result['target_ratio']}: {verdict}"
    )
    return table(title, ["", "engine", "bare", "engine/bare"], rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=50, help="clients driven at the same time")
    parser.add_argument("--visits", type=int, default=3, help="site visits (each emails corporate) per client")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.clients, args.concurrency, args.visits))
    emit(render(result), result)
    exit_now(0)


if __name__ == "__main__":
    main()
