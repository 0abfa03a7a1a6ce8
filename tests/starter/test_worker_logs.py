"""What the worker logs about a refused update, as a log shipper receives it, from a real lifecycle (dev server)."""

from __future__ import annotations

import io
import uuid

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.testing import WorkflowEnvironment

from sopflow.db import Database
from sopflow.logs import FIELD_LIMIT, configure_logging
from sopflow.models import SubmitForm
from sopflow.playbook import Playbook
from starter.lifecycles import start_lifecycle
from tests.conftest import DEAL, TARGETING, json_lines
from workflows.lifecycle import ClientLifecycle


async def test_a_refused_form_is_logged_with_bounded_field_names_and_without_addresses(
    dev_env: WorkflowEnvironment, lifecycle_worker: Database, safe_balance: Playbook, restore_logging: None
) -> None:
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    deal = f"LOG-{uuid.uuid4().hex[:8]}"
    handle = await start_lifecycle(dev_env.client, safe_balance, deal, DEAL, "test", WorkflowIDConflictPolicy.FAIL)
    typed = {**TARGETING, "k" * 30_000: "x", "client-7f3a@example.com": "y"}

    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update(ClientLifecycle.submit_form, SubmitForm(form="targeting", fields=typed))

    (line,) = [line for line in json_lines(stream) if line.get("update") == "submit_form"]
    assert line["level"] == "WARNING" and line["deal_id"] == deal and line["error_type"] == "Rejected"
    # The two unknown names, each cut to a readable length and without the address (however the lifecycle itself
    # chose to shorten them in its refusal).
    names = line["fields"]
    assert len(names) == 2 and all(len(name) <= FIELD_LIMIT + len("…(30000 chars)") for name in names)
    assert any(name.startswith("kkkk") for name in names) and "<email>" in " ".join(names)
    assert max(len(text) for text in stream.getvalue().splitlines()) < 2_000
    assert "client-7f3a" not in stream.getvalue()
    # Logging it did not stall the workflow task: the lifecycle still answers, and no task failed.
    assert (await handle.query(ClientLifecycle.status)).stage == "targeting"
    history = await handle.fetch_history()
    assert not [e for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED]
    await handle.terminate("test done")
