"""How commands print: text tables for people, JSON and CSV for scripts, one renderer for each kind of result."""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from sopflow import reports
from sopflow.models import (
    LifecycleStatus,
)


class ReportOutput(StrEnum):
    text = "text"
    json = "json"
    csv = "csv"


ReportOutputOpt = Annotated[
    ReportOutput,
    typer.Option("--output", "-o", help="text (a table), json (a list of objects) or csv (with a header row)"),
]


JsonFlag = Annotated[bool, typer.Option("--json", help="same as -o json")]


CsvFlag = Annotated[bool, typer.Option("--csv", help="same as -o csv")]


out = Console()


err = Console(stderr=True)


class Output(StrEnum):
    text = "text"
    json = "json"


OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="text (tables) or json")]


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


def iso(moment: datetime | None) -> str | None:
    """SQLite hands back naive datetimes; every time sopflow stores is UTC, so say so."""
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def report_format(output: ReportOutput, as_json: bool, as_csv: bool) -> ReportOutput:
    """`--json` / `--csv` are the spreadsheet user's spelling of `-o json` / `-o csv`."""
    if as_json and as_csv:
        fail("choose one of --json and --csv")
    return ReportOutput.json if as_json else ReportOutput.csv if as_csv else output


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


def text_cell(value: Any) -> Text:
    if value is None:
        return Text("-", style="dim")
    if isinstance(value, datetime):
        return Text(reports.utc(value).strftime("%Y-%m-%d %H:%M"))
    if isinstance(value, float):
        return Text(f"{value:.1f}")
    return Text(str(value))  # Text, not markup: stage titles and reasons are data


def emit(
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
        out.print_json(json.dumps([plain(row) for row in rows]))
        return
    if output == ReportOutput.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        writer.writerows(plain(row) for row in rows)
        return
    shown = list(columns or names)
    table = Table(*(name.replace("_", " ") for name in shown), title=title, title_justify="left")
    for row in rows:
        table.add_row(*(text_cell(getattr(row, name)) for name in shown))
    out.print(table)
    out.print(f"{len(rows)} {noun}(s)", style="dim", highlight=False)


def fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)
