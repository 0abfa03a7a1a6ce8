"""Fault injection: many compressed lifecycles on a real dev server while workers are SIGKILLed, the server (or the
PostgreSQL records store) is restarted and the SMTP relay drops connections, defers messages and answers slowly.
Afterwards nothing may be lost, duplicated or stuck.

Two topologies, one harness:
- `make chaos` (`--clients 200 --kills 5 --restarts 1`): one worker process on the SQLite records store, the dev
  server SIGKILLed and restarted on its own file;
- `make chaos-pg` (`--database postgres --workers 3 --kills 8 --db-restarts 1 --slow-every 15`): three worker
  processes on one task queue against the PostgreSQL at 127.0.0.1:5432 (a database of the run's own, created and
  dropped), random workers SIGKILLed (a replacement started each time; each kill waits for an email in flight when
  there is one), PostgreSQL itself stopped and started once mid-run so every pooled connection breaks at once,
  and a relay whose slow conversations outlast the email activity's timeout, so Temporal's retry of an attempt
  really starts while that attempt is still talking to the relay.
Both exit non-zero on any loss or duplicate; `tests/chaos/test_chaos.py` runs a small one of each in `make test`.

Every client is a Safe Balance deal, compressed so a playbook day passes in a real second (`time_scale`):
- three in four are signed and driven to ongoing management (forms, signature, tasks, launch, closeout), where the
  site-visit cadence keeps firing timers;
- one in four never signs: its contract reminds on days 7 and 12 and expires on day 14, all timer-driven.
At the end every lifecycle is closed, so the final check reads a quiet system:
- no workflow failed: each one completed;
- each client reached its expected stage before the close;
- every email step in a client's journal has one outbox row, sent, and exactly one distinct Message-ID at the sink
  (the sink also counts SMTP-level redeliveries of an already received Message-ID, which receivers discard);
- every sink message belongs to a step; the templates each kind of client must receive all arrived;
- no two SMTP conversations carried one Message-ID at the same time (a step sent twice concurrently); a resend after
  an attempt hung up is a redelivery, which receivers discard by Message-ID, and is counted, not a problem;
- no outbox row is left pending or claimed;
- each journal is gap-free (seq 1..n, once each), each deal has one record and one row per stage move;
- on PostgreSQL: once quiet, each live worker holds no more connections than its pool allows, none is left by a
  killed worker, and none at all once the workers stopped.

It prints every problem it finds; with `--keep DIR` it also writes them to `DIR/problems.txt` (one per line) and
the counts to `DIR/report.json`, beside the server db, the records and the worker's log.

Compressed time makes wall-clock expectations fragile: a playbook day is a real second, so a worker that is late by
seconds (SIGKILLed, restarting, a loaded machine) is late by days. Nothing here assumes how fast the machine is:
- a signed client's signature can reach its lifecycle after the 14-day contract expired (a server restart between
  sending the contract and signing it); the lifecycle then rightly ignores it, and the driver does what a rep does:
  re-sends the contract and signs again (`contracts_resent` counts it);
- waits end on progress, not on a total: they give up only when no client has moved for `stall_timeout` seconds;
- each fault waits for the worker to be polling again, so every kill hits a running worker, however slow it starts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import psycopg
from sqlalchemy import func, select
from temporalio.client import (
    Client,
    RPCTimeoutOrCancelledError,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import SearchAttributeKey, WorkflowIDConflictPolicy
from temporalio.service import RPCError

from sopflow.config import PROJECT_ROOT, Settings
from sopflow.constants import ACTIVITY_TIMEOUT
from sopflow.db import Database, DealRow, JournalRow, OutboxEmail, StageTransition
from sopflow.mailsink import MailSink, free_port
from sopflow.models import Advance, Close, CompleteTask, ExternalEvent, SetFields, SubmitForm, workflow_id
from sopflow.playbook_checks import load_playbook
from starter.devserver import HOST, register_search_attributes, spawn_server, wait_until_serving
from starter.lifecycles import Request, send, start_lifecycle
from starter.rehearse import resolve_dates
from workflows.lifecycle import ClientLifecycle
from workflows.options import EMAIL_RETRY

SOPFLOW = str(Path(sys.executable).parent / "sopflow")
DEAL = {"rep_email": "rep@example.com", "rep_id": "owner-7", "account_manager_email": "am@example.com"}
TARGETING = {
    "company": "Example Clinic {n}",
    "signer_name": "Client Signer",
    "signer_email": "signer-{n}@example.com",
    "service_tier": "Basic",
}
CONTRACT_REQUEST = {"agreement": "Safe Balance", "term_months": 12, "client_agreed_on": "$today"}
# The Safe Balance happy path (playbooks/scenarios/safe_balance_happy_path.yaml) as requests, for a Basic client.
SIGNED_PATH: list[tuple[str, Any]] = [
    ("form", ("targeting", TARGETING)),
    ("form", ("contract_request", CONTRACT_REQUEST)),
    ("event", "contract_signed"),
    ("task", "onsite_appointment"),
    ("task", "services_onboarded"),
    ("task", "prelaunch_call"),
    ("task", "cleared_for_launch"),
    ("set", {"launch_date": "$today"}),
    ("advance", "launch"),
    ("task", "launch_checklist"),
    ("form", ("closeout", {"launched_on": "$today", "staff_trained": "yes", "all_running": "yes"})),
]
UNSIGNED_PATH = SIGNED_PATH[:2]
# An unsigned contract expires on day 14; 30 days later an expired contract not re-sent closes by itself.
EXPECTED_STAGES = {"signed": {"ongoing"}, "unsigned": {"contract_expired", "closed_expired"}}
# Templates each kind of client must have received by the end, whatever the timing.
MUST_RECEIVE = {
    "signed": {"account_claimed", "contract_sent", "welcome"},
    "unsigned": {"account_claimed", "contract_sent", "contract_reminder", "contract_expired"},
}


@dataclass
class ChaosConfig:
    clients: int = 200
    kills: int = 5
    # Dev server restarts (SIGKILL, then started again on the same SQLite file).
    restarts: int = 1
    # Worker processes on the one task queue; each kill picks one at random.
    workers: int = 1
    # The records store: a SQLite file in the run's folder, or a database of the run's own on the local PostgreSQL.
    database: Literal["sqlite", "postgres"] = "sqlite"
    # PostgreSQL stops (fast: every connection cut) and starts again after `db_down_seconds`.
    db_restarts: int = 0
    db_down_seconds: float = 3.0
    # One SMTP connection in n is dropped and one message in n deferred with a 451, at random.
    smtp_fail_every: int = 7
    # One SMTP conversation in n answers MAIL, RCPT and DATA after `slow_seconds` each: 3 x 12 s outlasts the email
    # activity's 30 s timeout while each answer stays within the client's 20 s command timeout.
    slow_every: int = 0
    slow_seconds: float = 12.0
    seed: int | None = None
    # Playbook seconds per real second: a day per second.
    time_scale: float = 86400
    # Once every client is where it must be, how long the cadence keeps firing before everything is closed.
    settle_seconds: float = 5
    # The waits for clients to get where they must, and for closed ones to complete, give up (and the check reports
    # those that did not) only after this long without any of them moving: longer than a killed worker's activity
    # takes to be retried (its 30 s timeout) plus the email retry backoff, so slow is never taken for stuck.
    stall_timeout: float = 180
    concurrency: int = 20
    # Seconds between two faults (worker kill, server restart).
    interval: float = 3.0


@dataclass
class ChaosReport:
    clients: int = 0
    workers: int = 0
    database: str = ""
    seed: int = 0
    kills: int = 0
    kills_while_sending: int = 0
    server_restarts: int = 0
    db_restarts: int = 0
    smtp_dropped: int = 0
    smtp_deferred: int = 0
    smtp_slow: int = 0
    request_retries: int = 0
    contracts_resent: int = 0
    emails_expected: int = 0
    emails_arrived: int = 0
    emails_redelivered: int = 0
    db_connections_at_end: dict[str, int] = field(default_factory=dict)
    load_average: str = ""
    wall_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


T = TypeVar("T")
# The server down, or a worker killed while an update waited for it: the request is sent again as it is.
RETRYABLE = (RPCError, RPCTimeoutOrCancelledError, asyncio.TimeoutError)


# Connections one worker process may hold: SQLAlchemy's default pool (5) plus its overflow (10). Its records and
# email activities reach the database from the default thread pool, which on these machines is smaller still.
POOL_CAPACITY = 15
# The local PostgreSQL the tests use (trust auth), and how to stop and start it (Debian's cluster tools).
POSTGRES_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def pg_cluster_command(action: str) -> list[str]:
    """`pg_ctlcluster` for the machine's one cluster (its version is the folder under /etc/postgresql)."""
    (version,) = os.listdir("/etc/postgresql")
    return [
        "pg_ctlcluster",
        "--skip-systemctl-redirect",
        version,
        "main",
        action,
        *(["-m", "fast"] * (action == "stop")),
    ]


