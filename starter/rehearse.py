"""Rehearsal: run a playbook on a scenario, through the real workflow and activities, on virtual time.

SOP authors use it to see what their playbook will do over months or years in seconds; the tests use it to check
the engine end to end. A rehearsal never touches the configured SMTP server or database: mail goes to an
in-process sink and records to a throwaway SQLite file, and the timeline is read back from those records.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import select
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from activities.email import EmailActivities, SmtpConfig
from activities.records import RecordActivities
from sopflow import zones
from sopflow.business_calendar import UTC_CLOCK, Clock
from sopflow.codec import shared_pydantic_data_converter
from sopflow.constants import SEARCH_ATTRIBUTES
from sopflow.db import Database, JournalRow
from sopflow.durations import Duration
from sopflow.forecast import Projection, Simulation
from sopflow.mailsink import MailSink
from sopflow.models import (
    DEAL_ID_PATTERN,
    Advance,
    Close,
    CompleteTask,
    ExternalEvent,
    LifecycleInput,
    LifecycleStatus,
    SetFields,
    SubmitForm,
    workflow_id,
)
from sopflow.playbook import Playbook, PlaybookError, format_loc
from starter.binaries import test_server
from starter.lifecycles import Request, send
from worker import build_worker
from workflows.lifecycle import ClientLifecycle


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ScenarioDeal(_Strict):
    id: str = Field(default="REHEARSAL-1", pattern=DEAL_ID_PATTERN)
    fields: dict[str, Any] = {}


class ScenarioStep(_Strict):
    """One thing a person or system does at a moment: exactly one of form, event, task, advance, set, close.

    `at` is a span after the rehearsal's start (`10d`, `88d16h`, `3bd`) or a local date-time (`2027-07-02T16:00`,
    in the scenario's zone)."""

    at: Duration | datetime
    form: str | None = None
    fields: dict[str, Any] = {}
    event: str | None = None
    event_id: str | None = None
    task: str | None = None
    advance: str | None = None
    set: dict[str, Any] | None = None
    close: str | None = Field(default=None, description="lost or cancelled")
    reason: str | None = None
    actor: str = "rehearsal"

    @model_validator(mode="after")
    def _one_action(self) -> ScenarioStep:
        actions = [self.form, self.event, self.task, self.advance, self.set, self.close]
        if sum(a is not None for a in actions) != 1:
            raise ValueError("a step is exactly one of: form, event, task, advance, set, close")
        return self

    def describe(self) -> dict[str, Any]:
        for name in ("form", "event", "task", "advance", "close"):
            value = getattr(self, name)
            if value is not None:
                return {"step": name, name: value}
        return {"step": "set", "fields": sorted(self.set or {})}


class Scenario(_Strict):
    name: str | None = None
    description: str | None = None
    # The zone the scenario's times are written in (default: the playbook's, else UTC).
    timezone: str | None = None
    # When the lifecycle starts: a local date (at midnight) or date-time (an account assigned at 16:00); default:
    # the next local midnight on the test server's clock.
    start: date | datetime | None = None
    deal: ScenarioDeal = ScenarioDeal()
    steps: list[ScenarioStep] = []
    until: Duration

    @model_validator(mode="after")
    def _known_zone(self) -> Scenario:
        if self.timezone is not None and not zones.is_known(self.timezone):
            raise ValueError(zones.unknown_zone_message(self.timezone))
        return self

    def clock(self, playbook: Playbook, fields: dict[str, Any]) -> Clock:
        """The clock the scenario's spans and times are read on: the deal's, or the scenario's own zone with the
        playbook's business calendar."""
        if self.timezone is None:
            return Clock.of(playbook, fields)
        return Clock.of(playbook.model_copy(update={"timezone": self.timezone, "timezone_field": None}), fields)

    def moment(self, at: Duration | datetime, start: datetime, clock: Clock) -> datetime:
        if isinstance(at, Duration):
            return clock.after(at, start)
        return at if at.tzinfo else zones.localize(at, clock.tz)


