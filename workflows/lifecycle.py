"""`ClientLifecycle`: one durable workflow per deal, interpreting its pinned playbook for as long as the client lives.

The workflow only routes: requests and timers go to `sopflow.engine.Engine`, which changes the state and queues
steps; the main loop sends the queued emails and records the queued timeline entries through activities, then
sleeps until the engine's next timer or the next request.

Update handlers are synchronous apart from `submit_form` (an account claim needs the records store), so a request
is applied in the activation that validated it, and emails follow from the main loop. Continue-as-new happens when
the server suggests it and at least once a year, after all handlers finished and every queued step was flushed.

Email is delivered apart from everything else (`_deliver`, one email at a time, in order): an SMTP outage delays only
the emails, while timers fire, stages move and the timeline is recorded. Nothing a request carries can fail a
workflow task: the engine applies each request all or nothing and journals what it cannot apply (`Engine.attempt`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import (
    SearchAttributeUpdate,
)
from temporalio.exceptions import ActivityError, ApplicationError, FailureError, WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

# Workflow code: run in the sandbox like this module, not passed through (see `workflows.sandbox`).
from workflows.calls import LifecycleCalls

with workflow.unsafe.imports_passed_through():
    from activities.playbooks import PlaybookActivities
    from activities.records import RecordActivities
    from sopflow.constants import (
        ACTIVITY_TIMEOUT,
        MAX_RUN_AGE,
        REQUESTS_FIRST,
        SA_KEYWORD_MAX_BYTES,
        SA_NEXT_DUE,
        SA_OWNER,
        SA_PLAYBOOK,
        SA_STAGE,
    )
    from sopflow.engine import Engine, Step, Wakeup, check_deal_fields
    from sopflow.errors import ENGINE_FAULT, REJECTED, EngineFault, Rejected
    from sopflow.models import (
        Advance,
        ClientSeed,
        Close,
        CompleteTask,
        ExternalEvent,
        JournalEntry,
        LifecycleInput,
        LifecycleStatus,
        MigratePlaybook,
        SetFields,
        SubmitForm,
        UpdateResult,
        workflow_id,
    )
    from sopflow.playbook import shared
    from workflows.guards import holiday_data  # noqa: F401  (installs the holiday guard, once per worker)
    from workflows.options import (
        PATCH_CLAIM_GIVEN_BACK,
        PATCH_EMAIL_APART,
        PATCH_FIELD_LIMITS,
        PATCH_LIVE_TIMERS,
        PATCH_LOCAL_RECORDS,
        PATCH_REQUESTS_FIRST,
        PATCH_YEARLY_WAKEUP,
        RECORD_RETRY,
        SUMMARY_MAX_CHARS,
        start_options,
    )

R = TypeVar("R")


def _keyword(value: str | None) -> str | None:
    """A keyword search attribute value that the server cannot refuse for size (cut on a character boundary)."""
    if value is None or len(value.encode()) <= SA_KEYWORD_MAX_BYTES:
        return value
    return value.encode()[:SA_KEYWORD_MAX_BYTES].decode(errors="ignore")


def _reject(exc: Rejected) -> ApplicationError:
    return ApplicationError(str(exc), exc.field_errors, type=REJECTED, non_retryable=True)


@workflow.defn
class ClientLifecycle(LifecycleCalls):
    @workflow.init
    def __init__(self, inp: LifecycleInput) -> None:
        # Handlers can run before `run` starts: the engine must be complete here.
        workflow_id = workflow.info().workflow_id
        # In place: the SDK keeps this very input for `run`, so a copy would leave its own playbook alive beside it.
        inp.playbook = shared(inp.playbook)
        self._scale = inp.time_scale
        # Playbook time runs `time_scale` times faster than real time from the deal's start (see `_now`).
        self._origin = inp.state.started_at if inp.state is not None else workflow.now()
        self._start_error: Rejected | None = None
        if inp.state is None:
            try:
                self._engine = Engine.start(
                    inp.playbook,
                    inp.deal_id,
                    inp.fields,
                    self._now(),
                    workflow_id,
                    inp.actor,
                    limits=workflow.patched(PATCH_FIELD_LIMITS),
                    applies=workflow.patched,
                    handed_off_by=parent.workflow_id if (parent := workflow.info().parent) else None,
                )
            except Rejected as exc:
                # Starters validate first; a client that did not gets a failed workflow, not a stuck workflow task.
                self._start_error = exc
                self._engine = Engine.start(
                    inp.playbook, inp.deal_id, inp.fields, self._now(), workflow_id, inp.actor, validate=False
                )
        else:
            self._engine = Engine(inp.playbook, inp.state, workflow_id)
            self._engine.applies = workflow.patched
            self._engine.continued(self._now())
        self._input = inp
        self._unrecorded: list[JournalEntry] = list(inp.unrecorded)
        self._changed = True
        self._published: dict[str, object] = {}
        # Pending wake-ups by fire time (playbook time), and the wake-up each was armed for (PATCH_LIVE_TIMERS).
        self._timers: dict[datetime, asyncio.Task[None]] = {}
        self._armed_for: dict[datetime, tuple[tuple[datetime, str], datetime]] = {}
        self._outbox: list[Step] = []  # see LifecycleCalls
        self._delivered: list[Step] = []
        self._apart = False  # decided once per run in `run` (PATCH_EMAIL_APART)
        self._tie = timedelta(0)  # likewise (PATCH_REQUESTS_FIRST)
        self._live_timers = False  # likewise (PATCH_LIVE_TIMERS)
        self._courier: asyncio.Task[None] | None = None

    @workflow.run
    async def run(self, inp: LifecycleInput) -> LifecycleStatus:
        if self._start_error is not None:
            raise _reject(self._start_error)
        self._apart = workflow.patched(PATCH_EMAIL_APART)
        self._tie = REQUESTS_FIRST if workflow.patched(PATCH_REQUESTS_FIRST) else timedelta(0)
        self._live_timers = workflow.patched(PATCH_LIVE_TIMERS)
        self._local_records = workflow.patched(PATCH_LOCAL_RECORDS)
        if self._apart:
            # Lives as long as the run; completing or continuing as new cancels it once the outbox is empty.
            self._courier = asyncio.create_task(self._deliver())
        engine = self._engine
        while True:
            await self._flush()
            if engine.closed:
                break
            if self._should_continue_as_new() and not self._outbox:
                await workflow.wait_condition(workflow.all_handlers_finished)
                await self._flush()
                if not engine.closed and not self._outbox:
                    self._continue_as_new()
            self._publish()
            self._changed = False
            self._arm_timer(self._next_wakeup())
            await workflow.wait_condition(lambda: self._changed or any(t.done() for t in self._timers.values()))
            self._timers = {at: t for at, t in self._timers.items() if not t.done()}
            self._armed_for = {at: armed for at, armed in self._armed_for.items() if at in self._timers}
            engine.tick(self._now())
        await workflow.wait_condition(workflow.all_handlers_finished)
        await self._flush()
        while self._outbox or self._delivered or engine.steps:  # the closing emails go out before the run ends
            await workflow.wait_condition(lambda: not self._outbox)
            await self._flush()
        self._publish()
        if engine.state.outcome != "won" and any(f.claims for f in engine.playbook.forms.values()):
            await self._release(
                RecordActivities.release_claims, engine.state.deal_id, "release the deal's account claims"
            )
        return engine.status(self._now())

    # --- updates ---------------------------------------------------------------------------------------------------

    @workflow.update
    async def submit_form(self, req: SubmitForm) -> UpdateResult:
        """A form that claims an account asks the records store first (one holder per account across deals); the
        engine decides what the answer means."""
        with self._limits_of_the_time():
            checked = self._guarded("submit_form", lambda: self._engine.check_submit(req, self._now()))
        claim = checked.claim
        if claim is not None:
            result = await workflow.execute_activity_method(
                RecordActivities.claim_account,
                claim,
                start_to_close_timeout=ACTIVITY_TIMEOUT,
                retry_policy=RECORD_RETRY,
            )
            if not result.granted:
                raise _reject(self._engine.claim_refused(req.form, claim, result))
        try:
            return self._apply("submit_form", lambda now: self._engine.submit_form(req, now, checked))
        except ApplicationError:
            # Refused after the claim was granted (the lifecycle moved on while the claim was asked for): give the
            # account back unless an accepted submission claims it, or no other deal could claim it until this one
            # closes. (Decided from the lifecycle's state, not the activity's answer: workers of the version before
            # read that answer too while a deploy rolls.)
            if (
                claim is not None
                and not self._engine.holds_claim(claim.account_key)
                and workflow.patched(PATCH_CLAIM_GIVEN_BACK)
            ):
                await self._release_claim(claim)
            raise

    @submit_form.validator
    def _check_submit_form(self, req: SubmitForm) -> None:
        self._check(lambda: self._engine.check_submit(req, self._now()), req, SubmitForm)

    @workflow.update
    def complete_task(self, req: CompleteTask) -> UpdateResult:
        return self._apply("complete_task", lambda now: self._engine.complete_task(req, now))

    @complete_task.validator
    def _check_complete_task(self, req: CompleteTask) -> None:
        self._check(lambda: self._engine.check_task(req), req, CompleteTask)

    @workflow.update
    def advance(self, req: Advance) -> UpdateResult:
        return self._apply("advance", lambda now: self._engine.advance(req, now))

    @advance.validator
    def _check_advance(self, req: Advance) -> None:
        self._check(lambda: self._engine.check_advance(req), req, Advance)

    @workflow.update
    def set_fields(self, req: SetFields) -> UpdateResult:
        return self._apply("set_fields", lambda now: self._engine.set_fields(req, now))

    @set_fields.validator
    def _check_set_fields(self, req: SetFields) -> None:
        self._check(lambda: self._engine.check_set_fields(req), req, SetFields)

    @workflow.update
    def close(self, req: Close) -> UpdateResult:
        return self._apply("close", lambda now: self._engine.close(req, now))

    @close.validator
    def _check_close(self, req: Close) -> None:
        self._check(lambda: self._engine.check_close(req), req, Close)

    @workflow.update
    def migrate_playbook(self, req: MigratePlaybook) -> UpdateResult:
        result = self._apply("migrate_playbook", lambda now: self._engine.migrate(req, now))
        # Pinned from now on, continue-as-new included: the next run starts on the new version.
        self._input = self._input.model_copy(update={"playbook": req.playbook})
        self._playbook_changed()
        return result

    @migrate_playbook.validator
    def _check_migrate_playbook(self, req: MigratePlaybook) -> None:
        self._check(lambda: self._engine.check_migrate(req), req, MigratePlaybook)

    # --- signal, query ---------------------------------------------------------------------------------------------

    @workflow.signal
    def event(self, event: ExternalEvent) -> None:
        # A signal cannot be refused, and raising here would fail the workflow task again on every retry: a payload
        # that decoded to something else (JSON null) is dropped with a warning, as the SDK drops undecodable ones.
        if not isinstance(event, ExternalEvent):
            workflow.logger.warning("dropped an event signal that is not an event: %r", type(event).__name__)
            return
        now = self._now()
        self._catch_up(now)
        try:
            self._engine.attempt("event", lambda: self._engine.event(event, now), now)
        except EngineFault:
            workflow.logger.warning("an event could not be applied (internal error, journaled)")
        self._changed = True

    @workflow.query
    def status(self) -> LifecycleStatus:
        return self._engine.status(self._now())

    @workflow.query
    def forecast_seed(self) -> ClientSeed:
        """What `sopflow forecast` starts this client from: its state now, the playbook it runs and the time.

        The forecast reads every client's state from the records store (`sopflow.forecast_source`), kept by the
        local timeline records; it asks here only for the few whose stored state is behind (an update's record is a
        regular activity, which never carries the state) or missing. A query adds nothing to history."""
        state = self._engine.state
        return ClientSeed(
            workflow_id=self._engine.workflow_id,
            deal_id=state.deal_id,
            playbook=self._input.playbook,
            state=state,
            as_of=self._now(),
        )

    @workflow.query
    def email_context(self) -> dict[str, Any]:
        """The template context this deal's emails get now, for `sopflow template preview --deal`."""
        return self._engine.template_context({})

    # --- helpers ---------------------------------------------------------------------------------------------------

    def _check(self, check: object, request: object, expected: type) -> None:
        if self._start_error is not None:
            raise _reject(self._start_error)
        if not isinstance(request, expected):  # JSON null decodes to None, not to a request
            raise ApplicationError(f"expected a {expected.__name__} request", type=REJECTED, non_retryable=True)
        try:
            check()  # type: ignore[operator]
        except Rejected as exc:
            raise _reject(exc) from None
        except Exception as exc:  # a bug in a check: refuse the request, never fail the workflow task
            workflow.logger.warning("a request check raised %s", type(exc).__name__)
            raise ApplicationError(
                f"{expected.__name__} could not be checked because of an internal error ({type(exc).__name__})",
                type=ENGINE_FAULT,
                non_retryable=True,
            ) from None

    def _catch_up(self, now: datetime) -> None:
        """Before a request, fire the timers that fell due before it: a signature arriving after the contract
        expired is late whether or not the worker had processed the expiry yet (same-moment timers wait: requests
        first). Lifecycles recorded before PATCH_REQUESTS_FIRST applied the request to whatever had been processed."""
        if self._tie:
            self._engine.tick(now - timedelta(microseconds=1))

    @contextmanager
    def _limits_of_the_time(self) -> Iterator[None]:
        """In a handler, check fields as they were checked when the request was accepted: a request replayed from
        a history older than the field limits is applied without them, exactly as it was then. Validators (which do
        not run on replay) always apply the limits."""
        self._engine.limits = workflow.patched(PATCH_FIELD_LIMITS)
        try:
            yield
        finally:
            self._engine.limits = True

    def _guarded(self, what: str, read: Callable[[], R]) -> R:
        """A read-only engine call inside a handler: a refusal or a bug becomes the request's failure."""
        try:
            return read()
        except Rejected as exc:
            raise _reject(exc) from None
        except Exception as exc:
            workflow.logger.warning("%s raised %s", what, type(exc).__name__)
            raise ApplicationError(
                f"{what} failed because of an internal error ({type(exc).__name__}); nothing was changed",
                type=ENGINE_FAULT,
                non_retryable=True,
            ) from None

    def _apply(self, what: str, change: Callable[[datetime], None]) -> UpdateResult:
        """Apply a validated request all or nothing; refusals and internal errors fail the request, never the task.

        The answer is small (`UpdateResult`): it is written into history with every request."""
        now = self._now()
        engine = self._engine
        self._catch_up(now)
        self._answering = True  # a caller waits for this workflow task (LifecycleCalls._record)
        before, queued = engine.state.stage, len(engine.steps)
        try:
            with self._limits_of_the_time():
                engine.attempt(what, lambda: change(now), now)
        except Rejected as exc:  # the state moved on between validation and handling
            raise _reject(exc) from None
        except EngineFault as exc:
            workflow.logger.warning("%s could not be applied (internal error, journaled)", what)
            self._changed = True  # the journaled error is recorded by the main loop
            raise ApplicationError(str(exc), type=ENGINE_FAULT, non_retryable=True) from None
        self._changed = True
        return self._guarded("the answer", lambda: engine.update_result(before, queued))

    async def _start_linked(self, step: Step) -> None:
        """Start the hand-off lifecycle as a child that outlives this one; its deal id makes a second start a no-op."""
        start = step.start
        assert start is not None
        try:
            playbook = await workflow.execute_activity_method(
                PlaybookActivities.load_playbook,
                start.playbook,
                start_to_close_timeout=ACTIVITY_TIMEOUT,
                retry_policy=RECORD_RETRY,
                summary=f"load playbook {start.playbook}",
            )
            fields = check_deal_fields(playbook, start.fields, limits=workflow.patched(PATCH_FIELD_LIMITS))
            await workflow.start_child_workflow(
                ClientLifecycle.run,
                LifecycleInput(
                    deal_id=start.deal_id,
                    playbook=playbook,
                    fields=fields,
                    actor=start.actor,
                    time_scale=self._scale,
                ),
                parent_close_policy=ParentClosePolicy.ABANDON,
                **start_options(playbook, start.deal_id),
            )
            self._engine.linked_started(step, "started", workflow_id(start.deal_id))
        except WorkflowAlreadyStartedError:
            self._engine.linked_started(step, "already started", workflow_id(start.deal_id))
        except (ActivityError, Rejected) as exc:
            # Journaled, not raised: the won deal stays won; the failure is in its timeline for staff to act on.
            error = str(exc.cause or exc) if isinstance(exc, ActivityError) else str(exc)
            self._engine.linked_started(step, "failed", error=error)

    async def _notify(self, step: Step) -> None:
        """Signal the lifecycle that handed this one off; a failure (it has ended) is journaled, never raised."""
        assert step.notice is not None and self._engine.state.handed_off_by is not None
        parent = workflow.get_external_workflow_handle(self._engine.state.handed_off_by)
        try:
            await parent.signal(ClientLifecycle.event, step.notice)
            self._engine.notified(step, "sent")
        except FailureError as exc:
            self._engine.notified(step, "failed", error=str(exc))

    def _now(self) -> datetime:
        """Playbook time. Real workflow time, unless the lifecycle was started compressed (`time_scale`, for demos
        and fault-injection runs: 86400 makes a playbook day pass in a real second). Deterministic: it only
        depends on workflow time and the pinned input."""
        real = workflow.now()
        return real if self._scale == 1 else self._origin + (real - self._origin) * self._scale

    def _next_wakeup(self) -> Wakeup | None:
        wake = self._engine.next_wakeup()
        if wake is None or not workflow.patched(PATCH_YEARLY_WAKEUP):
            return wake
        year_end = self._engine.state.run_started_at + MAX_RUN_AGE
        return Wakeup(year_end, "yearly continue-as-new") if year_end < wake.at else wake

    def _arm_timer(self, wake: Wakeup | None) -> None:
        """Make sure some timer fires no later than `wake` (plus the tie-break); an earlier pending timer already
        re-evaluates then. The engine fires what is due as of the wake-up, dated at each moment itself."""
        if self._live_timers:
            self._cancel_superseded(wake)
        if wake is None:
            return
        target = wake.at + self._tie
        if any(at <= target for at in self._timers):
            return
        now = self._now()
        # At least a second of real time between wake-ups (unchanged for real-time lifecycles); a compressed one
        # may wake within milliseconds, or an hour-before reminder would come a simulated day late.
        floor = timedelta(seconds=1) if self._scale == 1 else timedelta(milliseconds=10) * self._scale
        delay = max(target - now, floor)
        real_delay = delay / self._scale
        self._timers[now + delay] = asyncio.create_task(
            workflow.sleep(real_delay, summary=wake.summary[:SUMMARY_MAX_CHARS])
        )
        self._armed_for[now + delay] = ((target, wake.summary), workflow.now() + real_delay)

    def _cancel_superseded(self, wake: Wakeup | None) -> None:
        """Cancel the pending timers armed for another wake-up than `wake` (another moment, or another thing due at
        the same moment: the UI shows the timer's label), so the UI lists only what the lifecycle waits for.

        A timer that may have fired before this workflow task started is left alone: its firing may be applied after
        this code runs in the same activation, and cancelling a fired timer is what the time-skipping server refused
        (why timers were once never cancelled). The server starts a timer only when the task asking for it
        completes, after the moment noted here, so one noted as firing after this task's start has not fired."""
        target = None if wake is None else (wake.at + self._tie, wake.summary)
        now = workflow.now()
        for at, task in list(self._timers.items()):
            armed_for, fires_at = self._armed_for.get(at, (None, now))
            if armed_for != target and fires_at > now and not task.done():
                task.cancel()
                del self._timers[at], self._armed_for[at]

    def _should_continue_as_new(self) -> bool:
        state = self._engine.state
        return workflow.info().is_continue_as_new_suggested() or self._now() >= state.run_started_at + MAX_RUN_AGE

    def _continue_as_new(self) -> None:
        # No await since the last flush emptied the queue, so no handler can have queued a step we would drop.
        state = self._engine.state
        workflow.continue_as_new(
            LifecycleInput(
                deal_id=state.deal_id,
                playbook=self._input.playbook,
                state=state,
                time_scale=self._scale,
                unrecorded=self._unrecorded,
            )
        )

    def _publish(self) -> None:
        """Search attributes and UI details; only changed attributes are upserted, to keep history small.

        Every keyword is cut to SA_KEYWORD_MAX_BYTES (the server terminates a workflow whose upsert is too large),
        and a rule that raises here leaves the previous values in place instead of failing the workflow task.
        """
        engine = self._engine
        now = self._now()
        try:
            values: dict[str, object] = {
                SA_STAGE.name: _keyword(engine.state.stage),
                SA_PLAYBOOK.name: _keyword(self._input.playbook.id),
                SA_OWNER.name: _keyword(engine.owner()),
                SA_NEXT_DUE.name: engine.next_due(),
            }
            details = engine.details_markdown(now)
        except Exception as exc:
            workflow.logger.warning("could not publish the deal's search attributes: %s", type(exc).__name__)
            return
        updates: list[SearchAttributeUpdate] = []
        for key in (SA_STAGE, SA_PLAYBOOK, SA_OWNER, SA_NEXT_DUE):
            value = values[key.name]
            if key.name in self._published and self._published[key.name] == value:
                continue
            self._published[key.name] = value
            updates.append(key.value_unset() if value is None else key.value_set(value))  # type: ignore[arg-type]
        if updates:
            workflow.upsert_search_attributes(updates)
        workflow.set_current_details(details)
