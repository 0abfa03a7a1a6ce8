"""The records store on SQLite and the real PostgreSQL: migrations, idempotent writes under retries and under
attempts that overlap, values cut to their columns, refusals told apart from lost connections."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from pydantic import ValidationError
from sqlalchemy import func, inspect, select, text
from temporalio import activity
from temporalio.client import WorkflowHistory
from temporalio.exceptions import ApplicationError

from activities.errors import classified
from activities.records import RecordActivities, supersedes
from sopflow.db import (
    AccountClaim,
    Base,
    Database,
    DealContact,
    DealRow,
    FormSubmission,
    JournalRow,
    LifecycleStateRow,
    OutboxEmail,
    PinnedPlaybook,
    StageTransition,
    TaskRow,
    VisitRow,
    alembic_config,
)
from sopflow.errors import RECORD_REFUSED
from sopflow.models import (
    ClaimRequest,
    ContactView,
    DealSnapshot,
    JournalBatch,
    JournalEntry,
    LifecycleState,
    workflow_id,
)
from sopflow.playbook import Playbook, playbook_hash
from sopflow.reports import utc
from tests.conftest import (
    BATCH_KEYS_IN_HISTORY,
    POSTGRES_ADMIN,
    launched_steps,
    postgres_database,
    regular_record_inputs,
    run,
)

# The newest migration: a database migrated by `upgrade` is at it.
HEAD = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()

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
            connection.execute(
                text(
                    'INSERT INTO outbox (key, workflow_id, deal_id, playbook, template, "to", cc, subject, body_text,'
                    " body_html, attachments, message_id, status, attempts, scheduled_at) VALUES ('deal-D-1/2/welcome',"
                    " 'deal-D-1', 'D-1', 'safe_balance', 'welcome', 'signer@example.com', '', '', '', '', '', '<m>',"
                    " 'pending', 1, :at)"
                ),
                {"at": T0},
            )
        db.upgrade()
        assert set(inspect(db.engine).get_table_names()) >= RECORD_TABLES
        assert counts(db, JournalRow) == {"journal": 1}
        with db.session() as session:  # a pending email from before claims existed is free to be claimed
            assert [(r.status, r.claim_token, r.claimed_until) for r in session.scalars(select(OutboxEmail))] == [
                ("pending", None, None)
            ]
        with db.engine.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD
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
    """An entry with `detail` as given: the records read it through its kind's model (`sopflow.timeline`), so it
    holds what the engine always writes for that kind."""
    return JournalEntry(seq=seq, at=T0 + timedelta(minutes=seq), kind=kind, stage=stage, detail=detail)  # type: ignore[arg-type]


def test_a_retried_journal_batch_writes_every_row_once(records_db: Database):
    records = RecordActivities(records_db)
    first = batch(
        entry(1, "stage", "targeting", to="targeting", trigger="start", by="cli"),
        entry(2, "task", "targeting", task="check_crm", title="Check the CRM", status="opened", owner="rep"),
        entry(3, "form", "targeting", form="targeting", count=1, by="cli", values={"company": "Example Clinic"}),
        entry(4, "task", "targeting", task="check_crm", status="done", by="cli"),
        entry(5, "stage", "contract_request", **{"from": "targeting", "to": "contract_request", "trigger": "form"}),
    )
    assert records._record_journal(first) == 5
    assert records._record_journal(first) == 0  # the retry
    # A later batch that repeats the tail of the first (a retry racing a new flush) adds only what is new.
    second = batch(first.entries[-1])
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


def test_an_entry_decided_later_supersedes_only_one_a_local_record_decided_earlier():
    assert supersedes(None, (1, 40)) and supersedes(None, None)  # a regular record's batch: from a completed task
    assert supersedes((1, 41), (1, 40))  # the next attempt of a workflow task that failed after its local record
    assert supersedes((2, 5), (1, 900))  # a later run, however short its history yet
    assert not supersedes((1, 40), (1, 41))  # that failed attempt, writing late
    assert not supersedes((1, 41), None)  # a local record against a regular one's entry (or one stored before 0008)


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


def at_once(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls in threads released together, as attempts on two workers would; their results, or errors."""
    barrier = threading.Barrier(len(calls))

    def together(call: Callable[[], Any]) -> Any:
        barrier.wait()
        try:
            return call()
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(together, calls))


