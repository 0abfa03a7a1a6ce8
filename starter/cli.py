"""`sopflow`: the staff CLI. Shaped like the `temporal` CLI: nouns and verbs, `-o json` for scripts.

Every failure a person can cause (a rejected move, a typo in a field, no server running) prints one readable line
and exits 1; tracebacks are for bugs only.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from rich.tree import Tree
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from temporalio.client import (
    Client,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import (
    WorkflowIDConflictPolicy,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from sopflow import graph, reports
from sopflow.config import Settings
from sopflow.connect import ConnectionFailed, connect
from sopflow.constants import (
    SA_NEXT_DUE,
    SA_OWNER,
    SA_PLAYBOOK,
    SA_STAGE,
    WORKFLOW_ID_PREFIX,
)
from sopflow.db import Database, OutboxEmail
from sopflow.durations import duration
from sopflow.engine import check_deal_fields
from sopflow.errors import Rejected
from sopflow.logs import LogFormat, configure_logging
from sopflow.models import (
    Advance,
    Close,
    CompleteTask,
    ExternalEvent,
    LifecycleInput,
    LifecycleStatus,
    MigratePlaybook,
    SetFields,
    SubmitForm,
    valid_deal_id,
    workflow_id,
)
from sopflow.playbook import Playbook, PlaybookError, load_playbook, template_names
from sopflow.samples import email_uses, render_check, sample_context
from sopflow.telemetry import MetricsError, install_metrics
from sopflow.templates import RenderError, TemplateRenderer, links_for
from starter.intake.idempotency import KEY_RULE, cli_update_id, new_key, valid_key
from starter.lifecycles import Request, send, start_lifecycle, update_name
from worker import form_secret_of
from workflows.lifecycle import ClientLifecycle

app = typer.Typer(
    help="sopflow: client-lifecycle SOPs run as durable Temporal workflows.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
deal_app = typer.Typer(help="Start deals and read their history.", no_args_is_help=True)
form_app = typer.Typer(help="Submit forms.", no_args_is_help=True)
task_app = typer.Typer(help="Complete checklist tasks.", no_args_is_help=True)
playbook_app = typer.Typer(help="Validate and inspect playbooks.", no_args_is_help=True)
mail_app = typer.Typer(help="Inspect the email outbox (what was sent, what failed).", no_args_is_help=True)
template_app = typer.Typer(help="Preview email templates.", no_args_is_help=True)
app.add_typer(deal_app, name="deal")
app.add_typer(form_app, name="form")
app.add_typer(task_app, name="task")
app.add_typer(playbook_app, name="playbook")
app.add_typer(mail_app, name="mail")
app.add_typer(template_app, name="template")
db_app = typer.Typer(help="The records database (SQLite by default, PostgreSQL via SOPFLOW_DATABASE_URL).")
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="target revision")] = "head") -> None:
    """Apply the Alembic migrations (sopflow dev and the worker do this at start)."""
    db = _records_at(revision)
    db.dispose()
    out.print(f"[green]✓[/green] records database at revision {revision}", highlight=False)


out = Console()
err = Console(stderr=True)
T = TypeVar("T")


class Output(StrEnum):
    text = "text"
    json = "json"


OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="text (tables) or json")]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--idempotency-key",
        help=f"apply this change at most once: reuse the key a 'not confirmed' error printed to retry safely "
        f"({KEY_RULE}; default: a fresh key per run)",
    ),
]
# How long a change waits for the lifecycle to confirm it: long enough for a busy worker, short enough that a
# missing one (the update then waits on the server until a worker comes) is reported instead of hanging forever.
UPDATE_WAIT = 60.0
WaitOpt = Annotated[
    float, typer.Option("--wait", min=1, help="seconds to wait for the lifecycle to confirm the change")
]
FieldOpt = Annotated[list[str] | None, typer.Option("--field", "-f", help="key=value; repeat for more fields")]
ActorOpt = Annotated[str, typer.Option("--actor", envvar="SOPFLOW_ACTOR", help="who is acting (an id or role)")]


def fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


class Unconfirmed(Exception):
    """A change sent to a lifecycle that did not confirm it in time: it may still be applied (the update waits on the
    server for a worker), so the message says so, and how to retry it safely."""

    def __init__(self, deal_id: str, what: str, key: str, wait: float) -> None:
        super().__init__(
            f"not confirmed yet ({what}, deal {deal_id}): no answer within {wait:g} s (is a worker running?); it may "
            f"still be applied. Retrying with --idempotency-key {key} is safe: it is applied at most once"
        )


def update_key(key: str | None) -> str:
    """The command's idempotency key: the one given (checked, so a typo is one line, not a server error) or a
    fresh one, so that every run is a change of its own and only a deliberate retry reuses a key."""
    if key is None:
        return new_key()
    if not valid_key(key):
        fail(f"--idempotency-key must be {KEY_RULE}, not {key!r}")
    return key


async def send_update(
    handle: WorkflowHandle[Any, Any], request: Request, *, key: str, wait: float, what: str
) -> LifecycleStatus:
    """The request with `cli:<update>:<key>` as its update id (Temporal applies an id once per run and answers a
    repeat with the first result), waiting at most `wait` seconds for it to be confirmed."""
    update_id = cli_update_id(update_name(request), key)
    try:
        result = await asyncio.wait_for(send(handle, request, update_id), wait)
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
        raise Unconfirmed(handle.id.removeprefix(WORKFLOW_ID_PREFIX), what, key, wait) from None
    return result


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine, turning every user-caused failure into one line and exit code 1."""
    try:
        return asyncio.run(coro)
    except Unconfirmed as exc:
        fail(str(exc))
    except ConnectionFailed as exc:
        fail(str(exc))
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        fail(cause.message if isinstance(cause, ApplicationError) else str(cause))
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            fail("no lifecycle found for that deal (check the deal id with `sopflow list`)")
        fail(f"Temporal refused the request: {exc.message}")
    except PlaybookError as exc:
        fail(playbook_failure(exc))
    except Rejected as exc:
        fail(str(exc))


def parse_fields(pairs: list[str] | None, file: Path | None = None) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if file is not None:
        try:
            loaded = yaml.safe_load(file.read_text())  # YAML is a superset of JSON: both work
        except (OSError, yaml.YAMLError) as exc:
            fail(f"cannot read {file}: {exc}")
        if not isinstance(loaded, dict):
            fail(f"{file} must hold an object of field names to values")
        values.update(loaded)
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            fail(f"--field expects key=value, got {pair!r}")
        values[key.strip()] = value
    return values


