"""Rehearse a playbook scenario on the time-skipping server and print its timeline."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from sopflow.engine import check_deal_fields
from sopflow.errors import Rejected
from sopflow.models import (
    LifecycleInput,
)
from sopflow.playbook import PlaybookError
from starter.cli.apps import SERVICES, app
from starter.cli.common import load, settings
from starter.cli.render import Output, fail, out, print_rows

TIMELINE_COLUMNS = ("day", "at", "kind", "stage", "what")


@app.command(rich_help_panel=SERVICES)
def rehearse(
    playbook: Annotated[str, typer.Argument(metavar="PLAYBOOK", help="playbook id or YAML file")],
    scenario: Annotated[Path, typer.Argument(metavar="SCENARIO", help="the scenario's YAML file")],
    output: Annotated[
        Output,
        typer.Option(
            "--output",
            "-o",
            help="text: a table; jsonl: one timeline entry per line (json too, for now: the JSON lines it always "
            "printed); csv: day, at, kind, stage, what",
        ),
    ] = Output.text,
) -> None:
    """Run a scenario through the real workflow on virtual time and print the timeline.

    It needs no Temporal server: it brings its own (time-skipping) one."""
    from starter.rehearse import load_scenario, resolve_dates
    from starter.rehearse import rehearse as run_rehearsal

    pb = load(playbook)
    try:
        sc = load_scenario(scenario)
        # Relative values (`$today+45d`) are checked as they will be on the rehearsal's first day; the lifecycle
        # gets them as written and the rehearsal resolves them against its own clock.
        check_deal_fields(pb, resolve_dates(sc.deal.fields, datetime.now(UTC), sc.clock(pb, sc.deal.fields)))
    except (PlaybookError, Rejected) as exc:
        fail(str(exc))
    inp = LifecycleInput(deal_id=sc.deal.id, playbook=pb, fields=sc.deal.fields, actor="rehearsal")
    config = settings()
    # Activity failures are part of the timeline (status=failed); their worker log lines would only be noise here.
    logging.getLogger("temporalio").setLevel(logging.ERROR)
    result = asyncio.run(run_rehearsal(inp, sc, config.templates_dir, server_log=config.home / "rehearsal.log"))
    if output in (Output.json, Output.jsonl):
        # `-o json` printed JSON lines before jsonl existed; scripts read it so, so it stays so for this release.
        for entry in result.timeline:
            sys.stdout.write(json.dumps(entry, default=str) + "\n")
    elif output == Output.csv:
        rows = [{**entry, "day": f"{entry['day']:.3f}", "what": _describe(entry)} for entry in result.timeline]
        print_rows(rows, output, TIMELINE_COLUMNS)
    else:
        # With a time zone, each entry also shows its local time (`2027-03-15 09:00 EDT`).
        zoned = any("local" in entry for entry in result.timeline)
        columns = ("day", "local time") if zoned else ("day",)
        table = Table(*columns, "kind", "stage", "what", title=f"{pb.id}: {sc.name or scenario.name}")
        for entry in result.timeline:
            when = (f"{entry['day']:.1f}", entry["local"]) if zoned else (f"{entry['day']:.1f}",)
            table.add_row(*when, entry["kind"], entry.get("stage") or "", _describe(entry))
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
    parts = [f"{k}={v}" for k, v in entry.items() if k not in ("at", "day", "local", "kind", "stage")]
    return ", ".join(parts)