# --- each lifecycle's engine state, for the forecast (lifecycle_states, pinned_playbooks) ----------------------------


def with_state(
    plain: JournalBatch,
    seq: int,
    playbook: Playbook,
    stage: str = "targeting",
    *,
    history_length: int | None = None,
    run: int = 1,
) -> JournalBatch:
    """`plain` as a local record sends it: with the engine's state at `seq`, the pinned playbook, and where it was
    decided (by default a history that grew with the timeline)."""
    state = LifecycleState(
        deal_id="D-1", started_at=T0, stage=stage, stage_entered_at=T0, run_started_at=T0, seq=seq, run=run
    )
    return plain.model_copy(
        update={
            "state": state,
            "as_of": T0 + timedelta(minutes=seq),
            "playbook_hash": playbook_hash(playbook),
            "playbook_version": playbook.version,
            "pinned": playbook,
            "history_length": 10 * seq if history_length is None else history_length,
        }
    )


def stored_states(db: Database) -> list[tuple[str, int, str]]:
    with db.session() as session:
        rows = session.scalars(select(LifecycleStateRow).order_by(LifecycleStateRow.workflow_id))
        return [(r.workflow_id, r.seq, LifecycleState.model_validate_json(r.state).stage) for r in rows]


def test_a_batch_with_the_engine_state_stores_it_with_its_pinned_playbook(records_db: Database, safe_balance):
    records = RecordActivities(records_db)
    local = with_state(batch(entry(1, "stage", "targeting", to="targeting", trigger="start")), 1, safe_balance)

    assert records._record_journal(local) == 1

    with records_db.session() as session:
        row = session.scalars(select(LifecycleStateRow)).one()
        pinned = session.scalars(select(PinnedPlaybook)).one()
    assert LifecycleState.model_validate_json(row.state) == local.state
    assert (row.workflow_id, row.deal_id, row.playbook, row.seq) == ("deal-D-1", "D-1", "safe_balance", 1)
    assert (row.playbook_version, row.playbook_hash) == (safe_balance.version, playbook_hash(safe_balance))
    assert utc(row.as_of) == local.as_of
    assert (pinned.playbook, pinned.version, pinned.content_hash) == (
        "safe_balance",
        safe_balance.version,
        playbook_hash(safe_balance),
    )
    assert Playbook.model_validate_json(pinned.content) == safe_balance


def test_an_older_state_retried_late_does_not_move_the_stored_state_back(records_db: Database, safe_balance):
    records = RecordActivities(records_db)
    newer = with_state(batch(entry(7, "stage", "contract", to="contract", trigger="form")), 7, safe_balance, "contract")
    older = with_state(batch(entry(3, "stage", "targeting", to="targeting", trigger="start")), 3, safe_balance)
    records._record_journal(newer)
    records._record_journal(older)  # an attempt that outlived its timeout, writing after its retry
    records._record_journal(newer)  # and a retry of the newer one changes nothing either
    assert stored_states(records_db) == [("deal-D-1", 7, "contract")]
    # Two records of one workflow task (one history length): the later one in the journal stands.
    same_task = {"history_length": 90}
    records._record_journal(newer.model_copy(update=same_task))
    records._record_journal(older.model_copy(update=same_task))
    assert stored_states(records_db) == [("deal-D-1", 7, "contract")]


@pytest.fixture
def local(safe_balance: Playbook) -> Callable[..., JournalBatch]:
    """A batch as a local record sends it, decided at `history_length` of `run`."""

    def make(*entries: JournalEntry, history_length: int, run: int = 1, stage: str = "contract") -> JournalBatch:
        seq = max(e.seq for e in entries)
        plain = batch(*entries, stage=stage)
        return with_state(plain, seq, safe_balance, stage, history_length=history_length, run=run)

    return make


def stored_timeline(db: Database) -> dict[str, Any]:
    with db.session() as session:
        return {
            "journal": [
                (r.seq, r.kind, r.detail.get("template") or r.detail.get("to"))
                for r in session.scalars(select(JournalRow).order_by(JournalRow.seq))
            ],
            "moves": [(r.seq, r.to_stage) for r in session.scalars(select(StageTransition))],
            "tasks": [(r.opened_seq, r.task, r.done_by) for r in session.scalars(select(TaskRow))],
            "forms": [r.seq for r in session.scalars(select(FormSubmission))],
        }


