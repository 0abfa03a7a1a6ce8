"""Work queue: how long `sopflow tasks` takes to answer for N open clients, read from the records store.

A migrated records store (SQLite file, or PostgreSQL with --database-url) is filled with N Safe Balance-shaped
deals spread over the stages a book of business holds (a quarter in pre-launch with four open tasks, a tenth with a
contract out, the rest in ongoing management with a visit due), 20 owners, and each deal's contacts. Then the queue
is read the ways people ask it, each several times: everything, one person's by address, one role's due this week.

    python -m bench.work_queue                    # 10,000 clients on SQLite
    python -m bench.work_queue --clients 1000     # a quick check
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from functools import partial
from typing import Any

from sqlalchemy.orm import Session

from bench.common import emit, machine, percentile, table
from sopflow import zones
from sopflow.config import PROJECT_ROOT
from sopflow.db import Database, DealContact, DealRow, TaskRow
from sopflow.playbook import Playbook
from sopflow.playbook_checks import load_playbook
from sopflow.work_queue import Filters, work_items

OWNERS = 20
REPEATS = 5
PRELAUNCH_TASKS = ("onsite_appointment", "services_onboarded", "prelaunch_call", "cleared_for_launch")


def fill(db: Database, clients: int, now: datetime, seed: int = 7) -> dict[str, int]:
    """N open deals with their tasks and contacts; returns how many rows of each kind were written."""
    rng = random.Random(seed)
    counts = {"deals": 0, "tasks": 0, "contacts": 0}
    with db.session() as session:
        for n in range(clients):
            deal_id, owner = f"BENCH-{n}", n % OWNERS
            entered = now - timedelta(days=rng.uniform(1, 300))
            share = n % 20
            stage = "prelaunch" if share < 5 else "contract" if share < 7 else "ongoing"
            row: dict[str, Any] = {}
            if stage == "contract":
                row = {"deadline_label": "contract expires", "deadline_due": now + timedelta(days=rng.uniform(0, 14))}
            if stage == "ongoing":
                row = {"visit_label": "site visit", "next_visit_due": now + timedelta(days=rng.uniform(-20, 60))}
            session.add(
                DealRow(
                    workflow_id=f"deal-{deal_id}",
                    deal_id=deal_id,
                    playbook="safe_balance",
                    playbook_version=3,
                    stage=stage,
                    stage_title=stage,
                    stage_entered_at=entered,
                    owner=f"rep:owner-{owner}",
                    started_at=entered - timedelta(days=30),
                    updated_at=now,
                    last_seq=1,
                    timezone="America/New_York",
                    **row,
                )
            )
            for i, task in enumerate(PRELAUNCH_TASKS if stage == "prelaunch" else ()):
                session.add(
                    TaskRow(
                        workflow_id=f"deal-{deal_id}",
                        deal_id=deal_id,
                        opened_seq=i + 1,
                        task=task,
                        title=task.replace("_", " "),
                        stage=stage,
                        owner="rep" if i == 0 else "account_manager",
                        opened_at=entered,
                        due_at=entered + timedelta(days=7 + 7 * i),
                    )
                )
                counts["tasks"] += 1
            for role, email in (("rep", f"rep{owner}@example.com"), ("account_manager", f"am{owner % 5}@example.com")):
                session.add(
                    DealContact(workflow_id=f"deal-{deal_id}", deal_id=deal_id, role=role, email=email, updated_at=now)
                )
                counts["contacts"] += 1
            counts["deals"] += 1
        session.commit()
    return counts


def timed(db: Database, read: Callable[[Session], list[Any]]) -> tuple[list[float], int]:
    """Milliseconds per read (REPEATS reads, each in its own session, as the CLI does) and the items found."""
    times, found = [], 0
    for _ in range(REPEATS):
        start = time.perf_counter()
        with db.session() as session:
            found = len(read(session))
        times.append((time.perf_counter() - start) * 1000)
    return times, found


def queue(session: Session, now: datetime, viewer: tzinfo, filters: Filters, books: list[Playbook]) -> list[Any]:
    return work_items(session, now, viewer, filters, books)


def run(clients: int = 10_000, database_url: str | None = None) -> dict[str, Any]:
    now = datetime.now(UTC)
    viewer = zones.zone("America/New_York")
    books = [load_playbook(PROJECT_ROOT / "playbooks" / "safe_balance.yaml")]
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(database_url or f"sqlite:///{tmp}/records.db")
        db.upgrade()
        start = time.perf_counter()
        counts = fill(db, clients, now)
        fill_s = time.perf_counter() - start
        asks = {
            "everything": Filters(),
            "one person (address)": Filters(owner="rep3@example.com"),
            "one role, due this week": Filters(owner="account_manager", due="week"),
        }
        reads = {}
        for name, filters in asks.items():
            times, found = timed(db, partial(queue, now=now, viewer=viewer, filters=filters, books=books))
            reads[name] = {"items": found, "p50_ms": percentile(times, 50), "max_ms": max(times)}
        db.dispose()
    return {
        "bench": "work_queue",
        "clients": clients,
        "rows": counts,
        "fill_seconds": round(fill_s, 1),
        "reads": reads,
        "backend": "postgresql" if database_url else "sqlite",
        "machine": machine("bench.work_queue"),
    }


def render(result: dict[str, Any]) -> str:
    rows = [[name, r["items"], r["p50_ms"], r["max_ms"]] for name, r in result["reads"].items()]
    title = (
        f"Work queue over {result['clients']:,} open clients ({result['backend']}; {result['rows']['tasks']:,} open "
        f"tasks, {result['rows']['contacts']:,} contacts), {REPEATS} reads each"
    )
    return table(title, ["ask", "items", "p50 ms", "max ms"], rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--database-url", help="a PostgreSQL URL; default: a fresh SQLite file")
    args = parser.parse_args(argv)
    result = run(args.clients, args.database_url)
    emit(render(result), result)


if __name__ == "__main__":
    main()
