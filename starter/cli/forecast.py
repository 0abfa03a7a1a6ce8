"""`sopflow forecast`: what the coming weeks will demand of the team, from every live client's own playbook.

The clients' states come from the records store (`sopflow.forecast_source`), which every lifecycle keeps current from
its timeline records: 10,000 clients are one query, and the forecast costs Temporal nothing. A client whose stored
state is behind its timeline (a change whose record went through the server) is asked directly (`forecast_seed`
query); one whose workflow cannot answer (no worker, Temporal down) is left out, and the output says how many.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from rich.table import Table

from sopflow.charts import png_drawer, stacked_weeks_svg
from sopflow.connect import ConnectionFailed, connect
from sopflow.forecast import (
    ASSUMPTIONS,
    CATEGORIES,
    MAX_WEEKS,
    Assumption,
    Forecast,
    GroupBy,
    Refusal,
    Which,
    forecast_book,
)
from sopflow.forecast_source import load_seeds
from sopflow.models import ClientSeed
from sopflow.playbook import Playbook, PlaybookError
from sopflow.playbook_checks import load_playbook
from starter.cli.apps import WORK, app
from starter.cli.common import connects, nearest_first, playbook_failure, records, run, settings, write_file
from starter.cli.render import Output, RowsOutputOpt, err, fail, out, plural, print_rows
from starter.forecast_source import refresh

Results = Mapping[tuple[Which, Assumption], Forecast]


class GroupByOpt(StrEnum):
    owner = "owner"
    role = "role"
    playbook = "playbook"
    stage = "stage"


@connects
def forecast_command(
    weeks: Annotated[int, typer.Option("--weeks", help=f"how many weeks ahead (1-{MAX_WEEKS})")] = 12,
    by: Annotated[GroupByOpt, typer.Option("--by", help="count per owner, role, playbook or stage")] = (
        GroupByOpt.owner
    ),
    playbook: Annotated[str | None, typer.Option("--playbook", "-p", help="only clients on this playbook id")] = None,
    playbook_file: Annotated[
        Path | None,
        typer.Option(
            "--playbook-file",
            metavar="FILE",
            help="what-if: an edited playbook; its clients run as if migrated to it, beside today's forecast",
        ),
    ] = None,
    chart: Annotated[
        Path | None,
        typer.Option("--chart", metavar="FILE.svg|FILE.png", help="also draw the weekly totals as a bar chart"),
    ] = None,
    output: RowsOutputOpt = Output.text,
) -> None:
    """Forecast the live book: per week, the visits and meetings due, tasks falling due, emails to be sent, deadlines
    expiring and escalations firing, if nothing happens and if everything is done on time."""
    if not 1 <= weeks <= MAX_WEEKS:
        fail(f"--weeks must be between 1 and {MAX_WEEKS} (got {weeks})")
    draw_png = _png_drawer(chart) if chart is not None else None
    what_if = _edited(playbook_file) if playbook_file is not None else None
    seeds, note = _seeds(playbook or (what_if.id if what_if else None))
    group_by = cast(GroupBy, by.value)
    book = forecast_book(seeds, datetime.now(UTC), weeks, group_by, what_if, processes=len(os.sched_getaffinity(0)))
    results, refused = book.forecasts, book.refused
    rows = _rows(results)
    if chart is not None:
        base = results["what_if" if what_if else "today", "nothing"]
        title = f"Forecast, nothing happens: {plural(len(seeds), 'live client')}"
        svg = stacked_weeks_svg(base.totals(), base.monday, title)
        write_file(chart, draw_png(svg) if draw_png else svg)
    if print_rows(rows, output, ["forecast", "assumption", "group", "week", *CATEGORIES]):
        # A script reads the rows on stdout; who would not migrate is a person's concern, on stderr.
        for refusal in refused:
            err.print(f"would not migrate: deal {refusal.deal_id}: {refusal.reason}", highlight=False, soft_wrap=True)
        return
    _print_text(results, by.value, note, refused, what_if)


app.command("forecast", rich_help_panel=WORK)(forecast_command)


def _png_drawer(chart: Path) -> Callable[[str], bytes] | None:
    """How the chart file is drawn, by its name: SVG as is (None), or PNG, whose library is asked for now, before
    the forecast runs."""
    kind = chart.suffix.lower()
    if kind not in (".svg", ".png"):
        fail(f"--chart draws SVG or PNG: name the file .svg or .png (got {chart.name})")
    if kind == ".svg":
        return None
    try:
        return png_drawer()
    except RuntimeError as exc:
        fail(str(exc))


def _edited(path: Path) -> Playbook:
    """The what-if's playbook, validated as `sopflow playbook validate` does; one line on the first problem."""
    if not path.is_file():
        fail(f"no playbook file {path}")
    try:
        return load_playbook(path, settings().templates_dir)
    except PlaybookError as exc:
        fail(playbook_failure(exc))


