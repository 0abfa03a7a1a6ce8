"""Reports over the records store: the pipeline, stalled deals, site visits, time in stage, a deal's audit trail.

Every function is a pure query: it takes an open `Session` (and the moment to measure ages against, where ages
matter) and returns typed rows. Nothing here reads the clock, so a report is reproducible and testable on virtual
time. The SQL is deliberately plain (filters and ordering only) so it runs the same on SQLite and PostgreSQL;
grouping and percentiles are computed in Python, where both backends agree to the microsecond.

Percentiles use the **nearest-rank** method: the p-th percentile of n sorted values is the value at rank
ceil(p/100 * n) (1-based). It always returns an observed value (a median of 2, 2, 4, 14 days is 2 days, not 3), which
is what a person checking a report against the deals behind it expects.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from sopflow.db import DealRow, JournalRow, StageTransition
from sopflow.durations import Duration
from sopflow.models import workflow_id as lifecycle_workflow_id
from sopflow.playbook import Playbook
from sopflow.timeline import (
    ContinuedAsNewDetail,
    EmailDetail,
    EscalationDetail,
    EventDetail,
    FieldsDetail,
    FormDetail,
    RejectedDetail,
    ReminderDetail,
    StageDetail,
    TaskDetail,
    VisitDueDetail,
    parse_detail,
)

DAY = timedelta(days=1)
# A stall threshold: a fixed span, or a playbook duration (calendar months are measured from the stage entry).
Threshold = timedelta | Duration
StageOrder = Mapping[str, Sequence[str]]


# --- shared helpers -------------------------------------------------------------------------------------------------


def utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes and PostgreSQL aware ones in the session's zone; sopflow stores UTC only,
    so every moment is normalised to aware UTC before any arithmetic."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def in_days(span: timedelta) -> float:
    return span / DAY


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (see the module docstring); `values` need not be sorted and must not be empty."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 < p <= 100:
        raise ValueError(f"percentile must be in (0, 100], not {p}")
    ordered = sorted(values)
    # p * n / 100, not p / 100 * n: 0.7 * 10 is 7.000000000000001 in floating point, whose ceiling is 8.
    return ordered[max(1, math.ceil(p * len(ordered) / 100)) - 1]


def stalls_at(threshold: Threshold, entered: datetime) -> datetime:
    """When a deal that entered its stage at `entered` counts as stalled under `threshold`."""
    return threshold.after(entered) if isinstance(threshold, Duration) else entered + threshold


def stage_orders(playbooks: Iterable[Playbook]) -> dict[str, list[str]]:
    """Each playbook's stages in the order the SOP lists them: how the pipeline should read top to bottom."""
    return {pb.id: [stage.id for stage in pb.stages] for pb in playbooks}


def stall_thresholds(playbooks: Iterable[Playbook]) -> dict[tuple[str, str], Threshold]:
    """Every stage's `stall_after`, keyed by (playbook, stage); stages without one are never reported stalled."""
    return {
        (pb.id, stage.id): stage.stall_after for pb in playbooks for stage in pb.stages if stage.stall_after is not None
    }


def _stage_key(order: StageOrder | None, playbook: str, stage: str) -> tuple[str, int, str]:
    """Sort key: playbook, then the SOP's stage order; stages the playbook file no longer lists come last, by name."""
    known = list((order or {}).get(playbook, ()))
    return (playbook, known.index(stage) if stage in known else len(known), stage)


# --- pipeline -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PipelineRow:
    playbook: str
    stage: str
    stage_title: str
    count: int
    median_days: float
    max_days: float


