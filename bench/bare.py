"""A hand-written minimal Temporal workflow doing the same Temporal work as one Safe Balance lifecycle: the baseline
that `bench.throughput` divides the engine's figure by.

It has no playbook, no engine, no templates, no records and no search attributes. Each request (an update or a
signal) carries the Temporal work it must cause (a `BareStep`, computed from the real engine by
`bench.safe_balance.bare_plan`), and the workflow does that work with a trivial activity, following the same
loop as `ClientLifecycle`: the account claim inside the update handler; then, in the main loop, one timeline record
per batch of requests (a regular activity after an update, else a local one, as the engine's), the queued emails one
by one and one (local) record of the delivered emails; then one timer if
cancelling a timer armed for another wake-up (as the engine does). So when
requests arrive faster than their work completes, both batch their records and skip timers the same way, and the
per-client counts (checked from the histories) stay equal. Whatever the engine costs above this is the price of the
engine; whatever both cost is Temporal's (and SQLite's).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    from workflows.options import LOCAL_RECORD_ATTEMPT, LOCAL_RECORD_GIVE_UP, LOCAL_RECORD_RETRY

BARE_TIMEOUT = timedelta(seconds=30)


@dataclass
class BareStep:
    """The Temporal work one request causes in the engine."""

    name: str
    kind: str  # "start", "update" or "signal"
    handler_activities: int = 0  # run by the update handler before it returns (the account claim)
    emails: int = 0  # activities run one by one after the request (then one record for all of them)
    records: bool = True  # whether it adds timeline entries besides emails (one record per batch)
    wake_seconds: float | None = None  # the engine's next wake-up after this request, from now
    wake_id: str | None = None  # which moment that is (its time and label): a timer is kept while this stays


@dataclass
class BarePlan:
    steps: list[BareStep] = field(default_factory=list)

    def totals(self) -> dict[str, int]:
        """What one lifecycle does when each request's work completes before the next request arrives."""
        live: str | None = None  # like the engine, one live timer: for the next wake-up, the others cancelled
        timers = 0
        for step in self.steps:
            if step.wake_id is not None and step.wake_id != live:
                timers += 1
            live = step.wake_id
        return {
            "updates": sum(s.kind == "update" for s in self.steps),
            "signals": sum(s.kind == "signal" for s in self.steps),
            # the timeline records as the engine's since PATCH_LOCAL_RECORDS: after an update a regular activity
            # (its caller waits for the workflow task), else (a signal, the start, delivered emails) a local one
            "activities": sum(
                s.handler_activities + s.emails + int(s.records and s.kind == "update") for s in self.steps
            ),
            "local_activities": sum(int(s.records and s.kind != "update") + int(s.emails > 0) for s in self.steps),
            "timers": timers,
        }


@activity.defn
async def bare_step(n: int) -> int:
    """The trivial activity: a round trip through Temporal and nothing else."""
    return n + 1


@workflow.defn
class BareLifecycle:
    @workflow.init
    def __init__(self, start: BareStep) -> None:
        self._queued: list[BareStep] = []
        self._timer: tuple[str, asyncio.Task[None]] | None = None  # the live timer and the wake-up it is for
        self._wake: str | None = None  # which moment the next wake-up is (BareStep.wake_id)
        self._wake_at: datetime | None = None
        self._changed = False
        self._done = 0
        self._apply(start)

    @workflow.run
    async def run(self, start: BareStep) -> int:
        # Like the engine: never completes on its own (a client in ongoing management lives on).
        while True:
            await self._flush()
            self._changed = False
            self._arm_timer()
            await workflow.wait_condition(lambda: self._changed or (self._timer is not None and self._timer[1].done()))
            if self._timer is not None and self._timer[1].done():
                self._timer = None

    @workflow.update
    async def request(self, step: BareStep) -> int:
        for _ in range(step.handler_activities):
            await self._activity()
        self._apply(step)
        return self._done

    @workflow.signal
    def event(self, step: BareStep) -> None:
        self._apply(step)

    def _apply(self, step: BareStep) -> None:
        self._queued.append(step)
        self._wake = step.wake_id
        self._wake_at = None if step.wake_seconds is None else workflow.now() + timedelta(seconds=step.wake_seconds)
        self._changed = True

    async def _flush(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, []
            if any(step.records for step in batch):
                if any(step.kind == "update" for step in batch):
                    await self._activity()  # a caller waits for this workflow task: the record goes through the server
                else:
                    await self._record()
            emails = sum(step.emails for step in batch)
            for _ in range(emails):
                await self._activity()
            if emails:
                await self._record()

    async def _activity(self) -> None:
        self._done = await workflow.execute_activity(bare_step, self._done, start_to_close_timeout=BARE_TIMEOUT)

    async def _record(self) -> None:
        """A timeline record, with the engine's local activity options (`workflows.calls.record_batch`)."""
        self._done = await workflow.execute_local_activity(
            bare_step,
            self._done,
            start_to_close_timeout=LOCAL_RECORD_ATTEMPT,
            schedule_to_close_timeout=LOCAL_RECORD_GIVE_UP,
            retry_policy=LOCAL_RECORD_RETRY,
        )

    def _arm_timer(self) -> None:
        """As the engine does (PATCH_LIVE_TIMERS): the timer for another wake-up is cancelled, one for this one kept."""
        if self._timer is not None and self._timer[0] != self._wake:
            self._timer[1].cancel()
            self._timer = None
        if self._wake is None or self._wake_at is None or self._timer is not None:
            return
        delay = max(self._wake_at - workflow.now(), timedelta(seconds=1))
        self._timer = (self._wake, asyncio.create_task(workflow.sleep(delay)))
