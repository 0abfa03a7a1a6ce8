"""Shared fixtures: real Temporal servers (time-skipping and dev), a real SMTP sink, a real SQLite records store."""

from __future__ import annotations

import asyncio
import functools
import io
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.email import EmailActivities, SmtpConfig
from activities.playbooks import PlaybookActivities
from activities.records import RecordActivities
from sopflow.business_calendar import public_holidays
from sopflow.codec import shared_pydantic_data_converter
from sopflow.config import PROJECT_ROOT
from sopflow.constants import SEARCH_ATTRIBUTES, WORKFLOW_ID_PREFIX
from sopflow.db import Database, DealContact, DealRow, TaskRow
from sopflow.logs import CHATTY
from sopflow.mailsink import MailSink
from sopflow.models import LifecycleInput
from sopflow.playbook import Playbook
from sopflow.playbook_checks import load_playbook
from sopflow.templates import TemplateRenderer
from starter.binaries import temporal_cli
from starter.rehearse import Rehearsal, Scenario, load_scenario, rehearse, start_test_env
from worker import build_worker, lifecycle_activities
from workflows.lifecycle import ClientLifecycle
from workflows.sandbox import WORKFLOW_RUNNER

TEMPLATES = PROJECT_ROOT / "templates"
PLAYBOOKS = PROJECT_ROOT / "playbooks"
SCENARIOS = PLAYBOOKS / "scenarios"

# --- a Safe Balance deal, as the lifecycle tests drive it ---------------------------------------------------------

DEAL = {"rep_email": "rep@example.com", "rep_id": "owner-17", "account_manager_email": "am@example.com"}
TARGETING = {
    "company": "Sunrise Care Center",
    "signer_name": "Client Signer",
    "signer_email": "signer@example.com",
    "service_tier": "Standard",
}
CONTRACT_REQUEST = {"agreement": "Safe Balance", "term_months": 12, "client_agreed_on": "2020-01-01"}
PRELAUNCH_TASKS = ["onsite_appointment", "services_onboarded", "prelaunch_call", "cleared_for_launch"]


def sales_steps(signed_on: str | None = "10d") -> list[dict[str, Any]]:
    """Targeting on day 0, contract request on day 1 (contract sent), optionally signed."""
    steps: list[dict[str, Any]] = [
        {"at": "0d", "form": "targeting", "fields": TARGETING},
        {"at": "1d", "form": "contract_request", "fields": CONTRACT_REQUEST},
    ]
    if signed_on:
        steps.append({"at": signed_on, "event": "contract_signed", "event_id": "envelope-1/completed"})
    return steps


def launched_steps() -> list[dict[str, Any]]:
    """Signed on day 3, pre-launch done by day 5, launched and closed out on day 6: ongoing from day 6."""
    return [
        *sales_steps("3d"),
        *({"at": "4d", "task": task} for task in PRELAUNCH_TASKS),
        {"at": "4d", "set": {"launch_date": "2030-01-01"}},
        {"at": "5d", "advance": "launch"},
        {"at": "6d", "task": "launch_checklist"},
        {
            "at": "6d",
            "form": "closeout",
            "fields": {"launched_on": "$today", "staff_trained": "yes", "all_running": "yes"},
        },
    ]


async def run(
    env: WorkflowEnvironment,
    playbook: Playbook,
    steps: Sequence[Any],
    until: str,
    deal_id: str = "D-1",
    deal: dict[str, Any] | None = None,
    start: str | None = None,
    **options: Any,
) -> Rehearsal:
    """Rehearse steps for one deal through the real workflow and activities (see `starter.rehearse`); `start` is
    the scenario's local start date or date-time."""
    fields = DEAL if deal is None else deal
    scenario = Scenario.model_validate(
        {"deal": {"id": deal_id, "fields": fields}, "steps": steps, "until": until, "start": start}
    )
    inp = LifecycleInput(deal_id=deal_id, playbook=playbook, fields=fields)
    return await rehearse(inp, scenario, options.pop("templates_dir", TEMPLATES), env, **options)


