"""Throughput: N Safe Balance clients driven to ongoing management through the real engine, against two references,
each on a fresh dev server with `sopflow dev`'s settings:

- `handwritten` (`bench.handwritten`, issue 17): the same SOP hard-coded in plain Python, doing the same real work
  (the same emails rendered from the same templates and sent over SMTP to a sink, the same records rows, the same
  activities and timers) without the engine. engine/handwritten is the price of the engine; the target
  (TARGET_RATIO) applies to its lifecycles/s.
- `bare` (`bench.bare`): the engine's Temporal work with trivial activities: the floor Temporal (and SQLite) set.

Each phase also splits the worker's CPU per lifecycle by thread (`bench.common.cpu_by_group`): the real I/O work
(the event loop, where the activities render templates and talk SMTP, and the I/O threads, where SQL and the MIME
build run) and the rest (workflow activations, the SDK's Rust core).

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
    ACTIVATIONS,
    EVENT_LOOP,
    EXITED,
    IO_THREADS,
    OTHER_PYTHON,
    REAL_WORK_GROUPS,
    REST_GROUPS,
    RUST_CORE,
    BenchError,
    DevServer,
    HistoryCounts,
    WorkerKind,
    count_histories,
    cpu_by_group,
    cpu_seconds,
    dev_server,
    emit,
    exit_now,
    fetch_histories,
    machine,
    records_rows,
    rss_mb,
    table,
    thread_cpu,
    wait_quiet,
    worker_process,
)
from bench.handwritten import HANDWRITTEN_TASK_QUEUE
from bench.safe_balance import (
    EMAILS_TO_ONGOING,
    Request,
    bare_plan,
    in_parallel,
    lifecycle,
    playbook,
    send,
    send_handwritten,
    start,
    start_handwritten,
    today,
)
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
    worker_cpu_groups: dict[str, float] = field(default_factory=dict)
    emails: int | None = None
    redelivered: int | None = None
    records: dict[str, int] = field(default_factory=dict)  # rows per table, the warm-up lifecycle's included
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
            "worker_cpu_per_lifecycle": self.cpu_per_lifecycle(),
            "emails": self.emails,
            "redelivered": self.redelivered,
            "records": self.records,
            "plan": self.plan,
        }

    def cpu_per_lifecycle(self) -> dict[str, float]:
        """Worker CPU-seconds per measured lifecycle: in total, the real I/O work and the rest, and by thread group."""
        per = {name: cpu / self.clients for name, cpu in self.worker_cpu_groups.items()}
        split = {
            "total": self.worker_cpu_seconds / self.clients,
            "real_io_work": sum(per.get(g, 0.0) for g in REAL_WORK_GROUPS),
            "rest": sum(per.get(g, 0.0) for g in REST_GROUPS),
        }
        return {k: round(v, 4) for k, v in {**split, **per}.items()}


async def _measure(
    name: str,
    server: DevServer,
    worker_pid: int,
    clients: int,
    concurrency: int,
    drive: Callable[[int], Awaitable[WorkflowHandle[Any, Any]]],
) -> Phase:
    """Run `drive(i)` for every client, wait until all are quiet, and read the histories and /proc."""
    cpu_server, cpu_worker, threads = cpu_seconds(server.pid), cpu_seconds(worker_pid), thread_cpu(worker_pid)
    started = time.perf_counter()
    handles: list[WorkflowHandle[Any, Any]] = await in_parallel(clients, concurrency, drive)
    for handle in handles:
        await wait_quiet(handle)
    wall = time.perf_counter() - started
    server_cpu, worker_cpu = cpu_seconds(server.pid) - cpu_server, cpu_seconds(worker_pid) - cpu_worker
    groups = cpu_by_group(worker_pid, threads, thread_cpu(worker_pid), worker_cpu)
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
        worker_cpu_groups=groups,
    )


Starter = Callable[[Client, str], Awaitable[WorkflowHandle[Any, Any]]]
Sender = Callable[[WorkflowHandle[Any, Any], Request], Awaitable[None]]


async def _real_work_phase(
    name: WorkerKind,
    server: DevServer,
    task_queue: str,
    begin: Starter,
    send_one: Sender,
    clients: int,
    concurrency: int,
    visits: int,
    check_warm: Callable[[WorkflowHandle[Any, Any]], Awaitable[None]] | None = None,
) -> Phase:
    """N lifecycles doing the real work (SMTP to a sink, a SQLite records store): the engine's or the hand-written.

    The warm-up client (not measured) is driven one request at a time, waiting for each request's work, so its
    history shows exactly the work each request causes (`check_warm` reads it); it also warms the worker (sandbox,
    imports) before the clock starts. Every email of every client must reach the sink, once.
    """
    day = today()
    with MailSink() as sink:
        records = server.home / "records.db"
        async with worker_process(server, name, task_queue, records_db=records, smtp_port=sink.port) as w:
            warm = await begin(server.client, "WARM-0")
            await wait_quiet(warm)
            for request in lifecycle(0, visits, day):
                await send_one(warm, request)
                await wait_quiet(warm)
            if check_warm is not None:
                await check_warm(warm)
            per_client = len(sink.messages)
            if per_client != EMAILS_TO_ONGOING + visits:
                raise BenchError(
                    f"the {name} warm-up lifecycle sent {per_client} emails, not {EMAILS_TO_ONGOING + visits}"
                )

            async def drive(i: int) -> WorkflowHandle[Any, Any]:
                handle = await begin(server.client, f"B-{i + 1}")
                for request in lifecycle(i + 1, visits, day):
                    await send_one(handle, request)
                return handle

            phase = await _measure(name, server, w.pid, clients, concurrency, drive)
            phase.emails = len(sink.messages) - per_client
            # A redelivery (a retry after the relay had the message but the attempt timed out) carries the step's
            # Message-ID and is dropped by the sink as by a receiving server: counted, not a failure.
            phase.redelivered = sink.duplicates
            if phase.emails != clients * per_client:
                expected = clients * per_client
                raise BenchError(f"{name}: {phase.emails} emails for {clients} clients, expected {expected}")
        phase.records = records_rows(records)  # the worker has stopped: every write is in
    return phase


async def engine_phase(
    clients: int, concurrency: int, visits: int, sqlite_pragmas: Sequence[str] = SQLITE_PRAGMAS
) -> tuple[Phase, BarePlan]:
    """N engine lifecycles to ongoing management; also returns the bare plan, checked against the warm-up client."""
    book = playbook()
    plan = bare_plan(book, lifecycle(0, visits, today()), datetime.now(UTC))

    async def check_plan(warm: WorkflowHandle[Any, Any]) -> None:
        seen = count_histories([await warm.fetch_history()]).summary()
        expected = plan.totals()
        if any(seen[key] != value for key, value in expected.items()):
            raise BenchError(f"the bare plan {expected} does not match the engine's history {seen}")

    async def begin(client: Client, deal_id: str) -> WorkflowHandle[Any, Any]:
        return await start(client, book, deal_id)

    async with dev_server(sqlite_pragmas) as server:
        phase = await _real_work_phase(
            "engine", server, TASK_QUEUE, begin, send, clients, concurrency, visits, check_warm=check_plan
        )
    phase.plan = plan.totals()
    return phase, plan


async def handwritten_phase(
    clients: int, concurrency: int, visits: int, sqlite_pragmas: Sequence[str] = SQLITE_PRAGMAS
) -> Phase:
    """N hand-written lifecycles (`bench.handwritten`) doing the engine's real work without the engine."""
    async with dev_server(sqlite_pragmas) as server:
        return await _real_work_phase(
            "handwritten",
            server,
            HANDWRITTEN_TASK_QUEUE,
            start_handwritten,
            send_handwritten,
            clients,
            concurrency,
            visits,
        )


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


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


