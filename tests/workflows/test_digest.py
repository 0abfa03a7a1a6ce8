"""The morning digest end to end on the session's dev server: a real worker, the real SMTP sink, a real SQLite
records store and staff file; and its Temporal Schedule, created and updated idempotently."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from temporalio.client import (
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionStartWorkflow,
    ScheduleBackfill,
    ScheduleOverlapPolicy,
    ScheduleRange,
)
from temporalio.testing import WorkflowEnvironment

from sopflow.db import Database, OutboxEmail
from sopflow.digest import idempotency_key
from sopflow.mailsink import MailSink
from sopflow.models import DigestOutcome, DigestRun, MorningDigestInput
from sopflow.staff import Person, Staff, save_staff
from tests.conftest import contact_row, deal_row, make_worker, task_row, until
from workflows.digest import MorningDigest, the_hour
from workflows.digest_schedule import CATCHUP_WINDOW, ensure_digest_schedule

# Monday 2026-03-16, 07:00 in New York (EDT): the staff below have their morning then. A run started a little late
# (07:20) still sends for 07:00.
MORNING = datetime(2026, 3, 16, 11, tzinfo=UTC)
DAY = timedelta(days=1)


def staff_file(tmp_path: Path) -> Path:
    """The rep has work; the account manager has nothing due; the manager has work but opted out; the night owl
    has work but their morning is another hour."""
    path = tmp_path / "staff.yaml"
    people = [
        Person(email="rep@example.com", timezone="America/New_York"),
        Person(email="am@example.com", timezone="America/New_York"),
        Person(email="manager@example.com", timezone="America/New_York", digest=False),
        Person(email="owl@example.com", timezone="America/New_York", morning_hour=22),
    ]
    save_staff(path, Staff(people=people))
    return path


def seed(db: Database) -> None:
    now = MORNING
    with db.session() as session:
        session.add_all(
            [
                deal_row("D-1", "prelaunch", now, owner="account_manager:am-5"),
                task_row("D-1", "onsite_appointment", "rep", now - DAY, now),
                task_row("D-1", "services_onboarded", "account_manager", now + 3 * DAY, now),
                contact_row("D-1", "rep", "rep@example.com", now),
                contact_row("D-1", "account_manager", "am@example.com", now),
                deal_row("D-2", "prelaunch", now, owner="account_manager:am-6"),
                task_row("D-2", "onsite_appointment", "rep", now - DAY, now),
                contact_row("D-2", "rep", "manager@example.com", now),
                deal_row("D-3", "prelaunch", now, owner="account_manager:am-7"),
                task_row("D-3", "onsite_appointment", "rep", now - DAY, now),
                contact_row("D-3", "rep", "owl@example.com", now),
            ]
        )
        session.commit()


async def test_a_digest_run_twice_for_one_hour_sends_one_email_per_person_with_work(
    dev_env: WorkflowEnvironment, db: Database, smtp_sink: MailSink, tmp_path: Path
) -> None:
    seed(db)
    worker = make_worker(dev_env.client, db, smtp_sink, staff_path=staff_file(tmp_path))
    outcomes = []
    async with worker:
        for _ in range(2):
            outcome: DigestOutcome = await dev_env.client.execute_workflow(
                MorningDigest.run,
                MorningDigestInput(at=MORNING + timedelta(minutes=20)),
                id=f"digest-test-{uuid.uuid4()}",
                task_queue=worker.task_queue,
            )
            outcomes.append(outcome)
    first, second = outcomes
    assert (first.due, first.sent, first.nothing_due, first.opted_out) == (2, 1, 1, 1)
    assert (second.sent, second.already_sent, second.nothing_due, second.opted_out) == (0, 1, 1, 1)
    digests = [m for m in smtp_sink.messages if m["X-Sopflow-Template"] == "_system/morning_digest"]
    assert [m["To"] for m in digests] == ["rep@example.com"]
    text = str(digests[0].get_body(("plain",)).get_content())  # type: ignore[union-attr]
    assert "onsite appointment" in text and "http://127.0.0.1:8000/deals/D-1" in text
    assert "D-2" not in text and "D-3" not in text
    with db.session() as session:
        keys = session.scalars(select(OutboxEmail.key).where(OutboxEmail.template == "morning_digest")).all()
    assert keys == [idempotency_key("rep@example.com", MORNING.date())]


async def test_ensuring_the_schedule_twice_leaves_one_hourly_schedule_and_keeps_a_pause(
    dev_env: WorkflowEnvironment,
) -> None:
    schedule_id, task_queue = f"digest-schedule-{uuid.uuid4()}", f"tq-{uuid.uuid4()}"
    handle = dev_env.client.get_schedule_handle(schedule_id)
    try:
        assert await ensure_digest_schedule(dev_env.client, schedule_id, task_queue) == "created"
        await handle.pause(note="paused by an operator")
        assert await ensure_digest_schedule(dev_env.client, schedule_id, task_queue) == "updated"
        described = await handle.describe()
        schedule = described.schedule
        (calendar,) = schedule.spec.calendars
        assert (list(calendar.hour), list(calendar.minute), list(calendar.second)) == (
            [ScheduleRange(0, 23)],
            [ScheduleRange(0)],
            [ScheduleRange(0)],
        )
        assert not schedule.spec.intervals and not schedule.spec.cron_expressions
        assert schedule.policy.overlap == ScheduleOverlapPolicy.SKIP
        assert schedule.policy.catchup_window == CATCHUP_WINDOW
        action = schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)
        assert (action.workflow, action.id, action.task_queue) == ("MorningDigest", schedule_id, task_queue)
        assert schedule.state.paused and schedule.state.note == "paused by an operator"
        ids = [s.id async for s in await dev_env.client.list_schedules() if s.id == schedule_id]
        assert len(ids) <= 1  # visibility may not list it yet; never twice
    finally:
        await handle.delete()


async def test_a_backfilled_run_sends_for_its_scheduled_hour_not_the_hour_it_runs_in(
    dev_env: WorkflowEnvironment, db: Database, smtp_sink: MailSink
) -> None:
    """Backfilled three hours back (as `temporal schedule backfill` does), the run sends for that hour, which it reads
    from the schedule's stamp on it, not for the hour it runs in."""
    schedule_id = f"digest-schedule-{uuid.uuid4()}"
    worker = make_worker(dev_env.client, db, smtp_sink)
    handle = dev_env.client.get_schedule_handle(schedule_id)
    async with worker:
        try:
            await ensure_digest_schedule(dev_env.client, schedule_id, worker.task_queue)
            three_hours_ago = the_hour(datetime.now(UTC)) - timedelta(hours=3)
            minute = timedelta(minutes=1)
            await handle.backfill(ScheduleBackfill(start_at=three_hours_ago - minute, end_at=three_hours_ago + minute))

            async def started() -> bool:
                return bool((await handle.describe()).info.recent_actions)

            await until(started, "the schedule started a run")
            (action,) = (await handle.describe()).info.recent_actions
            assert isinstance(action.action, ScheduleActionExecutionStartWorkflow)
            run = dev_env.client.get_workflow_handle(action.action.workflow_id, result_type=DigestOutcome)
            assert await run.result() == DigestOutcome()  # no staff directory: nobody is due
            history = await run.fetch_history()
            scheduled = next(
                e.activity_task_scheduled_event_attributes
                for e in history.events
                if e.HasField("activity_task_scheduled_event_attributes")
            )
            (sent_for,) = await dev_env.client.data_converter.decode(scheduled.input.payloads, [DigestRun])
            assert action.scheduled_at == three_hours_ago
            assert sent_for.at == three_hours_ago
        finally:
            await handle.delete()