def test_what_a_failed_workflow_task_recorded_is_replaced_by_its_next_attempt(
    records_db: Database, local: Callable[..., JournalBatch]
):
    """A timer's task expired the contract and recorded it locally, then its worker died before the task completed;
    meanwhile the signer signed. The next attempt applies the signature first (the SDK applies requests before
    timers), so its numbers 2 and 3 are other entries, and the timeline is the one that happened at once: the failed
    attempt's number 4, which the retry did not write, is gone too, and so is the deal and state it left."""
    records = RecordActivities(records_db)
    opened = entry(1, "task", "contract", task="chase", title="Chase the signer", status="opened", owner="rep")
    records._record_journal(local(opened, history_length=10))
    records._record_journal(
        local(
            entry(2, "stage", "lost", **{"from": "contract", "to": "lost", "trigger": "timer"}),
            entry(3, "task", "lost", task="chase", status="done", by="timer"),
            entry(4, "email", "lost", template="contract_expired", to=["signer"], cc=[], status="sent"),
            history_length=14,
            stage="lost",
        )
    )
    retried = local(
        entry(2, "event", "contract", event="contract_signed", source="docusign", status="accepted"),
        entry(3, "stage", "prelaunch", **{"from": "contract", "to": "prelaunch", "trigger": "event"}),
        history_length=19,
        stage="prelaunch",
    )
    assert records._record_journal(retried) == 2
    assert records._record_journal(retried) == 0  # its own retry changes nothing
    assert stored_timeline(records_db) == {
        "journal": [(1, "task", None), (2, "event", None), (3, "stage", "prelaunch")],
        "moves": [(3, "prelaunch")],
        "tasks": [(1, "chase", None)],  # the failed attempt's closing of the task is gone with it
        "forms": [],
    }
    assert stored_states(records_db) == [("deal-D-1", 3, "prelaunch")]
    with records_db.session() as session:
        assert (session.scalars(select(DealRow.stage)).one(), session.scalars(select(DealRow.last_seq)).one()) == (
            "prelaunch",
            3,
        )


def test_a_retry_that_wrote_less_than_the_failed_attempt_removes_the_rest_and_its_deal(
    records_db: Database, local: Callable[..., JournalBatch]
):
    """The failed attempt and its retry agree on number 2; the failed one went on to close the deal (3)."""
    records = RecordActivities(records_db)
    agreed = entry(2, "fields", "contract", changed=["rep_id"])
    closing = entry(3, "stage", "lost", **{"from": "contract", "to": "lost", "trigger": "timer"})
    records._record_journal(local(agreed, closing, history_length=14, stage="lost"))
    assert records._record_journal(local(agreed, history_length=19)) == 0  # nothing of its own differs
    timeline = stored_timeline(records_db)
    assert (timeline["journal"], timeline["moves"]) == ([(2, "fields", None)], [])
    with records_db.session() as session:
        assert (session.scalars(select(DealRow.stage)).one(), session.scalars(select(DealRow.last_seq)).one()) == (
            "contract",
            2,
        )
    assert stored_states(records_db) == [("deal-D-1", 2, "contract")]


def test_a_failed_attempts_record_written_late_leaves_the_true_entries_alone(
    records_db: Database, local: Callable[..., JournalBatch]
):
    records = RecordActivities(records_db)
    true = entry(2, "form", "contract", form="contract_request", count=1, by="cli", values={})
    stale = entry(2, "stage", "lost", **{"from": "contract", "to": "lost", "trigger": "timer"})
    records._record_journal(local(true, history_length=19))
    assert records._record_journal(local(stale, history_length=14)) == 0
    records._record_journal(batch(entry(3, "fields", "contract", changed=["rep_id"])))  # a regular record
    assert records._record_journal(local(entry(3, "stage", "lost", to="lost", trigger="timer"), history_length=14)) == 0
    records._record_journal(
        local(entry(4, "visit_due", "contract", cadence="visit", due_at=T0.isoformat()), history_length=25)
    )
    records._record_journal(local(stale, history_length=14))  # numbered below the true entries, decided before them
    timeline = stored_timeline(records_db)
    assert (timeline["journal"], timeline["moves"], timeline["forms"]) == (
        [(2, "form", None), (3, "fields", None), (4, "visit_due", None)],
        [],
        [2],
    )


