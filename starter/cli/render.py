"""How commands print: text tables for people, JSON, JSON lines and CSV for scripts, one renderer per kind of result.

Every command that prints data takes `-o/--output text|json|jsonl|csv`, as the `temporal` CLI does. A list (deals,
emails, report rows) is, in json, one array; in jsonl, one object per line; in csv, a header row and one row per
line. A single object (a deal's status, an email, a preview) is one JSON object, that object on one line, or a
one-row CSV table whose lists are joined by ';' and whose nested objects are JSON text.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, tzinfo
from enum import StrEnum
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from sopflow import reports, zones
from sopflow.models import (
    LifecycleStatus,
)


class Output(StrEnum):
    text = "text"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"


RowsOutputOpt = Annotated[
    Output,
    typer.Option(
        "--output",
        "-o",
        help="text: a table; json: one list of objects; jsonl: one object per line; csv: a header row, then one row "
        "per line",
    ),
]
ObjectOutputOpt = Annotated[
    Output,
    typer.Option(
        "--output",
        "-o",
        help="text; json: one object; jsonl: that object on one line; csv: a header row and one row (lists joined "
        "by ';')",
    ),
]


JsonFlag = Annotated[bool, typer.Option("--json", help="same as -o json")]


CsvFlag = Annotated[bool, typer.Option("--csv", help="same as -o csv")]


out = Console()


err = Console(stderr=True)


def plural(count: int, noun: str, many: str | None = None) -> str:
    """`1 task`, `2 tasks`, `0 entries`: a count with its noun, never `task(s)`."""
    if count == 1:
        return f"{count} {noun}"
    if many is None:
        if noun.endswith("y") and noun[-2:-1] not in ("a", "e", "i", "o", "u"):
            many = noun[:-1] + "ies"
        elif noun.endswith(("s", "x", "ch", "sh")):
            many = noun + "es"
        else:
            many = noun + "s"
    return f"{count} {many}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return ";".join(str(_csv_cell(item)) for item in value)
    if isinstance(value, dict):
        return json.dumps(value, default=_jsonable, sort_keys=True)
    return value


def print_rows(rows: Sequence[Mapping[str, Any]], output: Output, columns: Sequence[str] | None = None) -> bool:
    """Print a list for a script: json (one array), jsonl (an object a line) or csv (a header row, even when empty,
    with `columns` in that order). False for text: the caller draws its own table for people."""
    if output == Output.text:
        return False
    if output == Output.json:
        out.print_json(json.dumps(list(rows), default=_jsonable))
    elif output == Output.jsonl:
        for row in rows:
            sys.stdout.write(json.dumps(row, default=_jsonable) + "\n")
    else:
        names = list(columns) if columns is not None else list(rows[0]) if rows else []
        writer = csv.DictWriter(sys.stdout, fieldnames=names, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows({name: _csv_cell(row.get(name)) for name in names} for row in rows)
    sys.stdout.flush()
    return True


def print_object(data: Mapping[str, Any], output: Output, columns: Sequence[str] | None = None) -> bool:
    """Print one object for a script: json, jsonl (one line) or csv (a one-row table). False for text."""
    if output == Output.json:
        out.print_json(json.dumps(data, default=_jsonable))
        return True
    return print_rows([data], output, columns)


# The columns of a deal's status as one CSV row: what a spreadsheet of deals needs; lists are joined by ';'.
STATUS_COLUMNS = (
    "deal_id",
    "playbook",
    "playbook_version",
    "stage",
    "stage_title",
    "stage_entered_at",
    "outcome",
    "close_reason",
    "owner",
    "open_tasks",
    "unmet_gate",
    "advance_to",
    "open_forms",
    "next_due",
    "run",
)


def status_row(status: LifecycleStatus) -> dict[str, Any]:
    data: dict[str, Any] = status.model_dump(mode="json")
    data["open_tasks"] = [task.id for task in status.open_tasks]
    data["next_due"] = min((item.due_at for item in status.due), default=None)
    return {name: data.get(name) for name in STATUS_COLUMNS}


def print_status(status: LifecycleStatus, output: Output) -> None:
    """A deal's status: the whole object in json/jsonl, its main columns in csv, panels and tables in text."""
    if output == Output.json:
        out.print_json(status.model_dump_json())
        return
    if output == Output.jsonl:
        sys.stdout.write(status.model_dump_json() + "\n")
        return
    if print_object(status_row(status), output, STATUS_COLUMNS):
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
        head.append(f"handed off to [cyan]{linked_deal}[/cyan] ({playbook_id}): `sopflow deal status {linked_deal}`")
    out.print(Panel("\n".join(head), title=f"deal {status.deal_id}", expand=False))
    tz = zone_named(status.timezone)
    if status.open_tasks:
        tasks = Table("task", "title", "owner", "due", title="Open tasks", title_justify="left")
        for task in status.open_tasks:
            due = zones.show(task.due_at, tz) if task.due_at else ""
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
            due_table.add_row(f"{due_item.label} ({due_item.kind})", zones.show(due_item.due_at, tz))
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
            zones.show(record.at, tz),
            record.from_stage or "",
            record.to_stage,
            record.actor or "",
            record.reason or record.trigger,
        )
    out.print(history)


def iso(moment: datetime | None) -> str | None:
    """SQLite hands back naive datetimes; every time sopflow stores is UTC, so say so."""
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def report_format(output: Output, as_json: bool, as_csv: bool) -> Output:
    """`--json` / `--csv` are the spreadsheet user's spelling of `-o json` / `-o csv`."""
    if as_json and as_csv:
        fail("choose one of --json and --csv")
    return Output.json if as_json else Output.csv if as_csv else output


def plain(row: Any) -> dict[str, Any]:
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


def zone_named(name: str | None) -> tzinfo:
    """A deal's own zone (`LifecycleStatus.timezone`); UTC for a playbook without one."""
    return zones.zone(name) if name and zones.is_known(name) else UTC


def display_zone(deal_zone: str | None = None) -> tzinfo:
    """A deal's times in its own zone; where no one deal's zone applies (lists, mail), in SOPFLOW_TIMEZONE (default
    UTC; `Settings` refuses an unknown name when a command starts)."""
    return zone_named(deal_zone or os.environ.get("SOPFLOW_TIMEZONE", "UTC"))


def text_cell(value: Any, deal_zone: str | None = None) -> Text:
    if value is None:
        return Text("-", style="dim")
    if isinstance(value, datetime):
        return Text(zones.show(reports.utc(value), display_zone(deal_zone)))
    if isinstance(value, float):
        return Text(f"{value:.1f}")
    return Text(str(value))  # Text, not markup: stage titles and reasons are data


def emit(
    rows: Sequence[Any],
    row_type: type[Any],
    output: Output,
    *,
    title: str,
    columns: Sequence[str] | None = None,
    noun: str = "row",
) -> None:
    """Print report rows as a rich table, or for a script (`print_rows`): every field, CSV with a header row even
    when empty."""
    names = [field.name for field in dataclasses.fields(row_type)]
    if print_rows([plain(row) for row in rows], output, names):
        return
    shown = list(columns or names)
    table = Table(*(name.replace("_", " ") for name in shown), title=title, title_justify="left")
    for row in rows:
        table.add_row(*(text_cell(getattr(row, name), getattr(row, "timezone", None)) for name in shown))
    out.print(table)
    out.print(plural(len(rows), noun), style="dim", highlight=False)


def fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)
