"""Playbooks: validate, show and draw them."""

from __future__ import annotations

import shutil
import subprocess
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text
from rich.tree import Tree
from temporalio.client import WorkflowUpdateFailedError

from sopflow import graph
from sopflow.connect import connect
from sopflow.durations import Duration
from sopflow.models import MigratePlaybook, workflow_id
from sopflow.playbook import BusinessCalendar, Playbook, PlaybookError, TaskSpec
from sopflow.playbook_checks import load_playbook, template_names
from sopflow.samples import render_check
from sopflow.templates import TemplateRenderer
from starter.cli.apps import playbook_app
from starter.cli.common import (
    UPDATE_WAIT,
    ActorOpt,
    KeyOpt,
    Unconfirmed,
    WaitOpt,
    connects,
    load,
    run,
    send_update,
    settings,
    update_key,
    write_file,
)
from starter.cli.deals import list_lifecycles, list_query
from starter.cli.render import Output, RowsOutputOpt, err, fail, out, plural, print_rows

PlaybookArg = Annotated[str, typer.Argument(metavar="PLAYBOOK", help="playbook id (safe_balance) or YAML file")]


@playbook_app.command("validate")
def playbook_validate(
    files: Annotated[list[Path], typer.Argument(metavar="FILE", help="playbook YAML files")],
) -> None:
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
            f"[green]✓[/green] {file}: {pb.id} v{pb.version}, {plural(len(pb.stages), 'stage')}, "
            f"{plural(len(pb.forms), 'form')}, {plural(len(template_names(pb)), 'template')}",
            highlight=False,
        )
    if failed:
        raise typer.Exit(1)


def _gate(pb: Playbook, stage_id: str) -> list[str]:
    gate = pb.stage(stage_id).gate
    return [
        *(f"form {form}" for form in gate.forms),
        *gate.fields,
        *(["all tasks"] if gate.tasks == "all" else [f"task {task}" for task in gate.tasks]),
        *([plural(len(gate.checks), "check")] if gate.checks else []),
    ]


STAGE_COLUMNS = ("stage", "title", "owner", "terminal", "tasks", "gate", "leads_to")


def stage_rows(pb: Playbook) -> list[dict[str, Any]]:
    """One row per stage, for `playbook show -o csv`: a playbook is a tree, its stages are the table in it."""
    leads: dict[str | None, list[graph.Move]] = {}
    for move in graph.moves(pb):
        leads.setdefault(move.source, []).append(move)
    return [
        {
            "stage": stage.id,
            "title": stage.title,
            "owner": stage.owner,
            "terminal": stage.terminal,
            "tasks": [task.id for task in stage.tasks],
            "gate": _gate(pb, stage.id),
            "leads_to": [move.target for move in leads.get(stage.id, [])],
        }
        for stage in pb.stages
    ]


@playbook_app.command("show")
def playbook_show(
    playbook: PlaybookArg,
    output: Annotated[
        Output,
        typer.Option(
            "--output",
            "-o",
            help="text: an outline; json: the whole playbook; jsonl: it on one line; csv: one row per stage (lists "
            "joined by ';')",
        ),
    ] = Output.text,
) -> None:
    """Outline a playbook: each stage's owner, tasks and gate, where it leads and on what, and how it ends."""
    pb = load(playbook)
    if output == Output.json:
        out.print_json(pb.model_dump_json())
        return
    if output == Output.jsonl:
        typer.echo(pb.model_dump_json())
        return
    if print_rows(stage_rows(pb), output, STAGE_COLUMNS):
        return
    leads: dict[str | None, list[graph.Move]] = {}
    for move in graph.moves(pb):
        leads.setdefault(move.source, []).append(move)
    # A tree, not a table: ids and conditions wrap under their stage instead of being cut off in a narrow terminal.
    tree = Tree(Text.assemble((pb.title or pb.id, "bold"), f"  {pb.id} v{pb.version}"))
    if pb.timezone is not None:
        tree.add(Text(_calendar_words(pb), style="dim"))
    for stage in pb.stages:
        head = Text.assemble((stage.id, "bold cyan"), f"  {stage.title}" if stage.title else "")
        if stage.owner:
            head.append(f"  owner: {stage.owner}", style="dim")
        node = tree.add(head)
        if stage.terminal:
            needs = f"; closing here needs {', '.join(stage.reason_fields)}" if stage.reason_fields else ""
            node.add(Text(f"ends: {stage.terminal}{needs}", style="bold"))
            for check in stage.close_checks:
                node.add(Text(f"close check: {check.message}"))
        if stage.tasks:
            node.add(Text("tasks: " + ", ".join(_task_words(task) for task in stage.tasks)))
        requires = _gate(pb, stage.id)
        if requires:
            node.add(Text("gate: " + ", ".join(requires)))
        if stage.cadence:
            every = ", then ".join(phase.every.words for phase in stage.cadence.phases)
            node.add(Text(f"{stage.cadence.label} every {every}"))
        for appointment in stage.appointments:
            before = ", ".join(r.before.words for r in appointment.remind)
            node.add(Text(f"{appointment.label} ({appointment.at}): reminders {before} before"))
        for action in stage.on_enter:
            if action.start_lifecycle is not None:
                node.add(Text(f"hands off to playbook {action.start_lifecycle.playbook}"))
        for move in leads.get(stage.id, []):
            node.add(Text.assemble("→ ", (move.target, "cyan"), f"  {move.label}"))
    if closes := leads.get(None):
        tree.add(Text("close, from any open stage → " + ", ".join(move.target for move in closes)))
    out.print(tree)