def test_a_new_runs_records_supersede_the_last_runs_whatever_their_history_lengths(
    records_db: Database, local: Callable[..., JournalBatch]
):
    """Continue-as-new starts a short history: the run orders first. (The run before ended in a task that failed
    after writing seq 2, and its retry continued as new before reaching it.)"""
    records = RecordActivities(records_db)
    records._record_journal(
        local(entry(2, "stage", "lost", to="lost", trigger="timer"), history_length=900, stage="lost")
    )
    again = local(entry(2, "fields", "contract", changed=["rep_id"]), history_length=5, run=2)
    assert records._record_journal(again) == 1
    assert stored_timeline(records_db)["journal"] == [(2, "fields", None)]
    assert stored_states(records_db) == [("deal-D-1", 2, "contract")]


def test_the_pinned_playbook_is_stored_once_per_content(records_db: Database, safe_balance):
    """Every run's first local record carries its playbook: 10,000 clients of one version share one row."""
    records = RecordActivities(records_db)
    first = entry(1, "stage", "targeting", to="targeting", trigger="start")
    for deal in ("D-1", "D-2", "D-3"):
        plain = batch(first).model_copy(update={"workflow_id": workflow_id(deal), "deal_id": deal})
        records._record_journal(with_state(plain, 1, safe_balance))
    records._record_journal(with_state(batch(first), 1, safe_balance))  # a retry
    version_2 = safe_balance.model_copy(update={"version": safe_balance.version + 1})
    records._record_journal(
        with_state(batch(entry(2, "migrated", "targeting", from_version=3, to_version=4)), 2, version_2)
    )

    with records_db.session() as session:
        stored = session.execute(select(PinnedPlaybook.content_hash, PinnedPlaybook.version)).all()
    assert sorted(stored) == sorted(
        [(playbook_hash(safe_balance), safe_balance.version), (playbook_hash(version_2), version_2.version)]
    )
    assert [seq for _, seq, _ in stored_states(records_db)] == [2, 1, 1]


def test_a_batch_without_the_state_leaves_the_stored_state_alone(records_db: Database, safe_balance):
    """A regular record (after an update, or a local one that fell back) never carries the state: the stored one
    stays as the last local record left it, behind the journal, which is how the forecast knows to ask."""
    records = RecordActivities(records_db)
    records._record_journal(
        with_state(batch(entry(3, "stage", "targeting", to="targeting", trigger="start")), 3, safe_balance)
    )
    moved = entry(4, "stage", "contract_request", to="contract_request", trigger="form")
    assert records._record_journal(batch(moved, entry(5, "fields", "contract_request", changed=["rep_id"]))) == 2
    assert stored_states(records_db) == [("deal-D-1", 3, "targeting")]


def test_a_batch_without_the_state_is_the_json_it_always_was(safe_balance):
    """A regular record's input is written into history, and read by activity workers of the version before
    (which refuse unknown fields) while a deploy rolls: unset state fields are left out, not written as null. A
    state comes with what names it, or the batch is refused before it is sent."""
    plain = batch(entry(1, "stage", "targeting", to="targeting", trigger="start"))
    assert set(json.loads(plain.model_dump_json())) == BATCH_KEYS_IN_HISTORY
    assert JournalBatch.model_validate_json(plain.model_dump_json()) == plain
    local = with_state(plain, 1, safe_balance)
    assert JournalBatch.model_validate_json(local.model_dump_json()) == local
    with pytest.raises(ValidationError, match="comes with as_of"):
        JournalBatch.model_validate({**plain.model_dump(), "state": local.state})


def test_two_attempts_of_one_batch_at_once_write_every_row_once_without_an_error(records_db: Database):
    records = RecordActivities(records_db)
    first = batch(
        entry(1, "stage", "targeting", to="targeting", trigger="start", by="cli"),
        entry(2, "task", "targeting", task="check_crm", title="Check the CRM", status="opened", owner="rep"),
        entry(3, "form", "targeting", form="targeting", count=1, by="cli", values={"company": "Example Clinic"}),
    )
    for _ in range(5):
        added = at_once(lambda: records._record_journal(first), lambda: records._record_journal(first))
        assert sorted(added) in ([0, 3], [0, 0])  # one wrote the rows (in the first round), the other skipped them
    assert counts(records_db, JournalRow, StageTransition, FormSubmission, TaskRow, DealRow, DealContact) == {
        "journal": 3,
        "stage_transitions": 1,
        "form_submissions": 1,
        "tasks": 1,
        "deals": 1,
        "deal_contacts": 1,
    }