def settings() -> Settings:
    """The SOPFLOW_* configuration, or one line saying what is wrong with it (never the values: they may be secrets)."""
    try:
        return Settings()
    except ValidationError as exc:
        fail("invalid configuration: " + "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors()))


def playbook_failure(exc: PlaybookError) -> str:
    first = exc.errors[0] if exc.errors else "invalid"
    more = f" (and {len(exc.errors) - 1} more: run `sopflow playbook validate {exc.source}`)" if exc.errors[1:] else ""
    return f"{exc.source}: {first}{more}"


def load(playbook: str) -> Playbook:
    config = settings()
    try:
        return load_playbook(config.playbook_path(playbook), config.templates_dir)
    except PlaybookError as exc:
        fail(playbook_failure(exc))


async def _handle(deal_id: str) -> WorkflowHandle[Any, Any]:
    client = await connect()
    return client.get_workflow_handle(workflow_id(deal_id))


def print_status(status: LifecycleStatus, output: Output) -> None:
    if output == Output.json:
        out.print_json(status.model_dump_json())
        return
    now = datetime.now(UTC)
    days = (now - status.stage_entered_at).days
    head = [
        f"[bold]{status.stage_title}[/bold] ([cyan]{status.stage}[/cyan]) for {days} days",
        f"playbook {status.playbook} v{status.playbook_version} · owner {status.owner or '-'} · run {status.run}",
    ]
    if status.outcome:
        head.append(
            f"[bold]closed: {status.outcome}[/bold]" + (f" — {status.close_reason}" if status.close_reason else "")
        )
    for playbook_id, linked_deal in status.linked.items():
        head.append(f"handed off to [cyan]{linked_deal}[/cyan] ({playbook_id}): `sopflow status {linked_deal}`")
    out.print(Panel("\n".join(head), title=f"deal {status.deal_id}", expand=False))
    if status.open_tasks:
        tasks = Table("task", "title", "owner", "due", title="Open tasks", title_justify="left")
        for task in status.open_tasks:
            due = task.due_at.date().isoformat() if task.due_at else ""
            due = f"[red]{due} overdue[/red]" if task.overdue else due
            blocked = f" (after {', '.join(task.blocked_by)})" if task.blocked_by else ""
            tasks.add_row(task.id, task.title + blocked, task.owner, due)
        out.print(tasks)
    if status.unmet_gate:
        out.print("[bold]Before this stage can be left:[/bold]")
        for item in status.unmet_gate:
            out.print(f"  • {item}", highlight=False)
    if status.due:
        due_table = Table("what", "due", title="Coming up", title_justify="left")
        for due_item in status.due:
            due_table.add_row(f"{due_item.label} ({due_item.kind})", due_item.due_at.strftime("%Y-%m-%d %H:%M UTC"))
        out.print(due_table)
    hints = []
    if status.open_forms:
        hints.append("forms: " + ", ".join(status.open_forms))
    if status.advance_to:
        hints.append("advance to: " + ", ".join(status.advance_to))
    if hints:
        out.print(" · ".join(hints), style="dim")
    history = Table("when", "from", "to", "by", "trigger / reason", title="History", title_justify="left")
    for record in status.history[-8:]:
        history.add_row(
            record.at.strftime("%Y-%m-%d %H:%M"),
            record.from_stage or "",
            record.to_stage,
            record.actor or "",
            record.reason or record.trigger,
        )
    out.print(history)


def _update_command(deal_id: str, request: Request, output: Output, message: str, key: str | None, wait: float) -> None:
    """Send one change (an update) to a deal's lifecycle, once per key, and print where the deal is now."""
    chosen = update_key(key)

    async def go() -> LifecycleStatus:
        handle = await _handle(deal_id)
        return await send_update(handle, request, key=chosen, wait=wait, what=message)

    status = run(go())
    if output == Output.json:
        print_status(status, output)
    else:
        out.print(f"[green]✓[/green] {message} → deal {deal_id} is in [cyan]{status.stage}[/cyan]", highlight=False)
        if status.unmet_gate and not status.outcome:
            out.print("  waiting on: " + "; ".join(status.unmet_gate), style="dim", highlight=False)


# --- commands -----------------------------------------------------------------------------------------------------


class LogFormatChoice(StrEnum):
    json = "json"
    text = "text"


MetricsPortOpt = Annotated[
    int | None,
    typer.Option(
        "--metrics-port",
        min=1,
        max=65535,
        help="serve Prometheus metrics at /metrics on this port (SOPFLOW_METRICS_PORT)",
    ),
]


def observability(log_format: LogFormatChoice | None, default: LogFormat, metrics_port: int | None = None) -> Settings:
    """Configure logging (`sopflow.logs`) and, with a port, the metrics endpoint (`sopflow.telemetry`) before a
    long-running command connects; returns the settings, with the port the endpoint really uses."""
    config = settings()
    chosen: LogFormat = config.log_format or default
    if log_format is not None:
        chosen = "json" if log_format == LogFormatChoice.json else "text"
    configure_logging(chosen, config.log_level)
    port = metrics_port if metrics_port is not None else config.metrics_port
    if port is not None:
        try:
            install_metrics(config.metrics_host, port)
        except MetricsError as exc:
            fail(f"{exc}; choose another port with --metrics-port or SOPFLOW_METRICS_PORT")
    return config.model_copy(update={"metrics_port": port})


@app.command()
def dev(
    log_format: Annotated[LogFormatChoice | None, typer.Option("--log-format", help="text (default) or json")] = None,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Run the whole local stack: Temporal dev server + UI, worker, SMTP sink, webhook intake."""
    from starter.devstack import run_dev

    config = observability(log_format, "text", metrics_port)
    try:
        asyncio.run(run_dev(config))
    except KeyboardInterrupt:
        err.print("stopped")
    except (RuntimeError, OSError) as exc:
        fail(str(exc))


@app.command()
def worker(
    log_format: Annotated[LogFormatChoice | None, typer.Option("--log-format", help="json (default) or text")] = None,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Run a worker against the configured Temporal server (TEMPORAL_ADDRESS, profiles)."""
    from worker import run_worker

    config = observability(log_format, "json", metrics_port)
    try:
        run(run_worker(config))
    except KeyboardInterrupt:
        err.print("stopped")


@app.command()
def intake(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    log_format: Annotated[LogFormatChoice | None, typer.Option("--log-format", help="json (default) or text")] = None,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Run the webhook intake (HubSpot, DocuSign, web forms) against the configured Temporal server."""
    import uvicorn

    # An invalid SOPFLOW_* configuration fails here, in one line, not on the first webhook. One line per handled
    # event (ids and outcomes only: bodies, headers and secrets are never logged); log_config=None: uvicorn's lines
    # go through the same handler (access lines without query strings: form tokens travel in them).
    observability(log_format, "json", metrics_port)
    uvicorn.run("starter.webhooks:app", host=host, port=port, log_level="info", log_config=None)


# --- codec server: decrypts payloads for the Temporal UI and CLI ------------------------------------------------------


@app.command("codec-server")
def codec_server(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8081,
    log_format: Annotated[LogFormatChoice | None, typer.Option("--log-format", help="json (default) or text")] = None,
) -> None:
    """Serve /encode and /decode for the Temporal UI and `temporal --codec-endpoint` (needs SOPFLOW_ENCRYPTION_KEYS
    and SOPFLOW_CODEC_TOKEN)."""
    import uvicorn

    from sopflow.connect import connect_config
    from starter.codec_server import CodecServerError, app_from_settings

    # Logging first, so the warning of a token-less (trust-the-UI's-origin) server is a line like the others. Access
    # lines carry paths and statuses only: payloads and the Authorization header are never logged.
    config = observability(log_format, "json")
    try:
        namespace = str(connect_config().get("namespace") or "default")
        web = app_from_settings(config, namespace)
    except (CodecServerError, ConnectionFailed) as exc:
        fail(str(exc))
    uvicorn.run(web, host=host, port=port, log_level="info", log_config=None)


@deal_app.command("start")
def deal_start(
    deal_id: Annotated[str, typer.Option("--deal-id", "-d", help="the CRM's deal id (no names or emails)")],
    playbook: Annotated[str, typer.Option("--playbook", "-p", help="playbook id or YAML path")],
    field: FieldOpt = None,
    file: Annotated[Path | None, typer.Option("--file", help="JSON/YAML file of deal fields")] = None,
    actor: ActorOpt = "cli",
    output: OutputOpt = Output.text,
) -> None:
    """Start a client's lifecycle on a playbook (the playbook is pinned into the workflow)."""
    if not valid_deal_id(deal_id):
        fail(f"invalid deal id {deal_id!r}: use the CRM's id (letters, digits, . _ : -), never a name or email")
    pb = load(playbook)
    fields = parse_fields(field, file)
    try:
        values = check_deal_fields(pb, fields)
    except Rejected as exc:
        fail(str(exc))

    async def go() -> LifecycleStatus:
        client = await connect()
        try:
            handle = await start_lifecycle(
                client, pb, deal_id, values, actor, WorkflowIDConflictPolicy.FAIL, settings().time_scale
            )
        except WorkflowAlreadyStartedError:
            fail(f"deal {deal_id} already has a lifecycle (see `sopflow status {deal_id}`); deal ids are never reused")
        status: LifecycleStatus = await handle.query(ClientLifecycle.status)
        return status

    status = run(go())
    if output == Output.json:
        print_status(status, output)
    else:
        out.print(
            f"[green]✓[/green] started deal {deal_id} on {pb.id} v{pb.version}: stage [cyan]{status.stage}"
            f"[/cyan] (workflow {workflow_id(deal_id)})",
            highlight=False,
        )


@form_app.command("submit")
def form_submit(
    deal_id: str,
    form: str,
    field: FieldOpt = None,
    file: Annotated[Path | None, typer.Option("--file", help="JSON/YAML file of form fields")] = None,
    actor: ActorOpt = "cli",
    output: OutputOpt = Output.text,
    idempotency_key: KeyOpt = None,
    wait: WaitOpt = UPDATE_WAIT,
) -> None:
    """Submit a form for a deal (validated field by field by the playbook)."""
    payload = SubmitForm(form=form, fields=parse_fields(field, file), actor=actor)
    _update_command(deal_id, payload, output, f"form {form} submitted", idempotency_key, wait)


@task_app.command("done")
def task_done(
    deal_id: str,
    task: str,
    note: Annotated[str | None, typer.Option(help="a note for the record")] = None,
    actor: ActorOpt = "cli",
    output: OutputOpt = Output.text,
    idempotency_key: KeyOpt = None,
    wait: WaitOpt = UPDATE_WAIT,
) -> None:
    """Mark a checklist task done."""
    payload = CompleteTask(task=task, actor=actor, note=note)
    _update_command(deal_id, payload, output, f"task {task} done", idempotency_key, wait)


@app.command()
def advance(
    deal_id: str,
    stage: str,
    note: Annotated[str | None, typer.Option(help="why")] = None,
    actor: ActorOpt = "cli",
    output: OutputOpt = Output.text,
    idempotency_key: KeyOpt = None,
    wait: WaitOpt = UPDATE_WAIT,
) -> None:
    """Move a deal to the next stage (rejected, naming what is missing, if the stage's gate is not met)."""
    payload = Advance(to=stage, actor=actor, note=note)
    _update_command(deal_id, payload, output, f"advanced to {stage}", idempotency_key, wait)


@app.command("set")
def set_fields(
    deal_id: str,
    field: FieldOpt = None,
    actor: ActorOpt = "cli",
    output: OutputOpt = Output.text,
    idempotency_key: KeyOpt = None,
    wait: WaitOpt = UPDATE_WAIT,
) -> None:
    """Set deal fields (e.g. launch_date=2026-03-01)."""
    values = parse_fields(field)
    if not values:
        fail("give at least one --field key=value")
    payload = SetFields(fields=values, actor=actor)
    message = f"set {', '.join(values)}"
    _update_command(deal_id, payload, output, message, idempotency_key, wait)


@app.command()
def close(
    deal_id: str,
    reason: Annotated[str, typer.Option(help="why the deal is closed (required)")],
    lost: Annotated[bool, typer.Option("--lost", help="the prospect did not buy")] = False,
    cancelled: Annotated[bool, typer.Option("--cancelled", help="the client or we stopped the engagement")] = False,
    stage: Annotated[str | None, typer.Option(help="terminal stage, when the playbook has several")] = None,
    field: FieldOpt = None,
    actor: ActorOpt = "cli",
    output: OutputOpt = Output.text,
    idempotency_key: KeyOpt = None,
    wait: WaitOpt = UPDATE_WAIT,
) -> None:
    """Close a deal as lost or cancelled, with a reason."""
    if lost == cancelled:
        fail("say --lost or --cancelled")
    if not reason.strip():
        fail("--reason must not be empty")
    payload = Close(
        outcome="lost" if lost else "cancelled", reason=reason, stage=stage, fields=parse_fields(field), actor=actor
    )
    _update_command(deal_id, payload, output, "closed", idempotency_key, wait)


@app.command()
def event(
    deal_id: str,
    name: str,
    event_id: Annotated[str | None, typer.Option("--id", help="the sender's event id (repeats are ignored)")] = None,
    source: Annotated[str, typer.Option(help="where the event comes from")] = "cli",
) -> None:
    """Deliver an external event (e.g. contract_signed). Repeating it is harmless."""

    async def go() -> None:
        handle = await _handle(deal_id)
        status: LifecycleStatus = await handle.query(ClientLifecycle.status)
        if status.outcome:
            fail(f"deal {deal_id} is closed ({status.outcome})")
        if name not in status.events:
            fail(f"unknown event {name!r} for playbook {status.playbook} (events: {', '.join(status.events)})")
        await send(handle, ExternalEvent(name=name, event_id=event_id, source=source))

    run(go())
    out.print(f"[green]✓[/green] event {name} sent to deal {deal_id}", highlight=False)


@app.command()
def status(deal_id: str, output: OutputOpt = Output.text) -> None:
    """Show where a deal is: stage, open tasks, what blocks it, what is due, history."""

    async def go() -> LifecycleStatus:
        handle = await _handle(deal_id)
        result: LifecycleStatus = await handle.query(ClientLifecycle.status)
        return result

    print_status(run(go()), output)


# Names in a visibility query are never quoted, so they must be plain identifiers (Temporal's and ours).
_QUERY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def query_literal(value: str) -> str:
    """`value` as a single-quoted string literal of Temporal's visibility query language.

    The server's SQL tokenizer reads a backslash as an escape inside a literal (`\\'`, `\\\\`, `\\"`), so the
    backslash is escaped first, then both quote characters: `x\\` then stays the value `x\\` instead of escaping the
    closing quote, and `x' OR …` stays one value instead of becoming a second clause.
    """
    escaped = value.replace("\\", "\\\\").replace("'", "\\'").replace('"', '\\"')
    return f"'{escaped}'"


def visibility_query(equal: Mapping[str, str]) -> str:
    """`name = 'value' AND …`: the one place a visibility query is built, every value through `query_literal`."""
    clauses = []
    for name, value in equal.items():
        if not _QUERY_NAME.fullmatch(name):
            raise ValueError(f"not a search attribute name: {name!r}")
        clauses.append(f"{name} = {query_literal(value)}")
    return " AND ".join(clauses)


def list_query(stage: str | None, playbook: str | None, owner: str | None, include_closed: bool) -> str:
    equal = {"WorkflowType": ClientLifecycle.__name__}
    if not include_closed:
        equal["ExecutionStatus"] = "Running"
    for key, value in ((SA_STAGE, stage), (SA_PLAYBOOK, playbook), (SA_OWNER, owner)):
        if value is not None:
            equal[key.name] = value
    return visibility_query(equal)


async def list_lifecycles(client: Client, query: str, limit: int) -> list[dict[str, Any]]:
    rows = []
    async for execution in client.list_workflows(query, limit=limit):
        attrs = execution.typed_search_attributes
        next_due = attrs.get(SA_NEXT_DUE)
        rows.append(
            {
                "deal_id": execution.id.removeprefix(WORKFLOW_ID_PREFIX),
                "playbook": attrs.get(SA_PLAYBOOK),
                "stage": attrs.get(SA_STAGE),
                "owner": attrs.get(SA_OWNER),
                "next_due": next_due.isoformat() if next_due else None,
                "status": execution.status.name.lower() if execution.status else None,
                "started": execution.start_time.isoformat(),
            }
        )
    return rows


@app.command("list")
def list_deals(
    stage: Annotated[str | None, typer.Option(help="only deals in this stage")] = None,
    playbook: Annotated[str | None, typer.Option(help="only deals on this playbook")] = None,
    owner: Annotated[str | None, typer.Option(help="only deals owned by this role[:id]")] = None,
    all_: Annotated[bool, typer.Option("--all", help="include closed lifecycles")] = False,
    limit: Annotated[int, typer.Option(help="at most this many")] = 200,
    output: OutputOpt = Output.text,
) -> None:
    """List lifecycles from Temporal visibility (search attributes), filtered by stage/playbook/owner."""

    async def go() -> list[dict[str, Any]]:
        client = await connect()
        return await list_lifecycles(client, list_query(stage, playbook, owner, all_), limit)

    rows = run(go())
    if output == Output.json:
        out.print_json(json.dumps(rows))
        return
    table = Table("deal", "playbook", "stage", "owner", "next due", "status")
    for row in rows:
        table.add_row(
            row["deal_id"],
            row["playbook"] or "",
            row["stage"] or "",
            row["owner"] or "",
            (row["next_due"] or "")[:10],
            row["status"] or "",
        )
    out.print(table)
    out.print(f"{len(rows)} lifecycle(s)", style="dim")


@app.command()
def migrate(
    playbook: Annotated[str, typer.Argument(help="playbook id or file: its current version on disk")],
    to_version: Annotated[int, typer.Option("--to-version", help="the version the file must be (a safety check)")],
    deal: Annotated[
        list[str] | None, typer.Option(help="only these deals (repeatable); default: every running one")
    ] = None,
    map_: Annotated[
        list[str] | None, typer.Option("--map", help="old_stage=new_stage for stages the new version dropped")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="list the deals that would move, change nothing")] = False,
    actor: ActorOpt = "cli",
    idempotency_key: KeyOpt = None,
    wait: WaitOpt = UPDATE_WAIT,
) -> None:
    """Move running clients onto a newer version of their playbook (see README: versioning policy).

    One key for the run, sent to every deal (update ids are per lifecycle): re-running with the key a "not
    confirmed" line printed moves each deal at most once.
    """
    key = update_key(idempotency_key)
    pb = load(playbook)
    if pb.version != to_version:
        fail(f"{playbook} is v{pb.version} on disk, not v{to_version}: edit the file's version or the option")
    stage_map: dict[str, str] = {}
    for pair in map_ or []:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            fail(f"--map takes old_stage=new_stage, not {pair!r}")
        stage_map[old] = new

    async def go() -> list[tuple[str, str]]:
        client = await connect()
        deals = deal or [
            row["deal_id"] for row in await list_lifecycles(client, list_query(None, pb.id, None, False), 10_000)
        ]
        results = []
        for deal_id in deals:
            if dry_run:
                results.append((deal_id, "would migrate"))
                continue
            request = MigratePlaybook(playbook=pb, stage_map=stage_map, actor=actor)
            handle = client.get_workflow_handle(workflow_id(deal_id))
            try:
                status = await send_update(handle, request, key=key, wait=wait, what="the migration")
                results.append((deal_id, f"v{status.playbook_version}, stage {status.stage}"))
            except WorkflowUpdateFailedError as exc:
                results.append((deal_id, f"refused: {getattr(exc.cause, 'message', exc.cause)}"))
            except Unconfirmed as exc:
                results.append((deal_id, f"not confirmed: {exc}"))
        return results

    results = run(go())
    failed = ("refused", "not confirmed")
    for deal_id, outcome in results:
        marker = "[red]✗[/red]" if outcome.startswith(failed) else "[green]✓[/green]"
        out.print(f"{marker} {deal_id}: {outcome}", highlight=False, soft_wrap=True)
    out.print(f"{len(results)} deal(s) on {pb.id}", style="dim")
    if any(outcome.startswith(failed) for _, outcome in results):
        raise typer.Exit(1)


@playbook_app.command("validate")
def playbook_validate(files: list[Path]) -> None:
    """Check playbooks: schema, every reference (forms, roles, stages, tasks), that templates exist and render."""
    config, failed = settings(), False
    renderer = TemplateRenderer(config.templates_dir)
    for file in files:
        try:
            pb = load_playbook(file, config.templates_dir)
        except PlaybookError as exc:
            failed = True
            for line in exc.errors:
                err.print(f"{file}: {line}", highlight=False, soft_wrap=True)
            continue
        # Templates exist; now render each email with sample data, so a bad variable fails here, not months later.
        render_errors = render_check(pb, renderer)
        if render_errors:
            failed = True
            for line in render_errors:
                err.print(f"{file}: {line}", highlight=False, soft_wrap=True, markup=False)
            continue
        out.print(
            f"[green]✓[/green] {file}: {pb.id} v{pb.version}, {len(pb.stages)} stages, {len(pb.forms)} forms, "
            f"{len(template_names(pb))} templates",
            highlight=False,
        )
    if failed:
        raise typer.Exit(1)


@playbook_app.command("show")
def playbook_show(playbook: str, output: OutputOpt = Output.text) -> None:
    """Outline a playbook: each stage's owner, tasks and gate, where it leads and on what, and how it ends."""
    pb = load(playbook)
    if output == Output.json:
        out.print_json(pb.model_dump_json())
        return
    leads: dict[str | None, list[graph.Move]] = {}
    for move in graph.moves(pb):
        leads.setdefault(move.source, []).append(move)
    # A tree, not a table: ids and conditions wrap under their stage instead of being cut off in a narrow terminal.
    tree = Tree(Text.assemble((pb.title or pb.id, "bold"), f"  {pb.id} v{pb.version}"))
    for stage in pb.stages:
        head = Text.assemble((stage.id, "bold cyan"), f"  {stage.title}" if stage.title else "")
        if stage.owner:
            head.append(f"  owner: {stage.owner}", style="dim")
        node = tree.add(head)
        if stage.terminal:
            needs = f"; closing here needs {', '.join(stage.reason_fields)}" if stage.reason_fields else ""
            node.add(Text(f"ends: {stage.terminal}{needs}", style="bold"))
        if stage.tasks:
            node.add(Text("tasks: " + ", ".join(task.id for task in stage.tasks)))
        gate = stage.gate
        requires = [
            *(f"form {form}" for form in gate.forms),
            *gate.fields,
            *(["all tasks"] if gate.tasks == "all" else [f"task {task}" for task in gate.tasks]),
            *([f"{len(gate.checks)} check(s)"] if gate.checks else []),
        ]
        if requires:
            node.add(Text("gate: " + ", ".join(requires)))
        if stage.cadence:
            every = ", then ".join(str(phase.every) for phase in stage.cadence.phases)
            node.add(Text(f"{stage.cadence.label} every {every}"))
        for appointment in stage.appointments:
            before = ", ".join(str(r.before) for r in appointment.remind)
            node.add(Text(f"{appointment.label} ({appointment.at}): reminders {before} before"))
        for action in stage.on_enter:
            if action.start_lifecycle is not None:
                node.add(Text(f"hands off to playbook {action.start_lifecycle.playbook}"))
        for move in leads.get(stage.id, []):
            node.add(Text.assemble("→ ", (move.target, "cyan"), f"  {move.label}"))
    if closes := leads.get(None):
        tree.add(Text("close, from any open stage → " + ", ".join(move.target for move in closes)))
    out.print(tree)


class GraphFormat(StrEnum):
    mermaid = "mermaid"
    svg = "svg"
    png = "png"


@playbook_app.command("graph")
def playbook_graph(
    playbook: str,
    to: Annotated[
        str | None, typer.Option("--out", "-o", help="the Mermaid file, a folder for it, or - for stdout")
    ] = None,
    fmt: Annotated[
        GraphFormat | None,
        typer.Option(
            "--format", help="mermaid only, or an svg/png image too (needs graphviz); default svg if installed"
        ),
    ] = None,
) -> None:
    """Draw a playbook's stages and moves: Mermaid text (renders on GitHub), and an image when graphviz is installed."""
    pb = load(playbook)
    if to == "-":
        if fmt in (GraphFormat.svg, GraphFormat.png):
            fail(f"-o - prints Mermaid only: give -o a file to write {fmt} next to it")
        typer.echo(graph.mermaid(pb), nl=False)
        return
    target = Path(to or ".")
    mmd = target / f"{pb.id}.mmd" if target.is_dir() else target
    dot_bin = shutil.which("dot")
    # Unasked, the image is a bonus drawn only when graphviz is there; asked for, it is required.
    wanted = fmt or (GraphFormat.svg if dot_bin else GraphFormat.mermaid)
    if mmd.suffix in (".svg", ".png"):
        fail(f"-o names the Mermaid file (e.g. {mmd.with_suffix('.mmd')}); an image is written next to it")
    image = None if wanted == GraphFormat.mermaid else mmd.with_suffix(f".{wanted}")
    _write(mmd, graph.mermaid(pb))
    out.print(str(mmd), markup=False, highlight=False, soft_wrap=True)
    if image is None:
        return
    if dot_bin is None:
        fail(f"graphviz is not installed (no `dot` on PATH), so no {wanted} was written; install graphviz")
    try:
        done = subprocess.run(
            [dot_bin, f"-T{wanted}", "-o", str(image)],
            input=graph.dot(pb),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        fail(f"cannot run graphviz `dot`: {exc}")
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        # dot prints warnings before the error; the error is the line worth one line of output.
        reason = next(
            (line for line in lines if line.startswith("Error")), lines[0] if lines else f"exit {done.returncode}"
        )
        fail(f"graphviz `dot` failed to write {image}: {reason}")
    out.print(str(image), markup=False, highlight=False, soft_wrap=True)


# --- mail: the outbox in the records database -----------------------------------------------------------------------


class MailStatus(StrEnum):
    pending = "pending"
    sent = "sent"
    partial = "partial"
    failed = "failed"


def _records_at(revision: str) -> Database:
    from alembic.util.exc import CommandError

    db = Database(settings().database_url)
    try:
        db.upgrade(revision)
    except SQLAlchemyError as exc:
        db.dispose()
        _db_fail(exc)
    except CommandError as exc:  # e.g. a database migrated by a newer sopflow, or an unknown revision
        db.dispose()
        fail(f"cannot migrate the records database: {exc}")
    return db


def _records() -> Database:
    """The records store the worker writes to, migrated to the current schema first, so a fresh machine lists
    nothing instead of failing on a missing table."""
    return _records_at("head")


def _db_fail(exc: SQLAlchemyError) -> NoReturn:
    cause = getattr(exc, "orig", None) or exc
    fail(f"cannot read the records database: {' '.join(str(cause).split())}")


def _iso(moment: datetime | None) -> str | None:
    """SQLite hands back naive datetimes; every time sopflow stores is UTC, so say so."""
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def _mail_row(row: OutboxEmail, *, bodies: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": row.id,
        "key": row.key,
        "workflow_id": row.workflow_id,
        "deal_id": row.deal_id,
        "playbook": row.playbook,
        "template": row.template,
        "to": row.to,
        "cc": row.cc,
        "subject": row.subject,
        "attachments": row.attachments,
        "message_id": row.message_id,
        "status": row.status,
        "attempts": row.attempts,
        "error": row.error,
        "scheduled_at": _iso(row.scheduled_at),
        "sent_at": _iso(row.sent_at),
    }
    if bodies:
        data["body_text"], data["body_html"] = row.body_text, row.body_html
    return data


@mail_app.command("list")
def mail_list(
    deal: Annotated[str | None, typer.Option("--deal", help="only this deal's emails")] = None,
    status: Annotated[MailStatus | None, typer.Option("--status", help="only emails in this state")] = None,
    limit: Annotated[int, typer.Option(help="at most this many, newest first")] = 50,
    output: OutputOpt = Output.text,
) -> None:
    """List outbox emails, newest first: what went out, to whom, and what failed."""
    query = select(OutboxEmail).order_by(OutboxEmail.scheduled_at.desc(), OutboxEmail.id.desc()).limit(limit)
    if deal is not None:
        query = query.where(OutboxEmail.deal_id == deal)
    if status is not None:
        query = query.where(OutboxEmail.status == status.value)
    db = _records()
    try:
        with db.session() as session:
            rows = list(session.scalars(query))
    except SQLAlchemyError as exc:
        _db_fail(exc)
    finally:
        db.dispose()
    if output == Output.json:
        out.print_json(json.dumps([_mail_row(row, bodies=False) for row in rows]))
        return
    table = Table("id", "when", "deal", "template", "to", "status", "subject")
    colours = {"sent": "green", "failed": "red", "partial": "yellow"}
    for row in rows:
        table.add_row(
            str(row.id),
            row.scheduled_at.strftime("%Y-%m-%d %H:%M"),
            Text(row.deal_id),
            Text(row.template),
            Text(row.to),
            Text(row.status, style=colours.get(row.status, "")),
            Text(row.subject),
        )
    out.print(table)
    out.print(f"{len(rows)} email(s)", style="dim")


@mail_app.command("show")
def mail_show(
    email_id: Annotated[int, typer.Argument(metavar="ID", help="the id `sopflow mail list` shows")],
    html: Annotated[Path | None, typer.Option("--html", help="write the HTML body to this file")] = None,
    output: OutputOpt = Output.text,
) -> None:
    """Show one outbox email: every column and the text body (`--html FILE` saves the HTML body)."""
    db = _records()
    try:
        with db.session() as session:
            row = session.get(OutboxEmail, email_id)
    except SQLAlchemyError as exc:
        _db_fail(exc)
    finally:
        db.dispose()
    if row is None:
        fail(f"no email with id {email_id} in the outbox (see `sopflow mail list`)")
    if html is not None:
        if not row.body_html:
            fail(f"email {email_id} has no HTML body (status {row.status}: it was never rendered)")
        _write(html, row.body_html)
    data = _mail_row(row, bodies=True)
    if output == Output.json:
        out.print_json(json.dumps(data))
        return
    grid = Table.grid(padding=(0, 2))
    for key, value in data.items():
        if key not in ("body_text", "body_html"):
            grid.add_row(Text(key, style="dim"), Text("" if value is None else str(value)))
    out.print(grid)
    out.print()
    out.print(row.body_text or "(no text body: the email was never rendered)", markup=False, highlight=False)
    if html is not None:
        out.print(f"HTML body written to {html}", style="dim", highlight=False)


def _write(path: Path, content: str) -> None:
    try:
        path.write_text(content)
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror}")


# --- template preview -----------------------------------------------------------------------------------------------


@template_app.command("preview")
def template_preview(
    playbook: str,
    template: str,
    deal: Annotated[str | None, typer.Option("--deal", help="render with this running deal's live data")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="write the HTML body to this file")] = None,
    output: OutputOpt = Output.text,
) -> None:
    """Render a template's subject and text body, with sample data or with a deal's live context."""
    pb = load(playbook)
    uses = [use for use in email_uses(pb) if use.template == template]
    if not uses:
        known = ", ".join(sorted(template_names(pb))) or "none"
        fail(f"playbook {pb.id} sends no template {template!r} (templates: {known})")
    config = settings()
    use = uses[0]
    sample = sample_context(pb, use, minimal=False, public_url=config.public_url)
    if deal is None:
        context = sample
    else:
        live = run(_email_context(deal))
        live_playbook = (live.get("playbook") or {}).get("id")
        if live_playbook != pb.id:
            fail(f"deal {deal} runs playbook {live_playbook}, not {pb.id}")
        context = {**live, "links": links_for(config.public_url, deal, form_secret_of(config), list(pb.forms))}
        # Extras exist only where the engine sends the email (a task's reminder, a visit): samples stand in.
        for key in use.extra_keys:
            if context.get(key) is None:
                context[key] = sample[key]
    try:
        rendered = TemplateRenderer(config.templates_dir).render(pb.id, template, context)
    except RenderError as exc:
        fail(str(exc))
    if html is not None:
        _write(html, rendered.html)
    if output == Output.json:
        data = {
            "playbook": pb.id,
            "template": template,
            "deal": deal,
            "context": "deal" if deal else "sample",
            "subject": rendered.subject,
            "text": rendered.text,
            "html": rendered.html,
        }
        out.print_json(json.dumps(data))
        return
    out.print(f"Subject: {rendered.subject}", markup=False, highlight=False, soft_wrap=True)
    out.print()
    out.print(rendered.text, markup=False, highlight=False, soft_wrap=True)
    source = f"deal {deal}" if deal else "sample data"
    note = f"rendered with {source}" + (f"; HTML body written to {html}" if html else "")
    err.print(note, style="dim", highlight=False)


async def _email_context(deal_id: str) -> dict[str, Any]:
    handle = await _handle(deal_id)
    try:
        context: dict[str, Any] = await handle.query(ClientLifecycle.email_context, rpc_timeout=timedelta(seconds=20))
    except WorkflowQueryFailedError as exc:
        fail(f"deal {deal_id} could not answer the email context query: {exc.message}")
    except RPCError as exc:
        if exc.status == RPCStatusCode.DEADLINE_EXCEEDED:
            fail(f"deal {deal_id} did not answer: is a worker running (`sopflow worker` or `make dev`)?")
        raise
    return context


@app.command()
def rehearse(
    playbook: str,
    scenario: Path,
    output: OutputOpt = Output.text,
) -> None:
    """Run a scenario through the real workflow on virtual time and print the timeline."""
    from starter.rehearse import load_scenario
    from starter.rehearse import rehearse as run_rehearsal

    pb = load(playbook)
    try:
        sc = load_scenario(scenario)
        values = check_deal_fields(pb, sc.deal.fields)
    except (PlaybookError, Rejected) as exc:
        fail(str(exc))
    inp = LifecycleInput(deal_id=sc.deal.id, playbook=pb, fields=values, actor="rehearsal")
    config = settings()
    # Activity failures are part of the timeline (status=failed); their worker log lines would only be noise here.
    logging.getLogger("temporalio").setLevel(logging.ERROR)
    result = asyncio.run(run_rehearsal(inp, sc, config.templates_dir, server_log=config.home / "rehearsal.log"))
    if output == Output.json:
        for entry in result.timeline:
            sys.stdout.write(json.dumps(entry, default=str) + "\n")
    else:
        table = Table("day", "kind", "stage", "what", title=f"{pb.id}: {sc.name or scenario.name}")
        for entry in result.timeline:
            table.add_row(f"{entry['day']:.1f}", entry["kind"], entry.get("stage") or "", _describe(entry))
        out.print(table)
        out.print(
            f"final stage: [cyan]{result.status.stage}[/cyan]"
            + (f" ({result.status.outcome})" if result.status.outcome else ""),
            highlight=False,
        )


def _describe(entry: dict[str, Any]) -> str:
    kind = entry["kind"]
    if kind == "stage":
        return f"{entry.get('from') or 'start'} → {entry['to']} ({entry.get('reason') or entry.get('trigger')})"
    if kind == "email":
        what = entry.get("subject") or entry["template"]
        return f"{what} → {', '.join(entry.get('to', []))} [{entry.get('status', '')}]"
    if kind == "rejected":
        return f"{entry.get('step')}: {entry.get('reason')}"
    parts = [f"{k}={v}" for k, v in entry.items() if k not in ("at", "day", "kind", "stage")]
    return ", ".join(parts)


# --- reports: read-only views of the records database ---------------------------------------------------------------
# Reports read the `deals`, `stage_transitions` and `journal` tables the worker keeps (sopflow.reports); they never
# talk to Temporal, so they work while the server is down and cost it nothing.

report_app = typer.Typer(
    help="Reports from the records database: pipeline, stalled deals, site visits, time in stage.",
    no_args_is_help=True,
)
app.add_typer(report_app, name="report")


class ReportOutput(StrEnum):
    text = "text"
    json = "json"
    csv = "csv"


class VisitsBy(StrEnum):
    owner = "owner"
    deal = "deal"


ReportOutputOpt = Annotated[
    ReportOutput,
    typer.Option("--output", "-o", help="text (a table), json (a list of objects) or csv (with a header row)"),
]
ReportPlaybookOpt = Annotated[str | None, typer.Option("--playbook", "-p", help="only deals on this playbook id")]
JsonFlag = Annotated[bool, typer.Option("--json", help="same as -o json")]
CsvFlag = Annotated[bool, typer.Option("--csv", help="same as -o csv")]


def _report_format(output: ReportOutput, as_json: bool, as_csv: bool) -> ReportOutput:
    """`--json` / `--csv` are the spreadsheet user's spelling of `-o json` / `-o csv`."""
    if as_json and as_csv:
        fail("choose one of --json and --csv")
    return ReportOutput.json if as_json else ReportOutput.csv if as_csv else output


def _report_db() -> Database:
    """The records store, migrated to the current schema before reading: on a fresh machine every report is empty
    instead of an error about a missing table."""
    from alembic.util import CommandError

    db = Database(settings().database_url)
    try:
        db.upgrade()
    except SQLAlchemyError as exc:
        db.dispose()
        _db_fail(exc)
    except CommandError as exc:  # e.g. a database migrated by a newer sopflow: its revision is unknown here
        db.dispose()
        fail(f"cannot migrate the records database: {exc}")
    return db


def _read_records(query: Callable[[Session], T]) -> T:
    db = _report_db()
    try:
        with db.session() as session:
            return query(session)
    except SQLAlchemyError as exc:
        _db_fail(exc)
    finally:
        db.dispose()


def _report_playbooks() -> list[Playbook]:
    """Every playbook file that loads, for stage order and stall thresholds. A file that fails to load is skipped:
    a report on running deals must not depend on an unrelated YAML typo (`sopflow playbook validate` finds it)."""
    playbooks = []
    for path in sorted(settings().playbooks_dir.glob("*.yaml")):
        try:
            playbooks.append(load_playbook(path))
        except PlaybookError:
            continue
    return playbooks


def _plain(row: Any) -> dict[str, Any]:
    """A report row as JSON/CSV values: moments as ISO UTC, day counts to three decimals."""
    data: dict[str, Any] = {}
    for field in dataclasses.fields(row):
        value = getattr(row, field.name)
        if isinstance(value, datetime):
            value = reports.utc(value).isoformat()
        elif isinstance(value, float):
            value = round(value, 3)
        data[field.name] = value
    return data


def _text_cell(value: Any) -> Text:
    if value is None:
        return Text("-", style="dim")
    if isinstance(value, datetime):
        return Text(reports.utc(value).strftime("%Y-%m-%d %H:%M"))
    if isinstance(value, float):
        return Text(f"{value:.1f}")
    return Text(str(value))  # Text, not markup: stage titles and reasons are data


def _emit(
    rows: Sequence[Any],
    row_type: type[Any],
    output: ReportOutput,
    *,
    title: str,
    columns: Sequence[str] | None = None,
    noun: str = "row",
) -> None:
    """Print report rows as a rich table, a JSON list of objects, or CSV with a header row (even when empty)."""
    names = [field.name for field in dataclasses.fields(row_type)]
    if output == ReportOutput.json:
        out.print_json(json.dumps([_plain(row) for row in rows]))
        return
    if output == ReportOutput.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        writer.writerows(_plain(row) for row in rows)
        return
    shown = list(columns or names)
    table = Table(*(name.replace("_", " ") for name in shown), title=title, title_justify="left")
    for row in rows:
        table.add_row(*(_text_cell(getattr(row, name)) for name in shown))
    out.print(table)
    out.print(f"{len(rows)} {noun}(s)", style="dim", highlight=False)


@report_app.command("pipeline")
def report_pipeline(
    playbook: ReportPlaybookOpt = None,
    output: ReportOutputOpt = ReportOutput.text,
    as_json: JsonFlag = False,
    as_csv: CsvFlag = False,
) -> None:
    """Open deals per playbook and stage (in the playbook's stage order), with median and longest time in stage."""
    output = _report_format(output, as_json, as_csv)
    now = datetime.now(UTC)
    order = reports.stage_orders(_report_playbooks())
    rows = _read_records(lambda session: reports.pipeline(session, now, playbook, order))
    _emit(rows, reports.PipelineRow, output, title="Pipeline: open deals (days in stage)", noun="stage")


@report_app.command("stalled")
def report_stalled(
    days: Annotated[
        float | None,
        typer.Option(
            "--days", min=0, help="stalled after this many days in a stage (default: each stage's stall_after)"
        ),
    ] = None,
    output: ReportOutputOpt = ReportOutput.text,
    as_json: JsonFlag = False,
    as_csv: CsvFlag = False,
) -> None:
    """Open deals that have been in their stage too long, longest first."""
    output = _report_format(output, as_json, as_csv)
    now = datetime.now(UTC)
    thresholds = None if days is not None else reports.stall_thresholds(_report_playbooks())
    rows = _read_records(lambda session: reports.stalled(session, now, days, thresholds))
    rule = f"more than {days:g} days in a stage" if days is not None else "past the stage's stall_after"
    _emit(rows, reports.StalledRow, output, title=f"Stalled deals ({rule})", noun="deal")


@report_app.command("visits")
def report_visits(
    within: Annotated[str, typer.Option("--within", help="upcoming window: 30d, 2w, 1mo")] = "30d",
    by: Annotated[VisitsBy, typer.Option("--by", help="owner: counts per owner (+ deals in text); deal: deals")] = (
        VisitsBy.owner
    ),
    output: ReportOutputOpt = ReportOutput.text,
    as_json: JsonFlag = False,
    as_csv: CsvFlag = False,
) -> None:
    """Site visits (cadence touchpoints) overdue and coming up within a window, per owner; overdue first."""
    output = _report_format(output, as_json, as_csv)
    try:
        span = duration(within)
    except ValidationError as exc:
        fail(f"--within: {exc.errors()[0]['msg'].removeprefix('Value error, ')}")
    now = datetime.now(UTC)
    window = span.after(now) - now  # calendar-aware: 1mo from today, not 30 days
    result = _read_records(lambda session: reports.visits(session, now, window, by_owner=by == VisitsBy.owner))
    if by == VisitsBy.owner:
        _emit(result.summary, reports.VisitSummary, output, title=f"Visits per owner (next {within})", noun="owner")
    # json and csv hold one list of one kind of row; a person reading text also wants the deals behind the counts.
    if by == VisitsBy.deal or output == ReportOutput.text:
        _emit(result.deals, reports.VisitDue, output, title=f"Visits overdue or due within {within}", noun="visit")


@report_app.command("time-in-stage")
def report_time_in_stage(
    playbook: ReportPlaybookOpt = None,
    output: ReportOutputOpt = ReportOutput.text,
    as_json: JsonFlag = False,
    as_csv: CsvFlag = False,
) -> None:
    """How long completed stays in each stage took: count, median and p90 days (nearest-rank)."""
    output = _report_format(output, as_json, as_csv)
    order = reports.stage_orders(_report_playbooks())
    rows = _read_records(lambda session: reports.time_in_stage(session, playbook, order))
    _emit(rows, reports.StageTimeRow, output, title="Time in stage (completed stays, days)", noun="stage")


@deal_app.command("history")
def deal_history(
    deal_id: str, output: ReportOutputOpt = ReportOutput.text, as_json: JsonFlag = False, as_csv: CsvFlag = False
) -> None:
    """A deal's audit trail from the records: stage moves, forms, tasks, emails, reminders, escalations, events."""
    output = _report_format(output, as_json, as_csv)
    rows = _read_records(lambda session: reports.deal_history(session, deal_id))
    if not rows and output == ReportOutput.text:
        err.print(f"no records for deal {deal_id} (check the deal id with `sopflow list --all`)", highlight=False)
        return
    columns = ["at", "kind", "stage", "summary"]
    _emit(rows, reports.HistoryEntry, output, title=f"deal {deal_id}", columns=columns, noun="entry")


def main() -> None:
    """Entry point. Exits with `os._exit`: the SDK's native runtime can crash while the interpreter shuts down
    (sdk-python #300, seen here as a SIGSEGV after a successful command), which would turn success into failure."""
    code = 0
    try:
        app()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