def _seeds(playbook: str | None) -> tuple[list[ClientSeed], str]:
    """Every live client's state, and a line saying where the states came from."""
    db = records()
    try:
        found = load_seeds(db, playbook)
    finally:
        db.dispose()
    if playbook is not None and not found.seeds and not found.stale:
        known = nearest_first(playbook, [p.stem for p in settings().playbooks_dir.glob("*.yaml")])
        fail(f"no live clients on playbook {playbook!r} (playbooks: {', '.join(known) or 'none'})")
    seeds, note = list(found.seeds), f"{plural(len(found.seeds), 'state')} from the records store"
    if found.stale:
        asked, failed = run(_ask(found.stale))
        seeds += asked
        note += f", {len(asked)} asked of their workflow"
        if failed:
            note += f", {len(failed)} not answered and left out (is the worker running?)"
    return seeds, note


async def _ask(workflow_ids: list[str]) -> tuple[list[ClientSeed], list[str]]:
    """The states the store does not have current, from the workflows themselves; none when Temporal is down."""
    try:
        client = await connect()
    except ConnectionFailed:
        return [], workflow_ids
    return await refresh(client, workflow_ids)


def _rows(results: Results) -> list[dict[str, Any]]:
    """One row per forecast (today's, the what-if's and the change between them), assumption, group and week."""
    rows = []
    for (which, assumption), result in results.items():
        groups = set(result.counts) | (set(results["today", assumption].counts) if which == "what_if" else set())
        for group in sorted(groups):
            for week, monday in enumerate(result.week_starts()):
                counts = {c: _count(results, which, assumption, group)[c][week] for c in CATEGORIES}
                key = {"assumption": assumption, "group": group, "week": monday.isoformat()}
                rows.append({"forecast": which, **key, **counts})
                if which == "what_if":
                    before = _count(results, "today", assumption, group)
                    rows.append({"forecast": "change", **key, **{c: counts[c] - before[c][week] for c in CATEGORIES}})
    return rows


def _print_text(
    results: Results,
    by: str,
    note: str,
    refused: Sequence[Refusal],
    what_if: Playbook | None,
) -> None:
    today = results["today", "nothing"]
    out.print(
        f"Forecast for {plural(today.clients, 'live client')}, {plural(today.weeks, 'week')} from Monday "
        f"{today.monday:%Y-%m-%d} ({note}).",
        highlight=False,
    )
    out.print("Each cell: if nothing happens / if everything is done on time.", highlight=False)
    for text in ASSUMPTIONS.values():
        out.print(f"  {text[0].upper()}{text[1:]}.", style="dim", highlight=False)
    which: Which = "what_if" if what_if is not None else "today"
    groups = sorted(set(results[which, "nothing"].counts) | set(today.counts))
    if not groups:
        out.print(f"Nothing falls due in these {plural(today.weeks, 'week')}.", highlight=False)
    for group in groups:
        title = f"{by} {group}" + (": today → as if migrated to the edited playbook" if what_if else "")
        table = Table("week", *(CATEGORIES[c] for c in CATEGORIES), title=title, title_justify="left")
        for week, monday in enumerate(today.week_starts()):
            cells = [_cell(results, which, group, category, week) for category in CATEGORIES]
            table.add_row(f"{monday:%b %d}", *cells)
        out.print(table)
    faults = sorted(set(today.faults))
    if faults:
        out.print(f"{plural(len(faults), 'client')} stopped early (a rule raised): {', '.join(faults)}", style="red")
    for refusal in refused:
        out.print(f"would not migrate: deal {refusal.deal_id}: {refusal.reason}", style="yellow", highlight=False)


def _count(results: Results, which: Which, assumption: Assumption, group: str) -> Any:
    per_category = results[which, assumption].counts.get(group)
    return per_category or {c: [0] * results[which, assumption].weeks for c in CATEGORIES}


def _cell(results: Results, which: Which, group: str, category: str, week: int) -> str:
    """'3 / 1' (nothing happens / on time); a what-if shows today's beside it when they differ: '3 / 1 → 2 / 1'."""
    pair = "{} / {}".format(*(_count(results, which, a, group)[category][week] for a in ASSUMPTIONS))
    if which == "today":
        return pair
    before = "{} / {}".format(*(_count(results, "today", a, group)[category][week] for a in ASSUMPTIONS))
    return pair if before == pair else f"{before} → {pair}"
