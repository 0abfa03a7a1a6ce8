"""What a lifecycle looks like from outside, as plain functions of (playbook, state, now): nothing here changes state.

The engine's rules and the workflow's query, search attributes, UI details and records snapshot all read a lifecycle
through these, so a view never disagrees with the rule that decides the same thing (the gate most of all: `unmet` is
both what `status` shows and what `advance` checks).
"""

from __future__ import annotations

from datetime import datetime

from sopflow import zones
from sopflow.business_calendar import Clock
from sopflow.conditions import Context, evaluate, make_context, resolve, role_address, role_owner_id
from sopflow.constants import COMPANY_FIELDS
from sopflow.fields import is_blank
from sopflow.models import (
    ContactView,
    DealSnapshot,
    DueView,
    JournalEntry,
    LifecycleState,
    LifecycleStatus,
    TaskView,
    UpdateResult,
)
from sopflow.playbook import Playbook, Stage


def context(playbook: Playbook, state: LifecycleState) -> Context:
    forms = {form_id: record.values for form_id, record in state.forms.items()}
    return make_context(playbook, state.fields, forms)


def stage_of(playbook: Playbook, state: LifecycleState) -> Stage:
    return playbook.stage(state.stage)


def task_open(state: LifecycleState, task_id: str) -> bool:
    task = state.tasks.get(task_id)
    return task is not None and task.done_at is None


def blocked_by(playbook: Playbook, state: LifecycleState, task_id: str) -> list[str]:
    """The open tasks this one must wait for (`requires`)."""
    spec = stage_of(playbook, state).task(task_id)
    return [r for r in (spec.requires if spec else []) if task_open(state, r)]


def unmet(playbook: Playbook, state: LifecycleState, stage: Stage | None = None) -> list[str]:
    """Everything still missing before the client may leave the stage, each named so staff can act on it."""
    stage = stage or stage_of(playbook, state)
    gate, ctx, missing = stage.gate, context(playbook, state), []
    for ref in gate.fields:
        if is_blank(resolve(ctx, ref)):
            missing.append(f"{describe_ref(playbook, ref)} is not set")
    for form_id in gate.forms:
        if form_id not in state.forms:
            missing.append(f"form '{form_id}' not submitted")
    task_ids = list(state.tasks) if gate.tasks == "all" else gate.tasks
    for task_id in task_ids:
        task = state.tasks.get(task_id)
        if task is not None and task.done_at is None:
            missing.append(f"task '{task_id}' not done ({task.title}; owner: {task.owner})")
    for check in gate.checks:
        if not evaluate(check.condition, ctx):
            missing.append(check.message)
    return missing


def describe_ref(playbook: Playbook, ref: str) -> str:
    kind, _, rest = ref.partition(".")
    if kind == "deal":
        label = playbook.deal[rest].label if rest in playbook.deal else None
        return f"deal field '{rest}'" + (f" ({label})" if label else "")
    if kind == "forms":
        form_id, _, field = rest.partition(".")
        return f"field '{field}' of form '{form_id}'"
    return f"setting '{rest}'"


def due_items(state: LifecycleState) -> list[DueView]:
    items: list[DueView] = []
    if state.deadline is not None:
        items.append(DueView(kind="deadline", label=state.deadline.label, due_at=state.deadline.due_at))
    for task in state.tasks.values():
        if task.done_at is None and task.due_at is not None:
            items.append(DueView(kind="task", label=task.title, due_at=task.due_at))
    if state.cadence is not None:
        items.append(DueView(kind="cadence", label=state.cadence.label, due_at=state.cadence.next_due))
    for appointment in state.appointments.values():
        items.append(DueView(kind="appointment", label=appointment.label, due_at=appointment.at))
    return sorted(items, key=lambda item: item.due_at)


def next_due(state: LifecycleState) -> datetime | None:
    items = due_items(state)
    return items[0].due_at if items else None


def owner(playbook: Playbook, state: LifecycleState) -> str | None:
    owner_role = stage_of(playbook, state).owner
    return role_owner_id(playbook, context(playbook, state), owner_role) if owner_role else None


def status(playbook: Playbook, state: LifecycleState, now: datetime) -> LifecycleStatus:
    stage, closed = stage_of(playbook, state), state.outcome is not None
    open_tasks = [
        TaskView(
            id=task.id,
            title=task.title,
            owner=task.owner,
            due_at=task.due_at,
            overdue=task.due_at is not None and now >= task.due_at,
            blocked_by=blocked_by(playbook, state, task.id),
        )
        for task in state.tasks.values()
        if task.done_at is None
    ]
    ctx = context(playbook, state)
    return LifecycleStatus(
        deal_id=state.deal_id,
        playbook=playbook.id,
        playbook_version=playbook.version,
        stage=stage.id,
        stage_title=stage.name,
        stage_entered_at=state.stage_entered_at,
        outcome=state.outcome,
        close_reason=state.close_reason,
        owner=owner(playbook, state),
        open_tasks=open_tasks,
        done_tasks=[t.id for t in state.tasks.values() if t.done_at is not None],
        unmet_gate=[] if closed else unmet(playbook, state),
        advance_to=[t.to for t in stage.transitions if t.advance and evaluate(t.when, ctx)],
        open_forms=list(stage.forms),
        events=list(playbook.events),
        awaited_events=[t.event for t in stage.transitions if t.event is not None],
        forms_submitted={form_id: rec.submitted_at for form_id, rec in state.forms.items()},
        due=due_items(state),
        fields=state.fields,
        history=state.history,
        linked=state.linked,
        run=state.run,
        timezone=Clock.of(playbook, state.fields).name if playbook.timezone else None,
    )