class Worker:
    """One `sopflow worker` process, its log copied into worker.log, and whether it is polling yet."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log: Any) -> None:
        self.name, self.proc, self.log = name, proc, log
        self.polling = asyncio.Event()
        assert proc.stderr is not None
        self.copier = asyncio.create_task(self._copy_log(proc.stderr))

    async def _copy_log(self, stream: asyncio.StreamReader) -> None:
        """Into worker.log, each line prefixed with the worker's name, noting its "polling" line: starting takes
        seconds on a loaded machine, and a fault aimed at a worker that is not polling yet would test nothing."""
        while line := await stream.readline():
            self.log.write(self.name.encode() + b" " + line)
            if b"worker polling task queue" in line:
                self.polling.set()


# Stacks not stopped yet: a run cut short from outside (pytest's timeout interrupts the event loop, so no `finally`
# of a coroutine runs) leaves them to `tests/chaos/conftest.py`, which kills what they started.
LIVE_STACKS: list[Stack] = []


class Stack:
    """The dev server, `workers` worker processes and the records store, each killable and restartable."""

    def __init__(self, workdir: Path, sink: MailSink, config: ChaosConfig) -> None:
        LIVE_STACKS.append(self)
        self.database_name = f"sopflow_chaos_{uuid.uuid4().hex[:10]}" if config.database == "postgres" else None
        self.settings = Settings(
            home=workdir,
            dev_temporal_port=free_port(),
            dev_ui_port=free_port(),
            database_url=(
                POSTGRES_URL.format(name=self.database_name)
                if self.database_name
                else f"sqlite:///{workdir / 'records.db'}"
            ),
            smtp_host=sink.host,
            smtp_port=sink.port,
        )
        self.address = f"{HOST}:{self.settings.dev_temporal_port}"
        self.server: asyncio.subprocess.Process | None = None
        self.workers: list[Worker] = []
        self.started = 0
        self.worker_log = (workdir / "worker.log").open("ab")

    def create_database(self) -> None:
        if self.database_name:
            with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{self.database_name}"')

    def drop_database(self) -> None:
        if self.database_name:
            with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{self.database_name}" WITH (FORCE)')

    async def start_server(self) -> Client:
        self.server = await spawn_server(self.settings)
        log = self.settings.home.resolve() / "temporal.log"
        client = await wait_until_serving(self.server, self.address, log, self.settings)
        await register_search_attributes(self.address)
        return client

    async def kill_server(self) -> None:
        assert self.server is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.server.pid, signal.SIGKILL)
        await self.server.wait()

    async def restart_database(self, down_seconds: float) -> None:
        """Stop PostgreSQL (fast: every session cut at once), keep it down a while, start it again. It is started
        again whatever happens in between: other tests and sessions share it."""
        await _run(pg_cluster_command("stop"))
        try:
            await asyncio.sleep(down_seconds)
        finally:
            await _run(pg_cluster_command("start"))

    async def start_worker(self, slot: int | None = None) -> None:
        """A new worker process, in `slot` (replacing a killed one) or added. Its database connections carry its
        name (`application_name`), so the end check can tell whose they are."""
        self.started += 1
        name = f"w{self.started}"
        url = self.settings.database_url
        if self.database_name:
            url += f"?application_name=chaos-{name}"
        env = {
            **os.environ,
            "TEMPORAL_ADDRESS": self.address,
            "TEMPORAL_NAMESPACE": "default",
            "SOPFLOW_HOME": str(self.settings.home),
            "SOPFLOW_DATABASE_URL": url,
            "SOPFLOW_SMTP_HOST": self.settings.smtp_host,
            "SOPFLOW_SMTP_PORT": str(self.settings.smtp_port),
        }
        proc = await asyncio.create_subprocess_exec(
            SOPFLOW,
            "worker",
            env=env,
            stdout=self.worker_log,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        worker = Worker(name, proc, self.worker_log)
        if slot is None:
            self.workers.append(worker)
        else:
            self.workers[slot] = worker

    async def all_polling(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                for worker in self.workers:
                    await worker.polling.wait()
                return True
        return False

    async def kill_worker(self, slot: int) -> None:
        """SIGKILL the worker in `slot` and start its replacement."""
        worker = self.workers[slot]
        with contextlib.suppress(ProcessLookupError):
            worker.proc.kill()
        await worker.proc.wait()
        await worker.copier
        await self.start_worker(slot)

    async def stop(self) -> None:
        for worker in self.workers:
            if worker.proc.returncode is None:
                worker.proc.send_signal(signal.SIGTERM)
        for worker in self.workers:
            await worker.proc.wait()
            await worker.copier  # the worker is gone: its stderr ends
        if self.server is not None and self.server.returncode is None:
            await self.kill_server()
        self.worker_log.close()
        LIVE_STACKS.remove(self)

    def kill_now(self) -> None:
        """Without the event loop: SIGKILL the server's and every worker's process group (each has its own
        session), drop the run's database; for a run that never reached `stop`."""
        for proc in [self.server, *(w.proc for w in self.workers)]:
            if proc is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(psycopg.Error):
            self.drop_database()
        self.worker_log.close()
        LIVE_STACKS.remove(self)


