"""Checklist tasks: mark one done; the work queue across every deal (`sopflow tasks`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from sopflow import work_queue
from sopflow.models import (
    CompleteTask,
)
from starter.cli.apps import WORK, app, task_app
from starter.cli.common import (
    UPDATE_WAIT,
    ActorOpt,
    DealIdArg,
    KeyOpt,
    WaitOpt,
    connects,
    read_records,
    shipped_playbooks,
    update_command,
)
from starter.cli.render import (
    CsvFlag,
    JsonFlag,
    ObjectOutputOpt,
    Output,
    RowsOutputOpt,
    display_zone,
    emit,
    fail,
    report_format,
)


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


def tasks(
    owner: Annotated[
        str | None,
        typer.Option("--owner", help="a role (rep), an owner id (rep:owner-17) or the person's email address"),
    ] = None,
    due: Annotated[
        str | None, typer.Option("--due", help="today, week, overdue or a date (YYYY-MM-DD): due by then")
    ] = None,
    playbook: Annotated[str | None, typer.Option("--playbook", "-p", help="only deals on this playbook id")] = None,
    stage: Annotated[str | None, typer.Option("--stage", help="only deals in this stage")] = None,
    output: RowsOutputOpt = Output.text,
    as_json: JsonFlag = False,
    as_csv: CsvFlag = False,
) -> None:
    """The work queue: what is due across every deal, overdue first, with the command that settles each.

    Open tasks, visits due, deadlines running and booked meetings, read from the records database (Temporal is not
    asked)."""
    output = report_format(output, as_json, as_csv)
    filters = work_queue.Filters(owner=owner, due=due, playbook=playbook, stage=stage)
    now, viewer = datetime.now(UTC), display_zone()
    if due:
        try:
            work_queue.due_limit(due, now, viewer)
        except ValueError as exc:
            fail(f"--due: {exc}")
    books = shipped_playbooks()
    rows = read_records(lambda session: work_queue.work_items(session, now, viewer, filters, books))
    columns = ("due_at", "days_until_due", "deal_id", "kind", "what", "owner", "stage", "command")
    emit(rows, work_queue.WorkItem, output, title="Work queue (overdue first)", columns=columns, noun="item")


# `sopflow tasks` is the question people ask each morning, so it is top-level, in a panel of its own; `sopflow task
# list` is its place among the nouns.
app.command("tasks", rich_help_panel=WORK)(tasks)
task_app.command("list")(tasks)
