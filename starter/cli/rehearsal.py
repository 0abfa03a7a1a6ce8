"""Rehearse a playbook scenario on the time-skipping server and print its timeline."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from rich.table import Table

from sopflow.engine import check_deal_fields
from sopflow.errors import Rejected
from sopflow.models import (
    LifecycleInput,
)
from sopflow.playbook import PlaybookError
from starter.cli.apps import app
from starter.cli.common import load, settings
from starter.cli.render import Output, OutputOpt, fail, out


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
