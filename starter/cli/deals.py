"""Deals: start one, move it (advance, set, close, events, migrate), and read it (status, list, history)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from temporalio.client import (
    Client,
    WorkflowUpdateFailedError,
)
from temporalio.common import (
    WorkflowIDConflictPolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError

from sopflow import reports
from sopflow.connect import connect
from sopflow.constants import (
    SA_NEXT_DUE,
    SA_OWNER,
    SA_PLAYBOOK,
    SA_STAGE,
    WORKFLOW_ID_PREFIX,
)
from sopflow.engine import check_deal_fields
from sopflow.errors import Rejected
from sopflow.models import (
    Advance,
    Close,
    ExternalEvent,
    LifecycleStatus,
    MigratePlaybook,
    SetFields,
    valid_deal_id,
    workflow_id,
)
from starter.cli.apps import app, deal_app
from starter.cli.common import (
    UPDATE_WAIT,
    ActorOpt,
    FieldOpt,
    KeyOpt,
    Unconfirmed,
    WaitOpt,
    handle_of,
    load,
    nearest_first,
    parse_fields,
    read_records,
    run,
    send_update,
    settings,
    shipped_playbooks,
    update_command,
    update_key,
)
from starter.cli.render import (
    CsvFlag,
    JsonFlag,
    Output,
    OutputOpt,
    ReportOutput,
    ReportOutputOpt,
    emit,
    err,
    fail,
    out,
    print_status,
    report_format,
)
from starter.lifecycles import send, start_lifecycle
from workflows.lifecycle import ClientLifecycle


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
    update_command(deal_id, payload, output, f"advanced to {stage}", idempotency_key, wait)


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
    update_command(deal_id, payload, output, message, idempotency_key, wait)


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
    update_command(deal_id, payload, output, "closed", idempotency_key, wait)


@app.command()
def event(
    deal_id: str,
    name: str,
    event_id: Annotated[str | None, typer.Option("--id", help="the sender's event id (repeats are ignored)")] = None,
    source: Annotated[str, typer.Option(help="where the event comes from")] = "cli",
) -> None:
    """Deliver an external event (e.g. contract_signed). Repeating it is harmless."""

    async def go() -> None:
        handle = await handle_of(deal_id)
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
        handle = await handle_of(deal_id)
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
    if stage is not None:
        books = [load(playbook)] if playbook else shipped_playbooks()
        known = {s.id for book in books for s in book.stages}
        if stage not in known:
            where = f"playbook {playbook}" if playbook else "any playbook"
            fail(f"no stage {stage!r} in {where} (stages: {', '.join(nearest_first(stage, known))})")

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


@deal_app.command("history")
def deal_history(
    deal_id: str, output: ReportOutputOpt = ReportOutput.text, as_json: JsonFlag = False, as_csv: CsvFlag = False
) -> None:
    """A deal's audit trail from the records: stage moves, forms, tasks, emails, reminders, escalations, events."""
    output = report_format(output, as_json, as_csv)
    rows = read_records(lambda session: reports.deal_history(session, deal_id))
    if not rows and output == ReportOutput.text:
        err.print(f"no records for deal {deal_id} (check the deal id with `sopflow list --all`)", highlight=False)
        return
    columns = ["at", "kind", "stage", "summary"]
    emit(rows, reports.HistoryEntry, output, title=f"deal {deal_id}", columns=columns, noun="entry")
