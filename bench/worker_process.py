"""One bench worker in a process of its own (started by `bench.common.worker_process`).

`engine` is the sopflow worker as `build_worker` makes it (real SMTP to the bench's sink, a SQLite records store);
`bare` runs `bench.bare.BareLifecycle` with its trivial activity. It prints `ready` once polling and stops cleanly
on SIGTERM, so the bench can read its memory and CPU time from /proc while it works.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import os
import signal
import sys
from pathlib import Path

from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from sopflow.codec import data_converter
from sopflow.config import Settings
from workflows.sandbox import WORKFLOW_RUNNER

# Imports are kept to what each kind needs (the engine's are made in _run): on a loaded 2-core machine every
# module imported here delays `ready`, and the dev stack's (uvicorn, FastAPI) would double it.


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True)
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--kind", choices=["engine", "bare"], required=True)
    parser.add_argument("--task-queue", required=True)
    parser.add_argument("--records-db", type=Path, help="SQLite file of the records store (engine)")
    parser.add_argument("--smtp-port", type=int, help="the bench's SMTP sink on 127.0.0.1 (engine)")
    parser.add_argument("--cache", type=int, default=1000, help="max_cached_workflows (the SDK's default: 1000)")
    parser.add_argument("--profile", type=Path, help="write cProfile stats of the worker's Python side here on exit")
    return parser.parse_args(argv)


async def _run(args: argparse.Namespace) -> None:
    settings = Settings()
    client = await Client.connect(args.address, namespace=args.namespace, data_converter=data_converter(settings))
    db = None
    worker: Worker
    # An experiment only (bench/RESULTS.md): the same workers without the workflow sandbox, to measure its cost.
    unsandboxed = os.environ.get("BENCH_WORKER_RUNNER") == "unsandboxed"
    if args.kind == "engine":
        import worker as worker_module
        from activities.email import SmtpConfig
        from sopflow.db import Database
        from worker import build_worker

        if unsandboxed:  # build_worker has no runner parameter: the experiment must not add one to production code
            unsandboxed_worker = functools.partial(Worker, workflow_runner=UnsandboxedWorkflowRunner())
            worker_module.Worker = unsandboxed_worker  # type: ignore[misc,assignment]
        if args.records_db is None or args.smtp_port is None:
            raise SystemExit("--records-db and --smtp-port are required for the engine worker")
        db = Database(f"sqlite:///{args.records_db}")
        db.create_schema()
        smtp = SmtpConfig(host="127.0.0.1", port=args.smtp_port, mail_from="sopflow bench <bench@example.com>")
        worker = build_worker(
            client, db, smtp, settings.templates_dir, task_queue=args.task_queue, max_cached_workflows=args.cache
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
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with worker:
        print("ready", flush=True)
        await stop.wait()
    if db is not None:
        db.dispose()


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
