"""A hand-written Safe Balance workflow: the like-for-like reference that `bench.throughput` divides the engine's
figure by (issue 17).

Why it exists: `bench.bare` does the engine's Temporal work with trivial activities, so engine/bare mixes the price of
the engine (playbook interpreter, validation, journaling, search attributes) with the price of the real work every
implementation of this SOP must pay (rendering and sending emails over SMTP, writing the records store). This
workflow pays the same real work and nothing of the engine: plain Python handlers hard-code the one path the benches
drive (`bench.safe_balance.lifecycle`: targeting form -> claim -> contract request -> contract_signed -> the four
pre-launch tasks -> launch date -> advance -> launch checklist -> closeout -> site visits with needs), and call the
real activities the engine calls, with the same arguments:

- `RecordActivities.claim_account` inside the targeting form's update, as the engine does;
- `EmailActivities.send_email` with real `EmailRequest`s (same templates, same keys, recipients and Reply-To, to the
  same sink, through the same outbox rows), one at a time from a courier coroutine, as the engine's `_deliver`;
- `RecordActivities.record_journal` with the same timeline entries and the deal snapshot when it changed, batched
  exactly as the engine's `_flush` batches them (requests' entries at once, delivered emails together once the
  outbox is empty), the way the engine's `workflows.calls.record_batch` records: a regular activity after an
  update (its caller waits for the workflow task), a local one otherwise, with the same options;
- one live timer for the next moment the SOP waits for (contract reminder, task due dates, the site visit
  reminder), the superseded one cancelled, as the engine does with PATCH_LIVE_TIMERS.

So `tests/bench` can check, without Temporal, that it writes the same timeline and renders the same emails as the
engine (`SafeBalanceByHand` is pure), and `bench.throughput` checks the sink's email count and the records' row
counts against the engine phase.

What it deliberately leaves out (the engine's price, which this reference must not pay):
1. validation: no update validators, no field types or limits, no gates or task requirements; requests outside the
   benched path are refused with one line, anything on it is applied as it comes;
2. journaling of refusals and faults (`Engine.attempt`'s all-or-nothing save and restore);
3. search attributes and the UI's current details (`_publish`: 2.5 upserts per lifecycle in the engine's history);
4. the update answer: each update returns the stage id (a string), where the engine's returns an `UpdateResult`
   (stage, what changed, what is still needed: ~350 bytes);
5. the playbook in the workflow input (the engine pins the whole playbook in its input), the business calendar
   (due times are plain offsets and 17:00 in the deal's zone), timers firing (reminders, escalations, expiry:
   none falls due within a bench), continue-as-new, hand-offs, bounce handling and the workflow interceptor.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from pydantic import BaseModel
from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from activities.email import EmailActivities
    from activities.records import RecordActivities
    from sopflow.constants import ACTIVITY_TIMEOUT, REQUESTS_FIRST
    from sopflow.models import (
        Advance,
        ClaimRequest,
        CompleteTask,
        ContactView,
        DealSnapshot,
        EmailRequest,
        ExternalEvent,
        JournalBatch,
        JournalEntry,
        Recipient,
        SetFields,
        SubmitForm,
    )
    from sopflow.zones import zone
    from workflows.options import (
        EMAIL_GIVE_UP,
        EMAIL_RETRY,
        LOCAL_RECORD_ATTEMPT,
        LOCAL_RECORD_GIVE_UP,
        LOCAL_RECORD_RETRY,
        RECORD_RETRY,
    )

HANDWRITTEN_TASK_QUEUE = "bench-handwritten"
PLAYBOOK = "safe_balance"
PLAYBOOK_VERSION = 3
PLAYBOOK_TITLE = "Client sales & support progression"
ZONE = "America/New_York"  # the playbook's zone; the bench's deals set no `timezone` field
# From the pinned tzdata, read when `sopflow.zones` was imported on the host: this module runs afresh in each
# workflow sandbox, which refuses the tz file's open() and gives ZoneInfo only as a restricted stand-in.
EASTERN = zone(ZONE)
CLOSE_OF_DAY = time(17, 0)  # the playbook's working hours end: when a date-only moment falls due
SETTINGS = {"partner_manager_email": "partners@example.com", "corporate_email": "support-team@example.com"}
STAGES = {
    "targeting": ("Targeting & claiming", "rep"),
    "contract_request": ("Contract request", "rep"),
    "contract": ("Contract out for signature", "rep"),
    "prelaunch": ("Pre-launch", "account_manager"),
    "launch": ("Launch day(s)", "rep"),
    "ongoing": ("Ongoing client management", "rep"),
}
PRELAUNCH_TASKS = {  # id: (title, owner, due after the stage starts)
    "onsite_appointment": (
        "Schedule the on-site onboarding appointment with the client and account manager",
        "rep",
        timedelta(days=7),
    ),
    "services_onboarded": (
        "Affirm the selected services and accesses are onboarded",
        "account_manager",
        timedelta(days=21),
    ),
    "prelaunch_call": ("Hold the pre-launch call with the client", "account_manager", timedelta(days=21)),
    "cleared_for_launch": ("Clear the client to schedule a launch date", "account_manager", None),
}
LAUNCH_CHECKLIST = "Launch the account using the SOP and checklist"
CONTRACT_DAYS, CONTRACT_REMINDER = timedelta(days=14), timedelta(days=7)
VISIT_EVERY, VISIT_REMINDER = timedelta(days=14), timedelta(days=3)  # the first 60 days' cadence
BOOLEANS = {"staff_trained", "all_running", "steps_cleared"}


class HandwrittenStart(BaseModel):
    deal_id: str
    fields: dict[str, Any]
    actor: str | None = None


@dataclass
class Step:
    """A timeline entry to record, and the email it stands for, if any."""

    entry: JournalEntry
    email: EmailRequest | None = None


@dataclass
class OpenTask:
    title: str
    owner: str
    due_at: datetime | None


def close_of(day: str | date) -> datetime:
    """A date-only value as the moment it falls due (UTC): the end of the working day in the deal's zone."""
    value = date.fromisoformat(day) if isinstance(day, str) else day
    return datetime.combine(value, CLOSE_OF_DAY, EASTERN).astimezone(UTC)


