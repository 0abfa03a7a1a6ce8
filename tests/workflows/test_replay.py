"""Recorded histories replay against the current workflow code: what runs today keeps running after a deploy."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import activity
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType, UpdateWorkflowExecutionLifecycleStage
from temporalio.api.update.v1 import UpdateRef, WaitPolicy
from temporalio.api.workflowservice.v1 import PollWorkflowExecutionUpdateRequest
from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from activities.email import EmailActivities
from sopflow.codec import shared_pydantic_data_converter
from sopflow.db import Database
from sopflow.mailsink import MailSink
from sopflow.models import EmailRequest, EmailResult, ExternalEvent, SubmitForm
from sopflow.playbook import Playbook
from tests.conftest import CONTRACT_REQUEST, TARGETING, activities_only, start_deal, until, workflows_only
from tests.workflows.record_histories import HISTORIES
from workflows.lifecycle import ClientLifecycle
from workflows.sandbox import WORKFLOW_RUNNER

RECORDED = sorted(HISTORIES.glob("*.json"))


def test_histories_are_recorded_for_every_shipped_scenario():
    assert len(RECORDED) >= 5  # four scenarios, the happy path spanning several runs


@pytest.mark.parametrize("path", RECORDED, ids=[p.stem for p in RECORDED])
async def test_recorded_history_replays_deterministically(path: Path):
    history = WorkflowHistory.from_json(f"deal-{path.stem}", path.read_text())
    replayer = Replayer(
        workflows=[ClientLifecycle], data_converter=shared_pydantic_data_converter, workflow_runner=WORKFLOW_RUNNER
    )
    result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None


@pytest.mark.xfail(
    strict=True,
    reason="temporalio 1.35 (sdk-python #1591 class): on a cold start an update that came with new events ran after "
    "them live and before them on replay; when this replays, move the file up into tests/histories/",
)
async def test_a_history_where_an_update_reached_a_cold_worker_after_a_kill_replays():
    """Caught by the PostgreSQL chaos run (2026-12-03): the worker the lifecycle was sticky to was killed, so its
    next workflow task timed out unstarted (schedule-to-start); the next worker got the result of the email in flight
    (account_claimed) and an update (complete_task) in one workflow task and scheduled the next queued email
    (contract_sent) before accepting the update. Replaying gives the update first: a nondeterminism error, and the
    lifecycle's workflow task fails on every worker until an operator resets it (README: Production)."""
    path = HISTORIES / "nondeterministic" / "cold_start_update_after_worker_kill.json"
    history = WorkflowHistory.from_json("deal-CHAOS-0020", path.read_text())
    replayer = Replayer(
        workflows=[ClientLifecycle], data_converter=shared_pydantic_data_converter, workflow_runner=WORKFLOW_RUNNER
    )
    await replayer.replay_workflow(history, raise_on_replay_failure=True)


@pytest.mark.xfail(
    strict=True,
    reason="temporalio 1.35 (sdk-python #1881 class): a local activity's resolution came in the next workflow task "
    "live and in its own on replay; when this replays, move the file up into tests/histories/",
)
async def test_a_history_where_a_local_record_met_a_signal_and_an_update_replays():
    """deal-CHAOS-0150, 200 clients, 3 workers, 8 kills: one workflow task applied a signal (contract_signed) and
    two activity results, wrote its timeline as a local activity (marker 47) and completed; a workflow task the
    server started at once after it (48-50, with no event of its own: probably an update the validator refused,
    which leaves none) published, recorded the yearly wake-up patch (52) and armed the next timer. Every replay of
    events 1-50, on this session's code and on the code before it (ec6ef35), reaches the patch marker with no
    wake-up to ask it for: a nondeterminism error, so the lifecycle's task failed on every worker after its sticky
    worker was killed (the kill did not cause it; any cold replay would have met it)."""
    path = HISTORIES / "nondeterministic" / "local_record_then_update_chaos.json"
    history = WorkflowHistory.from_json("deal-CHAOS-0150", path.read_text())
    replayer = Replayer(
        workflows=[ClientLifecycle], data_converter=shared_pydantic_data_converter, workflow_runner=WORKFLOW_RUNNER
    )
    await replayer.replay_workflow(history, raise_on_replay_failure=True)