def test_two_deals_claiming_one_account_at_once_get_one_grant(records_db: Database):
    records = RecordActivities(records_db)
    claims = [ClaimRequest(playbook="safe_balance", account_key="example clinic", deal_id=d, at=T0) for d in "AB"]
    results = at_once(*(partial(records._claim, claim) for claim in claims))
    assert sorted(r.granted for r in results) == [False, True]
    winner = next(claim.deal_id for claim, r in zip(claims, results, strict=True) if r.granted)
    assert next(r.holder_deal_id for r in results if not r.granted) == winner


def test_a_value_longer_than_its_column_is_cut_in_the_records_and_kept_whole_in_the_journal(records_db: Database):
    records = RecordActivities(records_db)
    long_name, long_actor = "N" * 500, "a" * 300  # accepted by lifecycles started before field limits existed
    snapshot = batch(entry(1, "stage", "targeting", to="targeting", trigger="start", by=long_actor))
    assert snapshot.snapshot is not None
    snapshot.snapshot.contacts[0].name = long_name

    assert records._record_journal(snapshot) == 1

    with records_db.session() as session:
        assert session.scalars(select(DealContact.name)).one() == "N" * 200
        assert session.scalars(select(StageTransition.actor)).one() == "a" * 200
        assert session.scalars(select(JournalRow.detail)).one()["by"] == long_actor


def test_a_statement_the_database_refuses_is_not_retried_and_quotes_no_value(records_db: Database):
    with records_db.session() as session:
        session.add(AccountClaim(playbook="p", account_key="signer@example.com", deal_id="A", claimed_at=T0))
        session.commit()
        with pytest.raises(ApplicationError) as refused, classified("the account claim"):
            session.add(AccountClaim(playbook="p", account_key="signer@example.com", deal_id="B", claimed_at=T0))
            session.commit()
    assert refused.value.type == RECORD_REFUSED and refused.value.non_retryable
    assert "example.com" not in str(refused.value)


def test_pooled_connections_recover_after_postgresql_drops_them_all():
    """A database restart breaks every pooled connection at once: the next write reconnects instead of failing."""
    with postgres_database() as url:
        db = Database(url)
        db.upgrade()
        records = RecordActivities(db)
        assert records._record_journal(batch(entry(1, "stage", "targeting", to="targeting", trigger="start"))) == 1
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            dropped = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s",
                (url.rsplit("/", 1)[1],),
            ).fetchone()
        assert dropped is not None and dropped[0] >= 1

        moved = entry(2, "stage", "contract_request", to="contract_request", trigger="form")
        assert records._record_journal(batch(moved)) == 1
        db.dispose()


class RefusingRecords(RecordActivities):
    """A records store that refuses batches for good while `refuses(batch)` holds (a value it cannot take, until
    someone fixes it), counting its refusals."""

    refuses: Callable[[JournalBatch], bool] = staticmethod(lambda batch: False)
    refused = 0

    def _record_journal(self, batch: JournalBatch) -> int:
        if RefusingRecords.refuses(batch):
            RefusingRecords.refused += 1
            raise ApplicationError(
                "the timeline batch: the database refused it", type=RECORD_REFUSED, non_retryable=True
            )
        return super()._record_journal(batch)


@pytest.fixture
def refusing(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[JournalBatch], bool]], type[RefusingRecords]]:
    def make(refuses: Callable[[JournalBatch], bool]) -> type[RefusingRecords]:
        monkeypatch.setattr(RefusingRecords, "refuses", staticmethod(refuses))
        monkeypatch.setattr(RefusingRecords, "refused", 0)
        return RefusingRecords

    return make


async def test_batches_the_records_store_refuses_are_offered_again_and_the_client_carries_on(
    ts_env, safe_balance, records_db: Database, refusing
):
    records = refusing(lambda batch: RefusingRecords.refused < 2)
    result = await run(ts_env, safe_balance, launched_steps(), until="40d", db=records_db, record_activities=records)

    assert records.refused == 2 and result.status.stage == "ongoing"
    with records_db.session() as session:
        seqs = list(session.scalars(select(JournalRow.seq).order_by(JournalRow.seq)))
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > 10  # the refused first entries included