async def run(clients: int = 500, concurrency: int = 50, visits: int = 3) -> dict[str, Any]:
    """Engine first (its warm-up gives the bare plan), then the hand-written reference, then bare, each on its own
    fresh server. The hand-written lifecycles must write what the engine's write (records rows per table)."""
    engine, plan = await engine_phase(clients, concurrency, visits)
    handwritten = await handwritten_phase(clients, concurrency, visits)
    if handwritten.records != engine.records:
        raise BenchError(f"records rows differ: engine {engine.records}, handwritten {handwritten.records}")
    bare = await bare_phase(plan, clients, concurrency)
    ratios = {
        reference.name: {
            "events_per_s": round(_ratio(engine.events_per_s, reference.events_per_s), 3),
            "lifecycles_per_s": round(_ratio(engine.lifecycles_per_s, reference.lifecycles_per_s), 3),
        }
        for reference in (handwritten, bare)
    }
    return {
        "bench": "throughput",
        "transition": "history event",
        "clients": clients,
        "concurrency": concurrency,
        "visits": visits,
        "sqlite_pragmas": list(SQLITE_PRAGMAS),
        "engine": engine.as_dict(),
        "handwritten": handwritten.as_dict(),
        "bare": bare.as_dict(),
        "bare_plan": [asdict(s) for s in plan.steps],
        "bare_plan_totals": plan.totals(),
        "ratios": ratios,
        # engine/bare, under the names earlier runs used
        "ratio_events_per_s": ratios["bare"]["events_per_s"],
        "ratio_lifecycles_per_s": ratios["bare"]["lifecycles_per_s"],
        "target_ratio": TARGET_RATIO,
        "target_met": ratios["handwritten"]["lifecycles_per_s"] >= TARGET_RATIO,
        "machine": machine("bench.throughput"),
    }


