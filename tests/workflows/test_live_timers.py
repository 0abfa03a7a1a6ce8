"""Only the timer for the next wake-up is pending: the Temporal UI shows an operator what a lifecycle waits for."""

from __future__ import annotations

import json
import threading
import uuid

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHandle, WorkflowHistory
from temporalio.testing import WorkflowEnvironment

from activities.records import RecordActivities
from sopflow.db import Database
from sopflow.mailsink import MailSink
from sopflow.models import JournalBatch, LifecycleInput, LifecycleStatus, SubmitForm, workflow_id
from sopflow.playbook import Playbook
from sopflow.playbook_checks import parse_playbook
from tests.conftest import (
    activities_only,
    launched_steps,
    run,
    until,
    workflows_only,
)
from workflows.lifecycle import ClientLifecycle


def pending_timers(history: WorkflowHistory) -> dict[str, str]:
    """Timers started and neither fired nor cancelled, by id, with the summary the UI shows."""
    pending: dict[str, str] = {}
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
            summary = event.user_metadata.summary
            timer_id = event.timer_started_event_attributes.timer_id
            pending[timer_id] = json.loads(summary.data) if summary.data else ""
        elif event.event_type == EventType.EVENT_TYPE_TIMER_FIRED:
            pending.pop(event.timer_fired_event_attributes.timer_id, None)
        elif event.event_type == EventType.EVENT_TYPE_TIMER_CANCELED:
            pending.pop(event.timer_canceled_event_attributes.timer_id, None)
    return pending


def timer_id(event: HistoryEvent) -> str | None:
    started = event.event_type == EventType.EVENT_TYPE_TIMER_STARTED
    return event.timer_started_event_attributes.timer_id if started else None


async def idle(handle: WorkflowHandle) -> bool:
    return not (await handle.describe()).raw_description.pending_activities


def failed_tasks(history: WorkflowHistory) -> list[EventType.ValueType]:
    bad = (EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED, EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT)
    return [e.event_type for e in history.events if e.event_type in bad]


async def test_a_launched_client_waits_only_on_its_site_visit_not_on_contract_or_launch_timers(
    ts_env: WorkflowEnvironment, safe_balance: Playbook
):
    await run(ts_env, safe_balance, launched_steps(), until="20d")
    history = await ts_env.client.get_workflow_handle(workflow_id("D-1")).fetch_history()

    (summary,) = pending_timers(history).values()
    assert "visit" in summary.lower()
    assert not any(word in summary for word in ("contract", "launch_checklist", "prelaunch"))


class HeldRecords(RecordActivities):
    """Timeline records wait for the test's go-ahead, so one finishes exactly when the test wants."""

    go = threading.Event()

    def _record_journal(self, batch: JournalBatch) -> int:
        HeldRecords.go.wait(timeout=60)
        return super()._record_journal(batch)


class StoreUnreachableInTheWorkflowTask(RecordActivities):
    """The workflow worker cannot reach the records store: each local record fails as a lost connection does, so
    the lifecycle hands the batch to the regular activity (PATCH_LOCAL_RECORDS), whose worker holds it."""

    def _record_journal(self, batch: JournalBatch) -> int:
        raise ConnectionError("records store not reachable from the workflow worker")


# A call due an hour after the deal opens; the form moves the deal to a stage with no timer at all.
MOVING = parse_playbook(
    {
        "id": "moving",
        "version": 1,
        "roles": {"rep": {"email": "deal.rep_email"}},
        "deal": {"rep_email": {"type": "email", "required": True}},
        "forms": {"move": {"fields": {"note": {"type": "text"}}}},
        "stages": [
            {
                "id": "open",
                "forms": ["move"],
                "tasks": [{"id": "call", "title": "Call the client", "owner": "rep", "due": "1h"}],
                "transitions": [{"to": "moved", "form": "move"}],
            },
            {"id": "moved", "transitions": [{"to": "lost", "advance": True}]},
            {"id": "lost", "terminal": "lost"},
        ],
    }
)


async def test_a_timer_that_fired_while_its_wake_up_was_superseded_is_not_cancelled(
    dev_env: WorkflowEnvironment, db: Database, smtp_sink: MailSink
):
    """The race that once made the workflow stop cancelling timers. The deal moves on while its timeline record is
    held; with no workflow worker, the record finishes and then the old stage's timer fires, so one workflow task
    brings both, in that order: the main loop resumes first and supersedes a timer whose firing it has not seen yet.
    No cancel may reach the server for it: the task would fail. A record runs as a regular activity when the local
    one failed (the store out of the workflow worker's reach), as here, and in every run recorded before
    PATCH_LOCAL_RECORDS."""
    client, task_queue = dev_env.client, f"tq-{uuid.uuid4()}"
    HeldRecords.go.set()
    inp = LifecycleInput(deal_id="D-41", playbook=MOVING, fields={"rep_email": "rep@example.com"}, time_scale=3600)
    async with activities_only(client, db, smtp_sink, task_queue, record_activities=HeldRecords):
        # no sticky queue to time out
        async with workflows_only(client, task_queue, db, StoreUnreachableInTheWorkflowTask, max_cached_workflows=0):
            handle = await client.start_workflow(
                ClientLifecycle.run, inp, id=workflow_id("D-41"), task_queue=task_queue
            )
            await until(lambda: timer_started(handle), "the call's timer to be armed")
            HeldRecords.go.clear()
            await handle.execute_update(ClientLifecycle.submit_form, SubmitForm(form="move"))
            await until(lambda: record_under_way(handle), "the move's record to be under way")
        HeldRecords.go.set()
        await until(lambda: fired_after_a_record(handle), "the call's timer to fire after the record finished")
        async with workflows_only(client, task_queue, db, StoreUnreachableInTheWorkflowTask):
            status: LifecycleStatus = await handle.query(ClientLifecycle.status)
            history = await handle.fetch_history()

    assert status.stage == "moved"
    assert failed_tasks(history) == []
    assert pending_timers(history) == {}  # nothing left to wait for in 'moved'


async def timer_started(handle: WorkflowHandle) -> bool:
    history = await handle.fetch_history()
    return any(e.event_type == EventType.EVENT_TYPE_TIMER_STARTED for e in history.events)


async def record_under_way(handle: WorkflowHandle) -> bool:
    pending = (await handle.describe()).raw_description.pending_activities
    return any(a.activity_type.name == "record_journal" and a.last_started_time.seconds for a in pending)


async def fired_after_a_record(handle: WorkflowHandle) -> bool:
    """The timer fired after the held record finished, both waiting for the next workflow task."""
    kinds = [e.event_type for e in (await handle.fetch_history()).events]
    done = EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
    tail = kinds[len(kinds) - kinds[::-1].index(done) :] if done in kinds else kinds
    return (
        EventType.EVENT_TYPE_TIMER_FIRED in tail
        and EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED in tail
        and tail.index(EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED) < tail.index(EventType.EVENT_TYPE_TIMER_FIRED)
    )