def update_result(playbook: Playbook, state: LifecycleState, before: str, written: list[JournalEntry]) -> UpdateResult:
    """A request's answer (`UpdateResult`): `before` is the stage it found the deal in, `written` the timeline
    entries it queued."""
    stage, closed = stage_of(playbook, state), state.outcome is not None
    return UpdateResult(
        deal_id=state.deal_id,
        playbook_version=playbook.version,
        stage=stage.id,
        stage_title=stage.name,
        outcome=state.outcome,
        moved_from=before if before != stage.id else None,
        changes=[entry.kind for entry in written],
        unmet_gate=[] if closed else unmet(playbook, state),
        open_forms=list(stage.forms),
        open_task_ids=[task.id for task in state.tasks.values() if task.done_at is None],
    )


def company(state: LifecycleState) -> str | None:
    """The client's company: the first of `COMPANY_FIELDS` the deal has, else the first a submitted form has."""
    sources = [state.fields, *(record.values for record in state.forms.values())]
    for values in sources:
        for name in COMPANY_FIELDS:
            value = values.get(name)
            if isinstance(value, str) and value.strip():
                return value.strip()[:200]
    return None


def snapshot(playbook: Playbook, state: LifecycleState) -> DealSnapshot:
    """What the records store keeps of the deal beside its timeline (the reports and the CLI's lists read it)."""
    ctx, cadence, closed = context(playbook, state), state.cadence, state.outcome is not None
    deadline = state.deadline if not closed else None
    meeting = min(state.appointments.values(), key=lambda a: a.at, default=None) if not closed else None
    contacts = []
    for role_id in playbook.roles:
        email, name = role_address(playbook, ctx, role_id)
        contacts.append(ContactView(role=role_id, email=email, name=name))
    return DealSnapshot(
        playbook_version=playbook.version,
        stage=state.stage,
        stage_title=stage_of(playbook, state).name,
        stage_entered_at=state.stage_entered_at,
        owner=owner(playbook, state),
        next_due=None if closed else next_due(state),
        next_visit_due=cadence.next_due if cadence and not closed else None,
        visit_label=cadence.label if cadence else None,
        deadline_label=deadline.label if deadline else None,
        deadline_due=deadline.due_at if deadline else None,
        meeting_label=meeting.label if meeting else None,
        meeting_at=meeting.at if meeting else None,
        outcome=state.outcome,
        started_at=state.started_at,
        contacts=contacts,
        timezone=Clock.of(playbook, state.fields).name if playbook.timezone else None,
        company=company(state),
    )


def details_markdown(playbook: Playbook, state: LifecycleState, now: datetime) -> str:
    """What an operator sees in the Temporal UI: ids, stage and what is pending; no names or addresses."""
    stage = stage_of(playbook, state)
    days = (now - state.stage_entered_at).total_seconds() / 86400
    lines = [
        f"**{playbook.title or playbook.id}** v{playbook.version} · deal `{state.deal_id}`",
        f"**Stage:** {stage.name} (`{stage.id}`), {days:.0f} days",
    ]
    if state.outcome is not None:
        lines.append(f"**Outcome:** {state.outcome}")
        return "\n\n".join(lines)
    open_tasks = [t for t in state.tasks.values() if t.done_at is None]
    if open_tasks:
        lines.append(
            "**Open tasks:** "
            + ", ".join(
                f"`{t.id}` ({t.owner}{', due ' + _day(playbook, state, t.due_at) if t.due_at else ''})"
                for t in open_tasks
            )
        )
    missing = unmet(playbook, state)
    if missing and stage.transitions:
        lines.append("**Before leaving:** " + "; ".join(missing))
    for item in due_items(state)[:3]:
        lines.append(f"**Next:** {item.label} due {_day(playbook, state, item.due_at)}")
    return "\n\n".join(lines)


def _day(playbook: Playbook, state: LifecycleState, moment: datetime) -> str:
    """A due moment for the Temporal UI: the UTC date for a playbook without a zone (as before zones), else the
    deal's local date and time with the zone's abbreviation."""
    if playbook.timezone is None:
        return moment.date().isoformat()
    return zones.show(moment, Clock.of(playbook, state.fields).tz)