def load_scenario(path: Path) -> Scenario:
    try:
        return Scenario.model_validate(yaml.safe_load(path.read_text()))
    except OSError as exc:
        raise PlaybookError(str(path), [f"cannot read: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        raise PlaybookError(str(path), [f"not valid YAML: {exc}"]) from None
    except ValidationError as exc:
        raise PlaybookError(str(path), [f"{format_loc(tuple(e['loc']))}: {e['msg']}" for e in exc.errors()]) from None


@dataclass
class Rehearsal:
    started_at: datetime
    timeline: list[dict[str, Any]]
    status: LifecycleStatus
    emails: list[EmailMessage] = field(default_factory=list)
    duplicates: int = 0
    # Lifecycles this one handed off to (deal id -> status at the horizon).
    linked: dict[str, LifecycleStatus] = field(default_factory=dict)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [entry for entry in self.timeline if entry["kind"] == kind]


async def register_search_attributes(client: Client) -> None:
    """The time-skipping server starts empty; without these, every workflow task fails forever."""
    kinds = {
        "KEYWORD": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
        "DATETIME": IndexedValueType.INDEXED_VALUE_TYPE_DATETIME,
    }
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=client.namespace,
            search_attributes={
                key.name: kinds[key.indexed_value_type.name.removeprefix("INDEXED_VALUE_TYPE_")]
                for key in SEARCH_ATTRIBUTES
            },
        )
    )


async def start_test_env(server_log: Path | None = None) -> WorkflowEnvironment:
    """Start the time-skipping server (from the pinned package, never downloaded).

    With `server_log`, the server's own output (Java stack traces at shutdown) goes to that file instead of the
    terminal, and the SDK core only logs errors: what an SOP author reads is the timeline.
    """
    runtime = None
    saved_stderr = None
    if server_log is not None:
        server_log.parent.mkdir(parents=True, exist_ok=True)
        runtime = Runtime(
            telemetry=TelemetryConfig(
                logging=LoggingConfig(filter=TelemetryFilter(core_level="ERROR", other_level="ERROR"))
            )
        )
        saved_stderr = os.dup(2)
        with server_log.open("ab") as log:
            os.dup2(log.fileno(), 2)  # the server process inherits this descriptor
    try:
        env = await WorkflowEnvironment.start_time_skipping(
            test_server_existing_path=test_server(), data_converter=shared_pydantic_data_converter, runtime=runtime
        )
    finally:
        if saved_stderr is not None:
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)
    await register_search_attributes(env.client)
    return env


_RELATIVE_DAY = re.compile(r"^\$today(?:([+-])(\d+)d)?(?:@(\d\d):(\d\d))?$")


def resolve_dates(values: dict[str, Any], now: datetime, clock: Clock = UTC_CLOCK) -> dict[str, Any]:
    """Scenario values `$today`, `$today-3d`, `$today+2d` become ISO dates on the rehearsal's virtual clock, and
    `$today+30d@14:00` a date-time, so a scenario written once stays valid whatever day it is rehearsed on. Dates
    are the deal's local dates; a date-time is local time in the deal's zone (written without an offset, which the
    lifecycle reads in that zone), or UTC for a playbook without one."""
    resolved = {}
    for key, value in values.items():
        match = _RELATIVE_DAY.match(value) if isinstance(value, str) else None
        if match:
            sign, days, hour, minute = match.groups()
            day = clock.local(now) + timedelta(days=-int(days) if sign == "-" else int(days or 0))
            if hour is None:
                value = day.date().isoformat()
            else:
                moment = day.replace(hour=int(hour), minute=int(minute), second=0, microsecond=0)
                value = moment.replace(tzinfo=None).isoformat() if clock.zoned else moment.isoformat()
        resolved[key] = value
    return resolved


