"""One bench worker in a process of its own (started by `bench.common.worker_process`).

`engine` is the sopflow worker as `build_worker` makes it (real SMTP to the bench's sink, a SQLite records store);
`handwritten` runs `bench.handwritten.HandwrittenSafeBalance` with the same real activities (same SMTP sink, same
kind of records store, same templates); `bare` runs `bench.bare.BareLifecycle` with its trivial activity. It prints
`ready` once polling and stops cleanly on SIGTERM, so the bench can read its memory and CPU time from /proc while it
works.

Its Python threads are named for /proc (`bench.common.cpu_by_group`): Python 3.11 leaves every thread the process's
name, so the workflow task executor and the event loop's default executor (where `asyncio.to_thread` runs the SQL and
the MIME build) name their threads when they start. Both executors are the ones the SDK and asyncio would make
anyway (same sizes), given names; the production worker is not changed.

With BENCH_WORKER_MEMORY set to a directory, each SIGUSR1 writes a memory report there (`memory-<n>.txt`): RSS
before and after a full garbage collection, and the live objects per type gained since the previous report.
`bench.scale` sends it at idle and once loaded, so the second report is what the cached lifecycles hold. (No
tracemalloc: traced, the worker's activations slow past the deadlock detector and its tasks stall; and much of a
lifecycle's memory is not Python's allocations anyway, see bench/RESULTS.md.)
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import cProfile
import ctypes
import gc
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from sopflow.codec import data_converter
from sopflow.config import Settings
from workflows.sandbox import WORKFLOW_RUNNER

# Thread names (at most 15 bytes: the kernel's limit) that `bench.common.thread_group` reads back.
ACTIVATION_THREAD = "sop-activation"
IO_THREAD = "sop-io"
PR_SET_NAME = 15
# The SDK's own workflow task executor has max_workers=max_concurrent_workflow_tasks or 500 (worker/_workflow.py).
SDK_WORKFLOW_THREADS = 500

# Imports are kept to what each kind needs (the engine's are made in _run): on a loaded 2-core machine every
# module imported here delays `ready`, and the dev stack's (uvicorn, FastAPI) would double it.


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True)
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--kind", choices=["engine", "handwritten", "bare"], required=True)
    parser.add_argument("--task-queue", required=True)
    parser.add_argument("--records-db", type=Path, help="SQLite file of the records store (engine, handwritten)")
    parser.add_argument("--smtp-port", type=int, help="the bench's SMTP sink on 127.0.0.1 (engine, handwritten)")
    parser.add_argument("--cache", type=int, default=1000, help="max_cached_workflows (the SDK's default: 1000)")
    parser.add_argument("--profile", type=Path, help="write cProfile stats of the worker's Python side here on exit")
    return parser.parse_args(argv)


def name_thread(name: str) -> None:
    """Give the calling thread an OS name (its /proc comm), as Python 3.11 does not."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def named_executor(name: str, max_workers: int | None = None) -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(
        max_workers=max_workers, thread_name_prefix=name, initializer=name_thread, initargs=(name,)
    )


