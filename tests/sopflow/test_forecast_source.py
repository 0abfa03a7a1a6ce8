"""Where the forecast starts each live client: its stored engine state when current, else a stale id to ask the
lifecycle for (`sopflow.forecast_source`), on SQLite and the real PostgreSQL."""

from __future__ import annotations

import gc
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, select

from sopflow import forecast_source
from sopflow.db import Database, JournalRow, LifecycleStateRow, PinnedPlaybook
from sopflow.forecast_source import load_seeds
from sopflow.models import LifecycleState, workflow_id
from sopflow.playbook import Playbook, playbook_hash
from tests.conftest import deal_row

NOW = datetime(2026, 12, 1, 15, tzinfo=UTC)


def client(
    db: Database,
    deal_id: str,
    book: Playbook,
    *,
    journal: int,
    state: int | None,
    closed: str | None = None,
    state_closed: str | None = None,
) -> None:
    """A deal whose journal holds entries 1..`journal`, its engine state stored as of entry `state` (None: none
    stored), and its pinned playbook stored. `closed`: the deal row's outcome; `state_closed`: the state's."""
    wf = workflow_id(deal_id)
    with db.session() as session:
        session.add(deal_row(deal_id, "ongoing", NOW, playbook=book.id, last_seq=journal, outcome=closed))
        for seq in range(1, journal + 1):
            at = NOW - timedelta(hours=journal - seq)
            session.add(
                JournalRow(
                    workflow_id=wf,
                    deal_id=deal_id,
                    playbook=book.id,
                    seq=seq,
                    at=at,
                    kind="fields",
                    stage="ongoing",
                    detail={},
                )
            )
        content_hash = playbook_hash(book)
        if session.scalar(select(PinnedPlaybook.id).where(PinnedPlaybook.content_hash == content_hash)) is None:
            session.add(
                PinnedPlaybook(
                    playbook=book.id,
                    version=book.version,
                    content_hash=content_hash,
                    content=book.model_dump_json(),
                    stored_at=NOW,
                )
            )
        if state is not None:
            values: dict[str, Any] = {"deal_id": deal_id, "started_at": NOW - timedelta(days=90)}
            values |= {"stage": "ongoing", "stage_entered_at": NOW - timedelta(days=30), "run_started_at": NOW}
            engine_state = LifecycleState(**values, seq=state, outcome=state_closed)
            session.add(
                LifecycleStateRow(
                    workflow_id=wf,
                    deal_id=deal_id,
                    playbook=book.id,
                    playbook_version=book.version,
                    playbook_hash=content_hash,
                    seq=state,
                    as_of=NOW - timedelta(minutes=5),
                    state=engine_state.model_dump_json(),
                    updated_at=NOW,
                )
            )
        session.commit()


def newer(book: Playbook) -> Playbook:
    return book.model_copy(update={"version": book.version + 1})


def test_a_stored_state_as_new_as_the_journal_is_a_seed_and_one_behind_it_is_stale(
    records_db: Database, safe_balance: Playbook
):
    client(records_db, "CURRENT", safe_balance, journal=5, state=5)
    # Entries recorded after the state (an update's regular record), and a lifecycle that never recorded locally.
    client(records_db, "BEHIND", safe_balance, journal=5, state=3)
    client(records_db, "NEVER", safe_balance, journal=2, state=None)
    # A state taken after its newest entries reached the journal (their emails still in the outbox) is current.
    client(records_db, "AHEAD", safe_balance, journal=4, state=6)

    loaded = load_seeds(records_db)

    assert gc.isenabled()  # paused while the states are decoded, and back
    assert [s.workflow_id for s in loaded.seeds] == [workflow_id("AHEAD"), workflow_id("CURRENT")]
    assert sorted(loaded.stale) == [workflow_id("BEHIND"), workflow_id("NEVER")]
    seed = loaded.seeds[1]
    assert (seed.deal_id, seed.state.seq, seed.state.stage, seed.playbook) == ("CURRENT", 5, "ongoing", safe_balance)
    assert seed.as_of == NOW - timedelta(minutes=5) and seed.as_of.tzinfo is not None


def test_closed_deals_are_left_out(records_db: Database, safe_balance: Playbook):
    client(records_db, "OPEN", safe_balance, journal=3, state=3)
    client(records_db, "WON", safe_balance, journal=3, state=3, closed="won")
    client(records_db, "WON-BEHIND", safe_balance, journal=3, state=1, closed="won")
    # The state says the client closed before its deal row does: nothing left to forecast.
    client(records_db, "CLOSING", safe_balance, journal=3, state=3, state_closed="lost")

    loaded = load_seeds(records_db)

    assert [s.deal_id for s in loaded.seeds] == ["OPEN"] and loaded.stale == []


def test_one_playbooks_clients_only(records_db: Database, safe_balance: Playbook, playbook):
    other = playbook("health_prime_sales")
    client(records_db, "SB-1", safe_balance, journal=2, state=2)
    client(records_db, "SB-2", safe_balance, journal=2, state=1)
    client(records_db, "HP-1", other, journal=2, state=2)
    client(records_db, "HP-2", other, journal=2, state=1)

    loaded = load_seeds(records_db, playbook="safe_balance")

    assert [s.deal_id for s in loaded.seeds] == ["SB-1"] and loaded.stale == [workflow_id("SB-2")]
    assert [s.deal_id for s in load_seeds(records_db, playbook=other.id).seeds] == ["HP-1"]


def test_each_stored_playbook_is_parsed_once_and_shared_by_its_clients(
    records_db: Database, safe_balance: Playbook, monkeypatch: pytest.MonkeyPatch
):
    """A pinned playbook takes milliseconds to parse: 10,000 clients on a few versions parse a few."""
    version_2 = newer(safe_balance)
    for n in range(5):
        client(records_db, f"V1-{n}", safe_balance, journal=1, state=1)
    for n in range(3):
        client(records_db, f"V2-{n}", version_2, journal=1, state=1)
    parsed: list[Playbook] = []

    def counted(book: Playbook) -> Playbook:
        parsed.append(book)
        return book

    monkeypatch.setattr(forecast_source, "shared", counted)
    loaded = load_seeds(records_db)

    assert sorted(book.version for book in parsed) == [safe_balance.version, version_2.version]
    by_version = {(s.playbook.version, id(s.playbook)) for s in loaded.seeds}
    assert len(loaded.seeds) == 8 and len(by_version) == 2  # one object per version, shared by its clients
    assert all(s.playbook == version_2 for s in loaded.seeds if s.deal_id.startswith("V2"))


def test_a_client_whose_playbook_the_store_lacks_is_asked_instead(records_db: Database, safe_balance: Playbook):
    client(records_db, "LOST-BOOK", safe_balance, journal=1, state=1)
    with records_db.session() as session:
        session.execute(delete(PinnedPlaybook))
        session.commit()

    loaded = load_seeds(records_db)

    assert loaded.seeds == [] and loaded.stale == [workflow_id("LOST-BOOK")]
