"""Scale: N open lifecycles waiting on their timers; memory of the worker and the server, the start rate, and how
long a request takes to reach a client the worker no longer holds in its cache.

Each client starts in ongoing management, waiting on its site-visit timers: its input carries the state the pure
engine computes for a launched client, exactly what a continued-as-new run carries, so thousands of clients open
without first sending each one's launch emails. A client counts as settled once the records store shows it in
`ongoing` (its first timeline batch is written, its timer armed).

Probes are `set_fields` updates (an update, like a form, reaches the workflow as a workflow task, as a signal
does; unlike a signal its round trip can be timed): first to the last-started clients (in the worker's cache), then
to the first-started ones, which a cache smaller than N has evicted, so the worker must fetch and replay their
history before applying the update.

    python -m bench.scale                              # 10,000 clients, the SDK's default cache (1,000)
    python -m bench.scale --clients 2000 --cache 500   # a smaller run
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from temporalio.client import WorkflowHandle

from bench.common import (
    BenchError,
    cpu_seconds,
    dev_server,
    emit,
    exit_now,
    machine,
    percentile,
    rss_mb,
    table,
    worker_process,
)
from bench.safe_balance import Request, in_parallel, ongoing_state, playbook, send
from sopflow.constants import TASK_QUEUE
from sopflow.db import Database, DealRow
from sopflow.mailsink import MailSink
from sopflow.models import LifecycleInput, SetFields
from workflows.lifecycle import ClientLifecycle
from workflows.options import start_options

SETTLE_TIMEOUT = 3600.0


async def run(
    clients: int = 10_000, cache: int = 1000, concurrency: int = 50, probes: int = 20, settle_pause: float = 2.0
) -> dict[str, Any]:
    """`settle_pause`: seconds between the last client settling and the memory reading, so both processes are done
    with the work that followed the last timeline batch (the search attribute upserts, the timer)."""
    book = playbook()
    template = ongoing_state(book, 0, datetime.now(UTC))
    probes = max(1, min(probes, clients // 2 or 1))
    async with dev_server() as server:
        with MailSink() as sink:
            records = server.home / "records.db"
            async with worker_process(
                server, "engine", TASK_QUEUE, records_db=records, smtp_port=sink.port, cache=cache
            ) as w:
                idle = {"server_rss_mb": rss_mb(server.pid), "worker_rss_mb": rss_mb(w.pid)}
                _memory_report(w.pid)
                cpu = (cpu_seconds(server.pid), cpu_seconds(w.pid))

                async def open_one(i: int) -> WorkflowHandle[Any, Any]:
                    deal_id = f"S-{i}"
                    state = template.model_copy(deep=True, update={"deal_id": deal_id})
                    inp = LifecycleInput(deal_id=deal_id, playbook=book, state=state)
                    return await server.client.start_workflow(
                        ClientLifecycle.run, inp, task_queue=TASK_QUEUE, **start_options(book, deal_id)
                    )

                started = time.perf_counter()
                handles = await in_parallel(clients, concurrency, open_one)
                start_seconds = time.perf_counter() - started
                settle_seconds = await _settled(Database(f"sqlite:///{records}"), clients, started)
                cpu = (cpu_seconds(server.pid) - cpu[0], cpu_seconds(w.pid) - cpu[1])
                await asyncio.sleep(settle_pause)
                loaded = {"server_rss_mb": rss_mb(server.pid), "worker_rss_mb": rss_mb(w.pid)}
                _memory_report(w.pid)
                warm = await _probe(handles[-probes:])
                cold = await _probe(handles[:probes])
                if sink.messages:
                    raise BenchError(f"{len(sink.messages)} emails: waiting clients should send none")
    evicted = clients > cache
    return {
        "bench": "scale",
        "clients": clients,
        "cache": cache,
        "start_concurrency": concurrency,
        "start_seconds": round(start_seconds, 2),
        "starts_per_s": round(clients / start_seconds, 1),
        "settle_seconds": round(settle_seconds, 2),
        "settled_per_s": round(clients / settle_seconds, 1),
        "server_cpu_seconds": round(cpu[0], 1),
        "worker_cpu_seconds": round(cpu[1], 1),
        "idle": {k: round(v, 1) for k, v in idle.items()},
        "loaded": {k: round(v, 1) for k, v in loaded.items()},
        # The server keeps every open client; the worker only the ones in its cache.
        "per_client_kb": {
            "server_rss_mb": round((loaded["server_rss_mb"] - idle["server_rss_mb"]) * 1024 / clients, 1),
            "worker_rss_mb": round((loaded["worker_rss_mb"] - idle["worker_rss_mb"]) * 1024 / min(clients, cache), 1),
        },
        "probes": probes,
        "update_in_cache_ms": warm,
        "update_not_in_cache_ms": cold,
        "first_clients_evicted": evicted,
        "machine": machine("bench.scale"),
    }


def _memory_report(pid: int) -> None:
    """Ask the worker for a memory report (BENCH_WORKER_MEMORY, see `bench.worker_process`), after the reading: its
    garbage collection must not change the figure. The worker writes it while the bench goes on."""
    if os.environ.get("BENCH_WORKER_MEMORY"):
        os.kill(pid, signal.SIGUSR1)


async def _settled(db: Database, clients: int, started: float) -> float:
    """Seconds from the first start until every client's first timeline batch is in the records store."""
    try:
        while True:
            with db.session() as session:
                done = session.scalar(select(func.count()).select_from(DealRow).where(DealRow.stage == "ongoing"))
            done = done or 0
            if done >= clients:
                return time.perf_counter() - started
            if time.perf_counter() - started > SETTLE_TIMEOUT:
                raise BenchError(f"only {done} of {clients} clients settled within {SETTLE_TIMEOUT:.0f} s")
            await asyncio.sleep(0.5)
    finally:
        db.dispose()


