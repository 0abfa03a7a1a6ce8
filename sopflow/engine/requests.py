"""`Engine`: the requests people and systems make of a lifecycle (forms, tasks, advance, fields, close, migrate,
events), each as a read-only `check_*` (what update validators call) and a mutator that re-runs it and applies.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Self

from sopflow import cadence as cadence_rules
from sopflow import views
from sopflow.business_calendar import Clock
from sopflow.conditions import evaluate, make_context, role_address
from sopflow.engine.timers import Timers
from sopflow.errors import Rejected
from sopflow.fields import FieldErrors, is_blank, shapes, shown, validate_values
from sopflow.models import (
    Advance,
    ClaimRequest,
    ClaimResult,
    Close,
    CompleteTask,
    ExternalEvent,
    FormRecord,
    LifecycleState,
    MigratePlaybook,
    SetFields,
    SubmitForm,
    TransitionRecord,
)
from sopflow.playbook import (
    EmailAction,
    Playbook,
    Stage,
)
from sopflow.timeline import (
    ContinuedAsNewDetail,
    EventDetail,
    FieldsDetail,
    FormDetail,
    MigratedDetail,
    StageDetail,
    TaskDetail,
)

SEEN_EVENT_IDS_KEPT = 200


@dataclass
class Submission:
    """A form submission as `check_submit` found it: its values, the account claim it needs (None: its form claims
    none), and the journal position it was checked at."""

    values: dict[str, Any]
    claim: ClaimRequest | None
    seq: int


def account_key(value: Any) -> str:
    """Normalise a claimed account ('ACME Clinic, Inc.' == 'acme clinic inc') so near-duplicates collide."""
    return re.sub(r"[^a-z0-9]+", " ", str(value).casefold()).strip()


class Engine(Timers):
    """A lifecycle's rules over its state: requests here, timers and transitions in the layers below."""

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
        applies: Callable[[str], bool] | None = None,
        handed_off_by: str | None = None,
    ) -> Self:
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
            handed_off_by=handed_off_by,
        )
        engine = cls(playbook, state, workflow_id)
        if applies is not None:
            engine.applies = applies
        engine._enter(first, now, actor=actor, trigger="start", reason=None, from_stage=None)
        engine._settle(now)
        return engine

    def continued(self, now: datetime) -> None:
        """Start a new run of a continued lifecycle: the run counter and the timeline both show it."""
        self.state.run += 1
        self.state.run_started_at = now
        self._log(now, ContinuedAsNewDetail(run=self.state.run))

    # --- requests (check_* only read; mutators apply) ----------------------------------------------------------

    def _require_open(self) -> None:
        if self.closed:
            raise Rejected(f"deal {self.state.deal_id} is closed ({self.state.outcome}) in stage '{self.state.stage}'")

    def check_submit(self, req: SubmitForm, now: datetime) -> Submission:
        """The submission's checked values, and the account it claims (if its form claims one), which the workflow
        asks the records store for before `submit_form` applies it."""
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
                form.fields,
                req.fields,
                roles=shapes(self.playbook, f"forms.{req.form}"),
                limits=self.limits,
                tz=Clock.input_zone(self.playbook, self.state.fields, {}),
            )
        except FieldErrors as exc:
            raise Rejected(f"form '{req.form}' is invalid: {exc}", exc.errors) from None
        cad = stage.cadence
        dated = cad is not None and cad.touchpoint == req.form and cad.date_field and values.get(cad.date_field)
        today = self.clock.local_date(now).isoformat()
        if cad is not None and cad.date_field and dated and values[cad.date_field] > today:
            raise Rejected(
                f"form '{req.form}' is invalid: {cad.date_field}: cannot be in the future",
                {cad.date_field: "cannot be in the future"},
            )
        key = self._claimed_account(req.form, values)
        claim = None
        if key is not None:
            claim = ClaimRequest(playbook=self.playbook.id, account_key=key, deal_id=self.state.deal_id, at=now)
        return Submission(values=values, claim=claim, seq=self.state.seq)

    def _claimed_account(self, form_id: str, values: dict[str, Any]) -> str | None:
        """The account a submission of `form_id` with `values` claims, normalised; None if it claims none."""
        spec = self.playbook.forms.get(form_id)
        value = values.get(spec.claims) if spec is not None and spec.claims is not None else None
        return None if is_blank(value) else account_key(value)

    def holds_claim(self, key: str) -> bool:
        """Whether a submission this lifecycle accepted claims the account `key` (a refused one must give back a
        claim only no accepted one needs)."""
        return any(self._claimed_account(form_id, r.values) == key for form_id, r in self.state.forms.items())

    def claim_refused(self, form_id: str, claim: ClaimRequest, result: ClaimResult) -> Rejected:
        """Why a submission whose account another deal holds is refused, and the SOP's way to settle it: whom to
        contact and how (the form's `claim_contact` role, e.g. the partner manager's address from the settings)."""
        refusal = f"account '{claim.account_key}' is already claimed by deal {result.holder_deal_id}"
        form = self.playbook.forms.get(form_id)
        role_id = form.claim_contact if form is not None else None
        if role_id is None or role_id not in self.playbook.roles:
            return Rejected(refusal)
        email, name = role_address(self.playbook, self.context(), role_id)
        reach = " ".join(part for part in (role_id.replace("_", " "), name, f"({email})" if email else None) if part)
        return Rejected(f"{refusal}; contact the {reach} to discuss the opportunity")

    def submit_form(self, req: SubmitForm, now: datetime, checked: Submission | None = None) -> None:
        """Apply a submission, checked by `check_submit` (again only if the lifecycle changed since: the workflow
        awaited its account claim in between)."""
        if checked is None or checked.seq != self.state.seq:
            checked = self.check_submit(req, now)
        values = checked.values
        previous = self.state.forms.get(req.form)
        count = previous.count + 1 if previous else 1
        self.state.forms[req.form] = FormRecord(values=values, submitted_at=now, by=req.actor, count=count)
        self.state.stage_events[f"form:{req.form}"] = now
        detail = FormDetail(form=req.form, count=count, by=req.actor, values=values)
        cad, cad_state = self.stage.cadence, self.state.cadence
        if cad is not None and cad_state is not None and cad.touchpoint == req.form:
            logged_at = self.clock.on_date(self.clock.local_date(now), now) if self.clock.zoned else now
            if cad.date_field and values.get(cad.date_field):
                logged_at = self.clock.on_date(date.fromisoformat(values[cad.date_field]), now)
            self.visit_logged(logged_at)
            detail.next_due = cad_state.next_due.isoformat()
            detail.logged_at = logged_at.isoformat()
            detail.touchpoint = cad.label
        self._log(now, detail)
        self._run_actions(self.playbook.forms[req.form].on_submit, now, f"form-{req.form}", {"form": values})
        self._settle(now)

    def visit_logged(self, logged_at: datetime) -> None:
        """Count a touchpoint of the stage's cadence made at `logged_at` and plan the next one from it: the touchpoint
        form's rule, and the forecast's "on time" assumption (a visit made on its due date, with no form to fill)."""
        cad, cad_state = self.stage.cadence, self.state.cadence
        assert cad is not None and cad_state is not None
        cad_state.logged += 1
        cad_state.last_logged_at = max(logged_at, cad_state.last_logged_at or logged_at)
        # A visit logged late for an earlier date never moves the schedule back.
        if logged_at > cad_state.base:
            cad_state.base = logged_at
            cad_state.next_due = cadence_rules.next_due(cad, cad_state.anchor, cad_state.base, self.clock)
            cad_state.reminded = cad_state.announced = False

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
        blocked = views.blocked_by(self.playbook, self.state, req.task)
        if blocked:
            raise Rejected(f"task '{req.task}' must wait for: {', '.join(blocked)}")

    def complete_task(self, req: CompleteTask, now: datetime) -> None:
        self.check_task(req)
        task = self.state.tasks[req.task]
        task.done_at, task.done_by, task.note = now, req.actor, req.note
        self._log(now, TaskDetail(task=task.id, status="done", by=req.actor))
        if task.resend is not None:
            again = task.resend
            action = EmailAction(template=again.template, to=again.to, cc=again.cc, from_role=again.from_role)
            playbook_id = None if again.playbook == self.playbook.id else again.playbook
            self._email(action, now, f"resend-{task.id}", again.extra, playbook_id=playbook_id, skip=again.delivered)
        self._settle(now)

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
        return _deal_values(self.playbook, req.fields, partial=True, limits=self.limits, current=self.state.fields)

    def set_fields(self, req: SetFields, now: datetime) -> None:
        values = self.check_set_fields(req)
        self.state.fields.update(values)
        self._log(now, FieldsDetail(changed=sorted(values), by=req.actor))
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
        values = _deal_values(self.playbook, req.fields, partial=True, limits=self.limits, current=self.state.fields)
        merged = {**self.state.fields, **values}
        missing = [name for name in target.reason_fields if is_blank(merged.get(name))]
        if missing:
            raise Rejected(f"closing as {req.outcome} needs deal fields: {', '.join(missing)}")
        forms = {form_id: record.values for form_id, record in self.state.forms.items()}
        ctx = make_context(self.playbook, merged, forms)
        failed = [check.message for check in target.close_checks if not evaluate(check.condition, ctx)]
        if failed:
            raise Rejected(f"cannot close as {req.outcome} into '{target.id}': " + "; ".join(failed))
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
            validate_values(new.deal, kept, roles=shapes(new, "deal"), limits=self.limits, tz=self.clock.tz)
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
            self._log(now, StageDetail(from_=state.stage, to=target, trigger="migration", by=req.actor))
            state.stage, state.stage_entered_at = target, now
        stage = self.stage
        for task_id in [t for t in state.tasks if stage.task(t) is None and state.tasks[t].resend is None]:
            del state.tasks[task_id]
        ctx = self.context()
        for spec in stage.tasks:
            if spec.id not in state.tasks and spec.due_at is None and evaluate(spec.when, ctx):
                self._open_task(spec.id, now, self._task_due(spec, now))
        state.deadline = (state.deadline or self._start_deadline(stage, now)) if stage.deadline else None
        state.cadence = (state.cadence or self._start_cadence(stage, now)) if stage.cadence else None
        self._log(now, MigratedDetail(from_version=previous, to_version=self.playbook.version, by=req.actor))
        self._settle(now)

    def event(self, event: ExternalEvent, now: datetime) -> None:
        """Signals cannot be refused, so an event that does not apply is journaled and ignored, never an error."""
        if self.closed:
            return
        if event.event_id is not None:
            if event.event_id in self.state.seen_event_ids:
                return
            self.state.seen_event_ids = [*self.state.seen_event_ids, event.event_id][-SEEN_EVENT_IDS_KEPT:]
        ignored: str | None = None
        if event.name not in self.playbook.events:
            ignored = "unknown event"
        elif not any(t.event == event.name for t in self.stage.transitions):
            ignored = f"not expected in stage '{self.stage.id}'"
        elif event.name in self.state.stage_events:
            ignored = "already received"
        status = "accepted" if ignored is None else "ignored"
        self._log(now, EventDetail(event=event.name, source=event.source, status=status, reason=ignored))
        if ignored is not None:
            return
        self.state.stage_events[event.name] = now
        self._settle(now)


def check_deal_fields(playbook: Playbook, fields: dict[str, Any], limits: bool = True) -> dict[str, Any]:
    """Validate a new deal's fields against the playbook (required ones included); raise Rejected."""
    return _deal_values(playbook, fields, partial=False, limits=limits)


def _deal_values(
    playbook: Playbook, fields: dict[str, Any], *, partial: bool, limits: bool, current: dict[str, Any] | None = None
) -> dict[str, Any]:
    tz = Clock.input_zone(playbook, current or {}, fields)
    try:
        return validate_values(
            playbook.deal, fields, partial=partial, roles=shapes(playbook, "deal"), limits=limits, tz=tz
        )
    except FieldErrors as exc:
        raise Rejected(f"invalid deal fields: {exc}", exc.errors) from None
