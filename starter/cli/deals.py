"""Deals: start one and read them (status, list, history). The verbs that change a running deal are in
deal_changes.py."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy
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
from sopflow.models import LifecycleStatus, valid_deal_id, workflow_id
from starter.cli.apps import deal_app
from starter.cli.common import (
    ActorOpt,
    DealIdArg,
    FieldOpt,
    connects,
    handle_of,
    load,
    nearest_first,
    parse_fields,
    read_records,
    run,
    settings,
    shipped_playbooks,
)
from starter.cli.render import (
    CsvFlag,
    JsonFlag,
    ObjectOutputOpt,
    Output,
    RowsOutputOpt,
    emit,
    err,
    fail,
    out,
    plural,
    print_rows,
    print_status,
    report_format,
)
from starter.lifecycles import start_lifecycle
from workflows.lifecycle import ClientLifecycle


@deal_app.command("start")
@connects
def deal_start(
    deal_id: Annotated[
        str, typer.Option("--deal-id", "-d", metavar="DEAL_ID", help="the CRM's deal id (no names or emails)")
    ],
    playbook: Annotated[str, typer.Option("--playbook", "-p", metavar="PLAYBOOK", help="playbook id or YAML path")],
    field: FieldOpt = None,
    file: Annotated[Path | None, typer.Option("--file", metavar="FILE", help="JSON/YAML file of deal fields")] = None,
    actor: ActorOpt = "cli",
    output: ObjectOutputOpt = Output.text,
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
            fail(
                f"deal {deal_id} already has a lifecycle (see `sopflow deal status {deal_id}`); deal ids are never "
                "reused"
            )
        status: LifecycleStatus = await handle.query(ClientLifecycle.status)
        return status

    status = run(go())
    if output != Output.text:
        print_status(status, output)
    else:
        out.print(
            f"[green]✓[/green] started deal {deal_id} on {pb.id} v{pb.version}: stage [cyan]{status.stage}"
            f"[/cyan] (workflow {workflow_id(deal_id)})",
            highlight=False,
        )


@deal_app.command("status")
@connects
def deal_status(deal_id: DealIdArg, output: ObjectOutputOpt = Output.text) -> None:
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


LIST_COLUMNS = ("deal_id", "playbook", "stage", "owner", "next_due", "status", "started")


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


@deal_app.command("list")
@connects
def deal_list(
    stage: Annotated[str | None, typer.Option(metavar="STAGE", help="only deals in this stage")] = None,
    playbook: Annotated[str | None, typer.Option(metavar="PLAYBOOK", help="only deals on this playbook")] = None,
    owner: Annotated[str | None, typer.Option(metavar="ROLE[:ID]", help="only deals owned by this role[:id]")] = None,
    all_: Annotated[bool, typer.Option("--all", help="include closed lifecycles")] = False,
    limit: Annotated[int, typer.Option(metavar="N", help="at most this many")] = 200,
    output: RowsOutputOpt = Output.text,
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
    if print_rows(rows, output, LIST_COLUMNS):
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
    out.print(plural(len(rows), "lifecycle"), style="dim", highlight=False)


@deal_app.command("history")
def deal_history(
    deal_id: DealIdArg, output: RowsOutputOpt = Output.text, as_json: JsonFlag = False, as_csv: CsvFlag = False
) -> None:
    """A deal's audit trail from the records: stage moves, forms, tasks, emails, reminders, escalations, events."""
    output = report_format(output, as_json, as_csv)
    rows = read_records(lambda session: reports.deal_history(session, deal_id))
    if not rows and output == Output.text:
        err.print(f"no records for deal {deal_id} (check the deal id with `sopflow deal list --all`)", highlight=False)
        return
    columns = ["at", "kind", "stage", "summary"]
    emit(rows, reports.HistoryEntry, output, title=f"deal {deal_id}", columns=columns, noun="entry")