CPU_ROWS = [
    ("total", "worker CPU-s per lifecycle"),
    ("real_io_work", "  real I/O work (SMTP, MIME, templates, SQL)"),
    (EVENT_LOOP, "    event loop (activities' coroutines)"),
    (IO_THREADS, "    I/O threads (SQL, MIME build)"),
    ("rest", "  the rest (activations, payloads, sandbox)"),
    (ACTIVATIONS, "    workflow activations"),
    (RUST_CORE, "    Rust core (tokio)"),
    (OTHER_PYTHON, "    other Python threads"),
    (EXITED, "    exited threads"),
]


def render(result: dict[str, Any]) -> str:
    engine, hand, bare = result["engine"], result["handwritten"], result["bare"]

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}" if b else "-"

    def row(label: str, a: Any, b: Any, c: Any, with_ratios: bool = True) -> list[object]:
        if not with_ratios:
            return [label, a, b, c, "", ""]
        return [label, a, b, c, ratio(a, b), ratio(a, c)]

    rows: list[list[object]] = [
        row("history events (transitions)", engine["events"], hand["events"], bare["events"]),
        row("window, s (first to last event)", engine["seconds"], hand["seconds"], bare["seconds"], False),
        row("transitions/s", engine["events_per_s"], hand["events_per_s"], bare["events_per_s"]),
        row("lifecycles/s", engine["lifecycles_per_s"], hand["lifecycles_per_s"], bare["lifecycles_per_s"]),
    ]
    for key in (
        "events",
        "workflow_tasks",
        "updates",
        "signals",
        "activities",
        "local_activities",
        "timers",
        "search_attribute_upserts",
    ):
        rows.append(row(f"per client: {key}", *(p["per_client"][key] for p in (engine, hand, bare))))
    for key, label in CPU_ROWS:
        cpu = [p["worker_cpu_per_lifecycle"].get(key, 0.0) for p in (engine, hand, bare)]
        rows.append(row(label, *cpu))
    rows.append(
        row("server CPU-s per lifecycle", *(p["server_cpu_seconds"] / p["clients"] for p in (engine, hand, bare)))
    )
    rows += [
        row("server RSS, MB", engine["server_rss_mb"], hand["server_rss_mb"], bare["server_rss_mb"], False),
        row("worker RSS, MB", engine["worker_rss_mb"], hand["worker_rss_mb"], bare["worker_rss_mb"], False),
        row("emails received by the sink", engine["emails"], hand["emails"], "-", False),
        row("  redelivered (same Message-ID, dropped)", engine["redelivered"], hand["redelivered"], "-", False),
    ]
    per_lifecycle = engine["clients"] + 1  # the warm-up lifecycle wrote rows too
    for table_name in ("journal", "outbox", "deals", "tasks", "form_submissions"):
        a, b = engine["records"].get(table_name, 0), hand["records"].get(table_name, 0)
        rows.append(row(f"records per client: {table_name}", a / per_lifecycle, b / per_lifecycle, "-", False))
    verdict = "met" if result["target_met"] else "MISSED"
    title = (
        f"Throughput: {result['clients']} Safe Balance lifecycles to ongoing management ({result['visits']} site "
        f"visits each), {result['concurrency']} at a time; target engine/handwritten lifecycles/s >= "
        f"{result['target_ratio']}: {verdict}"
    )
    return table(title, ["", "engine", "handwritten", "bare", "engine/handwritten", "engine/bare"], rows)


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