def _task_words(task: TaskSpec) -> str:
    """`intro_call (due at the end of the business day; escalates 1 business hour later)`."""
    notes = []
    if isinstance(task.due, Duration):
        notes.append(f"due {task.due.words} after it opens")
    elif task.due is not None:
        notes.append("due at the " + task.due.replace("_", " "))
    if task.escalate is not None:
        notes.append(f"escalates {task.escalate.after.words} after that")
    return f"{task.id} ({'; '.join(notes)})" if notes else task.id


def _calendar_words(pb: Playbook) -> str:
    """The playbook's clock in one line: zone, working week and hours, holidays, send window."""
    cal = pb.calendar or BusinessCalendar()
    own = f" (a deal's own: {pb.timezone_field})" if pb.timezone_field else ""
    hours = f"{cal.working_hours.start:%H:%M}-{cal.working_hours.end:%H:%M}"
    days = ", ".join(day.capitalize() for day in cal.working_days)
    text = f"times in {pb.timezone}{own}; business days {days} {hours}"
    if cal.holidays.country:
        text += f", {cal.holidays.country}{'-' + cal.holidays.subdivision if cal.holidays.subdivision else ''} holidays"
    if cal.holidays.extra:
        text += f" and {len(cal.holidays.extra)} company days off"
    if cal.send_window:
        days_shown = "business days" if cal.send_window.days == "business" else "every day"
        text += f"; notices {cal.send_window.start:%H:%M}-{cal.send_window.end:%H:%M} on {days_shown}"
    return text


class GraphFormat(StrEnum):
    mermaid = "mermaid"
    svg = "svg"
    png = "png"


@playbook_app.command("graph")
def playbook_graph(
    playbook: PlaybookArg,
    to: Annotated[
        str | None,
        typer.Option("--out", "-o", metavar="PATH", help="the Mermaid file, a folder for it, or - for stdout"),
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
    write_file(mmd, graph.mermaid(pb))
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


# --- migrate: a newer version of a playbook reaches the deals that run it ---------------------------------------------

MIGRATE_COLUMNS = ("deal_id", "ok", "outcome")


@playbook_app.command("migrate")
@connects
def playbook_migrate(
    playbook: Annotated[
        str, typer.Argument(metavar="PLAYBOOK", help="playbook id or file: its current version on disk")
    ],
    to_version: Annotated[
        int, typer.Option("--to-version", metavar="N", help="the version the file must be (a safety check)")
    ],
    deal: Annotated[
        list[str] | None,
        typer.Option(metavar="DEAL_ID", help="only these deals (repeatable); default: every running one"),
    ] = None,
    map_: Annotated[
        list[str] | None,
        typer.Option("--map", metavar="OLD=NEW", help="old_stage=new_stage for stages the new version dropped"),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="list the deals that would move, change nothing")] = False,
    actor: ActorOpt = "cli",
    idempotency_key: KeyOpt = None,
    wait: WaitOpt = UPDATE_WAIT,
    output: RowsOutputOpt = Output.text,
) -> None:
    """Move the running deals of a playbook onto its newer version (see README: versioning policy).

    One key for the run, sent to every deal (update ids are per lifecycle): re-running with the key a "not
    confirmed" line printed moves each deal at most once. Exits 1 when any deal was not moved.
    """
    key = update_key(idempotency_key)
    pb = load(playbook)
    if pb.version != to_version:
        fail(f"{playbook} is v{pb.version} on disk, not v{to_version}: edit the file's version or the option")
    stage_map = _stage_map(map_ or [])
    request = MigratePlaybook(playbook=pb, stage_map=stage_map, actor=actor)
    results = run(_migrate_each(request, deal, dry_run, key, wait))
    if not print_rows(results, output, MIGRATE_COLUMNS):
        for row in results:
            marker = "[green]✓[/green]" if row["ok"] else "[red]✗[/red]"
            out.print(f"{marker} {row['deal_id']}: {row['outcome']}", highlight=False, soft_wrap=True)
        out.print(f"{plural(len(results), 'deal')} on {pb.id}", style="dim", highlight=False)
    if not all(row["ok"] for row in results):
        raise typer.Exit(1)


def _stage_map(pairs: list[str]) -> dict[str, str]:
    """`--map old=new` pairs: where deals in a stage the new version dropped go."""
    stage_map: dict[str, str] = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            fail(f"--map takes old_stage=new_stage, not {pair!r}")
        stage_map[old] = new
    return stage_map


async def _migrate_each(
    request: MigratePlaybook, deals: list[str] | None, dry_run: bool, key: str, wait: float
) -> list[dict[str, Any]]:
    """Send the migration to each deal (every running one of the playbook by default), one result row per deal:
    a refusal or an unconfirmed update is that deal's outcome, never the end of the run."""
    client = await connect()
    if not deals:
        query = list_query(None, request.playbook.id, None, False)
        deals = [row["deal_id"] for row in await list_lifecycles(client, query, 10_000)]
    results = []
    for deal_id in deals:
        if dry_run:
            results.append({"deal_id": deal_id, "ok": True, "outcome": "would migrate"})
            continue
        handle = client.get_workflow_handle(workflow_id(deal_id))
        try:
            status = await send_update(handle, request, key=key, wait=wait, what="the migration")
            outcome, ok = f"v{status.playbook_version}, stage {status.stage}", True
        except WorkflowUpdateFailedError as exc:
            outcome, ok = f"refused: {getattr(exc.cause, 'message', exc.cause)}", False
        except Unconfirmed as exc:
            outcome, ok = f"not confirmed: {exc}", False
        results.append({"deal_id": deal_id, "ok": ok, "outcome": outcome})
    return results