async def _probe(handles: list[WorkflowHandle[Any, Any]]) -> dict[str, float]:
    """One update per client, one at a time, with a pause between: the figure is a single request's round trip."""
    times: list[float] = []
    for n, handle in enumerate(handles):
        request = SetFields(fields={"rep_name": f"Probe {n}"}, actor="bench")
        began = time.perf_counter()
        await send(handle, Request("update", "set_fields", request))
        times.append((time.perf_counter() - began) * 1000)
        await asyncio.sleep(0.2)  # the update's timeline record runs afterwards; do not measure it as queueing
    return {
        "p50": round(percentile(times, 50), 1),
        "max": round(max(times), 1),
        "mean": round(sum(times) / len(times), 1),
    }


def render(result: dict[str, Any]) -> str:
    idle, loaded, per = result["idle"], result["loaded"], result["per_client_kb"]
    warm, cold = result["update_in_cache_ms"], result["update_not_in_cache_ms"]
    rows: list[list[object]] = [
        ["server RSS, MB (idle -> loaded)", f"{idle['server_rss_mb']} -> {loaded['server_rss_mb']}"],
        ["worker RSS, MB (idle -> loaded)", f"{idle['worker_rss_mb']} -> {loaded['worker_rss_mb']}"],
        [
            "KB per open client (server) / per cached client (worker)",
            f"{per['server_rss_mb']} / {per['worker_rss_mb']}",
        ],
        ["start calls/s", result["starts_per_s"]],
        ["settled clients/s (first timeline batch written)", result["settled_per_s"]],
        ["CPU s while starting (server / worker)", f"{result['server_cpu_seconds']} / {result['worker_cpu_seconds']}"],
        ["update, client in cache, ms (p50 / max)", f"{warm['p50']} / {warm['max']}"],
        [
            "update, client " + ("evicted" if result["first_clients_evicted"] else "in cache too") + ", ms (p50 / max)",
            f"{cold['p50']} / {cold['max']}",
        ],
    ]
    title = (
        f"Scale: {result['clients']:,} open lifecycles waiting on timers, worker cache {result['cache']:,}, "
        f"{result['probes']} probes each way"
    )
    return table(title, ["", "value"], rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--cache", type=int, default=1000, help="the worker's max_cached_workflows")
    parser.add_argument("--concurrency", type=int, default=50, help="start calls in flight")
    parser.add_argument("--probes", type=int, default=20, help="updates timed per group (in cache, evicted)")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.clients, args.cache, args.concurrency, args.probes))
    emit(render(result), result)
    exit_now(0)


if __name__ == "__main__":
    main()