def request_of(step: ScenarioStep, now: datetime, clock: Clock = UTC_CLOCK) -> Request | ExternalEvent:
    """The request a scenario step makes, its relative dates resolved on the rehearsal's clock."""
    if step.form is not None:
        return SubmitForm(form=step.form, fields=resolve_dates(step.fields, now, clock), actor=step.actor)
    if step.event is not None:
        return ExternalEvent(name=step.event, event_id=step.event_id, source="rehearsal")
    if step.task is not None:
        return CompleteTask(task=step.task, actor=step.actor)
    if step.advance is not None:
        return Advance(to=step.advance, actor=step.actor)
    if step.set is not None:
        return SetFields(fields=resolve_dates(step.set, now, clock), actor=step.actor)
    outcome = step.close
    if outcome not in ("lost", "cancelled"):
        raise ValueError(f"close must be 'lost' or 'cancelled', not {outcome!r}")
    return Close(outcome=outcome, reason=step.reason or "", fields=step.fields, actor=step.actor)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def rehearse(
    inp: LifecycleInput,
    scenario: Scenario,
    templates_dir: Path,
    env: WorkflowEnvironment | None = None,
    server_log: Path | None = None,
    *,
    sink: MailSink | None = None,
    db: Database | None = None,
    email_activities: type[EmailActivities] = EmailActivities,
    record_activities: type[RecordActivities] = RecordActivities,
) -> Rehearsal:
    """Run the scenario to its horizon and return the timeline, final status and captured emails.

    By default everything is throwaway (test server, sink, database); callers that want to inspect or misbehave
    (tests of failure handling) pass their own running sink, database or email activity class.
    """
    own_env = env is None
    env = env or await start_test_env(server_log)
    try:
        with tempfile.TemporaryDirectory(prefix="sopflow-rehearsal-") as tmp, contextlib.ExitStack() as stack:
            if sink is None:
                sink = stack.enter_context(MailSink())
            if db is None:
                db = Database(f"sqlite:///{Path(tmp) / 'records.db'}")
                db.create_schema()
                stack.callback(db.dispose)
            smtp = SmtpConfig(host=sink.host, port=sink.port, mail_from="sopflow rehearsal <rehearsal@example.com>")
            task_queue = f"rehearsal-{uuid.uuid4()}"
            worker = build_worker(
                env.client,
                db,
                smtp,
                templates_dir,
                task_queue=task_queue,
                email_activities=email_activities,
                record_activities=record_activities,
            )
            async with worker:
                return await _drive(env, inp, scenario, task_queue, db, sink)
    finally:
        if own_env:
            await env.shutdown()


async def _drive(
    env: WorkflowEnvironment,
    inp: LifecycleInput,
    scenario: Scenario,
    task_queue: str,
    db: Database,
    sink: MailSink,
) -> Rehearsal:
    clock = scenario.clock(inp.playbook, inp.fields)
    start = await _start_of(env, scenario.start, clock)
    # Deal fields may be relative too (a go-live date 45 days out), resolved against the rehearsal's start.
    inp = inp.model_copy(update={"fields": resolve_dates(inp.fields, start, clock)})
    handle = await env.client.start_workflow(
        ClientLifecycle.run,
        inp,
        id=workflow_id(inp.deal_id),
        task_queue=task_queue,
        static_summary=f"rehearsal of {inp.playbook.id}",
    )
    rejected: list[dict[str, Any]] = []
    steps = sorted(scenario.steps, key=lambda s: scenario.moment(s.at, start, clock))
    for step in steps:
        await _sleep_until(env, scenario.moment(step.at, start, clock))
        try:
            await send(handle, request_of(step, _aware(await env.get_current_time()), clock))
        except WorkflowUpdateFailedError as exc:
            message = str(exc.cause.message if hasattr(exc.cause, "message") else exc.cause)
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            # The lifecycle has ended (closed, expired): what a person does after that is refused, not a crash.
            message = "the lifecycle has ended: " + exc.message
        else:
            continue
        now = _aware(await env.get_current_time())
        rejected.append({"at": now, "kind": "rejected", "stage": None, **step.describe(), "reason": message})
    await _sleep_until(env, clock.after(scenario.until, start))
    status = await _stop_at_horizon(handle)
    with db.session() as session:
        rows = session.scalars(
            select(JournalRow).where(JournalRow.workflow_id == handle.id).order_by(JournalRow.seq)
        ).all()
        entries = [{"at": _aware(r.at), "kind": r.kind, "stage": r.stage, **r.detail} for r in rows]
    # Only what this rehearsal started is stopped: a lifecycle that already existed is not the rehearsal's.
    linked = {
        e["deal_id"]: await _stop_at_horizon(env.client.get_workflow_handle(e["workflow_id"]))
        for e in entries
        if e["kind"] == "linked" and e.get("status") == "started"
    }
    merged = sorted(entries + rejected, key=lambda e: e["at"])
    timeline = [
        {
            "at": e["at"].isoformat(),
            "day": round((e["at"] - start).total_seconds() / 86400, 3),
            **({"local": zones.show(e["at"], clock.tz)} if clock.zoned else {}),
            **{k: v for k, v in e.items() if k != "at"},
        }
        for e in merged
    ]
    return Rehearsal(
        started_at=start,
        timeline=timeline,
        status=status,
        emails=list(sink.messages),
        duplicates=sink.duplicates,
        linked=linked,
    )


