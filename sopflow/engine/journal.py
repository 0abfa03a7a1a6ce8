"""The engine's base: the state, the queued steps (timeline entries, emails, hand-offs) and the outcomes the workflow
reports back for them, the all-or-nothing `attempt`, and the read-only views (`sopflow.views`).

Every rule above this layer (`transitions`, `timers`, `requests`) changes state only through `_log` and `_email`, so
a step is never queued without its timeline entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sopflow import compose, views
from sopflow.business_calendar import Clock
from sopflow.compose import SYSTEM_TEMPLATES
from sopflow.conditions import Context, evaluate
from sopflow.constants import PATCH_CC_STANDS_IN
from sopflow.errors import EngineFault, Rejected
from sopflow.models import (
    DealSnapshot,
    DueView,
    EmailRequest,
    EmailResult,
    ExternalEvent,
    JournalEntry,
    LifecycleState,
    LifecycleStatus,
    LinkedStart,
    UpdateResult,
)
from sopflow.playbook import (
    EmailAction,
    Playbook,
    Stage,
)
from sopflow.timeline import (
    EmailDetail,
    ErrorDetail,
    EscalationDetail,
    KnownDetail,
    LinkedDetail,
    NotifiedDetail,
    detail_as,
)

# How much of an unexpected error's message the timeline keeps.
FAULT_MESSAGE_KEPT = 300
T = TypeVar("T")


@dataclass
class Step:
    entry: JournalEntry
    email: EmailRequest | None = None
    start: LinkedStart | None = None
    notice: ExternalEvent | None = None


@dataclass
class Wakeup:
    """A moment the lifecycle waits for, named for the Temporal UI's timer summary, and the rule it fires (the
    workflow's own wake-ups, such as the yearly continue-as-new, fire none)."""

    at: datetime
    summary: str
    fire: Callable[[datetime], None] | None = field(default=None, compare=False, repr=False)


def _today(_rule: str) -> bool:
    return True


