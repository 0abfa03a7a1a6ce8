"""The choices `ClientLifecycle` runs with: retry policies, the `workflow.patched` gates of every behaviour change
(each says what lifecycles recorded before it replay), and the options every lifecycle starts with.

In one place so that a reviewer of a workflow change sees every gate the workflow already carries, and a starter
(CLI, intake, hand-off child) starts lifecycles exactly alike.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio.common import RetryPolicy, SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy

from sopflow.constants import SA_PLAYBOOK, SA_STAGE
from sopflow.models import workflow_id
from sopflow.playbook import Playbook

EMAIL_RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), maximum_interval=timedelta(minutes=10))
RECORD_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))
# An email that still fails after a day of retries is recorded as failed instead of holding the client's lifecycle.
EMAIL_GIVE_UP = timedelta(days=1)
# Lifecycles that hit a bounce before this behaviour existed replay without the task it opens (workflow.patched).
PATCH_UNDELIVERABLE = "undeliverable-email-opens-task"
# A quiet lifecycle wakes at its run's first anniversary to continue as new (one run per year), instead of at the
# next business timer; lifecycles recorded before this replay without that timer.
PATCH_YEARLY_WAKEUP = "yearly-continue-as-new-wakeup"
# Emails are delivered by their own coroutine, apart from timers and records; lifecycles recorded before this
# replay with each batch's emails sent before its timeline entries.
PATCH_EMAIL_APART = "email-delivered-apart"
# Field limits (`sopflow.fields`) in the handlers: a request accepted before them is re-applied without them.
PATCH_FIELD_LIMITS = "field-limits"
# A timer wakes REQUESTS_FIRST (sopflow.constants) after its moment, so a request made at that very moment (a task done
# when it falls due) is applied first, whatever the machine's speed; lifecycles recorded before this woke at the
# moment itself.
PATCH_REQUESTS_FIRST = "requests-before-timers-due-at-the-same-moment"
# A form refused after its account claim was granted gives the claim back; lifecycles recorded before kept it.
PATCH_CLAIM_GIVEN_BACK = "refused-form-gives-its-claim-back"
# Only the timer for the next wake-up stays pending, so the Temporal UI shows what the lifecycle waits for;
# lifecycles recorded before kept superseded timers, which fired into no-op ticks.
PATCH_LIVE_TIMERS = "only-live-timers"
# The timeline record runs as a local activity, inside the workflow task that queued it, instead of a server round
# trip (schedule, dispatch, complete, a new workflow task) per batch, unless an update's caller waits for that task
# (`LifecycleCalls._record`); lifecycles recorded before keep the regular activity. See LOCAL_RECORD_* and
# `workflows.calls.record_batch`.
PATCH_LOCAL_RECORDS = "timeline-recorded-by-local-activity"
# A local record gets a few quick attempts within one workflow task (Temporal's guidance: a local activity lasts no
# longer than a few seconds, retries included; past 80% of the 10 s task timeout the worker heartbeats the task, which
# adds three history events each time and holds back the updates and signals that task answers). An attempt may take
# 4 s (a batch takes milliseconds; a busy worker's thread pool queues it), the next starts 0.2 s then 0.4 s later, and
# all end by 7 s. A batch that still fails goes to the regular activity and RECORD_RETRY: retried by the server, off
# the workflow task, for as long as the store is down, with no history growing meanwhile. RecordRefused is final on
# either path.
LOCAL_RECORD_ATTEMPT = timedelta(seconds=4)
LOCAL_RECORD_GIVE_UP = timedelta(seconds=7)
LOCAL_RECORD_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=1), maximum_attempts=3
)
# Timer summaries quote playbook labels; the UI metadata stays short whatever a playbook author wrote.
SUMMARY_MAX_CHARS = 200


def start_options(playbook: Playbook, deal_id: str) -> dict[str, Any]:
    """How every lifecycle starts, from a starter or as a hand-off child, so all look alike in the Temporal UI.

    A deal id names one lifecycle for good (its timeline, records and email keys are per deal id), so a closed
    lifecycle is never started again.
    """
    return {
        "id": workflow_id(deal_id),
        "id_reuse_policy": WorkflowIDReusePolicy.REJECT_DUPLICATE,
        "static_summary": f"{playbook.title or playbook.id} (v{playbook.version}) · deal {deal_id}",
        "search_attributes": TypedSearchAttributes(
            [SearchAttributePair(SA_PLAYBOOK, playbook.id), SearchAttributePair(SA_STAGE, playbook.stages[0].id)]
        ),
    }
