"""Stage transitions and what a stage sets up on entry: tasks, deadline, cadence, appointments, classified fields,
entry actions and hand-offs. `_settle` runs after every change, so automatic transitions are taken at once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sopflow import cadence as cadence_rules
from sopflow.classify import classify
from sopflow.conditions import evaluate, resolve
from sopflow.constants import MAX_CHAINED_TRANSITIONS, PATCH_PAST_VISITS_SKIPPED
from sopflow.engine.journal import Journal
from sopflow.fields import is_blank
from sopflow.models import (
    AppointmentState,
    CadenceState,
    DeadlineState,
    ExternalEvent,
    LinkedStart,
    TaskState,
    TransitionRecord,
)
from sopflow.playbook import (
    Action,
    Moment,
    Reminder,
    Stage,
    TaskSpec,
    Transition,
)
from sopflow.timeline import (
    AppointmentDetail,
    FieldsDetail,
    LinkedDetail,
    NotifiedDetail,
    RejectedDetail,
    StageDetail,
    TaskDetail,
)


class Transitions(Journal):
    """Moving between stages, and keeping a stage's derived fields and moments in step with its data."""

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
            now,
            RejectedDetail(
                reason=f"more than {MAX_CHAINED_TRANSITIONS} chained transitions: check the "
                "playbook's 'when' transitions for a loop"
            ),
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
        self._log(now, StageDetail(from_=previous, to=stage.id, trigger=trigger, reason=reason, by=actor))
        if stage.terminal:
            state.outcome, state.close_reason = stage.terminal, reason
        ctx = self.context()
        for spec in stage.tasks:
            if spec.due_at is None and evaluate(spec.when, ctx):
                self._open_task(spec.id, now, self._task_due(spec, now))
        state.deadline = self._start_deadline(stage, now)
        state.cadence = self._start_cadence(stage, now)
        self._replan(now)
        # Entry emails go out last, so they can quote the stage's deadline and due dates.
        self._run_actions(stage.on_enter, now, f"enter-{stage.id}", {})

    def _start_deadline(self, stage: Stage, now: datetime) -> DeadlineState | None:
        if stage.deadline is None:
            return None
        start = self._date_ref(stage.deadline.from_, now) if stage.deadline.from_ else now
        return DeadlineState(label=stage.deadline.label, due_at=self.clock.after(stage.deadline.within, start))

    def _start_cadence(self, stage: Stage, now: datetime) -> CadenceState | None:
        if stage.cadence is None:
            return None
        anchor = self._date_ref(stage.cadence.anchor, now) if stage.cadence.anchor else now
        base, due = anchor, cadence_rules.next_due(stage.cadence, anchor, anchor, self.clock)
        local_date = self.clock.local_date
        if local_date(due) < local_date(now) and self.applies(PATCH_PAST_VISITS_SKIPPED):
            # Counted from a date before the stage began (a launch before its closeout was filed): the schedule keeps
            # its phases from the anchor, and dates already past are not missed visits.
            while local_date(due) < local_date(now):
                base, due = due, cadence_rules.next_due(stage.cadence, anchor, due, self.clock)
        return CadenceState(label=stage.cadence.label, anchor=anchor, base=base, next_due=due)

    def _task_due(self, spec: TaskSpec, now: datetime) -> datetime | None:
        """When a task opened now is due: a span after now, or the end of today's (business) day."""
        if spec.due is None:
            return None
        if spec.due == "end_of_day":
            return self.clock.end_of_day(now)
        if spec.due == "end_of_business_day":
            return self.clock.end_of_business_day(now)
        return self.clock.after(spec.due, now)

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
            now,
            TaskDetail(
                task=spec.id,
                title=spec.title,
                status="opened",
                owner=spec.owner,
                due_at=due_at.isoformat() if due_at else None,
                occurrence=occurrence if occurrence > 1 else None,
            ),
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
            at = self.clock.before(moment.before, at)
        elif moment.after is not None:
            at = self.clock.after(moment.after, at)
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
                moved = TaskDetail(task=spec.id, status="rescheduled", owner=spec.owner, due_at=due_at.isoformat())
                self._log(now, moved)
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
            passed = [i for i, r in enumerate(appointment.remind) if self._appointment_reminder_passed(r, at, now)]
            state.appointments[appointment.at] = AppointmentState(
                label=appointment.label, value=value, at=at, planned_at=now, sent=passed
            )
            planned = AppointmentDetail(
                label=appointment.label, starts_at=at.isoformat(), skipped_reminders=passed or None
            )
            self._log(now, planned)

    def _notice(self, at: datetime, announces: datetime) -> datetime | None:
        """When a reminder due `at` goes out: at once inside the send window, else at the window's next opening, or
        never when that is at or after the moment it announces (a reminder is never sent for a moment that has
        passed). Without a send window (and for every playbook without a zone) it is `at`, as before zones."""
        held = self.clock.hold(at)
        return held if held == at or held < announces else None

    def _appointment_reminder_at(self, reminder: Reminder, starts_at: datetime) -> datetime | None:
        return self._notice(self.clock.before(reminder.before, starts_at), starts_at)

    def _appointment_reminder_passed(self, reminder: Reminder, starts_at: datetime, now: datetime) -> bool:
        at = self._appointment_reminder_at(reminder, starts_at)
        return at is None or at <= now

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
            self._log(now, FieldsDetail(changed=sorted(changed), by="playbook", values=changed))

    def _date_ref(self, ref: str, now: datetime) -> datetime:
        """A date field as a moment (`Clock.on_date` for a date alone); `now` when the field is not set."""
        value = resolve(self.context(), ref)
        if is_blank(value):
            return now
        moment = datetime.fromisoformat(str(value))
        return moment if "T" in str(value) else self.clock.on_date(moment.date(), now)

    def _run_actions(self, actions: list[Action], now: datetime, name: str, extra: dict[str, Any]) -> None:
        for i, action in enumerate(actions):
            if not evaluate(action.when, self.context()):
                continue
            if action.email is not None:
                self._email(action.email, now, f"{name}-{i}", extra)
            if action.set is not None:
                self.state.fields.update(action.set)
                self._log(now, FieldsDetail(changed=sorted(action.set), by="playbook"))
            if action.copy_ is not None:
                ctx = self.context()
                copied = {key: resolve(ctx, ref) for key, ref in action.copy_.items()}
                self.state.fields.update(copied)
                self._log(now, FieldsDetail(changed=sorted(copied), by="playbook"))
            if action.start_lifecycle is not None:
                self._start_linked(action.start_lifecycle.playbook, action.start_lifecycle.fields, now)
            if action.notify is not None:
                self._notify(action.notify.event, now)

    def _start_linked(self, playbook_id: str, mapping: dict[str, str], now: datetime) -> None:
        """Queue a hand-off once per playbook; the workflow starts it under a deal id derived from this one."""
        if playbook_id in self.state.linked:
            return
        ctx = self.context()
        fields = {key: value for key, ref in mapping.items() if not is_blank(value := resolve(ctx, ref))}
        deal_id = f"{self.state.deal_id}.{playbook_id}"
        self.state.linked[playbook_id] = deal_id
        self._log(now, LinkedDetail(playbook=playbook_id, deal_id=deal_id, status="requested"))
        self.steps[-1].start = LinkedStart(playbook=playbook_id, deal_id=deal_id, fields=fields)

    def _notify(self, event: str, now: datetime) -> None:
        """Queue an event for the lifecycle that handed this one off, once per event; the workflow signals it. A
        lifecycle started on its own (a deal entered directly, not from a lead) has nobody to tell: nothing to do."""
        state, parent = self.state, self.state.handed_off_by
        if parent is None or event in state.notified:
            return
        state.notified = [*state.notified, event]
        self._log(now, NotifiedDetail(event=event, status="requested", workflow_id=parent))
        self.steps[-1].notice = ExternalEvent(name=event, event_id=f"{state.deal_id}/{event}", source=state.deal_id)

    def _advance_cadence(self, missed: bool) -> None:
        cad, spec = self.state.cadence, self.stage.cadence
        assert cad is not None and spec is not None
        cad.missed += int(missed)
        cad.base = cad.next_due
        cad.next_due = cadence_rules.next_due(spec, cad.anchor, cad.base, self.clock)
        cad.reminded = cad.announced = False