class Journal:
    """A lifecycle's state and what it has queued for the workflow; see the package docstring."""

    def __init__(self, playbook: Playbook, state: LifecycleState, workflow_id: str) -> None:
        self.playbook = playbook
        self.state = state
        self.workflow_id = workflow_id
        self.steps: list[Step] = []
        # Field limits (`sopflow.fields`) apply to every check; the workflow turns them off only while replaying a
        # request accepted before they existed, so that request is applied exactly as it was then.
        self.limits = True
        # Whether an engine rule that changed while lifecycles ran applies (sopflow.constants PATCH_*): the workflow
        # answers with `workflow.patched`; anything else (rehearsal planning, benches, unit tests) runs today's rules.
        self.applies: Callable[[str], bool] = _today
        # A timer whose rule raised is not retried (it would fail again at once) until a request changes the state.
        self.faulted_until: datetime | None = None

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
        return self._log(now, ErrorDetail(during=what, error=type(exc).__name__, message=message or None))

    def take_steps(self) -> list[Step]:
        steps, self.steps = self.steps, []
        return steps

    # --- views (sopflow.views) ----------------------------------------------------------------------------------

    @property
    def stage(self) -> Stage:
        return self.playbook.stage(self.state.stage)

    @property
    def clock(self) -> Clock:
        """The deal's clock: its zone and business calendar (the UTC rules for a playbook without a zone)."""
        return Clock.of(self.playbook, self.state.fields)

    @property
    def closed(self) -> bool:
        return self.state.outcome is not None

    def context(self) -> Context:
        return views.context(self.playbook, self.state)

    def unmet(self, stage: Stage | None = None) -> list[str]:
        return views.unmet(self.playbook, self.state, stage)

    def due_items(self) -> list[DueView]:
        return views.due_items(self.state)

    def next_due(self) -> datetime | None:
        return views.next_due(self.state)

    def owner(self) -> str | None:
        return views.owner(self.playbook, self.state)

    def status(self, now: datetime) -> LifecycleStatus:
        return views.status(self.playbook, self.state, now)

    def update_result(self, before: str, queued: int) -> UpdateResult:
        """The answer to a request applied to the deal found in stage `before` with `queued` steps already queued."""
        return views.update_result(self.playbook, self.state, before, [step.entry for step in self.steps[queued:]])

    def snapshot(self) -> DealSnapshot:
        return views.snapshot(self.playbook, self.state)

    def details_markdown(self, now: datetime) -> str:
        return views.details_markdown(self.playbook, self.state, now)

    def template_context(self, extra: dict[str, Any]) -> dict[str, Any]:
        return compose.template_context(self.playbook, self.state, extra)

    # --- journal and email ---------------------------------------------------------------------------------------

    def _log(self, at: datetime, detail: KnownDetail) -> JournalEntry:
        """Queue a timeline entry of `detail`'s kind; history keeps `detail.stored()` (see `sopflow.timeline`)."""
        self.state.seq += 1
        entry = JournalEntry(
            seq=self.state.seq, at=at, kind=detail.kind, stage=self.state.stage, detail=detail.stored()
        )
        self.steps.append(Step(entry))
        return entry

    def email_sent(self, step: Step, result: EmailResult, fix_refused: bool) -> None:
        """The outcome of a queued email, into its timeline entry; addresses the server refused while accepting the
        others become a fix-the-address task when `fix_refused` (lifecycles recorded before that kept them).

        The entry's stored detail is rebuilt from its model, so it has the keys, in the order, it always had."""
        detail = detail_as(step.entry, EmailDetail)
        detail.status, detail.subject, detail.message_id = result.status, result.subject, result.message_id
        fix = bool(result.refused and fix_refused)
        if fix:
            detail.refused = len(result.refused)
        step.entry.detail = detail.stored()
        if fix:
            self._undeliverable(step, result.refused, "refused by the mail server")

    def email_failed(self, step: Step, error: str, undeliverable: tuple[list[str], str] | None = None) -> None:
        """A queued email that was not sent. `undeliverable` (the refused addresses and the reason) when a person can
        fix it: a bounce becomes a fix-the-address task for the stage owner, so it is fixed, not lost."""
        detail = detail_as(step.entry, EmailDetail)
        detail.status, detail.error = "failed", error
        step.entry.detail = detail.stored()
        if undeliverable is not None:
            self._undeliverable(step, *undeliverable)

    def linked_started(self, step: Step, status: str, workflow_id: str | None = None, error: str | None = None) -> None:
        """The outcome of a queued hand-off (started, already started or failed), into its timeline entry."""
        detail = detail_as(step.entry, LinkedDetail)
        detail.status = status
        if workflow_id is not None:
            detail.workflow_id = workflow_id
        if error is not None:
            detail.error = error
        step.entry.detail = detail.stored()

    def notified(self, step: Step, status: str, error: str | None = None) -> None:
        """The outcome of a queued `notify` (sent or failed), into its timeline entry."""
        detail = detail_as(step.entry, NotifiedDetail)
        detail.status, detail.error = status, error
        step.entry.detail = detail.stored()

    def _undeliverable(self, step: Step, refused: list[str], reason: str) -> None:
        request, at = step.email, step.entry.at
        if request is None or self.closed:
            return
        fix = compose.undeliverable(self.playbook, self.state, request, step.entry.seq, refused, reason)
        self.state.tasks[fix.task.id] = fix.task
        escalation = EscalationDetail(
            template=request.template, roles=fix.roles, owner=fix.owner, task=fix.task.id, reason=reason
        )
        self._log(at, escalation)
        if fix.notify:
            notice = EmailAction(template="email_undeliverable", to=[fix.owner])
            failed = {"template": request.template, "roles": fix.roles, "reason": reason, "task": fix.task.id}
            self._email(notice, at, f"undeliverable-{step.entry.seq}", {"failed": failed}, playbook_id=SYSTEM_TEMPLATES)

    def _email(
        self,
        action: EmailAction,
        at: datetime,
        name: str,
        extra: dict[str, Any],
        playbook_id: str | None = None,
        skip: list[str] | None = None,
    ) -> None:
        """Queue an email with the timeline entry that records it (roles only); an email nobody can receive is
        journaled as skipped, naming the roles that have no address. `skip`: addresses that already have it."""
        ctx = self.context()
        if not evaluate(action.when, ctx):
            return
        addressed = compose.address(self.playbook, ctx, action, skip or ())
        if not addressed.to and addressed.cc and self.applies(PATCH_CC_STANDS_IN):
            # No email is lost because its addressee is unknown (an escalation to an unassigned manager): whoever is
            # known receives it, and the timeline names the missing roles.
            addressed.to, addressed.cc = addressed.cc, []
        detail = addressed.detail(action.template)
        if not addressed.to:
            # Nobody left to send to: no address, or (a resend) every address already has it.
            why = "no address for " + ", ".join(addressed.missing) if addressed.missing else "every recipient has it"
            detail.status, detail.reason = "skipped", why
            self._log(at, detail)
            return
        entry = self._log(at, detail)
        self.steps[-1].email = EmailRequest(
            key=f"{self.workflow_id}/{entry.seq}/{name}",
            workflow_id=self.workflow_id,
            deal_id=self.state.deal_id,
            playbook=playbook_id or self.playbook.id,
            template=action.template,
            at=at,
            to=addressed.to,
            cc=addressed.cc,
            reply_to=addressed.reply_to,
            context=self.template_context(extra),
            attachments=[a.file for a in action.attach if evaluate(a.when, ctx)],
        )