def pipeline(
    session: Session, now: datetime, playbook: str | None = None, stage_order: StageOrder | None = None
) -> list[PipelineRow]:
    """Open deals (no outcome yet) per playbook and stage, with how long they have been in it.

    Stages with no open deal are left out: a row always has a median and a maximum to show.
    """
    query = select(DealRow.playbook, DealRow.stage, DealRow.stage_title, DealRow.stage_entered_at).where(
        DealRow.outcome.is_(None)
    )
    if playbook is not None:
        query = query.where(DealRow.playbook == playbook)
    now = utc(now)
    ages: dict[tuple[str, str], list[float]] = defaultdict(list)
    titles: dict[tuple[str, str], str] = {}
    for pb, stage, title, entered in session.execute(query):
        ages[(pb, stage)].append(in_days(now - utc(entered)))
        titles.setdefault((pb, stage), title)
    rows = [
        PipelineRow(
            playbook=pb,
            stage=stage,
            stage_title=titles[(pb, stage)],
            count=len(values),
            median_days=percentile(values, 50),
            max_days=max(values),
        )
        for (pb, stage), values in ages.items()
    ]
    return sorted(rows, key=lambda row: _stage_key(stage_order, row.playbook, row.stage))


# --- stalled --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StalledRow:
    deal_id: str
    playbook: str
    stage: str
    owner: str | None
    days_in_stage: float
    threshold_days: float


def stalled(
    session: Session,
    now: datetime,
    days: float | None = None,
    thresholds: Mapping[tuple[str, str], Threshold] | None = None,
) -> list[StalledRow]:
    """Open deals whose time in their current stage exceeds a threshold, longest-stuck first.

    With `days`, one threshold for every stage (what a manager asks ad hoc: "anything idle for a week?"). Without
    it, each stage's own `stall_after` from `thresholds` (see `stall_thresholds`): a 14-day contract window and a
    30-day onboarding are not stalled at the same age, and a stage without a threshold is never reported.
    """
    if days is not None and days < 0:
        raise ValueError(f"days must not be negative, not {days}")
    now = utc(now)
    query = (
        select(DealRow.deal_id, DealRow.playbook, DealRow.stage, DealRow.owner, DealRow.stage_entered_at)
        .where(DealRow.outcome.is_(None))
        .order_by(DealRow.deal_id)
    )
    rows = []
    for deal_id, pb, stage, owner, entered in session.execute(query):
        entered = utc(entered)
        threshold: Threshold | None = timedelta(days=days) if days is not None else (thresholds or {}).get((pb, stage))
        if threshold is None:
            continue
        limit = stalls_at(threshold, entered) - entered
        if now - entered > limit:
            rows.append(
                StalledRow(
                    deal_id=deal_id,
                    playbook=pb,
                    stage=stage,
                    owner=owner,
                    days_in_stage=in_days(now - entered),
                    threshold_days=in_days(limit),
                )
            )
    return sorted(rows, key=lambda row: (-row.days_in_stage, row.deal_id))


# --- visits ---------------------------------------------------------------------------------------------------------

VisitStatus = Literal["overdue", "upcoming"]


@dataclass(frozen=True)
class VisitDue:
    """One deal's next touchpoint; `days_until_due` is negative when it is overdue."""

    deal_id: str
    playbook: str
    owner: str | None
    stage: str
    label: str | None
    due_at: datetime
    status: VisitStatus
    days_until_due: float
    # The deal's zone: the CLI shows `due_at` in it (None: UTC).
    timezone: str | None = None


@dataclass(frozen=True)
class VisitSummary:
    """Counts per owner. `owner` is None for deals nobody owns, or for the single all-owners row (by_owner=False)."""

    owner: str | None
    overdue: int
    upcoming: int


@dataclass(frozen=True)
class VisitsReport:
    summary: list[VisitSummary]
    deals: list[VisitDue]


