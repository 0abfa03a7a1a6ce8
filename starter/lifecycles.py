"""Starting a client's lifecycle: one definition for every starter (CLI, webhook intake), so a deal started from
HubSpot looks in the Temporal UI exactly like one started by hand."""

from __future__ import annotations

from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy

from sopflow.constants import TASK_QUEUE
from sopflow.models import LifecycleInput, workflow_id
from sopflow.playbook import Playbook
from workflows.lifecycle import ClientLifecycle, start_options

__all__ = ["start_lifecycle", "workflow_id"]


async def start_lifecycle(
    client: Client,
    playbook: Playbook,
    deal_id: str,
    fields: dict[str, Any],
    actor: str | None,
    conflict_policy: WorkflowIDConflictPolicy,
    time_scale: float = 1,
) -> WorkflowHandle[Any, Any]:
    """Start `ClientLifecycle` for a deal whose fields were already validated against the playbook;
    `conflict_policy` says what an already running lifecycle of this deal means to the caller."""
    return await client.start_workflow(
        ClientLifecycle.run,
        LifecycleInput(deal_id=deal_id, playbook=playbook, fields=fields, actor=actor, time_scale=time_scale),
        task_queue=TASK_QUEUE,
        id_conflict_policy=conflict_policy,
        **start_options(playbook, deal_id),
    )