@pytest.fixture
async def ts_env() -> AsyncIterator[WorkflowEnvironment]:
    """A fresh time-skipping server per test: the virtual clock of one test never leaks into another."""
    env = await start_test_env()
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    """One real dev server for the session: search attributes and visibility need it."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        data_converter=shared_pydantic_data_converter,
        search_attributes=SEARCH_ATTRIBUTES,
    )
    yield env
    await env.shutdown()


@pytest.fixture
def smtp_sink() -> Iterator[MailSink]:
    with MailSink() as sink:
        yield sink


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'records.db'}")
    database.create_schema()
    yield database
    database.dispose()


POSTGRES_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database on the local PostgreSQL (trust auth), dropped afterwards; skips (or fails in CI) without one."""
    import psycopg

    name = f"sopflow_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN, autocommit=True)
    except psycopg.OperationalError as exc:
        if os.environ.get("SOPFLOW_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is required (SOPFLOW_REQUIRE_POSTGRES=1) but not reachable: {exc}")
        pytest.skip(
            "no PostgreSQL at 127.0.0.1:5432 (trust auth, user postgres): start one to run the PostgreSQL tests "
            "(`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`)"
        )
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database on each supported backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'records.db'}"
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture
def records_db(database_url: str) -> Iterator[Database]:
    """A migrated records store on each backend (SQLite and the real PostgreSQL)."""
    database = Database(database_url)
    database.upgrade()
    yield database
    database.dispose()


@functools.cache
def friday_before_a_monday_holiday(after: date, country: str = "US") -> date:
    """The first Friday after `after` whose Monday is a public holiday: a real long weekend, found from the date the
    test runs so a test never expires."""
    day = after + timedelta(days=1)
    while not (day.weekday() == 4 and day + timedelta(days=3) in public_holidays(country, None, day.year)):
        day += timedelta(days=1)
    return day


def quiet_start(weekday: int, days: int = 40) -> str:
    """The first date after today that falls on `weekday` (0 = Monday) and has no US public holiday in the `days`
    after it: a rehearsal of a US playbook starting there meets weekends where its test says, and no holiday."""
    day = date.today() + timedelta(days=2)
    while day.weekday() != weekday or any(
        day + timedelta(days=n) in public_holidays("US", None, (day + timedelta(days=n)).year) for n in range(days)
    ):
        day += timedelta(days=1)
    return day.isoformat()


def shipped_playbook(name: str) -> Playbook:
    """A playbook of `playbooks/`, loaded (and checked against `templates/`) once per test session."""
    return load_playbook(PLAYBOOKS / f"{name}.yaml", TEMPLATES)


@pytest.fixture(scope="session")
def playbook() -> Callable[[str], Playbook]:
    """`playbook("safe_balance")`: a shipped playbook by name."""
    return shipped_playbook


@pytest.fixture(scope="session")
def safe_balance() -> Playbook:
    return shipped_playbook("safe_balance")


def utc_rules(playbook: Playbook) -> Playbook:
    """The playbook without its time zone: the UTC rules lifecycles started before zones run on (exact instants,
    no send window). For tests of something else (reports, outages) whose figures count UTC days."""
    return playbook.model_copy(update={"timezone": None, "timezone_field": None, "calendar": None})


@pytest.fixture(scope="session")
def safe_balance_utc(safe_balance: Playbook) -> Playbook:
    return utc_rules(safe_balance)


def smtp_of(sink: MailSink) -> SmtpConfig:
    return SmtpConfig(host=sink.host, port=sink.port, mail_from="sopflow <sopflow@example.com>")


def make_worker(client: Client, db: Database, sink: MailSink, task_queue: str | None = None, **options: Any) -> Worker:
    """A worker mailing to `sink`, on a task queue of its own unless it takes over another one's; `options` go to
    `build_worker` (activity classes that misbehave on purpose, limits)."""
    return build_worker(client, db, smtp_of(sink), TEMPLATES, task_queue=task_queue or f"tq-{uuid.uuid4()}", **options)