def simulate(inp: LifecycleInput, scenario: Scenario, start: datetime) -> tuple[Simulation, list[tuple[datetime, str]]]:
    """The scenario run by the forecast's pure simulation (`sopflow.forecast`) from `start`, no Temporal: what the
    differential test compares with a rehearsal of the same scenario. Returns the simulation (its timeline in
    `entries`) and the steps it refused, each with the moment it was made."""
    clock = scenario.clock(inp.playbook, inp.fields)
    fields = resolve_dates(inp.fields, start, clock)
    engine = Projection.start(inp.playbook, inp.deal_id, fields, start, workflow_id(inp.deal_id), inp.actor)
    sim = Simulation(engine, start)
    refused: list[tuple[datetime, str]] = []
    for step in sorted(scenario.steps, key=lambda s: scenario.moment(s.at, start, clock)):
        at = scenario.moment(step.at, start, clock)
        if sim.engine.closed:
            refused.append((at, "the lifecycle has ended"))
            continue
        rejected = sim.request(request_of(step, at, clock), at)
        if rejected is not None:
            refused.append((at, str(rejected)))
    sim.run_until(clock.after(scenario.until, start))
    return sim, refused


async def _stop_at_horizon(handle: WorkflowHandle[Any, Any]) -> LifecycleStatus:
    """The rehearsal ends at its horizon; a lifecycle left running would hold the test server's clock back."""
    status = await handle.query(ClientLifecycle.status)
    if status.outcome is None:
        await handle.terminate("rehearsal horizon reached")
    return status


async def _start_of(env: WorkflowEnvironment, start: date | datetime | None, clock: Clock) -> datetime:
    """A rehearsal starts at a local midnight (UTC for a playbook without a zone): the next one on the virtual clock,
    or the scenario's `start`. So a scenario whose steps meet times of day (a meeting booked for 15:00, logged in
    the afternoon) gives the same timeline whatever hour it is run at."""
    now = _aware(await env.get_current_time())
    if start is None:
        start = clock.local_date(now) + timedelta(days=1)
    if isinstance(start, datetime):
        moment = start if start.tzinfo else zones.localize(start, clock.tz)
    else:
        moment = zones.wall(start, time(0), clock.tz)
    moment = moment.astimezone(UTC)
    if moment < now:
        raise ValueError(f"the scenario starts at {start}, before the rehearsal server's clock ({now:%Y-%m-%d})")
    await _sleep_until(env, moment)
    return moment


async def _sleep_until(env: WorkflowEnvironment, target: datetime) -> None:
    now = _aware(await env.get_current_time())
    if target > now:
        await env.sleep(target - now)
