"""Playbooks: validate, show and draw them."""

from __future__ import annotations

import shutil
import subprocess
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text
from rich.tree import Tree

from sopflow import graph
from sopflow.playbook import PlaybookError
from sopflow.playbook_checks import load_playbook, template_names
from sopflow.samples import render_check
from sopflow.templates import TemplateRenderer
from starter.cli.apps import playbook_app
from starter.cli.common import load, settings, write_file
from starter.cli.render import Output, OutputOpt, err, fail, out


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