async def update_admitted(client: Client, handle: WorkflowHandle, update_id: str) -> bool:
    """Whether the server has admitted the update (no worker needs to have seen it)."""
    request = PollWorkflowExecutionUpdateRequest(
        namespace=client.namespace,
        update_ref=UpdateRef(workflow_execution=WorkflowExecution(workflow_id=handle.id), update_id=update_id),
        wait_policy=WaitPolicy(
            lifecycle_stage=UpdateWorkflowExecutionLifecycleStage.UPDATE_WORKFLOW_EXECUTION_LIFECYCLE_STAGE_ADMITTED
        ),
    )
    try:
        await client.workflow_service.poll_workflow_execution_update(request, timeout=timedelta(seconds=2))
    except RPCError:
        return False
    return True


class HeldEmails(EmailActivities):
    """Emails wait for the test's go-ahead, so one is in flight while the workflow worker goes away."""

    in_flight: asyncio.Event
    go: asyncio.Event

    @activity.defn(name="send_email")
    async def send_email(self, req: EmailRequest) -> EmailResult:
        self.in_flight.set()
        await self.go.wait()
        return await super().send_email(req)


async def test_an_update_and_a_finished_email_reaching_a_cold_worker_after_its_sticky_worker_left_replay(
    dev_env: WorkflowEnvironment, safe_balance: Playbook, db: Database, smtp_sink: MailSink
):
    """The chaos run's history shape, made on purpose: the sticky worker leaves while an email is in flight and after
    a signal was handled, the email finishes (its workflow task times out on the empty sticky queue), an update comes,
    a cold worker takes both. What it records replays, whichever of the two it handled first."""
    client, task_queue = dev_env.client, f"tq-{uuid.uuid4()}"
    HeldEmails.in_flight, HeldEmails.go = asyncio.Event(), asyncio.Event()
    activities = activities_only(client, db, smtp_sink, task_queue, email_activities=HeldEmails)

    def workflow_worker() -> Worker:
        # A short sticky timeout: the task left on the departed worker's queue moves on in a second, not ten.
        return workflows_only(client, task_queue, db, sticky_queue_schedule_to_start_timeout=timedelta(seconds=1))

    async with activities:
        sticky = workflow_worker()
        async with sticky:
            handle = await start_deal(dev_env, sticky, safe_balance, "COLD-1")
            await handle.execute_update(ClientLifecycle.submit_form, SubmitForm(form="targeting", fields=TARGETING))
            await HeldEmails.in_flight.wait()
            await handle.signal(ClientLifecycle.event, ExternalEvent(name="crm.note_added", event_id="e-1"))
            await until(lambda: handled_since_the_signal(handle), "the signal to be handled")
        HeldEmails.go.set()
        await until(lambda: task_timed_out(handle), "the email's workflow task to time out on the empty sticky queue")
        contract_request = SubmitForm(form="contract_request", fields=CONTRACT_REQUEST)
        update = asyncio.create_task(
            handle.execute_update(ClientLifecycle.submit_form, contract_request, id="contract-request")
        )
        # The cold worker starts only once the server holds the update, so that its first task carries both.
        await until(lambda: update_admitted(client, handle, "contract-request"), "the update to reach the server")
        async with workflow_worker():
            await update
            history = await handle.fetch_history()

    kinds = [e.event_type for e in history.events]
    timed_out = kinds.index(EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT)
    # The shape meant: the email's result and the update were handled by the cold worker's first workflow task.
    assert kinds[timed_out + 1 : timed_out + 5] == [
        EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
        EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
        EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
    ]
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED in kinds[timed_out - 3 : timed_out]
    replayer = Replayer(
        workflows=[ClientLifecycle], data_converter=shared_pydantic_data_converter, workflow_runner=WORKFLOW_RUNNER
    )
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None


async def handled_since_the_signal(handle: WorkflowHandle) -> bool:
    events = (await handle.fetch_history()).events
    signalled = [e.event_id for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED]
    done = [e.event_id for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED]
    return bool(signalled) and any(d > signalled[-1] for d in done)


async def task_timed_out(handle: WorkflowHandle) -> bool:
    events = (await handle.fetch_history()).events
    return any(e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT for e in events)