def activities_only(
    client: Client,
    db: Database,
    sink: MailSink,
    task_queue: str,
    email_activities: type[EmailActivities] = EmailActivities,
    record_activities: type[RecordActivities] = RecordActivities,
) -> Worker:
    """The lifecycle's activities without its workflow, for tests that take the workflow worker away (and bring a
    cold one back) while activities go on."""
    emails = email_activities(db, TemplateRenderer(TEMPLATES), smtp_of(sink), "http://127.0.0.1:8000")
    playbooks = PlaybookActivities(PLAYBOOKS, TEMPLATES)
    return Worker(
        client, task_queue=task_queue, activities=lifecycle_activities(emails, record_activities(db), playbooks)
    )


def workflows_only(
    client: Client,
    task_queue: str,
    db: Database,
    record_activities: type[RecordActivities] = RecordActivities,
    **options: Any,
) -> Worker:
    """The lifecycle's workflow without its (remote) activities (see `activities_only`). It hosts the timeline record
    all the same: a lifecycle started since PATCH_LOCAL_RECORDS runs it as a local activity, in the worker that runs
    the workflow task, and a workflow worker without it fails every such task."""
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[ClientLifecycle],
        workflow_runner=WORKFLOW_RUNNER,
        activities=[record_activities(db).record_journal],
        no_remote_activities=True,
        **options,
    )


async def start_deal(env: WorkflowEnvironment, worker: Worker, playbook: Playbook, deal_id: str) -> WorkflowHandle:
    """A Safe Balance-shaped deal (`DEAL`) started straight on `worker`'s task queue."""
    return await env.client.start_workflow(
        ClientLifecycle.run,
        LifecycleInput(deal_id=deal_id, playbook=playbook, fields=DEAL),
        id=f"{WORKFLOW_ID_PREFIX}{deal_id}",
        task_queue=worker.task_queue,
    )


async def until(check: Callable[[], Awaitable[bool] | bool], what: str, limit: float = 120) -> None:
    """Poll a condition, sync or async (never a fixed sleep); the limit only catches a hang."""
    deadline = asyncio.get_running_loop().time() + limit
    while True:
        done = check()
        if isinstance(done, Awaitable):
            done = await done
        if done:
            return
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.2)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state: put back what pytest and the SDK had."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    names = ("temporalio", "temporalio.workflow", "temporalio.activity", *CHATTY)
    levels = {name: logging.getLogger(name).level for name in names}
    on_message = (workflow.logger.workflow_info_on_message, activity.logger.activity_info_on_message)
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)
    workflow.logger.workflow_info_on_message, activity.logger.activity_info_on_message = on_message


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """The JSON log lines `sopflow.logs.configure_logging("json", stream=stream)` wrote."""
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def regular_record_inputs(history: WorkflowHistory) -> list[dict[str, Any]]:
    """The input of every regular `record_journal` activity in a history, as JSON (the tests run unencrypted): what
    a timeline record writes into history."""
    return [
        json.loads(event.activity_task_scheduled_event_attributes.input.payloads[0].data)
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and event.activity_task_scheduled_event_attributes.activity_type.name == "record_journal"
    ]


# The keys of a timeline batch before the engine state rode along (`JournalBatch`): a regular record writes only these.
BATCH_KEYS_IN_HISTORY = {"workflow_id", "deal_id", "playbook", "entries", "snapshot"}


# --- reading rehearsals -------------------------------------------------------------------------------------------


def checked_in_scenario(name: str) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    """A shipped scenario's deal fields, steps and horizon, so tests rehearse exactly what SOP authors see."""
    path = SCENARIOS / f"{name}.yaml"
    load_scenario(path)  # validates the file
    data = yaml.safe_load(path.read_text())
    return data["deal"]["fields"], data["steps"], data["until"]


@dataclass(frozen=True)
class ShippedRehearsal:
    inp: LifecycleInput
    scenario: Scenario
    result: Rehearsal


