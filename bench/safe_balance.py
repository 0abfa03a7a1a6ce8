"""One Safe Balance client from a new deal to ongoing management, as requests to its lifecycle: what every bench
drives, so their figures describe the same work.

The steps and values follow `playbooks/safe_balance.yaml` (and the lifecycle tests): targeting form, contract
request, the `contract_signed` event, the four pre-launch tasks of a Standard-tier client, the launch date, advance
to launch, the launch checklist and the closeout form, then site visits that report needs (each one emails
corporate at once).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from typing import Any, Literal, TypeVar

from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from bench.bare import BarePlan, BareStep
from bench.common import BenchError
from bench.handwritten import (
    HANDWRITTEN_TASK_QUEUE,
    PLAYBOOK_TITLE,
    PLAYBOOK_VERSION,
    HandwrittenSafeBalance,
    HandwrittenStart,
)
from sopflow.business_calendar import Clock
from sopflow.config import PROJECT_ROOT
from sopflow.engine import Engine
from sopflow.models import (
    Advance,
    CompleteTask,
    ExternalEvent,
    LifecycleInput,
    LifecycleState,
    SetFields,
    SubmitForm,
    workflow_id,
)
from sopflow.playbook import Playbook
from sopflow.playbook_checks import load_playbook
from starter import lifecycles
from starter.lifecycles import start_lifecycle

DEAL = {"rep_email": "rep@example.com", "rep_id": "owner-17", "account_manager_email": "am@example.com"}
PRELAUNCH_TASKS = ["onsite_appointment", "services_onboarded", "prelaunch_call", "cleared_for_launch"]
# Emails a client gets on the way to ongoing management: account claimed, contract sent, welcome, pre-launch
# kick-off, launch day, launch closeout. Each site visit with needs adds one (site_visit_needs).
EMAILS_TO_ONGOING = 6

Arg = SubmitForm | CompleteTask | Advance | SetFields | ExternalEvent
T = TypeVar("T")


@dataclass(frozen=True)
class Request:
    kind: Literal["update", "signal"]
    name: str
    arg: Arg


def playbook() -> Playbook:
    return load_playbook(PROJECT_ROOT / "playbooks" / "safe_balance.yaml", PROJECT_ROOT / "templates")


def today() -> date:
    """Today in the bench deals' own zone (the playbook's): the engine judges 'in the future' by that calendar, so
    between midnight UTC and midnight in New York a UTC date would be refused (and the machine's date could be
    either)."""
    return datetime.now(_zone()).date()


@functools.cache
def _zone() -> tzinfo:
    return Clock.of(playbook(), DEAL).tz


def site_visit(day: date, n: int) -> Request:
    fields = {"visited_on": day.isoformat(), "steps_cleared": "yes", "needs": f"More brochures ({n})"}
    return Request("update", "submit_form", SubmitForm(form="site_visit", fields=fields, actor="bench"))


def to_ongoing(deal_no: int, day: date) -> list[Request]:
    """Every request from the targeting form to the closeout form; the company is unique per deal (claims)."""
    iso = day.isoformat()
    targeting = {
        "company": f"Bench Care Center {deal_no}",
        "signer_name": "Client Signer",
        "signer_email": "signer@example.com",
        "service_tier": "Standard",
    }
    contract = {"agreement": "Safe Balance", "term_months": 12, "client_agreed_on": iso}
    closeout = {"launched_on": iso, "staff_trained": "yes", "all_running": "yes"}
    return [
        Request("update", "submit_form", SubmitForm(form="targeting", fields=targeting, actor="bench")),
        Request("update", "submit_form", SubmitForm(form="contract_request", fields=contract, actor="bench")),
        Request(
            "signal",
            "event",
            ExternalEvent(name="contract_signed", event_id=f"envelope-{deal_no}/completed", source="bench"),
        ),
        *(Request("update", "complete_task", CompleteTask(task=t, actor="bench")) for t in PRELAUNCH_TASKS),
        Request("update", "set_fields", SetFields(fields={"launch_date": (day + timedelta(days=5)).isoformat()})),
        Request("update", "advance", Advance(to="launch", actor="bench")),
        Request("update", "complete_task", CompleteTask(task="launch_checklist", actor="bench")),
        Request("update", "submit_form", SubmitForm(form="closeout", fields=closeout, actor="bench")),
    ]


def lifecycle(deal_no: int, visits: int, day: date) -> list[Request]:
    return [*to_ongoing(deal_no, day), *(site_visit(day, n) for n in range(visits))]


async def start(client: Client, book: Playbook, deal_id: str) -> WorkflowHandle[Any, Any]:
    """Started exactly as `sopflow deal start` starts a lifecycle (same options, search attributes, summary)."""
    return await start_lifecycle(client, book, deal_id, DEAL, "bench", WorkflowIDConflictPolicy.FAIL)


async def send(handle: WorkflowHandle[Any, Any], request: Request) -> None:
    """One request as the CLI sends it; a rejection means the bench drives the playbook wrongly: stop."""
    try:
        await lifecycles.send(handle, request.arg)
    except WorkflowUpdateFailedError as exc:
        raise BenchError(f"{handle.id}: {request.name} {request.arg!r} rejected: {exc.cause}") from exc


async def start_handwritten(client: Client, deal_id: str) -> WorkflowHandle[Any, Any]:
    """`bench.handwritten`'s lifecycle, started like `start` starts the engine's, less the search attributes and the
    pinned playbook (its input is the deal's fields only)."""
    return await client.start_workflow(
        HandwrittenSafeBalance.run,
        HandwrittenStart(deal_id=deal_id, fields=DEAL, actor="bench"),
        id=workflow_id(deal_id),
        task_queue=HANDWRITTEN_TASK_QUEUE,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        static_summary=f"{PLAYBOOK_TITLE} (v{PLAYBOOK_VERSION}) · deal {deal_id}",
    )


async def send_handwritten(handle: WorkflowHandle[Any, Any], request: Request) -> None:
    """What `send` sends the engine, under the same update and signal names, to the hand-written lifecycle (whose
    updates answer with the stage id, not a `LifecycleStatus`)."""
    try:
        if isinstance(request.arg, ExternalEvent):
            await handle.signal(HandwrittenSafeBalance.event, request.arg)
        else:
            await handle.execute_update(request.name, request.arg, result_type=str)
    except WorkflowUpdateFailedError as exc:
        raise BenchError(f"{handle.id}: {request.name} {request.arg!r} rejected: {exc.cause}") from exc


def apply(engine: Engine, request: Request, now: datetime) -> None:
    """A request applied by the pure engine, as the workflow's handler would apply it."""
    arg = request.arg
    if isinstance(arg, SubmitForm):
        engine.submit_form(arg, now)
    elif isinstance(arg, ExternalEvent):
        engine.event(arg, now)
    elif isinstance(arg, CompleteTask):
        engine.complete_task(arg, now)
    elif isinstance(arg, SetFields):
        engine.set_fields(arg, now)
    else:
        engine.advance(arg, now)


def ongoing_state(book: Playbook, deal_no: int, now: datetime) -> LifecycleState:
    """The state of a client in ongoing management, computed by the pure engine (no Temporal, no emails).

    A lifecycle started with it is exactly a continued-as-new run of a launched client: how `bench.scale` opens
    thousands of clients that wait on their site-visit timers without first sending each one's launch emails.
    """
    deal_id = f"S-{deal_no}"
    engine = Engine.start(book, deal_id, DEAL, now, workflow_id(deal_id), "bench")
    for request in to_ongoing(deal_no, now.astimezone(_zone()).date()):
        apply(engine, request, now)
    if engine.state.stage != "ongoing":
        raise BenchError(f"the pure engine left deal {deal_id} in {engine.state.stage}, not ongoing")
    return engine.state


def bare_plan(book: Playbook, requests: list[Request], now: datetime) -> BarePlan:
    """The Temporal work each request causes in `ClientLifecycle`, read from the pure engine: the account claim
    (an activity inside the submit_form handler), the emails and timeline entries it queues, and the next wake-up.

    `bench.throughput` checks these numbers against a real lifecycle's history before it uses them.
    """
    engine = Engine.start(book, "PLAN-0", DEAL, now, workflow_id("PLAN-0"), "bench")

    def step(name: str, kind: str, now: datetime, claims: int = 0) -> BareStep:
        queued = engine.take_steps()
        if any(s.start is not None for s in queued):
            raise BenchError("the bare plan does not model hand-offs (child lifecycles)")
        wake = engine.next_wakeup()
        return BareStep(
            name=name,
            kind=kind,
            handler_activities=claims,
            emails=sum(s.email is not None for s in queued),
            records=any(s.email is None for s in queued),
            wake_seconds=None if wake is None else (wake.at - now).total_seconds(),
            wake_id=None if wake is None else f"{wake.at.isoformat()} {wake.summary}",
        )

    steps = [step("start", "start", now)]
    for n, request in enumerate(requests, start=1):
        # A second apart, as the real requests come: a moment set by a request (a task due a week after it) is
        # another moment than the same offset from an earlier one, so its timer is another timer.
        at = now + timedelta(seconds=n)
        arg = request.arg
        claims = 0
        if isinstance(arg, SubmitForm) and engine.check_submit(arg, at).claim is not None:
            claims = 1
        apply(engine, request, at)
        steps.append(step(request.name, request.kind, at, claims))
    return BarePlan(steps)


def ongoing_input(book: Playbook, deal_no: int, now: datetime) -> LifecycleInput:
    return LifecycleInput(deal_id=f"S-{deal_no}", playbook=book, state=ongoing_state(book, deal_no, now))


async def in_parallel(count: int, concurrency: int, job: Callable[[int], Awaitable[T]]) -> list[T]:
    """Run job(0..count-1), at most `concurrency` at a time: that many clients have a person working on them."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> T:
        async with gate:
            return await job(i)

    return list(await asyncio.gather(*(one(i) for i in range(count))))