@dataclass
class SafeBalanceByHand:
    """The Safe Balance SOP's benched path as plain Python: each request changes the deal and queues its steps."""

    workflow_id: str
    deal_id: str
    fields: dict[str, Any]
    started_at: datetime
    stage: str = "targeting"
    stage_entered_at: datetime = field(init=False)
    seq: int = 0
    forms: dict[str, dict[str, Any]] = field(default_factory=dict)
    form_counts: dict[str, int] = field(default_factory=dict)
    tasks: dict[str, OpenTask] = field(default_factory=dict)
    contract_due: datetime | None = None
    visit_due: datetime | None = None
    steps: list[Step] = field(default_factory=list)

    @classmethod
    def start(cls, workflow_id: str, deal_id: str, fields: dict[str, Any], now: datetime, actor: str | None) -> Any:
        sop = cls(workflow_id, deal_id, dict(fields), now)
        sop.stage_entered_at = now
        sop._log(now, "stage", {"to": "targeting", "trigger": "start", "by": actor})
        return sop

    # --- requests --------------------------------------------------------------------------------------------------

    def claim(self, req: SubmitForm, now: datetime) -> ClaimRequest | None:
        """The targeting form claims its company (normalised as the engine normalises account keys)."""
        if req.form != "targeting":
            return None
        key = " ".join("".join(c if c.isalnum() else " " for c in str(req.fields["company"]).casefold()).split())
        return ClaimRequest(playbook=PLAYBOOK, account_key=key, deal_id=self.deal_id, at=now)

    def submit_form(self, req: SubmitForm, now: datetime) -> None:
        expected = {"targeting": "targeting", "contract_request": "contract_request", "closeout": "launch"}
        if req.form != "site_visit" and expected.get(req.form) != self.stage:
            raise ApplicationError(f"form {req.form} is not open in stage {self.stage}", non_retryable=True)
        if req.form == "site_visit" and self.stage != "ongoing":
            raise ApplicationError("site visits start in ongoing management", non_retryable=True)
        values: dict[str, Any] = {
            k: (str(v).lower() in ("yes", "true", "1")) if k in BOOLEANS else v for k, v in req.fields.items()
        }
        self.forms[req.form] = values
        self.form_counts[req.form] = count = self.form_counts.get(req.form, 0) + 1
        detail: dict[str, Any] = {"form": req.form, "count": count, "by": req.actor, "values": values}
        if req.form == "targeting":
            self._log(now, "form", detail)
            self._enter(now, "contract_request", "form:targeting")
            self._email(now, "account_claimed", ["rep"], ["account_manager"], "enter-contract_request-0")
        elif req.form == "contract_request":
            self._log(now, "form", detail)
            self._enter(now, "contract", "form:contract_request")
            self.contract_due = now + CONTRACT_DAYS
            deadline = {"label": "contract expires", "due_at": self.contract_due.isoformat()}
            self._email(
                now, "contract_sent", ["signer"], ["rep"], "enter-contract-0", reply_to="rep", deadline=deadline
            )
        elif req.form == "closeout":
            self._log(now, "form", detail)
            self._enter(now, "ongoing", "form:closeout")
            self.visit_due = close_of(date.fromisoformat(values["launched_on"]) + VISIT_EVERY)
            self._email(now, "launch_closeout", ["corporate"], ["account_manager", "rep"], "enter-ongoing-0")
        else:
            logged = close_of(values["visited_on"])
            base = max(logged, close_of(self.forms["closeout"]["launched_on"]))
            self.visit_due = base + VISIT_EVERY
            detail |= {"next_due": self.visit_due.isoformat(), "logged_at": logged.isoformat()}
            self._log(now, "form", detail | {"touchpoint": "site visit"})
            if values.get("needs"):
                self._email(
                    now, "site_visit_needs", ["corporate"], ["account_manager"], "form-site_visit-0", form=values
                )

    def event(self, event: ExternalEvent, now: datetime) -> None:
        if event.name != "contract_signed" or self.stage != "contract":
            detail = {"event": event.name, "source": event.source, "status": "ignored", "reason": "not awaited"}
            self._log(now, "event", detail)
            return
        self._log(now, "event", {"event": event.name, "source": event.source, "status": "accepted"})
        self._enter(now, "prelaunch", "event:contract_signed")
        self.contract_due = None
        for task, (title, owner, due) in PRELAUNCH_TASKS.items():
            self._open_task(now, task, title, owner, None if due is None else now + due)
        self._email(
            now, "welcome", ["signer"], ["rep", "account_manager"], "enter-prelaunch-0", reply_to="account_manager"
        )
        self._email(now, "prelaunch_kickoff", ["rep", "account_manager"], [], "enter-prelaunch-1")

    def complete_task(self, req: CompleteTask, now: datetime) -> None:
        if req.task not in self.tasks:
            raise ApplicationError(f"no open task {req.task}", non_retryable=True)
        del self.tasks[req.task]
        self._log(now, "task", {"task": req.task, "status": "done", "by": req.actor})

    def set_fields(self, req: SetFields, now: datetime) -> None:
        self.fields |= req.fields
        self._log(now, "fields", {"changed": sorted(req.fields)})

    def advance(self, req: Advance, now: datetime) -> None:
        if (self.stage, req.to) != ("prelaunch", "launch") or self.tasks or "launch_date" not in self.fields:
            raise ApplicationError(f"cannot advance from {self.stage} to {req.to}", non_retryable=True)
        self._enter(now, "launch", "advance", by=req.actor)
        self._open_task(now, "launch_checklist", LAUNCH_CHECKLIST, "rep", close_of(self.fields["launch_date"]))
        self._email(now, "launch_day", ["rep", "account_manager"], [], "enter-launch-0")

    # --- what the workflow reads -----------------------------------------------------------------------------------

    def take_steps(self) -> list[Step]:
        steps, self.steps = self.steps, []
        return steps

    def next_wakeup(self) -> tuple[datetime, str] | None:
        """The next moment the SOP waits for (the first due task, the contract's reminder, the visit's reminder)."""
        if self.contract_due is not None:
            return self.contract_due - CONTRACT_REMINDER, "contract expires: reminder"
        due = [(task.due_at, f"task {name} due") for name, task in self.tasks.items() if task.due_at is not None]
        if due:
            return min(due, key=lambda d: d[0])
        if self.visit_due is not None:
            return self.visit_due - VISIT_REMINDER, "site visit: reminder"
        return None

    def snapshot(self) -> DealSnapshot:
        """The records' `deals` row (and its contacts), as the engine's snapshot has it."""
        title, owner_role = STAGES[self.stage]
        due = [t.due_at for t in self.tasks.values() if t.due_at is not None]
        due += [d for d in (self.contract_due, self.visit_due) if d is not None]
        roles = self._roles()
        return DealSnapshot(
            playbook_version=PLAYBOOK_VERSION,
            stage=self.stage,
            stage_title=title,
            stage_entered_at=self.stage_entered_at,
            owner=self._owner(owner_role),
            next_due=min(due, default=None),
            next_visit_due=self.visit_due,
            visit_label="site visit" if self.visit_due is not None else None,
            deadline_label="contract expires" if self.contract_due is not None else None,
            deadline_due=self.contract_due,
            started_at=self.started_at,
            contacts=[ContactView(role=r, email=email, name=name) for r, (email, name) in roles.items()],
            timezone=ZONE,
            company=self.forms.get("targeting", {}).get("company"),
        )

    # --- helpers ---------------------------------------------------------------------------------------------------

    def _log(self, at: datetime, kind: Any, detail: dict[str, Any]) -> JournalEntry:
        self.seq += 1
        stored = {k: v for k, v in detail.items() if v is not None}
        entry = JournalEntry(seq=self.seq, at=at, kind=kind, stage=self.stage, detail=stored)
        self.steps.append(Step(entry))
        return entry

    def _enter(self, now: datetime, stage: str, trigger: str, by: str | None = None) -> None:
        before, self.stage, self.stage_entered_at = self.stage, stage, now
        self._log(now, "stage", {"from": before, "to": stage, "trigger": trigger, "by": by})

    def _open_task(self, now: datetime, task: str, title: str, owner: str, due_at: datetime | None) -> None:
        self.tasks[task] = OpenTask(title, owner, due_at)
        detail = {"task": task, "title": title, "status": "opened", "owner": owner}
        self._log(now, "task", detail | {"due_at": due_at.isoformat() if due_at else None})

    def _roles(self) -> dict[str, tuple[str | None, str | None]]:
        """Each role's address and name, from the deal, the targeting form and the playbook's settings."""
        targeting = self.forms.get("targeting", {})
        return {
            "rep": (self.fields.get("rep_email"), self.fields.get("rep_name")),
            "account_manager": (self.fields.get("account_manager_email"), self.fields.get("account_manager_name")),
            "signer": (targeting.get("signer_email"), targeting.get("signer_name")),
            "partner_manager": (SETTINGS["partner_manager_email"], None),
            "corporate": (SETTINGS["corporate_email"], None),
        }

    def _owner(self, role: str) -> str:
        owner_id = self.fields.get(f"{role}_id")
        return f"{role}:{owner_id}" if owner_id else role

    def _email(
        self,
        now: datetime,
        template: str,
        to: list[str],
        cc: list[str],
        name: str,
        reply_to: str | None = None,
        **extra: Any,
    ) -> None:
        """Queue one email with its timeline entry; its context is what the Safe Balance templates read."""
        roles = self._roles()

        def recipient(role: str) -> Recipient:
            email, display = roles[role]
            assert email is not None, f"the bench's deals have an address for {role}"
            return Recipient(role=role, email=email, name=display)

        entry = self._log(now, "email", {"template": template, "to": to, "cc": cc})
        context = {
            "deal_id": self.deal_id,
            "deal": dict(self.fields),
            "forms": {form: dict(values) for form, values in self.forms.items()},
            "roles": {
                r: {"email": email, "name": display or r.replace("_", " ")} for r, (email, display) in roles.items()
            },
            "playbook": {"id": PLAYBOOK, "title": PLAYBOOK_TITLE},
            "deadline": None,
            "timezone": ZONE,
            **extra,
        }
        self.steps[-1].email = EmailRequest(
            key=f"{self.workflow_id}/{entry.seq}/{name}",
            workflow_id=self.workflow_id,
            deal_id=self.deal_id,
            playbook=PLAYBOOK,
            template=template,
            at=now,
            to=[recipient(r) for r in to],
            cc=[recipient(r) for r in cc],
            reply_to=recipient(reply_to) if reply_to else None,
            context=context,
        )