def test_workers_starting_at_once_on_an_empty_postgresql_migrate_it_once_without_an_error():
    with postgres_database() as url:
        databases = [Database(url) for _ in range(3)]
        outcomes = at_once(*(db.upgrade for db in databases))
        assert outcomes == [None, None, None]
        with databases[0].engine.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD
        for db in databases:
            db.dispose()


async def test_refused_entries_are_carried_over_continue_as_new_until_the_store_takes_them(
    ts_env, safe_balance, records_db: Database, refusing
):
    started: list[datetime] = []

    def first_400_days(batch: JournalBatch) -> bool:  # the lifecycle continues as new on day 365
        started[:] = started or [batch.entries[0].at]
        return max(e.at for e in batch.entries) < started[0] + timedelta(days=400)

    records = refusing(first_400_days)
    result = await run(ts_env, safe_balance, launched_steps(), until="450d", db=records_db, record_activities=records)

    assert result.status.run == 2 and records.refused > 10
    with records_db.session() as session:
        seqs = list(session.scalars(select(JournalRow.seq).order_by(JournalRow.seq)))
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > 30  # the first run's entries included


class UnwritableInTheWorkflowTask(RecordActivities):
    """The records store cannot be written from inside a workflow task, only from an activity: each local record
    fails at once (non-retryable, so the test does not wait out the local retries), counting its failures."""

    failed = 0

    def _record_journal(self, batch: JournalBatch) -> int:
        if activity.info().is_local:
            UnwritableInTheWorkflowTask.failed += 1
            raise ApplicationError("no records store in the workflow task", non_retryable=True)
        return super()._record_journal(batch)


def record_calls(history: WorkflowHistory) -> tuple[int, int]:
    """Local records (markers) and regular record activities in a history."""
    local = sum(e.marker_recorded_event_attributes.marker_name == "core_local_activity" for e in history.events)
    scheduled = sum(
        e.activity_task_scheduled_event_attributes.activity_type.name == "record_journal" for e in history.events
    )
    return local, scheduled


async def test_records_nobody_waits_for_are_written_inside_the_workflow_task(
    ts_env, safe_balance, records_db: Database
):
    """PATCH_LOCAL_RECORDS: a new lifecycle writes a batch as a local activity, no round trip, unless an update's
    caller waits for that workflow task (then a regular activity, so the answer does not wait for the write)."""
    await run(ts_env, safe_balance, launched_steps(), until="40d", db=records_db)

    history = await ts_env.client.get_workflow_handle(workflow_id("D-1")).fetch_history()
    local, scheduled = record_calls(history)
    updates = sum(e.HasField("workflow_execution_update_accepted_event_attributes") for e in history.events)
    assert local > 10 and 0 < scheduled <= updates


async def test_a_record_the_workflow_task_cannot_write_is_written_by_the_regular_activity(
    ts_env, safe_balance, records_db: Database, monkeypatch: pytest.MonkeyPatch
):
    """A local record that fails with anything but RecordRefused hands its batch to the regular activity (retried by
    the server for as long as it takes): the timeline arrives whole and the client carries on."""
    monkeypatch.setattr(UnwritableInTheWorkflowTask, "failed", 0)
    result = await run(
        ts_env,
        safe_balance,
        launched_steps(),
        until="40d",
        db=records_db,
        record_activities=UnwritableInTheWorkflowTask,
    )

    assert result.status.stage == "ongoing"
    history = await ts_env.client.get_workflow_handle(workflow_id("D-1")).fetch_history()
    local, scheduled = record_calls(history)
    # each failed local record, then its activity; the records after updates were activities from the start
    assert scheduled > local == UnwritableInTheWorkflowTask.failed > 5
    # The activity took each batch without the engine state the local record carried: nothing new in history.
    assert all(set(inputs) <= BATCH_KEYS_IN_HISTORY for inputs in regular_record_inputs(history))
    assert stored_states(records_db) == [] and counts(records_db, PinnedPlaybook) == {"pinned_playbooks": 0}
    with records_db.session() as session:
        seqs = list(session.scalars(select(JournalRow.seq).order_by(JournalRow.seq)))
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > 10
