"""`MorningDigest`: one run of the hourly digest schedule, sending the digests due at its scheduled hour.

The hour comes from the run itself: the schedule stamps every workflow it starts with `TemporalScheduledStartTime`
(a backfilled or late run carries the hour it stands for, not the moment a worker got to it). A run started by hand
may name the hour in its input; without either it is the hour of the run's start.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey

with workflow.unsafe.imports_passed_through():
    from activities.digest import DigestActivities
    from sopflow.models import DigestOutcome, DigestRun, MorningDigestInput

SCHEDULED_START = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")
# The run must end before the next hour's: the schedule skips a firing while a run is still going (overlap SKIP).
RUN_LIMIT = timedelta(minutes=50)
DIGEST_RETRY = RetryPolicy(initial_interval=timedelta(seconds=5), maximum_interval=timedelta(minutes=5))


def the_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


@workflow.defn
class MorningDigest:
    @workflow.run
    async def run(self, inp: MorningDigestInput) -> DigestOutcome:
        scheduled = workflow.info().typed_search_attributes.get(SCHEDULED_START)
        at = the_hour(inp.at or scheduled or workflow.now())
        return await workflow.execute_activity_method(
            DigestActivities.send_morning_digests,
            DigestRun(at=at),
            schedule_to_close_timeout=RUN_LIMIT,
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=timedelta(minutes=2),
            retry_policy=DIGEST_RETRY,
        )
