"""The records store keeps each lifecycle's engine state from its local timeline records, so `sopflow forecast`
starts thousands of clients from SQL; the few whose stored state is behind are asked through `forecast_seed`."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from sopflow.db import Database, JournalRow, LifecycleStateRow, PinnedPlaybook
from sopflow.forecast_source import load_seeds
from sopflow.mailsink import MailSink
from sopflow.models import ClientSeed, CompleteTask, LifecycleInput, LifecycleState, MigratePlaybook, workflow_id
from sopflow.playbook import playbook_hash
from sopflow.playbook_checks import parse_playbook
from starter.forecast_source import refresh
from tests.conftest import BATCH_KEYS_IN_HISTORY, make_worker, regular_record_inputs, until
from workflows.lifecycle import ClientLifecycle

# A quote with a call to make; unanswered, it expires into follow-up after two days (a timer: a local record). No
# email anywhere, so nothing but the timer and the test's own requests records the timeline.
QUOTING = parse_playbook(
    {
        "id": "quoting",
        "version": 1,
        "roles": {"rep": {"email": "deal.rep_email"}},
        "deal": {"rep_email": {"type": "email", "required": True}},
        "stages": [
            {
                "id": "quote",
                "tasks": [{"id": "call", "title": "Call the client", "owner": "rep"}],
                "deadline": {"label": "quote expires", "within": "2d", "on_expiry": {"to": "follow_up"}},
                "transitions": [{"to": "lost", "advance": True}],
            },
            {"id": "follow_up", "transitions": [{"to": "lost", "advance": True}]},
            {"id": "lost", "terminal": "lost"},
        ],
    }
)
QUOTING_V2 = parse_playbook({**QUOTING.model_dump(mode="json"), "version": 2})


async def start(env: WorkflowEnvironment, task_queue: str, deal_id: str) -> WorkflowHandle:
    handle = await env.client.start_workflow(
        ClientLifecycle.run,
        LifecycleInput(deal_id=deal_id, playbook=QUOTING, fields={"rep_email": "rep@example.com"}),
        id=workflow_id(deal_id),
        task_queue=task_queue,
    )
    return handle


def stored_state(db: Database, deal_id: str) -> LifecycleStateRow | None:
    with db.session() as session:
        return session.scalars(
            select(LifecycleStateRow).where(LifecycleStateRow.workflow_id == workflow_id(deal_id))
        ).one_or_none()


def stored_seq(db: Database, deal_id: str) -> int:
    row = stored_state(db, deal_id)
    return row.seq if row is not None else 0


def journal_seq(db: Database, deal_id: str) -> int:
    with db.session() as session:
        seqs = session.scalars(select(JournalRow.seq).where(JournalRow.workflow_id == workflow_id(deal_id)))
        return max(seqs, default=0)


def pinned_hashes(db: Database) -> set[str]:
    with db.session() as session:
        return set(session.scalars(select(PinnedPlaybook.content_hash)))


async def test_a_timers_local_record_stores_the_state_the_lifecycle_answers(
    ts_env: WorkflowEnvironment, db: Database, smtp_sink: MailSink
):
    async with make_worker(ts_env.client, db, smtp_sink) as worker:
        handle = await start(ts_env, worker.task_queue, "Q-1")
        await until(lambda: stored_seq(db, "Q-1") > 0, "the start's local record to store the state")
        started = stored_seq(db, "Q-1")
        await ts_env.sleep(timedelta(days=3))  # the quote expires: a timer's work, recorded locally
        await until(lambda: stored_seq(db, "Q-1") > started, "the expiry's record to store the state")
        seed: ClientSeed = await handle.query(ClientLifecycle.forecast_seed)
        loaded = load_seeds(db)

    row = stored_state(db, "Q-1")
    assert row is not None
    assert LifecycleState.model_validate_json(row.state) == seed.state and seed.state.stage == "follow_up"
    assert (row.seq, row.playbook, row.playbook_version) == (seed.state.seq, "quoting", 1)
    assert row.playbook_hash == playbook_hash(QUOTING) and pinned_hashes(db) == {playbook_hash(QUOTING)}
    assert loaded.stale == [] and [s.state for s in loaded.seeds] == [seed.state]
    assert loaded.seeds[0].playbook == seed.playbook == QUOTING
    assert loaded.seeds[0].as_of <= seed.as_of  # taken when recorded; the query answers as of now


async def test_after_an_update_the_stored_state_is_behind_listed_stale_and_refreshed_by_the_query(
    ts_env: WorkflowEnvironment, db: Database, smtp_sink: MailSink
):
    """An update's record is a regular activity: its input is in history, so it carries no state."""
    async with make_worker(ts_env.client, db, smtp_sink) as worker:
        handle = await start(ts_env, worker.task_queue, "Q-2")
        await until(lambda: stored_seq(db, "Q-2") > 0, "the start's local record to store the state")
        before = stored_seq(db, "Q-2")
        await handle.execute_update(ClientLifecycle.complete_task, CompleteTask(task="call"))
        await until(lambda: journal_seq(db, "Q-2") > before, "the update's record to reach the journal")
        loaded = load_seeds(db)
        seeds, failed = await refresh(ts_env.client, [*loaded.stale, workflow_id("NO-SUCH-DEAL")])
        history = await handle.fetch_history()

    assert stored_seq(db, "Q-2") == before  # the regular record left the stored state alone
    assert loaded.seeds == [] and loaded.stale == [workflow_id("Q-2")]
    (seed,) = seeds
    assert seed.workflow_id == workflow_id("Q-2") and seed.deal_id == "Q-2" and seed.playbook == QUOTING
    assert seed.state.tasks["call"].done_at is not None and seed.state.seq == journal_seq(db, "Q-2")
    assert failed == [workflow_id("NO-SUCH-DEAL")]
    inputs = regular_record_inputs(history)
    assert inputs and all(set(i) <= BATCH_KEYS_IN_HISTORY for i in inputs)


async def test_after_a_migration_the_next_local_record_stores_the_new_playbook(
    ts_env: WorkflowEnvironment, db: Database, smtp_sink: MailSink
):
    async with make_worker(ts_env.client, db, smtp_sink) as worker:
        handle = await start(ts_env, worker.task_queue, "Q-3")
        await until(lambda: stored_seq(db, "Q-3") > 0, "the start's local record to store the state")
        await handle.execute_update(ClientLifecycle.migrate_playbook, MigratePlaybook(playbook=QUOTING_V2))
        migrated = journal_seq(db, "Q-3")
        await ts_env.sleep(timedelta(days=3))
        await until(lambda: stored_seq(db, "Q-3") > migrated, "the expiry's record to store the state")
        seed: ClientSeed = await handle.query(ClientLifecycle.forecast_seed)

    row = stored_state(db, "Q-3")
    assert row is not None and (row.playbook_version, row.playbook_hash) == (2, playbook_hash(QUOTING_V2))
    assert pinned_hashes(db) == {playbook_hash(QUOTING), playbook_hash(QUOTING_V2)}
    assert seed.playbook == QUOTING_V2
    (loaded,) = load_seeds(db).seeds
    assert loaded.playbook == QUOTING_V2 and loaded.state == seed.state
