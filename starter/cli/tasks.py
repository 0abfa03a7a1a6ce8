"""Checklist tasks: mark one done."""

from __future__ import annotations

from typing import Annotated

import typer

from sopflow.models import (
    CompleteTask,
)
from starter.cli.apps import task_app
from starter.cli.common import UPDATE_WAIT, ActorOpt, DealIdArg, KeyOpt, WaitOpt, connects, update_command
from starter.cli.render import ObjectOutputOpt, Output


@task_app.command("done")
@connects
def task_done(
    deal_id: DealIdArg,
    task: Annotated[str, typer.Argument(metavar="TASK", help="the task's id, e.g. onsite_appointment")],
    note: Annotated[str | None, typer.Option(metavar="TEXT", help="a note for the record")] = None,
    actor: ActorOpt = "cli",
    output: ObjectOutputOpt = Output.text,
    idempotency_key: KeyOpt = None,
    wait: WaitOpt = UPDATE_WAIT,
) -> None:
    """Mark a checklist task done."""
    payload = CompleteTask(task=task, actor=actor, note=note)
    update_command(deal_id, payload, output, f"task {task} done", idempotency_key, wait)
