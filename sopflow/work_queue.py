"""The staff's work queue across every deal: what is on a person's plate, overdue first.

Open tasks, touchpoints (site visits, reviews) due, deadlines about to expire and booked meetings, each with when it
is due (in the deal's zone) and the command that settles it. Read from the records store, which every lifecycle keeps
current with its journal batches, never from the workflows: one indexed query answers for 10,000 clients where asking
each workflow would take minutes and load the server (`bench/work_queue.py` measures it).

Who: `owner` matches the role that owns an item (`rep`), the deal's owner id (`rep:owner-17`, what the SopOwner search
attribute holds) or the address the deal has for that role (`rep@example.com`, from the deal's contacts).
When: `today` (due by the end of today, overdue included), `week` (by the end of the seventh day), `overdue`, or a
date (due by the end of it); days are the viewer's (SOPFLOW_TIMEZONE), because "today" is the person's own.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Literal, NamedTuple

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sopflow.db import DealContact, DealRow, TaskRow
from sopflow.playbook import Playbook, Stage, Transition
from sopflow.reports import in_days, utc

ItemKind = Literal["task", "visit", "deadline", "meeting"]
# Stands for the deal id in a cached command shape.
_DEAL = "\x00deal\x00"


@dataclass(frozen=True)
class WorkItem:
    """One thing someone must do for a deal; `days_until_due` is negative when it is overdue."""

    deal_id: str
    playbook: str
    stage: str
    kind: ItemKind
    what: str
    owner: str
    due_at: datetime | None
    days_until_due: float | None
    command: str
    # The deal's zone: the CLI shows `due_at` in it (None: UTC).
    timezone: str | None = None
    # What settles it on the web board: the task to mark done, or the form to submit (a visit's touchpoint form,
    # the form that leaves a stage whose deadline runs).
    task: str | None = None
    form: str | None = None


@dataclass(frozen=True)
class Filters:
    owner: str | None = None
    due: str | None = None
    playbook: str | None = None
    stage: str | None = None


def due_limit(due: str, now: datetime, viewer: tzinfo) -> tuple[datetime, bool]:
    """The latest due moment a `due` filter keeps, and whether it keeps overdue items only. Raises ValueError for a
    word or date it does not know, naming the accepted ones."""
    today = now.astimezone(viewer).date()
    if due == "overdue":
        return now, True
    if due == "today":
        return _end_of(today, viewer), False
    if due == "week":
        return _end_of(today + timedelta(days=6), viewer), False
    try:
        day = date.fromisoformat(due)
    except ValueError:
        raise ValueError(f"unknown due filter {due!r}: use today, week, overdue or a date (YYYY-MM-DD)") from None
    return _end_of(day, viewer), False


def _end_of(day: date, zone: tzinfo) -> datetime:
    return utc(datetime.combine(day + timedelta(days=1), time(0), zone))


def command(kind: ItemKind, deal_id: str, item: str | None, playbook: Playbook | None, stage: str) -> str:
    """The CLI command that settles an item: a task's `task done`, a touchpoint's form, what leaves a stage whose
    deadline runs (its event, form or advance), or the deal's status for a meeting (nothing to settle)."""
    if kind == "task" and item:
        return f"sopflow task done {deal_id} {item}"
    spec = _stage(playbook, stage)
    if kind == "visit" and spec is not None and spec.cadence is not None:
        cadence = spec.cadence
        dated = f" -f {cadence.date_field}=YYYY-MM-DD" if cadence.date_field else ""
        return f"sopflow form submit {deal_id} {cadence.touchpoint}{dated}"
    move = _settling_move(spec) if kind == "deadline" and spec is not None else None
    if move is not None and move.event:
        return f"sopflow deal event {deal_id} {move.event}"
    if move is not None and move.form:
        return f"sopflow form submit {deal_id} {move.form}"
    if move is not None:
        return f"sopflow deal advance {deal_id} {move.to}"
    return f"sopflow deal status {deal_id}"


def form_to_submit(kind: ItemKind, playbook: Playbook | None, stage: str) -> str | None:
    """The form that settles an item, if one does: a visit's touchpoint form, or the form that leaves a stage whose
    deadline runs (when that stage's first way out is a form)."""
    spec = _stage(playbook, stage)
    if spec is None:
        return None
    if kind == "visit":
        return spec.cadence.touchpoint if spec.cadence is not None else None
    move = _settling_move(spec) if kind == "deadline" else None
    return move.form if move is not None else None


def _stage(playbook: Playbook | None, stage: str) -> Stage | None:
    return playbook.stage(stage) if playbook is not None and playbook.has_stage(stage) else None


def _settling_move(spec: Stage) -> Transition | None:
    """The stage's first transition a person triggers (an event, a form or an advance)."""
    return next((move for move in spec.transitions if move.event or move.form or move.advance), None)


class _Deal(NamedTuple):
    workflow_id: str
    deal_id: str
    playbook: str
    stage: str
    owner: str | None
    timezone: str | None
    next_visit_due: datetime | None
    visit_label: str | None
    deadline_due: datetime | None
    deadline_label: str | None
    meeting_at: datetime | None
    meeting_label: str | None


class _Due(NamedTuple):
    """An item before it is filtered: cheap to make for every deal, a `WorkItem` only for what is kept. `due_at` is
    in UTC (SQLite gives naive moments back)."""

    deal: _Deal
    kind: ItemKind
    what: str
    owner: str
    due_at: datetime | None
    task: str | None = None


