"""The lifecycle rules as plain, deterministic functions over `LifecycleState`.

The workflow is a thin interpreter: it hands requests and the current time to `Engine`, which changes the state
and queues `Step`s (timeline entries, some carrying an email to send). Keeping every rule here means the rules are
unit-tested without Temporal, and the workflow's determinism only depends on `now` being workflow time.

`check_*` methods only read: they back update validators, which must reject bad requests before anything is
written to history. The matching mutators re-run them, so a request is never applied unchecked.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sopflow import cadence as cadence_rules
from sopflow.classify import classify
from sopflow.conditions import Context, evaluate, make_context, resolve, role_address, role_owner_id
from sopflow.constants import MAX_CHAINED_TRANSITIONS
from sopflow.fields import FieldErrors, is_blank, shapes, shown, validate_values
from sopflow.models import (
    Advance,
    AppointmentState,
    CadenceState,
    Close,
    CompleteTask,
    ContactView,
    DeadlineState,
    DealSnapshot,
    DueView,
    EmailRequest,
    ExternalEvent,
    FormRecord,
    JournalEntry,
    JournalKind,
    LifecycleState,
    LifecycleStatus,
    LinkedStart,
    MigratePlaybook,
    Recipient,
    Resend,
    SetFields,
    SubmitForm,
    TaskState,
    TaskView,
    TransitionRecord,
)
from sopflow.playbook import Action, EmailAction, Moment, Playbook, Stage, Transition

SEEN_EVENT_IDS_KEPT = 200
# How much of an unexpected error's message the timeline keeps.
FAULT_MESSAGE_KEPT = 300
T = TypeVar("T")
# Templates the engine itself sends (not a playbook's): templates/_system/<name>/.
SYSTEM_TEMPLATES = "_system"


class Rejected(ValueError):
    """A request that breaks a playbook rule; the message is shown to the person as-is, so it names what is wrong."""

    def __init__(self, message: str, field_errors: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.field_errors = field_errors or {}


class EngineFault(Exception):
    """A rule raised something other than `Rejected`: a bug. The request changed nothing and the timeline says so."""


@dataclass
class Step:
    entry: JournalEntry
    email: EmailRequest | None = None
    start: LinkedStart | None = None


@dataclass
class Wakeup:
    at: datetime
    summary: str


def account_key(value: Any) -> str:
    """Normalise a claimed account ('ACME Clinic, Inc.' == 'acme clinic inc') so near-duplicates collide."""
    return re.sub(r"[^a-z0-9]+", " ", str(value).casefold()).strip()


class Engine:
    def __init__(self, playbook: Playbook, state: LifecycleState, workflow_id: str) -> None:
        self.playbook = playbook
        self.state = state
        self.workflow_id = workflow_id
        self.steps: list[Step] = []
        # Field limits (`sopflow.fields`) apply to every check; the workflow turns them off only while replaying a
        # request accepted before they existed, so that request is applied exactly as it was then.
        self.limits = True
        # A timer whose rule raised is not retried (it would fail again at once) until a request changes the state.
        self.faulted_until: datetime | None = None

    # --- construction ------------------------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        playbook: Playbook,
        deal_id: str,
        fields: dict[str, Any],
        now: datetime,
        workflow_id: str,
        actor: str | None = None,
        validate: bool = True,
        limits: bool = True,
    ) -> Engine:
        values = check_deal_fields(playbook, fields, limits=limits) if validate else dict(fields)
        first = playbook.stages[0].id
        state = LifecycleState(
            deal_id=deal_id,
            started_at=now,
            fields=values,
            stage=first,
            stage_entered_at=now,
            run_started_at=now,
            stage_visit=0,
        )
        engine = cls(playbook, state, workflow_id)
        engine._enter(first, now, actor=actor, trigger="start", reason=None, from_stage=None)
        engine._settle(now)
        return engine

    def continued(self, now: datetime) -> None:
        """Start a new run of a continued lifecycle: the run counter and the timeline both show it."""
        self.state.run += 1
        self.state.run_started_at = now
        self._log("continued_as_new", now, run=self.state.run)

    def attempt(self, what: str, change: Callable[[], T], now: datetime) -> T:
        """Apply a request all or nothing, so that no request can leave a lifecycle broken.

        `Rejected` passes through (nothing changed). Anything else is a bug in a rule: the state and the queued steps
        are put back as they were, the error is journaled, and `EngineFault` tells the sender nothing was applied.
        """
        saved = self._save()
        try:
            result = change()
        except Rejected:
            self._restore(saved)
            raise
        except Exception as exc:
            self._restore(saved)
            entry = self._fault(now, what, exc)
            raise EngineFault(
                f"{what} could not be applied because of an internal error, recorded in the deal's timeline "
                f"(entry {entry.seq}); nothing was changed"
            ) from None
        self.faulted_until = None
        return result

    def _save(self) -> tuple[LifecycleState, Playbook, int]:
        return self.state.model_copy(deep=True), self.playbook, len(self.steps)

    def _restore(self, saved: tuple[LifecycleState, Playbook, int]) -> None:
        self.state, self.playbook, kept = saved
        del self.steps[kept:]

    def _fault(self, now: datetime, what: str, exc: Exception) -> JournalEntry:
        message = str(exc)[:FAULT_MESSAGE_KEPT]
        return self._log("error", now, during=what, error=type(exc).__name__, message=message or None)

    def take_steps(self) -> list[Step]:
        steps, self.steps = self.steps, []
        return steps

    # --- views -------------------------------------------------------------------------------------------------

    @property
    def stage(self) -> Stage:
        return self.playbook.stage(self.state.stage)

    @property
    def closed(self) -> bool:
        return self.state.outcome is not None

    def context(self) -> Context:
        forms = {form_id: record.values for form_id, record in self.state.forms.items()}
        return make_context(self.playbook, self.state.fields, forms)

    def unmet(self, stage: Stage | None = None) -> list[str]:
        """Everything still missing before the client may leave the stage, each named so staff can act on it."""
        stage = stage or self.stage
        gate, ctx, missing = stage.gate, self.context(), []
        for ref in gate.fields:
            if is_blank(resolve(ctx, ref)):
                missing.append(f"{self._describe_ref(ref)} is not set")
        for form_id in gate.forms:
            if form_id not in self.state.forms:
                missing.append(f"form '{form_id}' not submitted")
        task_ids = list(self.state.tasks) if gate.tasks == "all" else gate.tasks
        for task_id in task_ids:
            task = self.state.tasks.get(task_id)
            if task is not None and task.done_at is None:
                missing.append(f"task '{task_id}' not done ({task.title}; owner: {task.owner})")
        for check in gate.checks:
            if not evaluate(check.condition, ctx):
                missing.append(check.message)
        return missing

    def _describe_ref(self, ref: str) -> str:
        kind, _, rest = ref.partition(".")
        if kind == "deal":
            label = self.playbook.deal[rest].label if rest in self.playbook.deal else None
            return f"deal field '{rest}'" + (f" ({label})" if label else "")
        if kind == "forms":
            form_id, _, field = rest.partition(".")
            return f"field '{field}' of form '{form_id}'"
        return f"setting '{rest}'"

    def due_items(self) -> list[DueView]:
        items: list[DueView] = []
        if self.state.deadline is not None:
            items.append(DueView(kind="deadline", label=self.state.deadline.label, due_at=self.state.deadline.due_at))
        for task in self.state.tasks.values():
            if task.done_at is None and task.due_at is not None:
                items.append(DueView(kind="task", label=task.title, due_at=task.due_at))
        if self.state.cadence is not None:
            items.append(DueView(kind="cadence", label=self.state.cadence.label, due_at=self.state.cadence.next_due))
        for appointment in self.state.appointments.values():
            items.append(DueView(kind="appointment", label=appointment.label, due_at=appointment.at))
        return sorted(items, key=lambda item: item.due_at)

    def next_due(self) -> datetime | None:
        items = self.due_items()
        return items[0].due_at if items else None

    def owner(self) -> str | None:
        owner_role = self.stage.owner
        return role_owner_id(self.playbook, self.context(), owner_role) if owner_role else None

    def status(self, now: datetime) -> LifecycleStatus:
        stage, state = self.stage, self.state
        open_tasks = []
        for task in state.tasks.values():
            if task.done_at is not None:
                continue
            spec = stage.task(task.id)
            blocked = [r for r in (spec.requires if spec else []) if self._task_open(r)]
            overdue = task.due_at is not None and now >= task.due_at
            open_tasks.append(
                TaskView(
                    id=task.id,
                    title=task.title,
                    owner=task.owner,
                    due_at=task.due_at,
                    overdue=overdue,
                    blocked_by=blocked,
                )
            )
        return LifecycleStatus(
            deal_id=state.deal_id,
            playbook=self.playbook.id,
            playbook_version=self.playbook.version,
            stage=stage.id,
            stage_title=stage.name,
            stage_entered_at=state.stage_entered_at,
            outcome=state.outcome,
            close_reason=state.close_reason,
            owner=self.owner(),
            open_tasks=open_tasks,
            done_tasks=[t.id for t in state.tasks.values() if t.done_at is not None],
            unmet_gate=[] if self.closed else self.unmet(),
            advance_to=[t.to for t in stage.transitions if t.advance and evaluate(t.when, self.context())],
            open_forms=list(stage.forms),
            events=list(self.playbook.events),
            forms_submitted={form_id: rec.submitted_at for form_id, rec in state.forms.items()},
            due=self.due_items(),
            fields=state.fields,
            history=state.history,
            linked=state.linked,
            run=state.run,
        )

    def snapshot(self) -> DealSnapshot:
        ctx, state, cadence = self.context(), self.state, self.state.cadence
        contacts = []
        for role_id in self.playbook.roles:
            email, name = role_address(self.playbook, ctx, role_id)
            contacts.append(ContactView(role=role_id, email=email, name=name))
        return DealSnapshot(
            playbook_version=self.playbook.version,
            stage=state.stage,
            stage_title=self.stage.name,
            stage_entered_at=state.stage_entered_at,
            owner=self.owner(),
            next_due=None if self.closed else self.next_due(),
            next_visit_due=cadence.next_due if cadence and not self.closed else None,
            visit_label=cadence.label if cadence else None,
            outcome=state.outcome,
            started_at=state.started_at,
            contacts=contacts,
        )

    def details_markdown(self, now: datetime) -> str:
        """What an operator sees in the Temporal UI: ids, stage and what is pending; no names or addresses."""
        stage, state = self.stage, self.state
        days = (now - state.stage_entered_at).total_seconds() / 86400
        lines = [
            f"**{self.playbook.title or self.playbook.id}** v{self.playbook.version} · deal `{state.deal_id}`",
            f"**Stage:** {stage.name} (`{stage.id}`), {days:.0f} days",
        ]
        if self.closed:
            lines.append(f"**Outcome:** {state.outcome}")
            return "\n\n".join(lines)
        open_tasks = [t for t in state.tasks.values() if t.done_at is None]
        if open_tasks:
            lines.append(
                "**Open tasks:** "
                + ", ".join(
                    f"`{t.id}` ({t.owner}{', due ' + t.due_at.date().isoformat() if t.due_at else ''})"
                    for t in open_tasks
                )
            )
        unmet = self.unmet()
        if unmet and stage.transitions:
            lines.append("**Before leaving:** " + "; ".join(unmet))
        for item in self.due_items()[:3]:
            lines.append(f"**Next:** {item.label} due {item.due_at.date().isoformat()}")
        return "\n\n".join(lines)

    # --- requests (check_* only read; mutators apply) ----------------------------------------------------------

    def _require_open(self) -> None:
        if self.closed:
            raise Rejected(f"deal {self.state.deal_id} is closed ({self.state.outcome}) in stage '{self.state.stage}'")

    def check_submit(self, req: SubmitForm, now: datetime) -> dict[str, Any]:
        self._require_open()
        form = self.playbook.forms.get(req.form)
        if form is None:
            raise Rejected(f"unknown form {shown(req.form)} (forms: {', '.join(self.playbook.forms)})")
        stage = self.stage
        if req.form not in stage.forms:
            open_forms = ", ".join(stage.forms) or "none"
            raise Rejected(f"form '{req.form}' is not open in stage '{stage.id}' (open: {open_forms})")
        try:
            values = validate_values(
                form.fields, req.fields, roles=shapes(self.playbook, f"forms.{req.form}"), limits=self.limits
            )
        except FieldErrors as exc:
            raise Rejected(f"form '{req.form}' is invalid: {exc}", exc.errors) from None
        cad = stage.cadence
        dated = cad is not None and cad.touchpoint == req.form and cad.date_field and values.get(cad.date_field)
        if cad is not None and cad.date_field and dated and values[cad.date_field] > now.date().isoformat():
            raise Rejected(
                f"form '{req.form}' is invalid: {cad.date_field}: cannot be in the future",
                {cad.date_field: "cannot be in the future"},
            )
        return values

    def submit_form(self, req: SubmitForm, now: datetime) -> None:
        values = self.check_submit(req, now)
        previous = self.state.forms.get(req.form)
        count = previous.count + 1 if previous else 1
        self.state.forms[req.form] = FormRecord(values=values, submitted_at=now, by=req.actor, count=count)
        self.state.stage_events[f"form:{req.form}"] = now
        detail: dict[str, Any] = {"form": req.form, "count": count, "by": req.actor, "values": values}
        cad, cad_state = self.stage.cadence, self.state.cadence
        if cad is not None and cad_state is not None and cad.touchpoint == req.form:
            logged_at = now
            if cad.date_field and values.get(cad.date_field):
                logged_at = datetime.combine(datetime.fromisoformat(values[cad.date_field]).date(), now.timetz())
            cad_state.logged += 1
            cad_state.last_logged_at = max(logged_at, cad_state.last_logged_at or logged_at)
            # A visit logged late for an earlier date never moves the schedule back.
            if logged_at > cad_state.base:
                cad_state.base = logged_at
                cad_state.next_due = cadence_rules.next_due(cad, cad_state.anchor, cad_state.base)
                cad_state.reminded = cad_state.announced = False
            detail["next_due"] = cad_state.next_due.isoformat()
            detail["logged_at"] = logged_at.isoformat()
            detail["touchpoint"] = cad.label
        self._log("form", now, **detail)
        self._run_actions(self.playbook.forms[req.form].on_submit, now, f"form-{req.form}", {"form": values})
        self._settle(now)

    def claim_key(self, req: SubmitForm, values: dict[str, Any]) -> str | None:
        form = self.playbook.forms[req.form]
        if form.claims is None or is_blank(values.get(form.claims)):
            return None
        return account_key(values[form.claims])

    def check_task(self, req: CompleteTask) -> None:
        self._require_open()
        task = self.state.tasks.get(req.task)
        if task is None:
            if self.stage.task(req.task) is not None:
                raise Rejected(f"task '{req.task}' does not apply to this deal (its condition is not met)")
            owner_stage = next((s.id for s in self.playbook.stages if s.task(req.task)), None)
            if owner_stage is not None:
                raise Rejected(f"task '{req.task}' belongs to stage '{owner_stage}'; the deal is in '{self.stage.id}'")
            open_ids = ", ".join(t.id for t in self.state.tasks.values() if t.done_at is None) or "none"
            raise Rejected(f"unknown task {shown(req.task)} (open tasks: {open_ids})")
        if task.done_at is not None:
            raise Rejected(f"task '{req.task}' is already done ({task.done_at.isoformat()})")
        spec = self.stage.task(req.task)
        blocked = [r for r in (spec.requires if spec else []) if self._task_open(r)]
        if blocked:
            raise Rejected(f"task '{req.task}' must wait for: {', '.join(blocked)}")

    def complete_task(self, req: CompleteTask, now: datetime) -> None:
        self.check_task(req)
        task = self.state.tasks[req.task]
        task.done_at, task.done_by, task.note = now, req.actor, req.note
        self._log("task", now, task=task.id, status="done", by=req.actor)
        if task.resend is not None:
            again = task.resend
            action = EmailAction(template=again.template, to=again.to, cc=again.cc, from_role=again.from_role)
            playbook_id = None if again.playbook == self.playbook.id else again.playbook
            self._email(action, now, f"resend-{task.id}", again.extra, playbook_id=playbook_id)
        self._settle(now)

    def _task_open(self, task_id: str) -> bool:
        task = self.state.tasks.get(task_id)
        return task is not None and task.done_at is None

    def check_advance(self, req: Advance) -> None:
        self._require_open()
        stage = self.stage
        if not self.playbook.has_stage(req.to):
            raise Rejected(f"unknown stage {shown(req.to)} (stages: {', '.join(s.id for s in self.playbook.stages)})")
        allowed = [t for t in stage.transitions if t.advance and evaluate(t.when, self.context())]
        chosen = next((t for t in allowed if t.to == req.to), None)
        if chosen is None:
            options = ", ".join(t.to for t in allowed) if allowed else "none: it moves on by itself, or close it"
            raise Rejected(f"cannot advance from '{stage.id}' to '{req.to}' (allowed: {options})")
        missing = [] if chosen.skip_gate else self.unmet()
        if missing:
            raise Rejected(f"cannot leave '{stage.id}' for '{req.to}': " + "; ".join(missing))

    def advance(self, req: Advance, now: datetime) -> None:
        self.check_advance(req)
        self._enter(req.to, now, actor=req.actor, trigger="advance", reason=req.note)
        self._settle(now)

    def check_set_fields(self, req: SetFields) -> dict[str, Any]:
        self._require_open()
        return _deal_values(self.playbook, req.fields, partial=True, limits=self.limits)

    def set_fields(self, req: SetFields, now: datetime) -> None:
        values = self.check_set_fields(req)
        self.state.fields.update(values)
        self._log("fields", now, changed=sorted(values), by=req.actor)
        self._settle(now)

    def check_close(self, req: Close) -> tuple[Stage, dict[str, Any]]:
        self._require_open()
        candidates = self.playbook.terminal_stages(req.outcome)
        if req.stage is not None:
            candidates = [s for s in candidates if s.id == req.stage]
        if not candidates:
            where = f" named {shown(req.stage)}" if req.stage else ""
            raise Rejected(f"this playbook has no '{req.outcome}' stage{where}")
        if len(candidates) > 1:
            raise Rejected(f"choose the stage to close into: {', '.join(s.id for s in candidates)}")
        target = candidates[0]
        values = _deal_values(self.playbook, req.fields, partial=True, limits=self.limits)
        merged = {**self.state.fields, **values}
        missing = [name for name in target.reason_fields if is_blank(merged.get(name))]
        if missing:
            raise Rejected(f"closing as {req.outcome} needs deal fields: {', '.join(missing)}")
        return target, values

    def close(self, req: Close, now: datetime) -> None:
        target, values = self.check_close(req)
        self.state.fields.update(values)
        self._enter(target.id, now, actor=req.actor, trigger="close", reason=req.reason)

    def check_migrate(self, req: MigratePlaybook) -> str:
        """The stage the client will be in on the new version; refuses what would strand or break it."""
        self._require_open()
        new, current = req.playbook, self.playbook
        if new.id != current.id:
            raise Rejected(f"deal {self.state.deal_id} runs playbook '{current.id}', not '{new.id}'")
        if new.version <= current.version:
            raise Rejected(f"v{new.version} is not newer than the v{current.version} this deal runs")
        target = req.stage_map.get(self.state.stage, self.state.stage)
        if not new.has_stage(target):
            raise Rejected(
                f"stage '{self.state.stage}' is not in v{new.version}: map it to one of its stages "
                f"(--map {self.state.stage}=<stage>; stages: {', '.join(s.id for s in new.stages)})"
            )
        if new.stage(target).terminal:
            raise Rejected(f"stage '{target}' ends the lifecycle: close the deal instead of migrating it there")
        kept = {key: value for key, value in self.state.fields.items() if key in new.deal}
        try:
            validate_values(new.deal, kept, roles=shapes(new, "deal"), limits=self.limits)
        except FieldErrors as exc:
            raise Rejected(f"the deal's fields do not fit v{new.version}: {exc}", exc.errors) from None
        return target

    def migrate(self, req: MigratePlaybook, now: datetime) -> None:
        """Run the rest of the lifecycle on the new version, keeping what the client already did.

        Tasks, deadline and cadence of the current stage are reconciled with the new stage definition: what it
        dropped is dropped, what it added starts now, what both have keeps its progress (due dates, reminders).
        """
        target = self.check_migrate(req)
        state, previous = self.state, self.playbook.version
        self.playbook = req.playbook
        if target != state.stage:
            state.history.append(
                TransitionRecord(
                    from_stage=state.stage, to_stage=target, at=now, actor=req.actor, trigger="migration", reason=None
                )
            )
            self._log("stage", now, **{"from": state.stage, "to": target, "trigger": "migration", "by": req.actor})
            state.stage, state.stage_entered_at = target, now
        stage = self.stage
        for task_id in [t for t in state.tasks if stage.task(t) is None and state.tasks[t].resend is None]:
            del state.tasks[task_id]
        ctx = self.context()
        for spec in stage.tasks:
            if spec.id not in state.tasks and spec.due_at is None and evaluate(spec.when, ctx):
                self._open_task(spec.id, now, spec.due.after(now) if spec.due else None)
        state.deadline = (state.deadline or self._start_deadline(stage, now)) if stage.deadline else None
        state.cadence = (state.cadence or self._start_cadence(stage, now)) if stage.cadence else None
        self._log("migrated", now, from_version=previous, to_version=self.playbook.version, by=req.actor)
        self._settle(now)

    def event(self, event: ExternalEvent, now: datetime) -> None:
        """Signals cannot be refused, so an event that does not apply is journaled and ignored, never an error."""
        if self.closed:
            return
        if event.event_id is not None:
            if event.event_id in self.state.seen_event_ids:
                return
            self.state.seen_event_ids = [*self.state.seen_event_ids, event.event_id][-SEEN_EVENT_IDS_KEPT:]
        detail: dict[str, Any] = {"event": event.name, "source": event.source}
        if event.name not in self.playbook.events:
            self._log("event", now, **detail, status="ignored", reason="unknown event")
            return
        if not any(t.event == event.name for t in self.stage.transitions):
            self._log("event", now, **detail, status="ignored", reason=f"not expected in stage '{self.stage.id}'")
            return
        if event.name in self.state.stage_events:
            self._log("event", now, **detail, status="ignored", reason="already received")
            return
        self.state.stage_events[event.name] = now
        self._log("event", now, **detail, status="accepted")
        self._settle(now)

    # --- timers --------------------------------------------------------------------------------------------------

    def next_wakeup(self) -> Wakeup | None:
        if self.closed:
            return None
        stage, candidates = self.stage, []
        for task in self.state.tasks.values():
            spec = stage.task(task.id)
            if task.done_at is not None or task.due_at is None or spec is None:
                continue
            if not task.reminded:
                candidates.append(Wakeup(task.due_at, f"task {task.id} due"))
            elif spec.escalate is not None and not task.escalated:
                candidates.append(Wakeup(spec.escalate.after.after(task.due_at), f"task {task.id} escalates"))
        deadline, dl_spec = self.state.deadline, stage.deadline
        if deadline is not None and dl_spec is not None:
            for i, reminder in enumerate(dl_spec.remind):
                if i not in deadline.reminders_sent:
                    candidates.append(Wakeup(reminder.before.before(deadline.due_at), f"{deadline.label}: reminder"))
            candidates.append(Wakeup(deadline.due_at, deadline.label))
        cad, cad_spec = self.state.cadence, stage.cadence
        if cad is not None and cad_spec is not None:
            if cad_spec.remind is not None and not cad.reminded:
                candidates.append(Wakeup(cad_spec.remind.before.before(cad.next_due), f"{cad.label}: reminder"))
            if not cad.announced:
                candidates.append(Wakeup(cad.next_due, f"{cad.label} due"))
            if cad_spec.overdue is not None:
                candidates.append(Wakeup(cad_spec.overdue.grace.after(cad.next_due), f"{cad.label} overdue"))
        for appointment in stage.appointments:
            planned = self.state.appointments.get(appointment.at)
            for i, reminder in enumerate(appointment.remind if planned else []):
                if planned is not None and i not in planned.sent:
                    at = reminder.before.before(planned.at)
                    candidates.append(Wakeup(at, f"{planned.label}: reminder {reminder.before} before"))
        if self.faulted_until is not None:
            candidates = [c for c in candidates if c.at > self.faulted_until]
        return min(candidates, key=lambda w: w.at) if candidates else None

    def tick(self, now: datetime) -> None:
        """Fire every timer due at or before `now`, in order; a worker that was down catches up on wake.

        A timer whose rule raises (a bug) changes nothing, is journaled, and is set aside until a request changes the
        state: the lifecycle keeps its other timers and keeps answering, instead of failing its workflow task.
        """
        for _ in range(1000):
            wake = self.next_wakeup()
            if wake is None or wake.at > now:
                return
            saved = self._save()
            try:
                self._fire(wake.at)
                self._settle(now)
            except Exception as exc:
                self._restore(saved)
                self._fault(now, f"timer '{wake.summary}'", exc)
                self.faulted_until = wake.at
                return

    def _fire(self, at: datetime) -> None:
        stage, state = self.stage, self.state
        for task in state.tasks.values():
            spec = stage.task(task.id)
            if spec is None or task.done_at is not None or task.due_at is None:
                continue
            extra: dict[str, Any] = {
                "task": {"id": task.id, "title": task.title, "owner": task.owner, "due_at": task.due_at.isoformat()}
            }
            if not task.reminded and at >= task.due_at:
                task.reminded = True
                self._log("reminder", at, task=task.id, owner=task.owner, reason="task overdue")
                if spec.remind is not None:
                    self._email(spec.remind, at, f"task-{task.id}-overdue", extra)
                return
            if spec.escalate is not None and not task.escalated and at >= spec.escalate.after.after(task.due_at):
                task.escalated = True
                self._log("escalation", at, task=task.id, owner=task.owner, reason="task overdue")
                self._email(spec.escalate.email, at, f"task-{task.id}-escalation", extra)
                return
        deadline, dl_spec = state.deadline, stage.deadline
        if deadline is not None and dl_spec is not None:
            extra = {"deadline": {"label": deadline.label, "due_at": deadline.due_at.isoformat()}}
            for i, reminder in enumerate(dl_spec.remind):
                if i not in deadline.reminders_sent and at >= reminder.before.before(deadline.due_at):
                    deadline.reminders_sent.append(i)
                    self._log("reminder", at, deadline=deadline.label, due_at=deadline.due_at.isoformat())
                    self._email(reminder.email, at, f"deadline-reminder-{i}", extra)
                    return
            if at >= deadline.due_at:
                expiry = dl_spec.on_expiry
                for i, action in enumerate(expiry.email):
                    self._email(action, at, f"deadline-expired-{i}", extra)
                self._enter(expiry.to, at, actor=None, trigger="deadline", reason=expiry.reason)
                return
        cad, cad_spec = state.cadence, stage.cadence
        if cad is not None and cad_spec is not None:
            extra = {"visit": {"label": cad.label, "due_at": cad.next_due.isoformat(), "number": cad.logged + 1}}
            if cad_spec.names:
                extra["visit"]["name"] = cad_spec.names[(cad.logged + cad.missed) % len(cad_spec.names)]
            if cad_spec.remind is not None and not cad.reminded and at >= cad_spec.remind.before.before(cad.next_due):
                cad.reminded = True
                self._log("reminder", at, cadence=cad.label, due_at=cad.next_due.isoformat())
                self._email(cad_spec.remind.email, at, "cadence-reminder", extra)
                return
            if not cad.announced and at >= cad.next_due:
                cad.announced = True
                self._log("visit_due", at, cadence=cad.label, due_at=cad.next_due.isoformat())
                if cad_spec.overdue is None:
                    self._advance_cadence(missed=False)
                return
            if cad_spec.overdue is not None and at >= cad_spec.overdue.grace.after(cad.next_due):
                self._log("escalation", at, cadence=cad.label, due_at=cad.next_due.isoformat(), reason="missed")
                self._email(cad_spec.overdue.email, at, "cadence-overdue", extra)
                self._advance_cadence(missed=True)
                return
        for appointment in stage.appointments:
            planned = state.appointments.get(appointment.at)
            if planned is None:
                continue
            for i, reminder in enumerate(appointment.remind):
                if i not in planned.sent and at >= reminder.before.before(planned.at):
                    planned.sent.append(i)
                    self._log("reminder", at, appointment=planned.label, due_at=planned.at.isoformat())
                    when = {"label": planned.label, "at": planned.at.isoformat(), "before": str(reminder.before)}
                    self._email(reminder.email, at, f"appointment-reminder-{i}", {"appointment": when})
                    return
        raise AssertionError(f"no timer due at {at.isoformat()}")  # next_wakeup and _fire disagree: a bug

    def _advance_cadence(self, missed: bool) -> None:
        cad, spec = self.state.cadence, self.stage.cadence
        assert cad is not None and spec is not None
        cad.missed += int(missed)
        cad.base = cad.next_due
        cad.next_due = cadence_rules.next_due(spec, cad.anchor, cad.base)
        cad.reminded = cad.announced = False

    # --- transitions ---------------------------------------------------------------------------------------------

    def _auto_transition(self) -> Transition | None:
        stage, ctx = self.stage, self.context()
        for transition in stage.transitions:
            if transition.advance:
                continue
            if transition.form is not None and f"form:{transition.form}" not in self.state.stage_events:
                continue
            if transition.event is not None and transition.event not in self.state.stage_events:
                continue
            if evaluate(transition.when, ctx) and (transition.skip_gate or not self.unmet(stage)):
                return transition
        return None

    def _settle(self, now: datetime) -> None:
        """After any change: recompute derived fields and moments, then take every automatic transition now due."""
        for _ in range(MAX_CHAINED_TRANSITIONS):
            if self.closed:
                return
            self._classify(now)
            self._replan(now)
            transition = self._auto_transition()
            if transition is None:
                return
            trigger = (
                f"form:{transition.form}"
                if transition.form
                else f"event:{transition.event}"
                if transition.event
                else "condition"
            )
            self._enter(transition.to, now, actor=None, trigger=trigger, reason=None)
        self._log(
            "rejected",
            now,
            reason=f"more than {MAX_CHAINED_TRANSITIONS} chained transitions: check the "
            "playbook's 'when' transitions for a loop",
        )

    def _enter(
        self,
        stage_id: str,
        now: datetime,
        *,
        actor: str | None,
        trigger: str,
        reason: str | None,
        from_stage: str | None = "",
    ) -> None:
        state = self.state
        previous = state.stage if from_stage == "" else from_stage
        stage = self.playbook.stage(stage_id)
        state.stage, state.stage_entered_at = stage.id, now
        state.stage_visit += 1
        state.stage_events, state.tasks, state.appointments = {}, {}, {}
        state.deadline = state.cadence = None
        state.history.append(
            TransitionRecord(
                from_stage=previous, to_stage=stage.id, at=now, actor=actor, trigger=trigger, reason=reason
            )
        )
        self._log("stage", now, **{"from": previous, "to": stage.id, "trigger": trigger, "reason": reason, "by": actor})
        if stage.terminal:
            state.outcome, state.close_reason = stage.terminal, reason
        ctx = self.context()
        for spec in stage.tasks:
            if spec.due_at is None and evaluate(spec.when, ctx):
                self._open_task(spec.id, now, spec.due.after(now) if spec.due else None)
        state.deadline = self._start_deadline(stage, now)
        state.cadence = self._start_cadence(stage, now)
        self._replan(now)
        # Entry emails go out last, so they can quote the stage's deadline and due dates.
        self._run_actions(stage.on_enter, now, f"enter-{stage.id}", {})

    def _start_deadline(self, stage: Stage, now: datetime) -> DeadlineState | None:
        if stage.deadline is None:
            return None
        start = self._date_ref(stage.deadline.from_, now) if stage.deadline.from_ else now
        return DeadlineState(label=stage.deadline.label, due_at=stage.deadline.within.after(start))

    def _start_cadence(self, stage: Stage, now: datetime) -> CadenceState | None:
        if stage.cadence is None:
            return None
        anchor = self._date_ref(stage.cadence.anchor, now) if stage.cadence.anchor else now
        return CadenceState(
            label=stage.cadence.label,
            anchor=anchor,
            base=anchor,
            next_due=cadence_rules.next_due(stage.cadence, anchor, anchor),
        )

    def _open_task(self, task_id: str, now: datetime, due_at: datetime | None, anchor: str | None = None) -> None:
        spec = self.stage.task(task_id)
        assert spec is not None
        previous = self.state.tasks.get(task_id)
        occurrence = previous.occurrence + 1 if previous else 1
        self.state.tasks[task_id] = TaskState(
            id=spec.id,
            title=spec.title,
            owner=spec.owner,
            opened_at=now,
            due_at=due_at,
            anchor=anchor,
            occurrence=occurrence,
        )
        self._log(
            "task",
            now,
            task=spec.id,
            title=spec.title,
            status="opened",
            owner=spec.owner,
            due_at=due_at.isoformat() if due_at else None,
            occurrence=occurrence if occurrence > 1 else None,
        )

    def _moment(self, ref: str, now: datetime) -> tuple[str, datetime] | None:
        """A date/time field's value and the moment it names (a date alone means that day at the time of `now`)."""
        value = resolve(self.context(), ref)
        return None if is_blank(value) else (str(value), self._date_ref(ref, now))

    def _at(self, moment: Moment, now: datetime) -> tuple[str, datetime] | None:
        found = self._moment(moment.of, now)
        if found is None:
            return None
        value, at = found
        if moment.before is not None:
            at = moment.before.before(at)
        elif moment.after is not None:
            at = moment.after.after(at)
        return value, at

    def _replan(self, now: datetime) -> None:
        """Follow the moments the stage depends on: tasks due at a field's moment, appointments and their reminders.

        A new value of the field (a meeting booked or moved) moves an open task, or opens a done task again for
        the new occurrence; a new appointment re-arms its reminders.
        """
        stage, state = self.stage, self.state
        for spec in stage.tasks:
            if spec.due_at is None:
                continue
            found = self._at(spec.due_at, now)
            task = state.tasks.get(spec.id)
            if found is None or (task is not None and task.anchor == found[0]):
                continue
            value, due_at = found
            if task is not None and task.done_at is None:
                task.anchor, task.due_at = value, due_at
                task.reminded = task.escalated = False
                self._log("task", now, task=spec.id, status="rescheduled", owner=spec.owner, due_at=due_at.isoformat())
            elif evaluate(spec.when, self.context()):
                self._open_task(spec.id, now, due_at, anchor=value)
        for appointment in stage.appointments:
            found = self._moment(appointment.at, now)
            current = state.appointments.get(appointment.at)
            if found is None:
                state.appointments.pop(appointment.at, None)
                continue
            if current is not None and current.value == found[0]:
                continue
            value, at = found
            passed = [i for i, r in enumerate(appointment.remind) if r.before.before(at) <= now]
            state.appointments[appointment.at] = AppointmentState(
                label=appointment.label, value=value, at=at, planned_at=now, sent=passed
            )
            self._log(
                "appointment", now, label=appointment.label, starts_at=at.isoformat(), skipped_reminders=passed or None
            )

    def _classify(self, now: datetime) -> None:
        """Keep classified fields (the A/B/C tier) in step with the profile they are computed from."""
        changed: dict[str, Any] = {}
        for target, classifier in self.playbook.classify.items():
            tiers = self.playbook.deal[target].options or []
            result = classify(classifier, tiers, self.context())
            values = {target: result.tier}
            if classifier.explain is not None:
                values[classifier.explain] = result.explain(tiers)
            for key, value in values.items():
                if self.state.fields.get(key) != value:
                    changed[key] = value
        if changed:
            self.state.fields.update(changed)
            self._log("fields", now, changed=sorted(changed), by="playbook", values=changed)

    def _date_ref(self, ref: str, now: datetime) -> datetime:
        """A date field as a moment: that day at the current time of day; `now` when the field is not set."""
        value = resolve(self.context(), ref)
        if is_blank(value):
            return now
        moment = datetime.fromisoformat(str(value))
        return moment if "T" in str(value) else datetime.combine(moment.date(), now.timetz())

    def _run_actions(self, actions: list[Action], now: datetime, name: str, extra: dict[str, Any]) -> None:
        for i, action in enumerate(actions):
            if not evaluate(action.when, self.context()):
                continue
            if action.email is not None:
                self._email(action.email, now, f"{name}-{i}", extra)
            if action.set is not None:
                self.state.fields.update(action.set)
                self._log("fields", now, changed=sorted(action.set), by="playbook")
            if action.copy_ is not None:
                ctx = self.context()
                copied = {key: resolve(ctx, ref) for key, ref in action.copy_.items()}
                self.state.fields.update(copied)
                self._log("fields", now, changed=sorted(copied), by="playbook")
            if action.start_lifecycle is not None:
                self._start_linked(action.start_lifecycle.playbook, action.start_lifecycle.fields, now)

    def _start_linked(self, playbook_id: str, mapping: dict[str, str], now: datetime) -> None:
        """Queue a hand-off once per playbook; the workflow starts it under a deal id derived from this one."""
        if playbook_id in self.state.linked:
            return
        ctx = self.context()
        fields = {key: value for key, ref in mapping.items() if not is_blank(value := resolve(ctx, ref))}
        deal_id = f"{self.state.deal_id}.{playbook_id}"
        self.state.linked[playbook_id] = deal_id
        self._log("linked", now, playbook=playbook_id, deal_id=deal_id, status="requested")
        self.steps[-1].start = LinkedStart(playbook=playbook_id, deal_id=deal_id, fields=fields)

    # --- journal and email ---------------------------------------------------------------------------------------

    def _log(self, kind: JournalKind, at: datetime, **detail: Any) -> JournalEntry:
        self.state.seq += 1
        entry = JournalEntry(
            seq=self.state.seq,
            at=at,
            kind=kind,
            stage=self.state.stage,
            detail={k: v for k, v in detail.items() if v is not None},
        )
        self.steps.append(Step(entry))
        return entry

    def email_undeliverable(self, step: Step, refused: list[str], reason: str) -> None:
        """A permanently refused address becomes a task for the stage owner, so a bounce is fixed, not lost."""
        request, at = step.email, step.entry.at
        if request is None or self.closed:
            return
        refused_set = {address.lower() for address in refused}
        recipients = request.to + request.cc
        roles = sorted({r.role for r in recipients if r.email.lower() in refused_set}) or [r.role for r in request.to]
        owner = self.stage.owner or (request.reply_to.role if request.reply_to else roles[0])
        task_id = f"fix_email_{request.template}"  # readable: `sopflow task done D-1 fix_email_welcome`
        if task_id in self.state.tasks:
            task_id = f"{task_id}_{step.entry.seq}"
        base_keys = set(self.template_context({}))
        self.state.tasks[task_id] = TaskState(
            id=task_id,
            title=(
                f"Email '{request.template}' could not be delivered to {', '.join(roles)}: correct the address "
                "(marking this done sends it again)"
                if refused
                else f"Email '{request.template}' could not be sent ({reason}): correct it "
                "(marking this done sends it again)"
            ),
            owner=owner,
            opened_at=at,
            resend=Resend(
                template=request.template,
                playbook=request.playbook,
                to=roles,  # only those who did not get it: the others already have it
                from_role=request.reply_to.role if request.reply_to else None,
                extra={k: v for k, v in request.context.items() if k not in base_keys},
            ),
        )
        self._log("escalation", at, template=request.template, roles=roles, owner=owner, task=task_id, reason=reason)
        owner_email, _ = (
            role_address(self.playbook, self.context(), owner) if owner in self.playbook.roles else (None, None)
        )
        if request.playbook != SYSTEM_TEMPLATES and owner_email and owner_email.lower() not in refused_set:
            notice = EmailAction(template="email_undeliverable", to=[owner])
            extra = {"failed": {"template": request.template, "roles": roles, "reason": reason, "task": task_id}}
            self._email(notice, at, f"undeliverable-{step.entry.seq}", extra, playbook_id=SYSTEM_TEMPLATES)

    def _email(
        self, action: EmailAction, at: datetime, name: str, extra: dict[str, Any], playbook_id: str | None = None
    ) -> None:
        ctx = self.context()
        if not evaluate(action.when, ctx):
            return
        to: list[Recipient] = []
        cc: list[Recipient] = []
        missing: list[str] = []
        for roles, out in ((action.to, to), (action.cc, cc)):
            for role_id in roles:
                email, display = role_address(self.playbook, ctx, role_id)
                if email is None:
                    missing.append(role_id)
                elif all(r.email != email for r in to + cc):
                    out.append(Recipient(role=role_id, email=email, name=display))
        reply_to = None
        if action.from_role is not None:
            email, display = role_address(self.playbook, ctx, action.from_role)
            reply_to = Recipient(role=action.from_role, email=email, name=display) if email else None
        detail: dict[str, Any] = {"template": action.template, "to": [r.role for r in to], "cc": [r.role for r in cc]}
        if missing:
            detail["missing_roles"] = missing
        if not to:
            self._log("email", at, **detail, status="skipped", reason="no address for " + ", ".join(missing))
            return
        entry = self._log("email", at, **detail)
        request = EmailRequest(
            key=f"{self.workflow_id}/{entry.seq}/{name}",
            workflow_id=self.workflow_id,
            deal_id=self.state.deal_id,
            playbook=playbook_id or self.playbook.id,
            template=action.template,
            at=at,
            to=to,
            cc=cc,
            reply_to=reply_to,
            context=self.template_context(extra),
            attachments=[a.file for a in action.attach if evaluate(a.when, ctx)],
        )
        self.steps[-1].email = request

    def template_context(self, extra: dict[str, Any]) -> dict[str, Any]:
        ctx = self.context()
        roles = {}
        for role_id in self.playbook.roles:
            email, display = role_address(self.playbook, ctx, role_id)
            roles[role_id] = {"email": email, "name": display or role_id.replace("_", " ")}
        stage = self.stage
        return {
            "deal_id": self.state.deal_id,
            "deal": dict(self.state.fields),
            "forms": ctx["forms"],
            "settings": dict(self.playbook.settings),
            "roles": roles,
            "stage": {"id": stage.id, "title": stage.name},
            "playbook": {"id": self.playbook.id, "title": self.playbook.title or self.playbook.id},
            "deadline": (
                {"label": self.state.deadline.label, "due_at": self.state.deadline.due_at.isoformat()}
                if self.state.deadline
                else None
            ),
            **extra,
        }


def check_deal_fields(playbook: Playbook, fields: dict[str, Any], limits: bool = True) -> dict[str, Any]:
    """Validate a new deal's fields against the playbook (required ones included); raise Rejected."""
    return _deal_values(playbook, fields, partial=False, limits=limits)


def _deal_values(playbook: Playbook, fields: dict[str, Any], *, partial: bool, limits: bool) -> dict[str, Any]:
    try:
        return validate_values(playbook.deal, fields, partial=partial, roles=shapes(playbook, "deal"), limits=limits)
    except FieldErrors as exc:
        raise Rejected(f"invalid deal fields: {exc}", exc.errors) from None
