"""The records store on SQLite and the real PostgreSQL: migrations, idempotent writes under retries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, inspect, select, text

from activities.records import RecordActivities
from sopflow.db import (
    Base,
    Database,
    DealContact,
    DealRow,
    FormSubmission,
    JournalRow,
    StageTransition,
    TaskRow,
    VisitRow,
)
from sopflow.models import ContactView, DealSnapshot, JournalBatch, JournalEntry
from tests.conftest import launched_steps, run

T0 = datetime(2026, 3, 2, 9, tzinfo=UTC)
FIRST_TABLES = {"outbox", "journal", "account_claims"}
RECORD_TABLES = {"deals", "deal_contacts", "stage_transitions", "form_submissions", "tasks", "visits", "inbound_events"}


def counts(db: Database, *models: Any) -> dict[str, int]:
    with db.session() as session:
        return {m.__tablename__: session.scalar(select(func.count()).select_from(m)) or 0 for m in models}


def test_migrations_build_exactly_the_schema_the_models_describe(database_url: str):
    db = Database(database_url)
    try:
        db.upgrade()
        with db.engine.connect() as connection:
            differences = compare_metadata(
                MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata
            )
        assert differences == []
    finally:
        db.dispose()


def test_upgrading_a_database_at_the_previous_revision_keeps_its_rows(database_url: str):
    db = Database(database_url)
    try:
        db.upgrade("0001")
        assert set(inspect(db.engine).get_table_names()) >= FIRST_TABLES
        assert not RECORD_TABLES & set(inspect(db.engine).get_table_names())
        with db.engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO journal (workflow_id, deal_id, playbook, seq, at, kind, stage, detail) "
                    "VALUES ('deal-D-1', 'D-1', 'safe_balance', 1, :at, 'stage', 'targeting', '{}')"
                ),
                {"at": T0},
            )
        db.upgrade()
        assert set(inspect(db.engine).get_table_names()) >= RECORD_TABLES
        assert counts(db, JournalRow) == {"journal": 1}
        with db.engine.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0002"
    finally:
        db.dispose()


def batch(*entries: JournalEntry, stage: str = "contract_request") -> JournalBatch:
    return JournalBatch(
        workflow_id="deal-D-1",
        deal_id="D-1",
        playbook="safe_balance",
        entries=list(entries),
        snapshot=DealSnapshot(
            playbook_version=1,
            stage=stage,
            stage_title=stage.replace("_", " ").capitalize(),
            stage_entered_at=T0,
            owner="rep:owner-17",
            started_at=T0,
            contacts=[ContactView(role="rep", email="rep@example.com", name="Field Rep")],
        ),
    )


def entry(seq: int, kind: str, stage: str, **detail: Any) -> JournalEntry:
    return JournalEntry(seq=seq, at=T0 + timedelta(minutes=seq), kind=kind, stage=stage, detail=detail)  # type: ignore[arg-type]


def test_a_retried_journal_batch_writes_every_row_once(records_db: Database):
    records = RecordActivities(records_db)
    first = batch(
        entry(1, "stage", "targeting", to="targeting", trigger="start", by="cli"),
        entry(2, "task", "targeting", task="check_crm", title="Check the CRM", status="opened", owner="rep"),
        entry(3, "form", "targeting", form="targeting", by="cli", values={"company": "Example Clinic"}),
        entry(4, "task", "targeting", task="check_crm", status="done", by="cli"),
        entry(5, "stage", "contract_request", **{"from": "targeting", "to": "contract_request", "trigger": "form"}),
    )
    assert records._record_journal(first) == 5
    assert records._record_journal(first) == 0  # the retry
    # A later batch that repeats the tail of the first (a retry racing a new flush) adds only what is new.
    second = batch(entry(5, "stage", "contract_request", to="contract_request", trigger="form"))
    second.entries.append(entry(6, "visit_due", "ongoing", cadence="site visit", due_at=T0.isoformat()))
    assert records._record_journal(second) == 1

    assert counts(records_db, JournalRow, StageTransition, FormSubmission, TaskRow, VisitRow, DealRow, DealContact) == {
        "journal": 6,
        "stage_transitions": 2,
        "form_submissions": 1,
        "tasks": 1,
        "visits": 1,
        "deals": 1,
        "deal_contacts": 1,
    }
    with records_db.session() as session:
        task = session.scalars(select(TaskRow)).one()
        assert (task.task, task.done_by) == ("check_crm", "cli") and task.done_at is not None
        deal = session.scalars(select(DealRow)).one()
        assert (deal.stage, deal.owner, deal.last_seq) == ("contract_request", "rep:owner-17", 6)


def test_an_older_batch_retried_late_does_not_move_the_deal_back(records_db: Database):
    records = RecordActivities(records_db)
    records._record_journal(batch(entry(7, "stage", "contract", to="contract", trigger="form"), stage="contract"))
    records._record_journal(batch(entry(3, "stage", "targeting", to="targeting", trigger="start"), stage="targeting"))
    with records_db.session() as session:
        assert session.scalars(select(DealRow.stage)).one() == "contract"


class FailAfterCommit(RecordActivities):
    """Every batch is committed, then the activity 'crashes' before reporting success, once per batch."""

    seen: set[tuple[str, int]] = set()

    def _record_journal(self, batch: JournalBatch) -> int:
        added = super()._record_journal(batch)
        key = (batch.workflow_id, batch.entries[0].seq)
        if key not in self.seen:
            self.seen.add(key)
            raise RuntimeError("worker lost after the commit")
        return added


async def test_forced_activity_retries_leave_exactly_one_row_per_step(ts_env, safe_balance, records_db: Database):
    FailAfterCommit.seen = set()
    result = await run(
        ts_env, safe_balance, launched_steps(), until="40d", db=records_db, record_activities=FailAfterCommit
    )

    assert len(FailAfterCommit.seen) >= 10  # every batch was retried
    with records_db.session() as session:
        seqs = list(session.scalars(select(JournalRow.seq).order_by(JournalRow.seq)))
        transitions = list(session.scalars(select(StageTransition.to_stage).order_by(StageTransition.seq)))
        forms = list(session.scalars(select(FormSubmission.form).order_by(FormSubmission.seq)))
    assert seqs == list(range(1, len(seqs) + 1))
    assert transitions == [r.to_stage for r in result.status.history]
    assert forms == ["targeting", "contract_request", "closeout"]
