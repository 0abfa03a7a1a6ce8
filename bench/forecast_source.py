"""Forecast source: how long `load_seeds` takes to start N live clients' forecasts from the records store.

A migrated records store (SQLite file, or PostgreSQL with --database-url) is filled with N Safe Balance clients in
ongoing management: each with its deal row, a journal of JOURNAL entries, and its engine state (the pure engine's,
about 2 KB of JSON) as the local records store it, all on one pinned playbook. One client in STALE_EVERY has
journal entries newer than its stored state (an update recorded since its last local record). Then
`sopflow.forecast_source.load_seeds` reads them all, several times: the SQL (one outer join and one journal probe
per deal), decoding each state and the playbook once.

    python -m bench.forecast_source                    # 10,000 clients on SQLite
    python -m bench.forecast_source --clients 1000     # a quick check
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert

from bench.common import emit, machine, percentile, table
from bench.safe_balance import ongoing_state, playbook
from sopflow.db import Database, DealRow, JournalRow, LifecycleStateRow, PinnedPlaybook
from sopflow.forecast_source import load_seeds
from sopflow.models import workflow_id
from sopflow.playbook import playbook_hash

REPEATS = 5
JOURNAL = 30
STALE_EVERY = 10
CHUNK = 2_000


def fill(db: Database, clients: int, now: datetime) -> dict[str, int]:
    """N live clients with their journals and stored states; how many rows of each kind were written."""
    book = playbook()
    content_hash = playbook_hash(book)
    state = ongoing_state(book, 0, now - timedelta(days=60))
    counts = {"deals": 0, "journal": 0, "states": 0}
    with db.session() as session:
        session.add(
            PinnedPlaybook(
                playbook=book.id,
                version=book.version,
                content_hash=content_hash,
                content=book.model_dump_json(),
                stored_at=now,
            )
        )
        for first in range(0, clients, CHUNK):
            deals, journal, states = [], [], []
            for n in range(first, min(first + CHUNK, clients)):
                deal_id = f"F-{n}"
                wf = workflow_id(deal_id)
                seq = JOURNAL if n % STALE_EVERY else JOURNAL - 2  # behind its journal: stale
                deals.append(
                    {
                        "workflow_id": wf,
                        "deal_id": deal_id,
                        "playbook": book.id,
                        "playbook_version": book.version,
                        "stage": state.stage,
                        "stage_title": state.stage,
                        "stage_entered_at": state.stage_entered_at,
                        "started_at": state.started_at,
                        "updated_at": now,
                        "last_seq": JOURNAL,
                    }
                )
                journal += [
                    {
                        "workflow_id": wf,
                        "deal_id": deal_id,
                        "playbook": book.id,
                        "seq": s,
                        "at": now - timedelta(hours=JOURNAL - s),
                        "kind": "fields",
                        "stage": state.stage,
                        "detail": {"changed": ["rep_id"], "by": "bench"},
                    }
                    for s in range(1, JOURNAL + 1)
                ]
                mine = state.model_copy(update={"deal_id": deal_id, "seq": seq})
                states.append(
                    {
                        "workflow_id": wf,
                        "deal_id": deal_id,
                        "playbook": book.id,
                        "playbook_version": book.version,
                        "playbook_hash": content_hash,
                        "seq": seq,
                        "as_of": now - timedelta(minutes=n % 600),
                        "state": mine.model_dump_json(),
                        "updated_at": now,
                    }
                )
            session.execute(insert(DealRow), deals)
            session.execute(insert(JournalRow), journal)
            session.execute(insert(LifecycleStateRow), states)
            counts["deals"] += len(deals)
            counts["journal"] += len(journal)
            counts["states"] += len(states)
        session.commit()
    return counts


def run(clients: int = 10_000, database_url: str | None = None) -> dict[str, Any]:
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(database_url or f"sqlite:///{tmp}/records.db")
        db.upgrade()
        start = time.perf_counter()
        counts = fill(db, clients, now)
        fill_s = time.perf_counter() - start
        times, seeds, stale = [], 0, 0
        for _ in range(REPEATS):
            start = time.perf_counter()
            loaded = load_seeds(db)
            times.append((time.perf_counter() - start) * 1000)
            seeds, stale = len(loaded.seeds), len(loaded.stale)
            del loaded  # each read as a forecast's own (the previous one's 10,000 states are not kept alive)
        db.dispose()
    return {
        "bench": "forecast_source",
        "clients": clients,
        "rows": counts,
        "fill_seconds": round(fill_s, 1),
        "seeds": seeds,
        "stale": stale,
        "p50_ms": percentile(times, 50),
        "max_ms": max(times),
        "backend": "postgresql" if database_url else "sqlite",
        "machine": machine("bench.forecast_source"),
    }


def render(result: dict[str, Any]) -> str:
    title = (
        f"Forecast source over {result['clients']:,} live clients ({result['backend']}; {result['rows']['journal']:,} "
        f"journal entries), {REPEATS} reads"
    )
    rows = [["load_seeds", result["seeds"], result["stale"], result["p50_ms"], result["max_ms"]]]
    return table(title, ["read", "seeds", "stale", "p50 ms", "max ms"], rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--database-url", help="a PostgreSQL URL; default: a fresh SQLite file")
    args = parser.parse_args(argv)
    result = run(args.clients, args.database_url)
    emit(render(result), result)


if __name__ == "__main__":
    main()
