"""Starting a client's lifecycle: one definition for every starter (CLI, webhook intake), so a deal started from
HubSpot looks in the Temporal UI exactly like one started by hand."""

from __future__ import annotations

from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)

from sopflow.constants import SA_PLAYBOOK, SA_STAGE, TASK_QUEUE, WORKFLOW_ID_PREFIX
from sopflow.models import LifecycleInput
from sopflow.playbook import Playbook
from workflows.lifecycle import ClientLifecycle


def workflow_id(deal_id: str) -> str:
    return f"{WORKFLOW_ID_PREFIX}{deal_id}"


async def start_lifecycle(
    client: Client,
    playbook: Playbook,
    deal_id: str,
    fields: dict[str, Any],
    actor: str | None,
    conflict_policy: WorkflowIDConflictPolicy,
) -> WorkflowHandle[Any, Any]:
    """Start `ClientLifecycle` for a deal whose fields were already validated against the playbook.

    A deal id names one lifecycle for good (its timeline, records and email keys are per deal id), so a closed
    lifecycle is never started again; `conflict_policy` says what a running one means to the caller.
    """
    return await client.start_workflow(
        ClientLifecycle.run,
        LifecycleInput(deal_id=deal_id, playbook=playbook, fields=fields, actor=actor),
        id=workflow_id(deal_id),
        task_queue=TASK_QUEUE,
        id_conflict_policy=conflict_policy,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        static_summary=f"{playbook.title or playbook.id} (v{playbook.version}) · deal {deal_id}",
        search_attributes=TypedSearchAttributes(
            [SearchAttributePair(SA_PLAYBOOK, playbook.id), SearchAttributePair(SA_STAGE, playbook.stages[0].id)]
        ),
    )