async def _run(command: list[str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(command)} exited {proc.returncode}: {out.decode(errors='replace').strip()}")


def db_connections(database: str) -> dict[str, int]:
    """Sessions open on the run's database, by application name (each worker's own; "" for anything else)."""
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT application_name, count(*) FROM pg_stat_activity WHERE datname = %s GROUP BY 1", (database,)
        ).fetchall()
    return {str(name): int(count) for name, count in rows}


def kind_of(n: int) -> str:
    return "unsigned" if n % 4 == 3 else "signed"


def fill(value: Any, n: int) -> Any:
    """Number a template step for client n (its company, its signer)."""
    if isinstance(value, dict):
        return {k: fill(v, n) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(fill(v, n) for v in value)
    return value.format(n=n) if isinstance(value, str) else value


async def retried(call: Callable[[], Awaitable[T]], what: str, report: ChaosReport) -> T | None:
    """`call` again and again through worker kills and the server restart; a refusal is a problem, not a retry.

    Updates carry an id, so an update applied before its answer was lost returns that answer instead of applying
    twice; events carry an event id the engine de-duplicates.
    """
    for attempt in range(600):
        try:
            return await call()
        except WorkflowUpdateFailedError as exc:
            report.problems.append(f"{what}: refused: {exc.cause}")
            return None
        except RETRYABLE:
            report.request_retries += 1
            await asyncio.sleep(min(0.2 * (attempt + 1), 2))
    report.problems.append(f"{what}: gave up after 600 attempts")
    return None


async def request(handle: WorkflowHandle[Any, Any], step: tuple[str, Any], update_id: str) -> None:
    """One scripted step, sent as the CLI sends it; the update id (an event's event id) makes a retry a no-op."""
    kind, arg = step
    now = datetime.now(UTC)
    if kind == "event":
        await send(handle, ExternalEvent(name=arg, event_id=update_id, source="chaos"))
        return
    change: Request
    if kind == "form":
        form, fields = arg
        change = SubmitForm(form=form, fields=resolve_dates(fields, now), actor="chaos")
    elif kind == "task":
        change = CompleteTask(task=arg)
    elif kind == "set":
        change = SetFields(fields=resolve_dates(arg, now), actor="chaos")
    else:
        change = Advance(to=arg)
    await send(handle, change, update_id)


async def drive(client: Client, n: int, config: ChaosConfig, report: ChaosReport, gate: asyncio.Semaphore) -> None:
    deal_id = f"CHAOS-{n:04d}"
    playbook = load_playbook(PROJECT_ROOT / "playbooks" / "safe_balance.yaml")
    async with gate:
        handle = await retried(
            lambda: start_lifecycle(
                client, playbook, deal_id, DEAL, "chaos", WorkflowIDConflictPolicy.USE_EXISTING, config.time_scale
            ),
            f"{deal_id}: start",
            report,
        )
        if handle is None:
            return
        path = SIGNED_PATH if kind_of(n) == "signed" else UNSIGNED_PATH
        for i, step in enumerate(path):
            update_id = f"{deal_id}-{i}"
            if step == SIGNATURE:
                await sign(handle, update_id, config, report)
            else:
                await retried(partial(request, handle, fill(step, n), update_id), update_id, report)


SIGNATURE = ("event", "contract_signed")
# How often one client's contract may expire before its signature got in: more means the run is far too slow for
# its compressed clock, which is worth a problem of its own.
MAX_RESENDS = 3


async def sign(handle: WorkflowHandle[Any, Any], event_id: str, config: ChaosConfig, report: ChaosReport) -> None:
    """Sign the contract, as often as it takes.

    A contract expires 14 playbook days (14 real seconds) after it was sent. The signal normally follows at once,
    but a server restart in between can hold it back longer; a worker that is back first fires the expiry, and the
    late signature is recorded and ignored, as it must be. A rep would re-send the contract (`advance` from
    contract_expired back to contract), and so does this; each signature has its own event id, since a repeated one
    is dropped as a duplicate.
    """
    for attempt in range(MAX_RESENDS + 1):
        signature = f"{event_id}.{attempt}"
        event = ExternalEvent(name="contract_signed", event_id=signature, source="chaos")
        await retried(partial(handle.signal, ClientLifecycle.event, event), signature, report)
        stage = await stage_leaving(handle, "contract", config, report)
        if stage != "contract_expired":
            if stage == "closed_expired":
                report.problems.append(f"{handle.id}: its contract expired and closed before it could be re-sent")
            return  # signed (prelaunch), or a problem already reported
        report.contracts_resent += 1
        resend = partial(
            handle.execute_update, ClientLifecycle.advance, Advance(to="contract"), id=f"{event_id}.resend.{attempt}"
        )
        await retried(resend, f"{handle.id}: re-send contract", report)
    report.problems.append(f"{handle.id}: the contract expired {MAX_RESENDS + 1} times before a signature got in")


async def stage_leaving(handle: WorkflowHandle[Any, Any], stage: str, config: ChaosConfig, report: ChaosReport) -> str:
    """The client's stage once it is no longer `stage` (a signal has no answer: its effect is read back). The
    contract stage always ends, by the signature or by its deadline; only a stuck lifecycle stays longer than
    `stall_timeout`."""
    deadline = time.monotonic() + config.stall_timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(*RETRYABLE):
            current = (await handle.query(ClientLifecycle.status)).stage
            if current != stage:
                return current
        await asyncio.sleep(0.5)
    report.problems.append(f"{handle.id}: still in {stage} after {config.stall_timeout:.0f} s")
    return stage


async def chaos(
    stack: Stack,
    sink: MailSink,
    config: ChaosConfig,
    report: ChaosReport,
    rng: random.Random,
    driving: asyncio.Future[Any],
) -> None:
    """Kill a random worker `kills` times, and restart the server `restarts` times and PostgreSQL `db_restarts`
    times in the middle of the kills, one event every `interval` seconds while clients are being driven."""
    half = config.kills // 2
    middle = ["restart"] * config.restarts + ["db_restart"] * config.db_restarts
    events = ["kill"] * half + middle + ["kill"] * (config.kills - half)
    for event in events:
        if not await stack.all_polling(config.stall_timeout):
            report.problems.append(f"a worker was not polling {config.stall_timeout:.0f} s after it started")
        await asyncio.sleep(config.interval)
        if event == "kill":
            await email_in_flight(sink, config.interval)
            report.kills_while_sending += bool(sink.open_conversations)
            await stack.kill_worker(rng.randrange(len(stack.workers)))
            report.kills += 1
        elif event == "restart":
            await stack.kill_server()
            await stack.start_server()
            report.server_restarts += 1
        else:
            await stack.restart_database(config.db_down_seconds)
            report.db_restarts += 1
    await driving


async def email_in_flight(sink: MailSink, patience: float) -> None:
    """Until an SMTP conversation is open (a kill then likely hits a worker mid-send), for at most `patience` s."""
    deadline = time.monotonic() + patience
    while not sink.open_conversations and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def until_progress_stops(
    pending: set[int], done: Callable[[int], Awaitable[bool]], stall_timeout: float, pause: float
) -> set[int]:
    """Check the `pending` clients over and over, dropping each one for which `done` holds, until none is left or
    none has been dropped for `stall_timeout` seconds; returns those left.

    A total deadline would take a slow run (a loaded machine, a worker just killed) for a stuck one; this waits as
    long as clients keep moving and gives up only when nothing moves.
    """
    last_progress = time.monotonic()
    while pending and time.monotonic() - last_progress < stall_timeout:
        for n in sorted(pending):
            if await done(n):
                pending.discard(n)
                last_progress = time.monotonic()
        if pending:
            await asyncio.sleep(pause)
    return pending


async def until_expected(client: Client, config: ChaosConfig, report: ChaosReport) -> None:
    """Until every client is in its expected stage, or none has got there for `stall_timeout` (the final check then
    reports those that did not)."""

    async def arrived(n: int) -> bool:
        handle = client.get_workflow_handle(workflow_id(f"CHAOS-{n:04d}"))
        with contextlib.suppress(*RETRYABLE):
            return (await handle.query(ClientLifecycle.status)).stage in EXPECTED_STAGES[kind_of(n)]
        return False

    await until_progress_stops(set(range(config.clients)), arrived, config.stall_timeout, 0.5)


async def close_all(client: Client, clients: int, report: ChaosReport) -> dict[str, str]:
    """The stage each client reached, then close it so the system goes quiet for the final check."""
    reached: dict[str, str] = {}

    async def record_and_close(handle: WorkflowHandle[Any, Any]) -> None:
        status = await handle.query(ClientLifecycle.status)
        reached[handle.id] = status.stage
        if status.outcome is None:
            close = Close(outcome="cancelled", reason="chaos run over", actor="chaos")
            await handle.execute_update(ClientLifecycle.close, close, id=f"{handle.id}-close")

    for n in range(clients):
        handle = client.get_workflow_handle(workflow_id(f"CHAOS-{n:04d}"))
        await retried(partial(record_and_close, handle), f"{handle.id}: close", report)
    return reached


async def wait_completed(client: Client, config: ChaosConfig) -> dict[str, WorkflowExecutionStatus]:
    """Each closed client's final status. A closed lifecycle still sends its last emails before it completes, and
    an email held by a killed worker waits for its activity timeout first: wait while clients keep completing."""
    statuses: dict[str, WorkflowExecutionStatus] = {}

    async def finished(n: int) -> bool:
        handle = client.get_workflow_handle(workflow_id(f"CHAOS-{n:04d}"))
        statuses.setdefault(handle.id, WorkflowExecutionStatus.RUNNING)  # never described: reported as running
        with contextlib.suppress(*RETRYABLE):
            statuses[handle.id] = (await handle.describe()).status  # type: ignore[assignment]
        return statuses[handle.id] != WorkflowExecutionStatus.RUNNING

    await until_progress_stops(set(range(config.clients)), finished, completion_patience(config), 0.2)
    return statuses


def completion_patience(config: ChaosConfig) -> float:
    """How long the last clients may go without completing before they count as stuck. A closed lifecycle completes
    once its outbox is empty, and an email that the flaky relay refused several times in a row waits out its retry
    backoff (up to EMAIL_RETRY's maximum interval, after an attempt that may have run to its timeout): that quiet is
    progress, not a hang. Seen in a loaded full run: one email in backoff for longer than the 180 s stall window."""
    longest_quiet = EMAIL_RETRY.maximum_interval or timedelta(0)
    return max(config.stall_timeout, (longest_quiet + ACTIVITY_TIMEOUT).total_seconds() + 60)


# The server's own record of a workflow whose tasks keep failing (a nondeterminism, a bug in workflow code).
REPORTED_PROBLEMS = SearchAttributeKey.for_keyword_list("TemporalReportedProblems")


async def failing_tasks(client: Client, folder: Path) -> list[str]:
    """Lifecycles whose workflow task fails, with the cause the server reports, so a nondeterminism is named in the
    report and not only seen as a client that never got where it should. Each one's history is saved in
    `folder/histories/` as the SDK's replayer reads it: a failure that took a loaded hour to meet is then replayed
    in a second (and can join `tests/histories/nondeterministic/`)."""
    found = []
    async for execution in client.list_workflows("TemporalReportedProblems IS NOT NULL"):
        causes = execution.typed_search_attributes.get(REPORTED_PROBLEMS) or []
        saved = folder / "histories" / f"{execution.id}.json"
        saved.parent.mkdir(exist_ok=True)
        history = await client.get_workflow_handle(execution.id, run_id=execution.run_id).fetch_history()
        saved.write_text(history.to_json())
        found.append(f"{execution.id}: its workflow task fails ({', '.join(causes)}); history in {saved}")
    return found


def verify(
    db: Database, sink: MailSink, config: ChaosConfig, reached: dict[str, str], statuses: dict[str, Any]
) -> ChaosReport:
    report = ChaosReport(clients=config.clients)
    problems = report.problems
    for wf, status in statuses.items():
        if status != WorkflowExecutionStatus.COMPLETED:
            problems.append(f"{wf}: ended {getattr(status, 'name', status)}, not completed")
    for n in range(config.clients):
        wf = workflow_id(f"CHAOS-{n:04d}")
        expected = EXPECTED_STAGES[kind_of(n)]
        if reached.get(wf) not in expected:
            problems.append(f"{wf}: reached '{reached.get(wf)}', expected {' or '.join(sorted(expected))}")

    by_id: dict[str, list[Any]] = {}
    for message in sink.messages:
        by_id.setdefault(str(message["Message-ID"]), []).append(message)
    with db.session() as session:
        outbox = {row.key: row for row in session.scalars(select(OutboxEmail))}
        journal = list(session.scalars(select(JournalRow).order_by(JournalRow.workflow_id, JournalRow.seq)))
        deals = Counter(session.scalars(select(DealRow.workflow_id)))
        counted = select(StageTransition.workflow_id, func.count()).group_by(StageTransition.workflow_id)
        moves: dict[str, int] = {wf: count for wf, count in session.execute(counted).all()}
    seqs: dict[str, list[int]] = {}
    stage_entries: Counter[str] = Counter()
    received: dict[str, set[str]] = {}
    for entry in journal:
        seqs.setdefault(entry.workflow_id, []).append(entry.seq)
        stage_entries[entry.workflow_id] += entry.kind == "stage"
        if entry.kind != "email" or entry.detail.get("status") == "skipped":
            continue
        report.emails_expected += 1
        message_id = entry.detail.get("message_id")
        # already_sent: a retry found the outbox row of an attempt killed after the server accepted the message.
        if entry.detail.get("status") not in ("sent", "already_sent") or message_id is None:
            problems.append(f"{entry.workflow_id} #{entry.seq}: email {entry.detail.get('template')} not sent")
            continue
        if len(by_id.get(message_id, [])) != 1:
            problems.append(f"{entry.workflow_id} #{entry.seq}: {len(by_id.get(message_id, []))} messages {message_id}")
            continue
        report.emails_arrived += 1
        received.setdefault(entry.workflow_id, set()).add(entry.detail["template"])
    journaled = {e.detail.get("message_id") for e in journal if e.kind == "email"}
    for message_id in by_id.keys() - journaled:
        problems.append(f"the sink got {message_id}, which no journaled email step sent")
    for key, row in outbox.items():
        if row.status != "sent" or row.claim_token is not None:
            problems.append(f"outbox {key}: {row.status}{', still claimed' if row.claim_token else ''}")
    for message_id in sink.overlapping():
        problems.append(f"{message_id}: two SMTP conversations carried it at the same time")
    for n in range(config.clients):
        wf = workflow_id(f"CHAOS-{n:04d}")
        missing = MUST_RECEIVE[kind_of(n)] - received.get(wf, set())
        if missing:
            problems.append(f"{wf}: never received {', '.join(sorted(missing))}")
        numbers = seqs.get(wf, [])
        if numbers != list(range(1, len(numbers) + 1)):
            problems.append(f"{wf}: journal seq not 1..{len(numbers)} exactly once")
        if deals.get(wf) != 1:
            problems.append(f"{wf}: {deals.get(wf, 0)} deal records")
        if moves.get(wf, 0) != stage_entries[wf]:
            problems.append(f"{wf}: {moves.get(wf, 0)} stage rows for {stage_entries[wf]} stage moves")
    report.emails_redelivered = sink.duplicates
    report.smtp_dropped, report.smtp_deferred = sink.injected["dropped"], sink.injected["deferred"]
    report.smtp_slow = sink.slowed
    return report


def connection_problems(live: dict[str, int], after_stop: dict[str, int], workers: list[str]) -> list[str]:
    """What the database's sessions say about leaks: `live` counted once the run is quiet, `after_stop` once every
    worker stopped."""
    problems = []
    for name, count in live.items():
        worker = name.removeprefix("chaos-")
        if name.startswith("chaos-") and worker not in workers:
            problems.append(f"{count} connections of killed worker {worker} still open")
        elif name.startswith("chaos-") and count > POOL_CAPACITY:
            problems.append(f"worker {worker} holds {count} connections, more than its pool's {POOL_CAPACITY}")
    for name, count in after_stop.items():
        if name.startswith("chaos-"):
            problems.append(f"{count} connections of {name} still open after the workers stopped")
    return problems


async def run_chaos(config: ChaosConfig, workdir: Path) -> ChaosReport:
    started = time.monotonic()
    seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    with MailSink(
        fail_every=config.smtp_fail_every, slow_every=config.slow_every, slow_seconds=config.slow_seconds
    ) as sink:
        stack = Stack(workdir, sink, config)
        stack.create_database()
        db = Database(stack.settings.database_url)
        counters = ChaosReport()
        live: dict[str, int] = {}
        after_stop: dict[str, int] = {}
        try:
            db.upgrade()  # before the workers start, as the compose stack's `migrate` does
            client = await stack.start_server()
            for _ in range(config.workers):
                await stack.start_worker()
            gate = asyncio.Semaphore(config.concurrency)
            driving = asyncio.gather(*(drive(client, n, config, counters, gate) for n in range(config.clients)))
            await chaos(stack, sink, config, counters, rng, asyncio.ensure_future(driving))
            # A killed worker's activity is retried only after its timeout, which a compressed clock turns into weeks:
            # wait for every client to get where it must (unsigned contracts expire on playbook day 14), then let
            # the signed clients' site visits fall due a while longer.
            await until_expected(client, config, counters)
            await asyncio.sleep(config.settle_seconds)
            reached = await close_all(client, config.clients, counters)
            statuses = await wait_completed(client, config)
            failing = await failing_tasks(client, workdir)
            if stack.database_name:
                live = db_connections(stack.database_name)
        finally:
            await stack.stop()
            db.dispose()
            if stack.database_name:
                after_stop = db_connections(stack.database_name)
        report = verify(db, sink, config, reached, statuses)
        report.problems = failing + report.problems
        if stack.database_name:
            workers = [w.name for w in stack.workers]
            report.problems += connection_problems(live, after_stop, workers)
            report.db_connections_at_end = {k.removeprefix("chaos-"): v for k, v in sorted(live.items()) if k}
            stack.drop_database()
    report.workers, report.database, report.seed = config.workers, config.database, seed
    report.kills, report.kills_while_sending = counters.kills, counters.kills_while_sending
    report.server_restarts, report.db_restarts = counters.server_restarts, counters.db_restarts
    report.request_retries, report.contracts_resent = counters.request_retries, counters.contracts_resent
    report.problems = counters.problems + report.problems
    report.load_average = " ".join(f"{x:.2f}" for x in os.getloadavg())
    report.wall_seconds = round(time.monotonic() - started, 1)
    return report


def counts(report: ChaosReport) -> dict[str, Any]:
    """The report's figures, with the number of problems rather than their text (one JSON line for the log)."""
    return {**asdict(report), "problems": len(report.problems), "ok": report.ok}


def print_report(report: ChaosReport) -> None:
    """Every figure, then every problem: a run with a thousand problems is read whole, or from `--keep`'s files."""
    rows = [(k, v) for k, v in asdict(report).items() if k != "problems"]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    for problem in report.problems:
        print(f"PROBLEM: {problem}")
    print(json.dumps(counts(report)))


def write_report(report: ChaosReport, folder: Path) -> None:
    """`problems.txt` (one per line, empty when none; a line break inside one, from a quoted error, is written as
    `\\n` so that `wc -l` counts problems) and `report.json` (the counts) into the kept run's folder, beside the data
    they are about."""
    lines = (problem.replace("\n", "\\n") for problem in report.problems)
    (folder / "problems.txt").write_text("".join(f"{line}\n" for line in lines))
    (folder / "report.json").write_text(json.dumps(counts(report), indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = ChaosConfig()
    parser.add_argument("--clients", type=int, default=defaults.clients)
    parser.add_argument("--kills", type=int, default=defaults.kills)
    parser.add_argument("--restarts", type=int, default=defaults.restarts, help="dev server restarts")
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default=defaults.database)
    parser.add_argument("--db-restarts", type=int, default=defaults.db_restarts, help="PostgreSQL stop/starts")
    parser.add_argument("--smtp-fail-every", type=int, default=defaults.smtp_fail_every)
    parser.add_argument("--slow-every", type=int, default=defaults.slow_every, help="one SMTP conversation in n slow")
    parser.add_argument("--slow-seconds", type=float, default=defaults.slow_seconds)
    parser.add_argument("--time-scale", type=float, default=defaults.time_scale)
    parser.add_argument("--seed", type=int, help="which workers are killed and which SMTP calls fail (printed)")
    parser.add_argument(
        "--keep",
        type=Path,
        help="keep the run's files here (dev server db, records, worker log), with problems.txt and report.json",
    )
    args = parser.parse_args()
    config = ChaosConfig(
        clients=args.clients,
        kills=args.kills,
        restarts=args.restarts,
        workers=args.workers,
        database=args.database,
        db_restarts=args.db_restarts,
        smtp_fail_every=args.smtp_fail_every,
        slow_every=args.slow_every,
        slow_seconds=args.slow_seconds,
        time_scale=args.time_scale,
        seed=args.seed,
    )
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        report = asyncio.run(run_chaos(config, args.keep))
        write_report(report, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="sopflow-chaos-") as workdir:
            report = asyncio.run(run_chaos(config, Path(workdir)))
    print_report(report)
    sys.stdout.flush()
    os._exit(0 if report.ok else 1)  # sdk-python #300: no crash at interpreter exit after servers and workers ran


if __name__ == "__main__":
    main()
