"""Reports: read-only views of the records database."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

import typer
from pydantic import ValidationError

from sopflow import reports
from sopflow.durations import duration
from starter.cli.apps import report_app
from starter.cli.common import read_records, shipped_playbooks
from starter.cli.render import CsvFlag, JsonFlag, Output, RowsOutputOpt, emit, fail, report_format

# Reports read the `deals`, `stage_transitions` and `journal` tables the worker keeps (sopflow.reports); they never
# talk to Temporal, so they work while the server is down and cost it nothing.


class VisitsBy(StrEnum):
    owner = "owner"
    deal = "deal"


ReportPlaybookOpt = Annotated[str | None, typer.Option("--playbook", "-p", help="only deals on this playbook id")]


@report_app.command("pipeline")
def report_pipeline(
    playbook: ReportPlaybookOpt = None,
    output: RowsOutputOpt = Output.text,
    as_json: JsonFlag = False,
    as_csv: CsvFlag = False,
) -> None:
    """Open deals per playbook and stage (in the playbook's stage order), with median and longest time in stage."""
    output = report_format(output, as_json, as_csv)
    now = datetime.now(UTC)
    order = reports.stage_orders(shipped_playbooks())
    rows = read_records(lambda session: reports.pipeline(session, now, playbook, order))
    emit(rows, reports.PipelineRow, output, title="Pipeline: open deals (days in stage)", noun="stage")


@report_app.command("stalled")
def report_stalled(
    days: Annotated[
        float | None,
        typer.Option(
            "--days", min=0, help="stalled after this many days in a stage (default: each stage's stall_after)"
        ),
    ] = None,
    output: RowsOutputOpt = Output.text,
    as_json: JsonFlag = False,
    as_csv: CsvFlag = False,
) -> None:
    """Open deals that have been in their stage too long, longest first."""
    output = report_format(output, as_json, as_csv)
    now = datetime.now(UTC)
    thresholds = None if days is not None else reports.stall_thresholds(shipped_playbooks())
    rows = read_records(lambda session: reports.stalled(session, now, days, thresholds))
    rule = f"more than {days:g} days in a stage" if days is not None else "past the stage's stall_after"
    emit(rows, reports.StalledRow, output, title=f"Stalled deals ({rule})", noun="deal")


@report_app.command("visits")
def report_visits(
    within: Annotated[str, typer.Option("--within", help="upcoming window: 30d, 2w, 1mo")] = "30d",
    by: Annotated[VisitsBy, typer.Option("--by", help="owner: counts per owner (+ deals in text); deal: deals")] = (
        VisitsBy.owner
    ),
    output: RowsOutputOpt = Output.text,
    as_json: JsonFlag = False,
    as_csv: CsvFlag = False,
) -> None:
    """Site visits (cadence touchpoints) overdue and coming up within a window, per owner; overdue first."""
    output = report_format(output, as_json, as_csv)
    try:
        span = duration(within)
    except ValidationError as exc:
        fail(f"--within: {exc.errors()[0]['msg'].removeprefix('Value error, ')}")
    now = datetime.now(UTC)
    window = span.after(now) - now  # calendar-aware: 1mo from today, not 30 days
    result = read_records(lambda session: reports.visits(session, now, window, by_owner=by == VisitsBy.owner))
    if by == VisitsBy.owner:
        emit(result.summary, reports.VisitSummary, output, title=f"Visits per owner (next {within})", noun="owner")
    # json and csv hold one list of one kind of row; a person reading text also wants the deals behind the counts.
    if by == VisitsBy.deal or output == Output.text:
        emit(result.deals, reports.VisitDue, output, title=f"Visits overdue or due within {within}", noun="visit")


@report_app.command("time-in-stage")
def report_time_in_stage(
    playbook: ReportPlaybookOpt = None,
    output: RowsOutputOpt = Output.text,
    as_json: JsonFlag = False,
    as_csv: CsvFlag = False,
) -> None:
    """How long completed stays in each stage took: count, median and p90 days (nearest-rank)."""
    output = report_format(output, as_json, as_csv)
    order = reports.stage_orders(shipped_playbooks())
    rows = read_records(lambda session: reports.time_in_stage(session, playbook, order))
    emit(rows, reports.StageTimeRow, output, title="Time in stage (completed stays, days)", noun="stage")