def visits(session: Session, now: datetime, within: timedelta, by_owner: bool = True) -> VisitsReport:
    """Overdue visits (due before `now`) and upcoming ones (due within `within` of `now`), per owner and per deal.

    Overdue comes first everywhere, because a missed visit is the one a manager must act on today. A deal's next
    visit date is the one its lifecycle last reported; closed deals have none.
    """
    now = utc(now)
    horizon = now + within
    query = (
        select(
            DealRow.deal_id,
            DealRow.playbook,
            DealRow.owner,
            DealRow.stage,
            DealRow.visit_label,
            DealRow.next_visit_due,
            DealRow.timezone,
        )
        .where(DealRow.outcome.is_(None), DealRow.next_visit_due.is_not(None))
        .order_by(DealRow.next_visit_due, DealRow.deal_id)
    )
    details = []
    for deal_id, pb, owner, stage, label, next_due, zone_name in session.execute(query):
        if next_due is None:  # filtered out above; kept for the type checker
            continue
        due = utc(next_due)
        if due > horizon:
            continue
        details.append(
            VisitDue(
                deal_id=deal_id,
                playbook=pb,
                owner=owner,
                stage=stage,
                label=label,
                due_at=due,
                status="overdue" if due < now else "upcoming",
                days_until_due=in_days(due - now),
                timezone=zone_name,
            )
        )
    # Overdue first (most overdue at the top), then upcoming soonest first.
    details.sort(key=lambda row: (row.status != "overdue", row.due_at, row.deal_id))
    counts: dict[str | None, list[int]] = defaultdict(lambda: [0, 0])
    for row in details:
        counts[row.owner if by_owner else None][0 if row.status == "overdue" else 1] += 1
    if not by_owner and not counts:
        counts[None] = [0, 0]
    summary = [VisitSummary(owner=owner, overdue=o, upcoming=u) for owner, (o, u) in counts.items()]
    summary.sort(key=lambda s: (-s.overdue, -s.upcoming, s.owner or ""))
    return VisitsReport(summary=summary, deals=details)


# --- time in stage --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageTimeRow:
    playbook: str
    stage: str
    stays: int
    median_days: float
    p90_days: float


def time_in_stage(
    session: Session, playbook: str | None = None, stage_order: StageOrder | None = None
) -> list[StageTimeRow]:
    """How long completed stays in each stage took (median and p90, nearest-rank), from the stage transitions.

    A stay runs from a transition into a stage to the next transition of the same workflow. The stage a deal is in
    now is not a completed stay and is not counted (the pipeline report shows those ages). A pair of transitions
    that does not chain (the second does not leave the stage the first entered: a gap in the records) is skipped
    rather than reported as a stay that never happened.
    """
    query = select(
        StageTransition.workflow_id,
        StageTransition.playbook,
        StageTransition.from_stage,
        StageTransition.to_stage,
        StageTransition.at,
    ).order_by(StageTransition.workflow_id, StageTransition.seq)
    if playbook is not None:
        query = query.where(StageTransition.playbook == playbook)
    stays: dict[tuple[str, str], list[float]] = defaultdict(list)
    previous: tuple[str, str, str, datetime] | None = None  # workflow, playbook, stage entered, when
    for workflow_id, pb, from_stage, to_stage, at in session.execute(query):
        at = utc(at)
        if previous is not None and previous[0] == workflow_id and from_stage == previous[2]:
            stays[(previous[1], previous[2])].append(in_days(at - previous[3]))
        previous = (workflow_id, pb, to_stage, at)
    rows = [
        StageTimeRow(
            playbook=pb,
            stage=stage,
            stays=len(values),
            median_days=percentile(values, 50),
            p90_days=percentile(values, 90),
        )
        for (pb, stage), values in stays.items()
    ]
    return sorted(rows, key=lambda row: _stage_key(stage_order, row.playbook, row.stage))


# --- a deal's audit trail -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryEntry:
    at: datetime
    kind: str
    stage: str
    summary: str
    seq: int


def deal_history(session: Session, deal_id: str) -> list[HistoryEntry]:
    """Everything the records hold about a deal's lifecycle(s), oldest first, each line readable on its own.

    Lifecycles are found by their workflow id (`deal-<id>`), the key every record of a deal shares. An unknown deal
    gives an empty list: "nothing recorded" is an answer, not an error. Summaries name forms, roles and templates but
    never form values, which may hold names and addresses.
    """
    query = (
        select(JournalRow)
        .where(JournalRow.workflow_id == lifecycle_workflow_id(deal_id))
        .order_by(JournalRow.at, JournalRow.seq, JournalRow.id)
    )
    return [
        HistoryEntry(
            at=utc(row.at), kind=row.kind, stage=row.stage, summary=summarize(row.kind, row.detail), seq=row.seq
        )
        for row in session.scalars(query)
    ]


