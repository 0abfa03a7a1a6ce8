"""Malformed and hostile requests sent to a real lifecycle: each is refused with a readable reason, nothing of it
reaches history, and no workflow task ever fails (a failed task would stall the client until a deploy)."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowUpdateFailedError

from tests.conftest import CONTRACT_REQUEST, TARGETING, make_worker
from tests.workflows.test_lifecycle import start_deal
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
    assert "signer_email" in reasons[0] and "service_tier" in reasons[1] and "no_such_form" in reasons[5]
    failed = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED]
    assert failed == []
    accepted = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED]
    assert len(accepted) == 2  # the two valid forms; every refused update left no trace
    assert status.stage == "prelaunch" and status.outcome is None
