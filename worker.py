"""The sopflow worker: runs `ClientLifecycle` and its activities on the `sopflow` task queue.

`build_worker` is shared by `sopflow worker`, `sopflow dev`, `sopflow rehearse` and the tests, so every one of them
runs the same workflow and activity set, differing only in where mail and records go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Coroutine, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.exc import OperationalError
from temporalio.client import Client
from temporalio.worker import Worker

from activities.digest import DigestActivities
from activities.email import EmailActivities, SmtpConfig
from activities.playbooks import PlaybookActivities
from activities.records import RecordActivities
from sopflow.config import PROJECT_ROOT, Settings
from sopflow.connect import connect
from sopflow.constants import TASK_QUEUE, WORKER_GRACEFUL_SHUTDOWN
from sopflow.db import Database
from sopflow.telemetry import LifecycleObserver
from sopflow.templates import TemplateRenderer
from workflows.digest import MorningDigest
from workflows.digest_schedule import ensure_digest_schedule
from workflows.lifecycle import ClientLifecycle
from workflows.sandbox import WORKFLOW_RUNNER

log = logging.getLogger("sopflow.worker")
T = TypeVar("T")


def smtp_config(settings: Settings) -> SmtpConfig:
    return SmtpConfig(
        host=settings.smtp_host,
        port=settings.smtp_port,
        mail_from=settings.mail_from,
        username=settings.smtp_username,
        password=settings.smtp_password,
        tls=settings.smtp_tls,
    )


def form_secret_of(settings: Settings) -> str | None:
    """The per-form token key, so the links in emails carry tokens the intake (same settings) accepts."""
    return settings.form_secret.get_secret_value() if settings.form_secret else None


def build_worker(
    client: Client,
    db: Database,
    smtp: SmtpConfig,
    templates_dir: Path,
    public_url: str = "http://127.0.0.1:8000",
    task_queue: str = TASK_QUEUE,
    email_activities: type[EmailActivities] = EmailActivities,
    record_activities: type[RecordActivities] = RecordActivities,
    form_secret: str | None = None,
    playbooks_dir: Path = PROJECT_ROOT / "playbooks",
    graceful_shutdown: timedelta = WORKER_GRACEFUL_SHUTDOWN,
    max_cached_workflows: int = 1000,
    max_concurrent_workflow_tasks: int | None = None,
    max_concurrent_activities: int | None = None,
    staff_path: Path | None = None,
) -> Worker:
    """The worker; the `max_*` options default to the SDK's (None: 100 slots each), `worker_for` sets them from
    SOPFLOW_WORKER_*. `LifecycleObserver` logs and counts refused updates (`sopflow.telemetry`). `staff_path` is the
    staff directory the morning digest reads (None: no digests are sent)."""
    emails = email_activities(db, TemplateRenderer(templates_dir), smtp, public_url, form_secret=form_secret)
    playbooks = PlaybookActivities(playbooks_dir, templates_dir)
    digests = DigestActivities(db, emails, staff_path, playbooks_dir, form_secret=form_secret)
    return Worker(
        client,
        task_queue=task_queue,
        graceful_shutdown_timeout=graceful_shutdown,
        workflows=[ClientLifecycle, MorningDigest],
        activities=[*lifecycle_activities(emails, record_activities(db), playbooks), digests.send_morning_digests],
        interceptors=[LifecycleObserver()],
        max_cached_workflows=max_cached_workflows,
        max_concurrent_workflow_tasks=max_concurrent_workflow_tasks,
        max_concurrent_activities=max_concurrent_activities,
        workflow_runner=WORKFLOW_RUNNER,
    )


def lifecycle_activities(
    emails: EmailActivities, records: RecordActivities, playbooks: PlaybookActivities
) -> list[Callable[..., Any]]:
    """Every activity `ClientLifecycle` calls; a test that runs them apart from the workflows takes the same set."""
    return [
        emails.send_email,
        records.record_journal,
        records.claim_account,
        records.release_claim,
        records.release_claims,
        playbooks.load_playbook,
    ]


def worker_for(client: Client, db: Database, settings: Settings) -> Worker:
    """The production worker: mail, templates, links, form tokens and tuning as the SOPFLOW_* settings say."""
    return build_worker(
        client,
        db,
        smtp_config(settings),
        settings.templates_dir,
        settings.public_url,
        form_secret=form_secret_of(settings),
        playbooks_dir=settings.playbooks_dir,
        max_cached_workflows=settings.worker_cache_size,
        max_concurrent_workflow_tasks=settings.worker_max_concurrent_workflow_tasks,
        max_concurrent_activities=settings.worker_max_concurrent_activities,
        staff_path=settings.staff_path(),
    )


async def schedule_digests(client: Client, task_queue: str = TASK_QUEUE) -> None:
    """Bring the morning digest's schedule up to date (`workflows/digest_schedule.py`) as the worker starts. A
    failure (a server that refuses schedules, a namespace without the permission) is logged and the worker goes on:
    lifecycles matter more than a digest, and `sopflow digest schedule` can be run by hand."""
    try:
        outcome = await ensure_digest_schedule(client, task_queue=task_queue)
    except Exception as exc:
        log.warning("morning digest schedule not set up (%s: %s); the worker goes on", type(exc).__name__, exc)
        return
    log.info("morning digest schedule %s", outcome)


async def run_worker(settings: Settings | None = None) -> None:
    """Migrate the records, connect (with the process runtime: metrics, if `install_metrics` ran) and run until
    SIGTERM or SIGINT; then stop polling and let in-flight activities finish (up to the graceful shutdown timeout;
    what does not finish is retried by another worker), so a deploy loses nothing.

    The signals are taken over first, before the migration and the connection: starting takes a second or more on
    a loaded machine (building the worker validates the workflow in its sandbox), and a stop that arrives then must
    end the start, not be lost. Python leaves SIGINT ignored in a process started from a non-interactive shell's
    background job (CI agents, `nohup`, `make test &`), so a SIGINT before our handler existed was dropped and the
    worker ran on; with the default handler it skipped the orderly stop instead.
    """
    settings = settings or Settings()
    stop = asyncio.Event()
    with stop_on_signals(stop, signal.SIGTERM, signal.SIGINT):
        db = Database(settings.database_url)
        migrated = await unless_stopped(stop, until_migrated(db))
        client = None if migrated is None else await unless_stopped(stop, connect(settings=settings))
        if client is None:
            log.info("worker stopped before it started polling")
            return
        worker = worker_for(client, db, settings)
        await schedule_digests(client, worker.task_queue)
        log.info(
            "worker polling task queue %s",
            worker.task_queue,
            extra={"task_queue": worker.task_queue, "metrics": _metrics_address(settings)},
        )
        async with worker:  # a signal that came while the worker was being built is in `stop` already
            await stop.wait()
    log.info("worker stopped", extra={"task_queue": worker.task_queue})


# How long a starting worker waits between attempts to reach its records store, at most.
DATABASE_RETRY_MAX = timedelta(seconds=10)


async def until_migrated(db: Database) -> bool:
    """Migrate the records store, waiting for it as long as it takes.

    A worker (re)started while its database restarts, or before it is up (a host reboot starts both at once), must
    wait for it, not exit: an orchestrator that restarts a crashed worker would do the same, only slower and with a
    crash in the log. Refusals other than a lost or refused connection still end the start."""
    delay = 0.5
    while True:
        try:
            await asyncio.to_thread(db.upgrade)
            return True
        except OperationalError as exc:
            log.warning("records store not reachable (%s); retrying in %.0f s", type(exc.orig).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, DATABASE_RETRY_MAX.total_seconds())


async def unless_stopped(stop: asyncio.Event, work: Coroutine[Any, Any, T]) -> T | None:
    """`work`'s result, or None (with `work` cancelled) if `stop` is set first.

    Connecting may wait on an unreachable or overloaded server; a stop signal must not wait behind it. Once `work`
    has finished its result wins, even if `stop` was set meanwhile: the caller sees `stop` and stops in order.
    """
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():  # `stop` won, or we are being cancelled: `work` goes too, and is awaited
            task.cancel()
            await asyncio.wait({task})
    return None if task.cancelled() else task.result()


def _metrics_address(settings: Settings) -> str | None:
    if settings.metrics_port is None:
        return None
    return f"http://{settings.metrics_host}:{settings.metrics_port}/metrics"


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event, *signals: signal.Signals) -> Iterator[None]:
    """Turn signals into an orderly stop instead of an abrupt exit.

    Only the main thread may own signals; elsewhere (an embedding app, a test thread) this does nothing. The
    previous handlers come back afterwards, so a test session that runs the stack keeps its own.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    previous: dict[signal.Signals, object] = {}
    try:
        for sig in signals:
            previous[sig] = signal.getsignal(sig)
            loop.add_signal_handler(sig, stop.set)
        yield
    finally:
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            signal.signal(sig, handler)  # type: ignore[arg-type]


if __name__ == "__main__":
    asyncio.run(run_worker())