def summarize(kind: str, detail: Mapping[str, Any]) -> str:
    """One human line for a journal entry, read through its kind's model (`sopflow.timeline`).

    A kind without a line of its own (an appointment, a hand-off, a migration, an error), a kind this version does
    not know (a newer one wrote it), and a detail that does not fit its kind's model are still listed, as their keys
    and values as written: the audit trail leaves nothing out and never fails on one row.
    """
    try:
        parsed = parse_detail(kind, detail)
    except ValidationError:
        return _as_written(detail)
    match parsed:
        case StageDetail():
            return _stage_line(parsed)
        case FormDetail():
            return _form_line(parsed)
        case TaskDetail():
            return _task_line(parsed)
        case EmailDetail():
            return _email_line(parsed)
        case ReminderDetail() | EscalationDetail():
            return _alert_line(parsed)
        case VisitDueDetail():
            return f"{parsed.cadence} due {_date(parsed.due_at)}"
        case EventDetail():
            source = f" from {parsed.source}" if parsed.source else ""
            reason = f" ({parsed.reason})" if parsed.reason else ""
            return f"event {parsed.event}{source}: {parsed.status}{reason}"
        case FieldsDetail():
            return f"fields set: {', '.join(parsed.changed)}{_by(parsed.by)}"
        case ContinuedAsNewDetail():
            return f"continued as new (run {parsed.run})"
        case RejectedDetail():
            return f"rejected: {parsed.reason}"
    return _as_written(detail)


def _as_written(detail: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in detail.items())


def _by(actor: str | None) -> str:
    return f" by {actor}" if actor else ""


def _date(value: str | None) -> str:
    """An ISO moment as a short UTC date-time, for a summary line; anything else as written."""
    if isinstance(value, str):
        try:
            return utc(datetime.fromisoformat(value)).strftime("%Y-%m-%d %H:%M")
        except ValueError:
            return value
    return str(value)


def _stage_line(detail: StageDetail) -> str:
    text = f"{detail.from_ or 'start'} → {detail.to} ({detail.trigger or '?'}){_by(detail.by)}"
    return text + (f": {detail.reason}" if detail.reason else "")


def _form_line(detail: FormDetail) -> str:
    """The form and who sent it, never its values (they may hold names and addresses); the visit it logged."""
    text = f"form {detail.form} submitted{_by(detail.by)}"
    if detail.count > 1:
        text += f" (#{detail.count})"
    if detail.touchpoint:
        text += f"; {detail.touchpoint} logged {_date(detail.logged_at)}"
        if detail.next_due:
            text += f", next due {_date(detail.next_due)}"
    return text


def _task_line(detail: TaskDetail) -> str:
    if detail.status == "opened":
        due = f", due {_date(detail.due_at)}" if detail.due_at else ""
        return f"task {detail.task} opened for {detail.owner or '?'}{due}"
    return f"task {detail.task} {detail.status}{_by(detail.by)}"


def _email_line(detail: EmailDetail) -> str:
    """Template, subject, roles (never addresses) and outcome; 'queued' while the email is in flight."""
    to = ", ".join(detail.to)
    cc = f", cc {', '.join(detail.cc)}" if detail.cc else ""
    subject = f" {detail.subject!r}" if detail.subject else ""
    text = f"email {detail.template}{subject} → {to or '-'}{cc} [{detail.status or 'queued'}]"
    problem = detail.reason or detail.error
    return text + (f": {problem}" if problem else "")


def _alert_line(detail: ReminderDetail | EscalationDetail) -> str:
    """A reminder or an escalation, by what it is about: an undeliverable email, a task, a deadline, a visit."""
    kind = detail.kind
    template = detail.template if isinstance(detail, EscalationDetail) else None
    deadline = detail.deadline if isinstance(detail, ReminderDetail) else None
    if detail.task and template:  # an undeliverable email became a fix-it task
        return f"{kind}: email {template} undeliverable ({detail.reason}); task {detail.task}"
    if detail.task:
        return f"{kind}: task {detail.task} ({detail.reason or 'overdue'}), owner {detail.owner}"
    if deadline:
        return f"{kind}: {deadline} on {_date(detail.due_at)}"
    if detail.cadence:
        missed = " missed" if detail.reason == "missed" else ""
        return f"{kind}: {detail.cadence}{missed}, due {_date(detail.due_at)}"
    return f"{kind}: {detail.reason or ''}".rstrip(": ")
