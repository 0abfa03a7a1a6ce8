"""The real I/O work of a lifecycle, without Temporal: CPU per email and per timeline batch in the activities alone.

`bench.throughput` splits the worker's CPU by thread, on a machine the dev server and the driver share, so its
figures move with the load by tens of percent. This measures the same activities (`send_email`, `record_journal`)
alone, in one process, for the emails and timeline batches the bench's Safe Balance clients produce (computed by the
pure engine): a steady before/after figure for changes to them. The SMTP sink runs in a process of its own, so its
CPU is not counted; the SQLite records store is a temporary file.

    python -m bench.io_work                  # 30 clients: 270 emails, 420 timeline batches
    python -m bench.io_work --clients 10
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from temporalio.testing import ActivityEnvironment

from activities.email import EmailActivities, SmtpConfig
from activities.records import RecordActivities
from bench.common import emit, exit_now, machine, table
from bench.safe_balance import DEAL, apply, lifecycle, playbook, today
from sopflow.config import PROJECT_ROOT
from sopflow.db import Database
from sopflow.engine import Engine
from sopflow.models import EmailRequest, JournalBatch, workflow_id
from sopflow.templates import TemplateRenderer

# The sink in a process of its own, until its stdin closes.
_SINK = "\n".join(
    [
        "import sys",
        "from sopflow.mailsink import MailSink",
        "with MailSink() as s:",
        " print(s.port, flush=True)",
        " sys.stdin.read()",
    ]
)


def work(clients: int, visits: int = 3) -> tuple[list[EmailRequest], list[JournalBatch]]:
    """Every email and one timeline batch per request (with the deal's snapshot) of `clients` lifecycles."""
    book, now = playbook(), datetime.now(UTC)
    emails: list[EmailRequest] = []
    batches: list[JournalBatch] = []
    for n in range(clients):
        deal_id = f"IO-{n}"
        engine = Engine.start(book, deal_id, DEAL, now, workflow_id(deal_id), "bench")
        for request in [None, *lifecycle(n, visits, today())]:
            if request is not None:
                apply(engine, request, now)
            steps = engine.take_steps()
            emails += [step.email for step in steps if step.email is not None]
            entries = [step.entry for step in steps]
            if entries:
                batch = JournalBatch(
                    workflow_id=workflow_id(deal_id),
                    deal_id=deal_id,
                    playbook=book.id,
                    entries=entries,
                    snapshot=engine.snapshot(),
                )
                batches.append(batch)
    return emails, batches


async def run(clients: int = 30) -> dict[str, Any]:
    emails, batches = work(clients)
    sink = subprocess.Popen([sys.executable, "-c", _SINK], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None
        port = int(sink.stdout.readline())
        with tempfile.TemporaryDirectory() as home:
            db = Database(f"sqlite:///{Path(home) / 'records.db'}")
            db.create_schema()
            smtp = SmtpConfig(host="127.0.0.1", port=port, mail_from="sopflow bench <bench@example.com>")
            mail = EmailActivities(db, TemplateRenderer(PROJECT_ROOT / "templates"), smtp, "http://127.0.0.1:8000")
            records = RecordActivities(db)
            env = ActivityEnvironment()
            cpu, wall = time.process_time(), time.perf_counter()
            for request in emails:
                await env.run(mail.send_email, request)
            email_cpu, email_wall = time.process_time() - cpu, time.perf_counter() - wall
            cpu, wall = time.process_time(), time.perf_counter()
            for batch in batches:
                await env.run(records.record_journal, batch)
            batch_cpu, batch_wall = time.process_time() - cpu, time.perf_counter() - wall
            db.dispose()
    finally:
        if sink.stdin is not None:
            sink.stdin.close()
        sink.wait()
    per_lifecycle = (email_cpu + batch_cpu) / clients
    return {
        "bench": "io_work",
        "clients": clients,
        "emails": len(emails),
        "batches": len(batches),
        "entries": sum(len(b.entries) for b in batches),
        "email_cpu_ms": round(email_cpu / len(emails) * 1000, 2),
        "email_wall_ms": round(email_wall / len(emails) * 1000, 2),
        "batch_cpu_ms": round(batch_cpu / len(batches) * 1000, 2),
        "batch_wall_ms": round(batch_wall / len(batches) * 1000, 2),
        "cpu_s_per_lifecycle": round(per_lifecycle, 3),
        "machine": machine("bench.io_work"),
    }


def render(result: dict[str, Any]) -> str:
    rows = [
        ["send_email, per email", result["emails"], result["email_cpu_ms"], result["email_wall_ms"]],
        ["record_journal, per batch", result["batches"], result["batch_cpu_ms"], result["batch_wall_ms"]],
        ["both, CPU-s per lifecycle", result["clients"], result["cpu_s_per_lifecycle"], ""],
    ]
    title = f"Real I/O work of {result['clients']} Safe Balance lifecycles, activities alone (SQLite, SMTP sink)"
    return table(title, ["", "count", "CPU ms", "wall ms"], rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=30)
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.clients))
    emit(render(result), result)
    exit_now(0)


if __name__ == "__main__":
    main()
