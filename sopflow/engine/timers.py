"""One timer table: every moment a lifecycle waits for, with the rule that runs at it.

`timers()` lists them; `next_wakeup` is the earliest, which the workflow sleeps until; `tick` fires what is due, in
order. Each rule is written once, so what the Temporal UI shows as pending and what fires can never disagree.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from functools import partial
from typing import Any

from sopflow.engine.journal import Wakeup
from sopflow.engine.transitions import Transitions
from sopflow.models import (
    AppointmentState,
    TaskState,
)
from sopflow.playbook import (
    EmailAction,
    Escalation,
    Reminder,
    TaskSpec,
)
from sopflow.timeline import EscalationDetail, ReminderDetail, VisitDueDetail


class Timers(Transitions):
    """The timer table and its rules: task reminders and escalations, deadline reminders and expiry, visits due and
    missed, appointment reminders."""

    def timers(self) -> Iterator[Wakeup]:
        """Every pending moment of the current stage, each with the rule it fires. Ties fire in the order listed
        here (tasks, deadline, cadence, appointments), which recorded histories depend on.

        Notices (reminders, overdue notices, escalations) wait for the send window (`Clock.hold`); a reminder that
        would then go out at or after the moment it announces is dropped. Deadlines and due moments never wait.
        """
        stage, state, clock = self.stage, self.state, self.clock
        for task in state.tasks.values():
            spec = stage.task(task.id)
            if task.done_at is not None or task.due_at is None or spec is None:
                continue
            if not task.reminded:
                at = clock.hold(task.due_at)
                yield Wakeup(at, f"task {task.id} due", partial(self._task_overdue, task, spec))
            elif spec.escalate is not None and not task.escalated:
                at = clock.hold(clock.after(spec.escalate.after, task.due_at))
                yield Wakeup(at, f"task {task.id} escalates", partial(self._task_escalates, task, spec.escalate))
        deadline, dl_spec = state.deadline, stage.deadline
        if deadline is not None and dl_spec is not None:
            for i, reminder in enumerate(dl_spec.remind):
                when = self._notice(clock.before(reminder.before, deadline.due_at), deadline.due_at)
                if i not in deadline.reminders_sent and when is not None:
                    fire = partial(self._deadline_reminder, i, reminder.email)
                    yield Wakeup(when, f"{deadline.label}: reminder", fire)
            yield Wakeup(deadline.due_at, deadline.label, self._deadline_expires)
        cad, cad_spec = state.cadence, stage.cadence
        if cad is not None and cad_spec is not None:
            if cad_spec.remind is not None and not cad.reminded:
                when = self._notice(clock.before(cad_spec.remind.before, cad.next_due), cad.next_due)
                if when is not None:
                    yield Wakeup(when, f"{cad.label}: reminder", partial(self._visit_reminder, cad_spec.remind.email))
            if not cad.announced:
                yield Wakeup(cad.next_due, f"{cad.label} due", self._visit_due)
            if cad_spec.overdue is not None:
                at = clock.hold(clock.after(cad_spec.overdue.grace, cad.next_due))
                yield Wakeup(at, f"{cad.label} overdue", partial(self._visit_missed, cad_spec.overdue.email))
        for appointment in stage.appointments:
            planned = state.appointments.get(appointment.at)
            for i, reminder in enumerate(appointment.remind if planned else []):
                if planned is not None and i not in planned.sent:
                    when = self._appointment_reminder_at(reminder, planned.at)
                    fire = partial(self._appointment_reminder, planned, i, reminder)
                    if when is not None:
                        yield Wakeup(when, f"{planned.label}: reminder {reminder.before} before", fire)

    def next_wakeup(self) -> Wakeup | None:
        """The earliest pending moment (the first listed among equals); none once closed. A timer set aside after
        its rule raised stays aside until a request changes the state (`faulted_until`)."""
        if self.closed:
            return None
        pending = [t for t in self.timers() if self.faulted_until is None or t.at > self.faulted_until]
        return min(pending, key=lambda t: t.at) if pending else None

    def tick(self, now: datetime) -> None:
        """Fire every timer due at or before `now`, in order; a worker that was down catches up on wake.

        A timer whose rule raises (a bug) changes nothing, is journaled, and is set aside until a request changes the
        state: the lifecycle keeps its other timers and keeps answering, instead of failing its workflow task.
        """
        for _ in range(1000):
            wake = self.next_wakeup()
            if wake is None or wake.at > now or wake.fire is None or not self.fire(wake, now):
                return

    def fire(self, wake: Wakeup, now: datetime) -> bool:
        """Fire one due wake-up's rule at `now` and settle (`tick`, and the forecast's simulation, which knows the
        wake-up already). False when the rule raised: journaled, nothing changed, the timer set aside."""
        assert wake.fire is not None
        saved = self._save()
        try:
            wake.fire(wake.at)
            self._settle(now)
        except Exception as exc:
            self._restore(saved)
            self._fault(now, f"timer '{wake.summary}'", exc)
            self.faulted_until = wake.at
            return False
        return True

    @staticmethod
    def _task_extra(task: TaskState) -> dict[str, Any]:
        due_at = task.due_at.isoformat() if task.due_at else None
        return {"task": {"id": task.id, "title": task.title, "owner": task.owner, "due_at": due_at}}

    def _task_overdue(self, task: TaskState, spec: TaskSpec, at: datetime) -> None:
        task.reminded = True
        self._log(at, ReminderDetail(task=task.id, owner=task.owner, reason="task overdue"))
        if spec.remind is not None:
            self._email(spec.remind, at, f"task-{task.id}-overdue", self._task_extra(task))

    def _task_escalates(self, task: TaskState, escalate: Escalation, at: datetime) -> None:
        task.escalated = True
        self._log(at, EscalationDetail(task=task.id, owner=task.owner, reason="task overdue"))
        self._email(escalate.email, at, f"task-{task.id}-escalation", self._task_extra(task))

    def _deadline_extra(self) -> dict[str, Any]:
        deadline = self.state.deadline
        assert deadline is not None
        return {"deadline": {"label": deadline.label, "due_at": deadline.due_at.isoformat()}}

    def _deadline_reminder(self, i: int, email: EmailAction, at: datetime) -> None:
        deadline = self.state.deadline
        assert deadline is not None
        deadline.reminders_sent.append(i)
        self._log(at, ReminderDetail(deadline=deadline.label, due_at=deadline.due_at.isoformat()))
        self._email(email, at, f"deadline-reminder-{i}", self._deadline_extra())

    def _deadline_expires(self, at: datetime) -> None:
        assert self.stage.deadline is not None
        expiry, extra = self.stage.deadline.on_expiry, self._deadline_extra()
        for i, action in enumerate(expiry.email):
            self._email(action, at, f"deadline-expired-{i}", extra)
        self._enter(expiry.to, at, actor=None, trigger="deadline", reason=expiry.reason)

    def _visit_extra(self) -> dict[str, Any]:
        cad, spec = self.state.cadence, self.stage.cadence
        assert cad is not None and spec is not None
        visit: dict[str, Any] = {"label": cad.label, "due_at": cad.next_due.isoformat(), "number": cad.logged + 1}
        if spec.names:
            visit["name"] = spec.names[(cad.logged + cad.missed) % len(spec.names)]
        return {"visit": visit}

    def _visit_reminder(self, email: EmailAction, at: datetime) -> None:
        cad = self.state.cadence
        assert cad is not None
        cad.reminded = True
        self._log(at, ReminderDetail(cadence=cad.label, due_at=cad.next_due.isoformat()))
        self._email(email, at, "cadence-reminder", self._visit_extra())

    def _visit_due(self, at: datetime) -> None:
        cad = self.state.cadence
        assert cad is not None and self.stage.cadence is not None
        cad.announced = True
        self._log(at, VisitDueDetail(cadence=cad.label, due_at=cad.next_due.isoformat()))
        if self.stage.cadence.overdue is None:
            self._advance_cadence(missed=False)

    def _visit_missed(self, email: EmailAction, at: datetime) -> None:
        cad = self.state.cadence
        assert cad is not None
        self._log(at, EscalationDetail(cadence=cad.label, due_at=cad.next_due.isoformat(), reason="missed"))
        self._email(email, at, "cadence-overdue", self._visit_extra())
        self._advance_cadence(missed=True)

    def _appointment_reminder(self, planned: AppointmentState, i: int, reminder: Reminder, at: datetime) -> None:
        planned.sent.append(i)
        self._log(at, ReminderDetail(appointment=planned.label, due_at=planned.at.isoformat()))
        when = {"label": planned.label, "at": planned.at.isoformat(), "before": str(reminder.before)}
        self._email(reminder.email, at, f"appointment-reminder-{i}", {"appointment": when})