@workflow.defn
class HandwrittenSafeBalance:
    """One Safe Balance client, hard-coded: the engine's main loop, courier and timer, with the SOP inline."""

    @workflow.init
    def __init__(self, start: HandwrittenStart) -> None:
        info = workflow.info()
        self._sop = SafeBalanceByHand.start(info.workflow_id, start.deal_id, start.fields, workflow.now(), start.actor)
        self._outbox: list[Step] = []  # emails waiting for the courier, oldest first
        self._delivered: list[Step] = []  # sent emails whose timeline entries are still to record
        self._changed = True
        self._timer: tuple[tuple[datetime, str], asyncio.Task[None]] | None = None
        self._recorded_snapshot: DealSnapshot | None = None  # as the engine: a batch carries it only when it changed
        self._answering = False  # an update was applied since the last record (the engine's LifecycleCalls._record)

    @workflow.run
    async def run(self, start: HandwrittenStart) -> None:
        courier = asyncio.create_task(self._deliver())  # lives as long as the run, like the engine's
        while True:  # a client in ongoing management lives on
            await self._flush()
            self._changed = False
            self._arm_timer()
            await workflow.wait_condition(lambda: self._changed or (self._timer is not None and self._timer[1].done()))
            if self._timer is not None and self._timer[1].done():
                self._timer = None  # nothing falls due within a bench: a fired timer only re-arms the next one
            if courier.done():
                await courier  # raises what stopped it

    @workflow.update
    async def submit_form(self, req: SubmitForm) -> str:
        claim = self._sop.claim(req, workflow.now())
        if claim is not None:
            result = await workflow.execute_activity_method(
                RecordActivities.claim_account,
                claim,
                start_to_close_timeout=ACTIVITY_TIMEOUT,
                retry_policy=RECORD_RETRY,
            )
            if not result.granted:
                raise ApplicationError(f"account claimed by deal {result.holder_deal_id}", non_retryable=True)
        return self._apply(lambda now: self._sop.submit_form(req, now))

    @workflow.update
    def complete_task(self, req: CompleteTask) -> str:
        return self._apply(lambda now: self._sop.complete_task(req, now))

    @workflow.update
    def set_fields(self, req: SetFields) -> str:
        return self._apply(lambda now: self._sop.set_fields(req, now))

    @workflow.update
    def advance(self, req: Advance) -> str:
        return self._apply(lambda now: self._sop.advance(req, now))

    @workflow.signal
    def event(self, event: ExternalEvent) -> None:
        self._apply(lambda now: self._sop.event(event, now), answering=False)

    def _apply(self, change: Any, answering: bool = True) -> str:
        change(workflow.now())
        self._changed = True
        self._answering = self._answering or answering  # an update's caller waits for the task, as in the engine
        return self._sop.stage

    async def _flush(self) -> None:
        """Record queued entries; emails go to the courier and are recorded together once the outbox is empty
        (or with the next request's entries): the engine's `LifecycleCalls._flush`, batch for batch."""
        while self._sop.steps or (self._delivered and not self._outbox):
            steps = self._sop.take_steps()
            self._outbox.extend(step for step in steps if step.email is not None)
            recorded = [step for step in steps if step.email is None]
            if recorded or not self._outbox:
                recorded, self._delivered = self._delivered + recorded, []
            if recorded:
                await self._record(sorted(recorded, key=lambda s: s.entry.seq))

    async def _deliver(self) -> None:
        while True:
            await workflow.wait_condition(lambda: bool(self._outbox))
            step = self._outbox[0]
            await self._send(step)
            self._outbox.pop(0)
            self._delivered.append(step)
            self._changed = True

    async def _send(self, step: Step) -> None:
        assert step.email is not None
        detail = step.entry.detail
        try:
            result = await workflow.execute_activity_method(
                EmailActivities.send_email,
                step.email,
                start_to_close_timeout=ACTIVITY_TIMEOUT,
                schedule_to_close_timeout=EMAIL_GIVE_UP,
                retry_policy=EMAIL_RETRY,
                summary=f"email {step.email.template}",
            )
        except ActivityError as err:
            detail |= {"status": "failed", "error": str(err.cause or err)}
        else:
            detail |= {"status": result.status, "subject": result.subject, "message_id": result.message_id}

    async def _record(self, steps: list[Step]) -> None:
        sop = self._sop
        snapshot = sop.snapshot()
        batch = JournalBatch(
            workflow_id=sop.workflow_id,
            deal_id=sop.deal_id,
            playbook=PLAYBOOK,
            entries=[s.entry for s in steps],
            snapshot=None if snapshot == self._recorded_snapshot else snapshot,
        )
        # As the engine's runs since PATCH_LOCAL_RECORDS (`workflows.calls.record_batch`, not imported: the workflows
        # package runs afresh in each sandbox, this module beside it): local unless an update's caller waits for the
        # task, with the engine's options; a local record that fails goes to the regular activity.
        local, self._answering = not self._answering, False
        if local:
            try:
                await workflow.execute_local_activity_method(
                    RecordActivities.record_journal,
                    batch,
                    start_to_close_timeout=LOCAL_RECORD_ATTEMPT,
                    schedule_to_close_timeout=LOCAL_RECORD_GIVE_UP,
                    retry_policy=LOCAL_RECORD_RETRY,
                    summary="record timeline",
                )
                self._recorded_snapshot = snapshot
                return
            except FailureError:
                pass
        await workflow.execute_activity_method(
            RecordActivities.record_journal,
            batch,
            start_to_close_timeout=ACTIVITY_TIMEOUT,
            retry_policy=RECORD_RETRY,
            summary="record timeline",
        )
        self._recorded_snapshot = snapshot

    def _arm_timer(self) -> None:
        """One live timer, for the next wake-up (a second after it: requests first, as the engine's)."""
        wake = self._sop.next_wakeup()
        if self._timer is not None and self._timer[0] != wake:
            self._timer[1].cancel()
            self._timer = None
        if wake is None or self._timer is not None:
            return
        delay = max(wake[0] + REQUESTS_FIRST - workflow.now(), timedelta(seconds=1))
        self._timer = (wake, asyncio.create_task(workflow.sleep(delay, summary=wake[1])))
