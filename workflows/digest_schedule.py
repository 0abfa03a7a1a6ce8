"""The Temporal Schedule that runs `MorningDigest` every hour on the hour, created or brought up to date idempotently.

Hourly, not at one morning hour: each person's morning is their own local hour (`sopflow.digest.morning_due`), and
every zone's morning starts on some UTC hour (half-hour zones on the UTC hour too, half past their local hour).
Overlap SKIP: a run still going when the next hour fires means the relay is slow, and a second run would only
compete with it (the outbox would keep either from sending twice). The catch-up window is an hour: after a server
outage the missed hour still runs, but a morning digest hours late is noise; `temporal schedule backfill` sends a
missed morning on purpose.

Pausing, triggering and backfilling are Temporal's own (`temporal schedule toggle|trigger|backfill
--schedule-id sopflow-morning-digest`); an update keeps the schedule's state, so a worker restart never undoes an
operator's pause. A backfill of several hours wants `--overlap-policy BufferAll`, or Skip drops all but one.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Literal

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleCalendarSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleRange,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)

from sopflow.constants import DIGEST_SCHEDULE_ID, TASK_QUEUE
from sopflow.models import MorningDigestInput
from workflows.digest import MorningDigest

CATCHUP_WINDOW = timedelta(hours=1)
# A run that has not finished within the hour is stopped: the next hour's run must not be skipped behind it.
RUN_TIMEOUT = timedelta(hours=1)


def digest_schedule(task_queue: str = TASK_QUEUE, workflow_id: str = DIGEST_SCHEDULE_ID) -> Schedule:
    """The schedule as it should be: minute 0 of every hour, UTC; each run's workflow id is `workflow_id` plus the
    scheduled time (Temporal appends it)."""
    every_hour = ScheduleCalendarSpec(
        second=(ScheduleRange(0),),
        minute=(ScheduleRange(0),),
        hour=(ScheduleRange(0, 23),),
        comment="every hour on the hour: each person's digest goes at their own local morning hour",
    )
    return Schedule(
        action=ScheduleActionStartWorkflow(
            MorningDigest.run,
            MorningDigestInput(),
            id=workflow_id,
            task_queue=task_queue,
            execution_timeout=RUN_TIMEOUT,
            static_summary="Morning digest: the digests due at this hour",
        ),
        spec=ScheduleSpec(calendars=[every_hour]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=CATCHUP_WINDOW),
    )


async def ensure_digest_schedule(
    client: Client, schedule_id: str = DIGEST_SCHEDULE_ID, task_queue: str = TASK_QUEUE
) -> Literal["created", "updated"]:
    """Create the schedule, or update an existing one to the current spec, action and policy, keeping its state
    (paused or not, its note). Safe to call from every worker start at once: a create that loses the race updates."""
    wanted = digest_schedule(task_queue, schedule_id)
    try:
        await client.create_schedule(schedule_id, wanted)
        return "created"
    except ScheduleAlreadyRunningError:
        pass

    def current(update: ScheduleUpdateInput) -> ScheduleUpdate:
        return ScheduleUpdate(schedule=dataclasses.replace(wanted, state=update.description.schedule.state))

    await client.get_schedule_handle(schedule_id).update(current)
    return "updated"
