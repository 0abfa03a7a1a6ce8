"""The client side of a lifecycle: starting one, and which update or signal carries each request.

Every sender (the CLI, the webhook and form intake, rehearsals, the chaos harness, the benches) starts lifecycles with
`start_lifecycle` and sends requests with `send`, so a deal started from HubSpot looks in the Temporal UI exactly like
one started by hand, and a request model maps to its handler in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, overload

from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy

from sopflow.constants import TASK_QUEUE
from sopflow.models import (
    Advance,
    Close,
    CompleteTask,
    ExternalEvent,
    LifecycleInput,
    MigratePlaybook,
    SetFields,
    SubmitForm,
    UpdateResult,
)
from sopflow.playbook import Playbook
from workflows.lifecycle import ClientLifecycle
from workflows.options import start_options

# A change a person or system asks of a lifecycle: an update, which is validated and answers with an `UpdateResult`.
Request = SubmitForm | CompleteTask | Advance | SetFields | Close | MigratePlaybook
_UPDATES: dict[type[Any], Callable[..., Any]] = {
    SubmitForm: ClientLifecycle.submit_form,
    CompleteTask: ClientLifecycle.complete_task,
    Advance: ClientLifecycle.advance,
    SetFields: ClientLifecycle.set_fields,
    Close: ClientLifecycle.close,
    MigratePlaybook: ClientLifecycle.migrate_playbook,
}


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


def update_name(request: Request) -> str:
    """The name of the update that carries `request` (`submit_form`, …): part of an update id, a metric label."""
    return str(_UPDATES[type(request)].__name__)


@overload
async def send(handle: WorkflowHandle[Any, Any], request: Request, update_id: str | None = None) -> UpdateResult: ...


@overload
async def send(handle: WorkflowHandle[Any, Any], request: ExternalEvent, update_id: None = None) -> None: ...


async def send(
    handle: WorkflowHandle[Any, Any], request: Request | ExternalEvent, update_id: str | None = None
) -> UpdateResult | None:
    """Send a request as its update and return its answer (where the deal is now, what changed, what is still
    needed: the full status is the `status` query's), or an event as a signal (events are deduplicated by their own
    `event_id`, and a signal has no answer).

    `update_id` is Temporal's idempotency key for an update: applied once per run, a repeat answers with the first
    result. None lets Temporal choose one (a new change every time)."""
    if isinstance(request, ExternalEvent):
        await handle.signal(ClientLifecycle.event, request)
        return None
    result: UpdateResult = await handle.execute_update(
        update_name(request), request, id=update_id, result_type=UpdateResult
    )
    return result