_SHIPPED_REHEARSALS: dict[Path, ShippedRehearsal] = {}


async def rehearse_shipped(path: Path) -> ShippedRehearsal:
    """A shipped scenario rehearsed as `sopflow rehearse` runs it (its own deal, start and zone) on a fresh
    time-skipping server, once per session: the checks that read a shipped rehearsal share one run of it."""
    if path not in _SHIPPED_REHEARSALS:
        scenario = load_scenario(path)
        playbook = load_playbook(playbook_of(path), TEMPLATES)
        inp = LifecycleInput(
            deal_id=scenario.deal.id, playbook=playbook, fields=scenario.deal.fields, actor="rehearsal"
        )
        env = await start_test_env()
        try:
            result = await rehearse(inp, scenario, TEMPLATES, env)
        finally:
            await env.shutdown()
        _SHIPPED_REHEARSALS[path] = ShippedRehearsal(inp, scenario, result)
    return _SHIPPED_REHEARSALS[path]


def playbook_of(scenario_path: Path) -> Path:
    """Scenarios are named `<playbook>_<what happens>.yaml`: the longest playbook id that prefixes the name."""
    ids = [p.stem for p in PLAYBOOKS.glob("*.yaml") if scenario_path.stem.startswith(f"{p.stem}_")]
    return PLAYBOOKS / f"{max(ids, key=len)}.yaml"


def stage_path(result: Rehearsal) -> list[str]:
    return [e["to"] for e in result.of_kind("stage")]


def sent(result: Rehearsal) -> dict[str, list[dict[str, Any]]]:
    """Email timeline entries by template."""
    by_template: dict[str, list[dict[str, Any]]] = {}
    for entry in result.of_kind("email"):
        by_template.setdefault(entry["template"], []).append(entry)
    return by_template


def mail(result: Rehearsal, template: str) -> list[EmailMessage]:
    """The messages the sink received for a template."""
    return [m for m in result.emails if str(m["X-Sopflow-Template"]).endswith(f"/{template}")]


def body(message: EmailMessage, kind: str) -> str:
    """The plain or html part of a received message."""
    part = message.get_body((kind,))
    assert part is not None, f"no {kind} part"
    return str(part.get_content())


# --- records rows, for tests that read the records store (work queue, digests) ---------------------------------------


def deal_row(deal_id: str, stage: str, now: datetime, owner: str = "rep:owner-17", **columns: Any) -> DealRow:
    """An open deal's row as the lifecycle keeps it, `stage` entered ten days before `now`."""
    values: dict[str, Any] = {
        "workflow_id": f"{WORKFLOW_ID_PREFIX}{deal_id}",
        "deal_id": deal_id,
        "playbook": "safe_balance",
        "playbook_version": 3,
        "stage": stage,
        "stage_title": stage,
        "stage_entered_at": now - timedelta(days=10),
        "owner": owner,
        "started_at": now - timedelta(days=30),
        "updated_at": now,
        "last_seq": 1,
        "timezone": "America/New_York",
        **columns,
    }
    return DealRow(**values)


def task_row(deal_id: str, task: str, owner: str, due_at: datetime | None, now: datetime, **columns: Any) -> TaskRow:
    """An open task of the deal's current stage (opened five days before `now`)."""
    values: dict[str, Any] = {
        "workflow_id": f"{WORKFLOW_ID_PREFIX}{deal_id}",
        "deal_id": deal_id,
        "opened_seq": columns.pop("opened_seq", sum(map(ord, task)) % 1000),
        "task": task,
        "title": task.replace("_", " "),
        "stage": columns.pop("stage", "prelaunch"),
        "owner": owner,
        "opened_at": now - timedelta(days=5),
        "due_at": due_at,
        **columns,
    }
    return TaskRow(**values)


def contact_row(deal_id: str, role: str, email: str, now: datetime) -> DealContact:
    return DealContact(
        workflow_id=f"{WORKFLOW_ID_PREFIX}{deal_id}", deal_id=deal_id, role=role, email=email, updated_at=now
    )
