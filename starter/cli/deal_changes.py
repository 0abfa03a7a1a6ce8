"""The verbs that change a running deal: advance, set, close, event."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Annotated, Any

import typer
from temporalio.client import WorkflowHandle, WorkflowQueryFailedError
from temporalio.service import RPCError

from sopflow import zones
from sopflow.models import Advance, Close, ExternalEvent, LifecycleStatus, SetFields
from starter.cli.apps import deal_app
from starter.cli.common import (
    UPDATE_WAIT,
    ActorOpt,
    DealIdArg,
    FieldOpt,
    KeyOpt,
    WaitOpt,
    connects,
    handle_of,
    nearest_first,
    parse_fields,
    run,
    update_command,
)
from starter.cli.render import ObjectOutputOpt, Output, fail, out, print_object, zone_named
from starter.lifecycles import send
from workflows.lifecycle import ClientLifecycle


@deal_app.command("advance")
@connects
def deal_advance(
    deal_id: DealIdArg,
    stage: Annotated[str, typer.Argument(metavar="STAGE", help="the stage to move to")],
    note: Annotated[str | None, typer.Option(metavar="TEXT", help="why")] = None,
    actor: ActorOpt = "cli",
    output: ObjectOutputOpt = Output.text,
    idempotency_key: KeyOpt = None,
    wait: WaitOpt = UPDATE_WAIT,
) -> None:
    """Move a deal to the next stage (rejected, naming what is missing, if the stage's gate is not met)."""
    payload = Advance(to=stage, actor=actor, note=note)
    update_command(deal_id, payload, output, f"advanced to {stage}", idempotency_key, wait)


@deal_app.command("set")
@connects
def deal_set(
    deal_id: DealIdArg,
    field: FieldOpt = None,
    actor: ActorOpt = "cli",
    output: ObjectOutputOpt = Output.text,
    idempotency_key: KeyOpt = None,
    wait: WaitOpt = UPDATE_WAIT,
) -> None:
    """Set deal fields (e.g. -f launch_date=2026-03-01)."""
    values = parse_fields(field)
    if not values:
        fail("give at least one --field key=value")
    payload = SetFields(fields=values, actor=actor)
    message = f"set {', '.join(values)}"
    update_command(deal_id, payload, output, message, idempotency_key, wait)


class CloseOutcome(StrEnum):
    """How a person may close a deal: the outcomes the engine's `Close` request accepts (won and expired are reached
    through the playbook, never by hand)."""

    lost = "lost"
    cancelled = "cancelled"


ReasonOpt = Annotated[str, typer.Option(metavar="TEXT", help="why the deal is closed (required)")]
CloseStageOpt = Annotated[
    str | None, typer.Option(metavar="STAGE", help="terminal stage, when the playbook has several")
]


def close_deal(
    deal_id: str,
    outcome: CloseOutcome,
    reason: str,
    stage: str | None,
    field: list[str] | None,
    actor: str,
    output: Output,
    idempotency_key: str | None,
    wait: float,
) -> None:
    """`deal close` and the old `close --lost/--cancelled` spelling: one request, one answer."""
    if not reason.strip():
        fail("--reason must not be empty")
    payload = Close(outcome=outcome.value, reason=reason, stage=stage, fields=parse_fields(field), actor=actor)
    update_command(deal_id, payload, output, f"closed as {outcome.value}", idempotency_key, wait)


@deal_app.command("close")
@connects
def deal_close(
    deal_id: DealIdArg,
    outcome: Annotated[
        CloseOutcome,
        typer.Argument(
            metavar="OUTCOME", help="lost: the prospect did not buy; cancelled: the client or we stopped the engagement"
        ),
    ],
    reason: ReasonOpt,
    stage: CloseStageOpt = None,
    field: FieldOpt = None,
    actor: ActorOpt = "cli",
    output: ObjectOutputOpt = Output.text,
    idempotency_key: KeyOpt = None,
    wait: WaitOpt = UPDATE_WAIT,
) -> None:
    """Close a deal as lost or cancelled, with a reason."""
    close_deal(deal_id, outcome, reason, stage, field, actor, output, idempotency_key, wait)


# --- events: a signal, so the lifecycle never answers; the CLI asks it afterwards what became of the event ----------


class EventOutcome(StrEnum):
    accepted = "accepted"  # it moved the deal
    ignored = "ignored"  # the deal's stage does not wait for it (a repeat, or too early or too late)
    delivered = "delivered"  # the stage waits for it, but the deal did not move (yet): its gate, or a repeat


@dataclass(frozen=True)
class EventResult:
    deal_id: str
    event: str
    outcome: EventOutcome
    stage: str
    from_stage: str | None
    message: str


def event_result(name: str, before: LifecycleStatus, after: LifecycleStatus) -> EventResult:
    """What became of event `name`, from the deal's status before and after it was delivered.

    The engine journals an event the stage does not wait for as ignored, one it already received in this stage as
    "already received", and drops a repeated event id without a word; none of that is in the answer to a signal, so
    it is read from the status: a stage move the event triggered is `accepted`; otherwise the events the deal's
    stage waits for (`awaited_events`, from the playbook the lifecycle runs) say whether it could move on at all. A
    worker of the version before that field cannot tell: then the answer is "delivered".
    """
    deal, stage, trigger = after.deal_id, after.stage, f"event:{name}"
    moves = [record for record in after.history[len(before.history) :] if record.trigger == trigger]
    if moves:
        move = moves[0]
        return EventResult(
            deal,
            name,
            EventOutcome.accepted,
            stage,
            move.from_stage,
            f"event {name} accepted: deal {deal} moved from {move.from_stage} to {stage}",
        )
    waits = None if after.awaited_events is None else name in after.awaited_events
    earlier = [record for record in after.history if record.trigger == trigger]
    if earlier:
        last = earlier[-1]
        received = (
            f"already received on {zones.show(last.at, zone_named(after.timezone))}: it moved the deal from "
            f"{last.from_stage} to "
            f"{last.to_stage}"
        )
    else:
        received = None
    if waits is False:
        why = received or f"stage '{stage}' does not wait for it"
        return EventResult(
            deal, name, EventOutcome.ignored, stage, None, f"event {name} ignored: {why}; deal {deal} stays in {stage}"
        )
    pending = f" until: {'; '.join(after.unmet_gate)}" if after.unmet_gate else ""
    message = f"event {name} delivered: deal {deal} stays in {stage}{pending}"
    return EventResult(deal, name, EventOutcome.delivered, stage, None, message)


async def _status(handle: WorkflowHandle[Any, Any]) -> LifecycleStatus:
    result: LifecycleStatus = await handle.query(ClientLifecycle.status)
    return result


@deal_app.command("event")
@connects
def deal_event(
    deal_id: DealIdArg,
    name: Annotated[str, typer.Argument(metavar="EVENT", help="the event, e.g. contract_signed")],
    event_id: Annotated[
        str | None, typer.Option("--id", metavar="EVENT_ID", help="the sender's event id (repeats are ignored)")
    ] = None,
    source: Annotated[str, typer.Option(metavar="TEXT", help="where the event comes from")] = "cli",
    output: ObjectOutputOpt = Output.text,
) -> None:
    """Deliver an external event (e.g. contract_signed) and say what became of it.

    Accepted (it moved the deal), ignored (a repeat, or an event the deal's stage does not wait for) or delivered (the
    stage waits for it, but something else holds the deal). Repeating an event is harmless."""

    async def go() -> EventResult:
        handle = await handle_of(deal_id)
        before = await _status(handle)
        if before.outcome:
            fail(f"deal {deal_id} is closed ({before.outcome}) in stage '{before.stage}'")
        if name not in before.events:
            known = ", ".join(nearest_first(name, before.events)) or "none"
            fail(f"unknown event {name!r} for playbook {before.playbook} (events: {known})")
        await send(handle, ExternalEvent(name=name, event_id=event_id, source=source))
        try:
            # A query is answered after the signals the lifecycle received before it: this is the status after.
            after = await _status(handle)
        except (RPCError, WorkflowQueryFailedError) as exc:
            message = f"event {name} sent to deal {deal_id}; what became of it is not known yet ({exc})"
            return EventResult(deal_id, name, EventOutcome.delivered, before.stage, None, message)
        return event_result(name, before, after)

    result = run(go())
    if print_object(asdict(result), output):
        return
    marker = "[green]✓[/green]" if result.outcome == EventOutcome.accepted else "[yellow]•[/yellow]"
    out.print(f"{marker} {result.message}", highlight=False, soft_wrap=True)
