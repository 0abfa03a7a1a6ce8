"""How `ClientLifecycle` reaches the outside world: emails, timeline records and account claims, through activities.

A base class of the workflow, apart from its request handling and timers: what an activity's result or failure means
is the engine's to decide (`email_sent`, `email_failed`), and what the store refuses for good (RecordRefused) never
stops a client.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from activities.email import EmailActivities
    from activities.records import RecordActivities
    from sopflow.constants import ACTIVITY_TIMEOUT
    from sopflow.engine import Engine, Step
    from sopflow.errors import RECORD_REFUSED, UNDELIVERABLE
    from sopflow.models import (
        BATCH_LOCAL_FIELDS,
        ClaimRequest,
        DealSnapshot,
        JournalBatch,
        JournalEntry,
        LifecycleInput,
    )
    from sopflow.playbook import playbook_hash
    from sopflow.telemetry import observe_timeline
    from workflows.options import (
        EMAIL_GIVE_UP,
        EMAIL_RETRY,
        LOCAL_RECORD_ATTEMPT,
        LOCAL_RECORD_GIVE_UP,
        LOCAL_RECORD_RETRY,
        PATCH_UNDELIVERABLE,
        RECORD_RETRY,
    )


class LifecycleCalls:
    """The activity side of the lifecycle; `ClientLifecycle` sets these attributes up in its `__init__`."""

    _engine: Engine
    _input: LifecycleInput
    _unrecorded: list[JournalEntry]
    # Emails waiting for `_deliver`, oldest first, and delivered ones whose timeline entries are still to record.
    _outbox: list[Step]
    _delivered: list[Step]
    _apart: bool  # PATCH_EMAIL_APART, decided once per run
    _local_records: bool = False  # PATCH_LOCAL_RECORDS, decided once per run
    # An update was applied since the last record: its caller waits for the workflow task to complete.
    _answering: bool = False
    _changed: bool
    # The deal snapshot the records store holds from this run: a batch carries one only when it differs.
    _recorded_snapshot: DealSnapshot | None = None
    # The pinned playbook's hash (computed at the first local record of a run, again after a migration), and whether
    # the store took the playbook itself from this run: the first local record of a run and the first after a
    # migration carry it, the others only name it.
    _playbook_hash: str | None = None
    _pinned_stored: bool = False

    async def _start_linked(self, step: Step) -> None:  # the workflow's: a child of its own type
        raise NotImplementedError

    async def _notify(self, step: Step) -> None:  # the workflow's: a signal of its own type
        raise NotImplementedError

    def _now(self) -> datetime:  # the workflow's: playbook time
        raise NotImplementedError

    async def _flush(self) -> None:
        """Record the queued timeline entries; emails go to `_deliver`, or (lifecycles recorded before
        PATCH_EMAIL_APART) are sent one by one, in order, before their batch is recorded."""
        while self._engine.steps or (self._delivered and not self._outbox):
            steps = self._engine.take_steps()
            for step in steps:
                if step.start is not None:
                    await self._start_linked(step)
                if step.notice is not None:
                    await self._notify(step)
                if step.email is not None and not self._apart:
                    await self._send(step)
            recorded = steps
            if self._apart:
                self._outbox.extend(step for step in steps if step.email is not None)
                recorded = [step for step in steps if step.email is None]
                # Delivered emails join the next record, or are recorded together once the outbox is empty: one
                # activity for a stage's burst of emails, not one per email.
                if recorded or not self._outbox:
                    recorded, self._delivered = self._delivered + recorded, []
            if recorded:
                await self._record(sorted(recorded, key=lambda s: s.entry.seq))

    async def _deliver(self) -> None:
        """Send the outbox's emails one at a time, oldest first: in order per deal, once per step (the step's key).

        Each send may retry for up to a day; meanwhile the main loop keeps firing timers and recording the timeline.
        """
        while True:
            await workflow.wait_condition(lambda: bool(self._outbox))
            step = self._outbox[0]
            await self._send(step)
            self._outbox.pop(0)
            self._delivered.append(step)
            self._changed = True  # the main loop records it (and any fix-the-address task it opened)

    async def _send(self, step: Step) -> None:
        """Send one email and put its outcome in its timeline entry; a permanent refusal opens a fix task."""
        assert step.email is not None
        try:
            result = await workflow.execute_activity_method(
                EmailActivities.send_email,
                step.email,
                start_to_close_timeout=ACTIVITY_TIMEOUT,
                schedule_to_close_timeout=EMAIL_GIVE_UP,
                retry_policy=EMAIL_RETRY,
                summary=f"email {step.email.template}",
            )
            self._engine.email_sent(
                step, result, fix_refused=bool(result.refused) and workflow.patched(PATCH_UNDELIVERABLE)
            )
        except ActivityError as err:
            # Permanent failures a person fixes by correcting the deal (an address the server refused, a name that
            # cannot be put in a header) become a fix-the-address task instead of being lost.
            cause = err.cause
            undeliverable = None
            if (
                isinstance(cause, ApplicationError)
                and cause.type in UNDELIVERABLE
                and workflow.patched(PATCH_UNDELIVERABLE)
            ):
                refused = [str(a) for a in cause.details[0]] if cause.details else []
                undeliverable = (refused, cause.message)
            self._engine.email_failed(step, str(cause or err), undeliverable)

    async def _record(self, steps: list[Step]) -> None:
        """Record the steps' timeline entries, after any the records store refused before.

        A lost database connection is retried (a few times in the workflow task, then by the regular activity's policy
        for as long as it takes: `record_batch`). A refusal (RecordRefused: the store cannot take a value, which only
        a fix to it can cure) must not stop the client: the entries are kept and offered again with the next batch,
        and the lifecycle carries on.

        The deal's snapshot goes along only when it changed since the last batch the store took (always in a run's
        first batch): most requests add timeline entries without changing the deal's row.

        A local record also carries the engine's whole state (and, once per run and after a migration, the pinned
        playbook), which `sopflow forecast` starts the client from: a local activity's input never reaches history,
        so this costs no history bytes and no other command. A regular one never does (`record_batch`)."""
        state = self._engine.state
        observe_timeline(self._input.playbook.id, state.deal_id, [s.entry for s in steps])
        entries = self._unrecorded + [s.entry for s in steps]
        snapshot = self._engine.snapshot()
        batch = JournalBatch(
            workflow_id=self._engine.workflow_id,
            deal_id=state.deal_id,
            playbook=self._input.playbook.id,
            entries=entries,
            snapshot=None if snapshot == self._recorded_snapshot else snapshot,
        )
        # Local only where nobody waits for this workflow task (a timer's work, a delivered email, a signal): a
        # local record holds the task, so an update's answer would wait for the SQL write, and a caller's next request
        # could no longer share the record in flight (bench/RESULTS.md: a third fewer lifecycles/s without this).
        local, self._answering = self._local_records and not self._answering, False
        if local:
            batch = self._with_state(batch)
        try:
            wrote_locally = await record_batch(batch, local=local)
        except FailureError as err:
            if not refused_by_records(err):
                raise
            workflow.logger.warning(
                "the records store refused %d timeline entries; kept for the next batch", len(entries)
            )
            self._unrecorded = entries
        else:
            self._unrecorded = []
            self._recorded_snapshot = snapshot
            # Only a batch written in the workflow task kept its playbook: the regular fallback strips it.
            self._pinned_stored = self._pinned_stored or (wrote_locally and batch.pinned is not None)

    def _with_state(self, batch: JournalBatch) -> JournalBatch:
        """`batch` with the engine's state as of now and the history length it was decided at, for a local record
        (see `_record`; `JournalBatch.history_length`).

        The state object itself, not a copy: the SDK converts a local activity's input to its payload when it is
        scheduled (`execute_local_activity_method` does so before its first await), so a request applied while the
        record runs cannot change what is sent. (It converts again only to reschedule after a backoff longer than the
        local retry threshold, a minute by default, which LOCAL_RECORD_RETRY's sub-second backoffs never reach.)"""
        playbook = self._input.playbook
        if self._playbook_hash is None:
            self._playbook_hash = playbook_hash(playbook)  # once per run and per migration: 0.5 ms for Safe Balance
        return batch.model_copy(
            update={
                "state": self._engine.state,
                "as_of": self._now(),
                "playbook_hash": self._playbook_hash,
                "playbook_version": playbook.version,
                "pinned": None if self._pinned_stored else playbook,
                "history_length": workflow.info().get_current_history_length(),
            }
        )

    def _playbook_changed(self) -> None:
        """A migration pinned another playbook: the next local record names it and carries it to the store."""
        self._playbook_hash, self._pinned_stored = None, False

    async def _release_claim(self, claim: ClaimRequest) -> None:
        await self._release(RecordActivities.release_claim, claim, "give back an account claim")

    async def _release(self, activity: Callable[[Any, Any], Awaitable[Any]], arg: object, what: str) -> None:
        """Give account claims back; the store refusing it for good is logged, never a reason to stop the client."""
        try:
            await workflow.execute_activity_method(
                activity, arg, start_to_close_timeout=ACTIVITY_TIMEOUT, retry_policy=RECORD_RETRY
            )
        except ActivityError as err:
            if not refused_by_records(err):
                raise
            workflow.logger.warning("the records store refused to %s", what)


async def record_batch(batch: JournalBatch, *, local: bool) -> bool:
    """Write one timeline batch: in this workflow task (a local activity) when `local` (runs started since
    PATCH_LOCAL_RECORDS), else through the server (a regular activity), as runs recorded before did
    (`bench.handwritten` records the same way, with the same options).

    Safe to run locally because `record_journal` is idempotent: entries are inserted ON CONFLICT DO NOTHING by
    (workflow, seq) and the deal's row only moves forward (WHERE last_seq <= batch). That matters more here than for
    a regular activity: a worker that dies while a local activity runs leaves no trace of it in history, so the next
    worker runs the batch again from the start, and an attempt that outlived its timeout may still be writing in its
    thread while the next one starts. And a local record is written before its workflow task completes: should the
    task fail after it, the next attempt may number its entries differently, and its batch, decided on a longer
    history, replaces what the failed one wrote (`activities.records.supersedes`).

    A local activity that fails with anything but RecordRefused within LOCAL_RECORD_GIVE_UP (the store down, a
    saturated worker) hands the same batch to the regular activity, which the server retries for as long as it takes:
    an outage costs one marker and one activity in history, not a workflow task heartbeat every 8 s, and the
    lifecycle waits on the store as it did before. RecordRefused is raised on either path (as the local activity's own
    ApplicationError or as a regular activity's ActivityError: `refused_by_records` reads both).

    Whether the batch was written in the workflow task: only there does it keep its engine state and pinned playbook
    (`JournalBatch.state`), which are stripped before the regular activity so that nothing new is written into
    history: the stored state then lags until the next local record, which the forecast sees."""
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
            return True
        except FailureError as err:
            # A local activity's failure arrives as the activity's own error (an ApplicationError, or a TimeoutError),
            # not wrapped in an ActivityError as a regular activity's is.
            if refused_by_records(err):
                raise
            workflow.logger.warning(
                "the timeline record failed in the workflow task (%s); retried as an activity", type(err).__name__
            )
    await workflow.execute_activity_method(
        RecordActivities.record_journal,
        without_state(batch),
        start_to_close_timeout=ACTIVITY_TIMEOUT,
        retry_policy=RECORD_RETRY,
        summary="record timeline",
    )
    return False


def without_state(batch: JournalBatch) -> JournalBatch:
    """`batch` as a regular record sends it: without the engine state, pinned playbook and history length only a
    local record carries, so its input in history is what it always was (`JournalBatch` leaves them out unset)."""
    if all(getattr(batch, name) is None for name in BATCH_LOCAL_FIELDS):
        return batch
    return batch.model_copy(update=dict.fromkeys(BATCH_LOCAL_FIELDS))


def refused_by_records(err: FailureError) -> bool:
    """Whether the records store refused the write for good (RecordRefused), as opposed to any other failure: the
    cause of a regular activity's ActivityError, or a local activity's own error."""
    cause = err.cause if isinstance(err, ActivityError) else err
    return isinstance(cause, ApplicationError) and cause.type == RECORD_REFUSED
