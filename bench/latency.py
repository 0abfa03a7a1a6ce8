"""Latency: from a request to the email it causes being accepted by the SMTP sink.

In Safe Balance a site visit form that reports needs emails corporate at once (`site_visit_needs`, the form's
on_submit action), so the bench takes clients to ongoing management (not measured), then submits site visits:
`--events` of them, `--concurrency` at a time, each client having at most one in flight. For each one the clock
starts just before `submit_form` is sent and stops when the sink accepts that client's message: the arrival time is
taken by the sink's own `on_message` hook, in the sink's thread, before the client is told 250. Both ends read
the same monotonic clock.

    python -m bench.latency                              # 1,000 events, 100 clients, 10 at a time
    python -m bench.latency --events 50 --clients 10     # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from email.message import EmailMessage
from typing import Any

from temporalio.client import WorkflowHandle

from bench.common import (
    BenchError,
    dev_server,
    emit,
    exit_now,
    machine,
    percentile,
    rss_mb,
    table,
    wait_quiet,
    worker_process,
)
from bench.safe_balance import EMAILS_TO_ONGOING, in_parallel, playbook, send, site_visit, start, to_ongoing, today
from sopflow.constants import TASK_QUEUE
from sopflow.mailsink import MailSink

EMAIL_TIMEOUT = 60.0
SETUP_CONCURRENCY = 25
TEMPLATE = "safe_balance/site_visit_needs"


class Arrivals:
    """Hands each message the sink accepts to whoever waits for that workflow's next email, with its arrival time.

    Called in the sink's thread; the waiting side is an asyncio future, resolved thread-safely.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiting: dict[str, asyncio.Future[tuple[float, EmailMessage]]] = {}
        self.unexpected = 0
        self._lock = threading.Lock()

    def expect(self, workflow_id: str) -> asyncio.Future[tuple[float, EmailMessage]]:
        future: asyncio.Future[tuple[float, EmailMessage]] = self.loop.create_future()
        with self._lock:
            self.waiting[workflow_id] = future
        return future

    def on_message(self, message: EmailMessage, _recipients: list[str]) -> None:
        arrived = time.perf_counter()
        workflow_id = str(message.get("X-Sopflow-Key", "")).split("/", 1)[0]
        with self._lock:
            future = self.waiting.pop(workflow_id, None)
        if future is None:
            self.unexpected += 1
            return
        self.loop.call_soon_threadsafe(_resolve, future, (arrived, message))


def _resolve(future: asyncio.Future[tuple[float, EmailMessage]], value: tuple[float, EmailMessage]) -> None:
    if not future.done():
        future.set_result(value)


async def run(events: int = 1000, clients: int = 100, concurrency: int = 10) -> dict[str, Any]:
    concurrency = max(1, min(concurrency, clients))
    book, day = playbook(), today()
    loop = asyncio.get_running_loop()
    arrivals = Arrivals(loop)
    email_ms: list[float] = []
    update_ms: list[float] = []
    async with dev_server() as server:
        with MailSink(on_message=arrivals.on_message) as sink:
            records = server.home / "records.db"
            async with worker_process(server, "engine", TASK_QUEUE, records_db=records, smtp_port=sink.port) as w:

                async def launch(i: int) -> WorkflowHandle[Any, Any]:
                    handle = await start(server.client, book, f"L-{i}")
                    for request in to_ongoing(i, day):
                        await send(handle, request)
                    await wait_quiet(handle)
                    return handle

                handles = await in_parallel(clients, SETUP_CONCURRENCY, launch)  # not measured
                setup_emails = len(sink.messages)
                if setup_emails != clients * EMAILS_TO_ONGOING or arrivals.unexpected != setup_emails:
                    raise BenchError(f"{setup_emails} setup emails for {clients} clients")
                arrivals.unexpected = 0

                async def lane(j: int) -> None:
                    mine = handles[j::concurrency]
                    for k in range(j, events, concurrency):
                        handle = mine[(k // concurrency) % len(mine)]
                        arrived = arrivals.expect(handle.id)
                        sent = time.perf_counter()
                        await send(handle, site_visit(day, k))
                        update_ms.append((time.perf_counter() - sent) * 1000)
                        try:
                            at, message = await asyncio.wait_for(arrived, EMAIL_TIMEOUT)
                        except TimeoutError:
                            raise BenchError(f"no email from {handle.id} within {EMAIL_TIMEOUT:.0f} s") from None
                        if message["X-Sopflow-Template"] != TEMPLATE:
                            raise BenchError(f"{handle.id} sent {message['X-Sopflow-Template']}, not {TEMPLATE}")
                        email_ms.append((at - sent) * 1000)

                started = time.perf_counter()
                await asyncio.gather(*(lane(j) for j in range(concurrency)))
                seconds = time.perf_counter() - started
                for handle in handles:
                    await wait_quiet(handle)  # every record written: no late extra email either
                emails = len(sink.messages) - setup_emails
                if emails != events or arrivals.unexpected or sink.duplicates:
                    raise BenchError(
                        f"{emails} emails (+{sink.duplicates} duplicates, {arrivals.unexpected} unexpected) "
                        f"for {events} events"
                    )
                memory = {"server_rss_mb": round(rss_mb(server.pid), 1), "worker_rss_mb": round(rss_mb(w.pid), 1)}

    def stats(values: list[float]) -> dict[str, float]:
        return {
            "p50": round(percentile(values, 50), 1),
            "p95": round(percentile(values, 95), 1),
            "p99": round(percentile(values, 99), 1),
            "max": round(max(values), 1),
            "mean": round(sum(values) / len(values), 1),
        }

    return {
        "bench": "latency",
        "request": "submit_form site_visit (with needs)",
        "email": TEMPLATE,
        "events": events,
        "emails": emails,
        "clients": clients,
        "concurrency": concurrency,
        "seconds": round(seconds, 2),
        "events_per_s": round(events / seconds, 1),
        "email_ms": stats(email_ms),
        "update_ms": stats(update_ms),
        **memory,
        "machine": machine("bench.latency"),
    }


def render(result: dict[str, Any]) -> str:
    rows = [
        ["submit_form -> email accepted by the sink", *result["email_ms"].values()],
        ["submit_form -> update returned", *result["update_ms"].values()],
    ]
    title = (
        f"Latency over {result['events']} site visits ({result['emails']} emails received), {result['clients']} "
        f"clients in ongoing management, {result['concurrency']} in flight, {result['events_per_s']} events/s; ms"
    )
    return table(title, ["", "p50", "p95", "p99", "max", "mean"], rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=100, help="clients taken to ongoing management first")
    parser.add_argument("--concurrency", type=int, default=10, help="events in flight at once")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.events, args.clients, args.concurrency))
    emit(render(result), result)
    exit_now(0)


if __name__ == "__main__":
    main()