def _utc(moment: datetime | None) -> datetime | None:
    return utc(moment) if moment is not None else None


def work_items(
    session: Session,
    now: datetime,
    viewer: tzinfo,
    filters: Filters | None = None,
    playbooks: Iterable[Playbook] = (),
) -> list[WorkItem]:
    """Every open item of every open deal that passes the filters: overdue first (most overdue at the top), then by
    due moment, items without one last. Raises ValueError for an unknown `due` filter.

    Columns, not ORM objects, and a `WorkItem` only for what passes the filters: the queue for 10,000 clients is
    tens of thousands of rows (bench/work_queue.py)."""
    now, filters = utc(now), filters or Filters()
    bound = due_limit(filters.due, now, viewer) if filters.due else None  # an unknown filter: refused before reading
    query = select(*(getattr(DealRow, name) for name in _Deal._fields)).where(DealRow.outcome.is_(None))
    if filters.playbook:
        query = query.where(DealRow.playbook == filters.playbook)
    if filters.stage:
        query = query.where(DealRow.stage == filters.stage)
    deals = {row.workflow_id: row for row in (_Deal(*values) for values in session.execute(query))}
    # Open tasks of each deal's current stage visit (a stage left behind leaves its open tasks behind).
    tasks = session.execute(
        select(TaskRow.workflow_id, TaskRow.task, TaskRow.title, TaskRow.owner, TaskRow.due_at)
        .join(DealRow, DealRow.workflow_id == TaskRow.workflow_id)
        .where(
            DealRow.outcome.is_(None),
            TaskRow.done_at.is_(None),
            TaskRow.stage == DealRow.stage,
            TaskRow.opened_at >= DealRow.stage_entered_at,
        )
    )
    dues = [
        _Due(deals[workflow_id], "task", title or task, owner, _utc(due_at), task)
        for workflow_id, task, title, owner, due_at in tasks
        if workflow_id in deals
    ]
    for deal in deals.values():
        stage_owner = deal.owner or "-"
        if deal.next_visit_due is not None:
            dues.append(_Due(deal, "visit", deal.visit_label or "touchpoint", stage_owner, _utc(deal.next_visit_due)))
        if deal.deadline_due is not None:
            dues.append(_Due(deal, "deadline", deal.deadline_label or "deadline", stage_owner, _utc(deal.deadline_due)))
        meeting = _utc(deal.meeting_at)
        if meeting is not None and meeting >= now:  # a meeting held is no longer work
            dues.append(_Due(deal, "meeting", deal.meeting_label or "meeting", stage_owner, meeting))
    if filters.owner:
        dues = _owned_by(session, dues, filters.owner)
    if bound is not None:
        limit, overdue_only = bound
        dues = [d for d in dues if d.due_at is not None and (d.due_at < limit if overdue_only else d.due_at <= limit)]
    books = {book.id: book for book in playbooks}
    commands: dict[tuple[str, str | None, str, str], tuple[str, str | None]] = {}
    items = []
    for due in dues:
        deal, at = due.deal, due.due_at
        key = (due.kind, due.task, deal.playbook, deal.stage)
        if key not in commands:  # one command shape per kind of item and stage, the deal id filled in
            book = books.get(deal.playbook)
            commands[key] = (
                command(due.kind, _DEAL, due.task, book, deal.stage),
                form_to_submit(due.kind, book, deal.stage),
            )
        shape, form = commands[key]
        items.append(
            WorkItem(
                deal_id=deal.deal_id,
                playbook=deal.playbook,
                stage=deal.stage,
                kind=due.kind,
                what=due.what,
                owner=due.owner,
                due_at=at,
                days_until_due=in_days(at - now) if at is not None else None,
                command=shape.replace(_DEAL, deal.deal_id),
                timezone=deal.timezone,
                task=due.task,
                form=form,
            )
        )
    far = datetime.max.replace(tzinfo=now.tzinfo)
    items.sort(key=lambda i: (i.due_at is None, i.due_at or far, i.deal_id, i.kind, i.what))
    return items


def contact_roles(session: Session, email: str) -> dict[str, set[str]]:
    """The roles whose contact address is `email`, per deal (workflow id): who an address is on each deal, for the
    owner filters (here and on the board), a limited person's contact rule and the digest's stalled deals."""
    query = select(DealContact.workflow_id, DealContact.role).where(
        func.lower(DealContact.email) == email.strip().lower()
    )
    roles: dict[str, set[str]] = defaultdict(set)
    for workflow_id, role in session.execute(query):
        roles[workflow_id].add(role)
    return roles


def _owned_by(session: Session, dues: list[_Due], who: str) -> list[_Due]:
    """Items whose owner is `who`: the role, the deal's `role:id`, or the address the deal has for the role."""
    wanted = who.strip().lower()
    addressed = contact_roles(session, wanted) if "@" in wanted else {}

    def owns(due: _Due) -> bool:
        role = due.owner.split(":", 1)[0]
        if wanted in (role.lower(), due.owner.lower()):
            return True
        deal_owner = (due.deal.owner or "").lower()
        if ":" in wanted and deal_owner == wanted and deal_owner.split(":", 1)[0] == role.lower():
            return True
        return role in addressed.get(due.deal.workflow_id, ())

    return [due for due in dues if owns(due)]
