"""Malformed and hostile requests sent to a real lifecycle: each is refused with a readable reason, nothing of it
reaches history, and no workflow task ever fails (a failed task would stall the client until a deploy)."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from sopflow.db import Database, JournalRow
from sopflow.engine import Engine
from sopflow.fields import shapes
from sopflow.models import LifecycleInput, SetFields, SubmitForm, workflow_id
from sopflow.samples import sample_values
from tests.conftest import CONTRACT_REQUEST, TARGETING, make_worker, shipped_playbook, start_deal
from workflows.lifecycle import ClientLifecycle

# Raw payloads, as a script or a buggy integration would send them (by update name, untyped).
BAD_UPDATES: list[tuple[str, Any]] = [
    ("submit_form", {"form": "targeting", "fields": {**TARGETING, "signer_email": "not an email"}}),
    ("submit_form", {"form": "targeting", "fields": {**TARGETING, "service_tier": "Platinum"}}),
    ("submit_form", {"form": "contract_request", "fields": {**CONTRACT_REQUEST, "term_months": math.inf}}),
    ("submit_form", {"form": "contract_request", "fields": {**CONTRACT_REQUEST, "term_months": 10**40}}),
    ("submit_form", {"form": "contract_request", "fields": {**CONTRACT_REQUEST, "client_agreed_on": "2026-02-30"}}),
    ("submit_form", {"form": "no_such_form", "fields": {}}),
    ("submit_form", {"form": "site_visit", "fields": {"visited_on": "\x00"}}),
    ("submit_form", {"form": ["targeting"], "fields": "everything"}),
    ("submit_form", {"fields": {}}),
    ("submit_form", "targeting"),
    ("set_fields", {"fields": {}}),
    ("set_fields", {"fields": {"rep_email": {"nested": ["deep"]}}}),
    ("set_fields", {"fields": {"launch_date": "tomorrow"}}),
    ("advance", {"to": "launch"}),
    ("advance", {"to": "💥"}),
    ("advance", {"to": None}),
    ("complete_task", {"task": "cleared_for_launch"}),
    ("complete_task", {"task": "a" * 5000}),
    ("close", {"outcome": "won", "reason": "wishful"}),
    ("close", {"outcome": "lost", "reason": ""}),
    ("close", {"outcome": "lost", "reason": "x", "stage": "ongoing"}),
    ("close", {"outcome": "lost", "reason": "x", "fields": {"unknown_field": 1}}),
    ("unknown_update", {"x": 1}),
    # The red-team findings: each was accepted before and stopped, stalled or spoofed a client later.
    ("set_fields", {"fields": {"rep_id": "x" * 3000}}),  # SopOwner over the server's 2 KB: terminated
    ("set_fields", {"fields": {"rep_id": "rep@example.com"}}),  # personal data in a search attribute
    ("set_fields", {"fields": {"rep_name": "Rep\r\nBcc: eve@evil.example"}}),  # email stalled for a day
    ("set_fields", {"fields": {"rep_name": "=?utf-8?b?ZXZlQGV2aWwuZXhhbXBsZSw=?="}}),  # spoofed Reply-To
    ("set_fields", {"fields": {"rep_email": "a>,<eve@evil.example"}}),
    ("set_fields", {"fields": {"launch_date": "0001-01-02"}}),
    ("set_fields", {"fields": {"k" * 30_000: 1}}),
]
BAD_SIGNALS: list[Any] = [
    {"name": "contract_signed", "event_id": None, "data": {"x": [1, {"y": math.nan}]}},
    {"name": "💥"},
    {"name": None},
    {"not": "an event"},
    "contract_signed",
    None,
]


async def test_hostile_requests_are_refused_with_reasons_and_no_workflow_task_fails(
    ts_env, safe_balance, db, smtp_sink
):
    async with make_worker(ts_env.client, db, smtp_sink) as worker:
        handle = await start_deal(ts_env, worker, safe_balance, "BAD-1")
        await handle.execute_update("submit_form", {"form": "targeting", "fields": TARGETING})
        await handle.execute_update("submit_form", {"form": "contract_request", "fields": CONTRACT_REQUEST})
        reasons = []
        for name, payload in BAD_UPDATES:
            with pytest.raises(WorkflowUpdateFailedError) as refused:
                await handle.execute_update(name, payload)
            reasons.append(str(refused.value.cause))
        for payload in BAD_SIGNALS:
            await handle.signal("event", payload)
        await handle.signal("event", {"name": "contract_signed", "event_id": "env-1"})  # still heard after all that
        await ts_env.sleep(timedelta(hours=1))

        status = await handle.query(ClientLifecycle.status)
        history = await handle.fetch_history()

    assert all(reason.strip() for reason in reasons)
    assert [len(r) for r in reasons if len(r) >= 1000] == []  # a 30 KB value or key is never echoed back whole
    assert "signer_email" in reasons[0] and "service_tier" in reasons[1] and "no_such_form" in reasons[5]
    failed = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED]
    assert failed == []
    accepted = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED]
    assert len(accepted) == 2  # the two valid forms; every refused update left no trace
    assert status.stage == "prelaunch" and status.outcome is None


async def test_a_go_live_date_out_of_range_is_refused_before_it_can_break_a_timer(ts_env, db, smtp_sink):
    """The red-team case: `go_live_confirmed=0001-01-02` was copied to the go-live date, and "7 days before" it
    raised OverflowError in every workflow task from then on."""
    playbook = shipped_playbook("health_prime_implementation")
    fields = sample_values(playbook.deal, minimal=False, roles=shapes(playbook, "deal"))
    async with make_worker(ts_env.client, db, smtp_sink) as worker:
        handle = await ts_env.client.start_workflow(
            ClientLifecycle.run,
            LifecycleInput(deal_id="HPI-1", playbook=playbook, fields=fields),
            id=workflow_id("HPI-1"),
            task_queue=worker.task_queue,
        )
        kickoff = {"held_on": "2026-01-05", "go_live_confirmed": "0001-01-02"}
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(ClientLifecycle.submit_form, SubmitForm(form="kickoff_call", fields=kickoff))
        await ts_env.sleep(timedelta(days=30))
        status = await handle.query(ClientLifecycle.status)
        history = await handle.fetch_history()
    assert "go_live_confirmed" in str(refused.value.cause) and "out of range" in str(refused.value.cause)
    assert status.outcome is None
    assert not [e for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED]


async def test_a_rule_that_raises_fails_only_its_request_changes_nothing_and_is_journaled(
    ts_env, safe_balance, db, smtp_sink, monkeypatch
):
    def buggy_set_fields(self: Engine, req: SetFields, now: Any) -> None:
        self.state.fields["rep_id"] = "half-applied-1"  # a change made before the bug struck must be undone
        raise RuntimeError("a bug in a rule")

    async with make_worker(ts_env.client, db, smtp_sink) as worker:
        handle = await start_deal(ts_env, worker, safe_balance, "BUG-1")
        with monkeypatch.context() as patch:
            patch.setattr(Engine, "set_fields", buggy_set_fields)
            with pytest.raises(WorkflowUpdateFailedError) as failed:
                await handle.execute_update(ClientLifecycle.set_fields, SetFields(fields={"rep_id": "owner-2"}))
        await handle.execute_update(ClientLifecycle.set_fields, SetFields(fields={"rep_id": "owner-3"}))
        status = await handle.query(ClientLifecycle.status)
        await ts_env.sleep(timedelta(minutes=1))
        history = await handle.fetch_history()

    cause = failed.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "EngineFault"
    assert "nothing was changed" in cause.message
    assert status.fields["rep_id"] == "owner-3"  # the lifecycle answered the next request as usual
    assert not [e for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED]
    errors = journal_kinds(db, "deal-BUG-1", "error")
    assert errors == [{"during": "set_fields", "error": "RuntimeError", "message": "a bug in a rule"}]


async def test_a_timer_whose_rule_raises_is_journaled_and_set_aside_while_the_lifecycle_runs_on(
    ts_env, safe_balance_utc, db, smtp_sink, monkeypatch
):
    """On the UTC rules: started at the test's real hour, a send window could hold the reminder past day 8."""
    original_rule = Engine._deadline_reminder

    def buggy_rule(self: Engine, *args: Any) -> None:
        if self.state.stage == "contract":
            raise ValueError("a bug in a timer rule")
        original_rule(self, *args)

    async with make_worker(ts_env.client, db, smtp_sink) as worker:
        handle = await start_deal(ts_env, worker, safe_balance_utc, "BUG-2")
        await handle.execute_update(ClientLifecycle.submit_form, SubmitForm(form="targeting", fields=TARGETING))
        await handle.execute_update(
            ClientLifecycle.submit_form, SubmitForm(form="contract_request", fields=CONTRACT_REQUEST)
        )
        with monkeypatch.context() as patch:
            patch.setattr(Engine, "_deadline_reminder", buggy_rule)
            await ts_env.sleep(timedelta(days=8))  # the 7-day reminder's rule raises
            during = await handle.query(ClientLifecycle.status)
        # Fixed (a deploy); the next request puts the timer back, and it fires.
        await handle.execute_update(ClientLifecycle.set_fields, SetFields(fields={"rep_id": "owner-4"}))
        await ts_env.sleep(timedelta(hours=1))
        history = await handle.fetch_history()

    assert during.stage == "contract"
    assert not [e for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED]
    errors = journal_kinds(db, "deal-BUG-2", "error")
    assert len(errors) == 1 and errors[0]["during"] == "timer 'contract expires: reminder'"
    assert len(journal_kinds(db, "deal-BUG-2", "reminder")) == 1  # fired once the timer was back


def journal_kinds(db: Database, wf_id: str, kind: str) -> list[dict[str, Any]]:
    with db.session() as session:
        query = select(JournalRow).where(JournalRow.workflow_id == wf_id, JournalRow.kind == kind)
        return [row.detail for row in session.scalars(query.order_by(JournalRow.seq))]