async def _run(args: argparse.Namespace) -> None:
    settings = Settings()
    client = await Client.connect(args.address, namespace=args.namespace, data_converter=data_converter(settings))
    loop = asyncio.get_running_loop()
    loop.set_default_executor(named_executor(IO_THREAD))  # asyncio's default size (None: min(32, cores + 4))
    activations = named_executor(ACTIVATION_THREAD, SDK_WORKFLOW_THREADS)
    db = None
    worker: Worker
    # An experiment only (bench/RESULTS.md): the same workers without the workflow sandbox, to measure its cost.
    unsandboxed = os.environ.get("BENCH_WORKER_RUNNER") == "unsandboxed"
    if args.kind in ("engine", "handwritten"):
        import worker as worker_module
        from activities.email import EmailActivities, SmtpConfig
        from activities.records import RecordActivities
        from sopflow.db import Database
        from sopflow.templates import TemplateRenderer
        from worker import build_worker

        if args.records_db is None or args.smtp_port is None:
            raise SystemExit(f"--records-db and --smtp-port are required for the {args.kind} worker")
        db = Database(f"sqlite:///{args.records_db}")
        db.create_schema()
        smtp = SmtpConfig(host="127.0.0.1", port=args.smtp_port, mail_from="sopflow bench <bench@example.com>")
        if args.kind == "engine":
            # build_worker has no runner or executor parameter: the bench must not add them to production code.
            # Forced over build_worker's own keywords (a functools.partial's would lose to them: build_worker passes
            # workflow_runner=WORKFLOW_RUNNER itself, which silently turned the unsandboxed experiment off).
            def bench_worker(*args: Any, **kwargs: Any) -> Worker:
                kwargs["workflow_task_executor"] = activations
                if unsandboxed:
                    kwargs["workflow_runner"] = UnsandboxedWorkflowRunner()
                return Worker(*args, **kwargs)

            worker_module.Worker = bench_worker  # type: ignore[misc,assignment]
            worker = build_worker(
                client, db, smtp, settings.templates_dir, task_queue=args.task_queue, max_cached_workflows=args.cache
            )
        else:
            from bench.handwritten import HandwrittenSafeBalance

            # The activities as build_worker makes them (its default public URL, no form secret: the bench's).
            emails = EmailActivities(db, TemplateRenderer(settings.templates_dir), smtp, "http://127.0.0.1:8000")
            records = RecordActivities(db)
            worker = Worker(
                client,
                task_queue=args.task_queue,
                workflows=[HandwrittenSafeBalance],
                activities=[emails.send_email, records.record_journal, records.claim_account],
                max_cached_workflows=args.cache,
                workflow_runner=UnsandboxedWorkflowRunner() if unsandboxed else WORKFLOW_RUNNER,
                workflow_task_executor=activations,
            )
    else:
        from bench.bare import BareLifecycle, bare_step

        worker = Worker(
            client,
            task_queue=args.task_queue,
            workflows=[BareLifecycle],
            activities=[bare_step],
            max_cached_workflows=args.cache,
            # The engine worker's own runner (build_worker), so both phases pay the same sandbox.
            workflow_runner=UnsandboxedWorkflowRunner() if unsandboxed else WORKFLOW_RUNNER,
            workflow_task_executor=activations,
        )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if os.environ.get("BENCH_WORKER_MEMORY"):
        reporter = _MemoryReporter(Path(os.environ["BENCH_WORKER_MEMORY"]))
        loop.add_signal_handler(signal.SIGUSR1, reporter.report)
    async with worker:
        print("ready", flush=True)
        await stop.wait()
    if db is not None:
        db.dispose()


class _MemoryReporter:
    """Memory reports on SIGUSR1 (see the module docstring), each compared with the previous one.

    Run in the event loop between activations, so no workflow is half-way through one. The collection is part of
    the report: its RSS before and after tells cyclic garbage (freed by the collector eventually) from what the
    worker keeps.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.count = 0
        self.types: Counter[str] = Counter()

    def report(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        lines = [f"RSS before collection: {_rss_mb():.1f} MB", f"collected objects: {gc.collect()}"]
        lines.append(f"RSS after collection: {_rss_mb():.1f} MB")
        types = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())
        gained = types - self.types
        lines.append(f"objects tracked by the collector: {sum(types.values())} (+{sum(gained.values())})")
        lines += [f"  +{n:>9} {name}" for name, n in gained.most_common(60)]
        self.types = types
        self.count += 1
        (self.directory / f"memory-{self.count}.txt").write_text("\n".join(lines) + "\n")


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    asyncio.run(_run(args))
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)
    # Without the interpreter's teardown, like every bench (see bench.common.exit_now; not imported: it is heavy).
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
