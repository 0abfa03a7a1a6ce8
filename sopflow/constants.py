"""Names shared by the worker, the starters and the tests.

Kept in one place because a mismatch (a task queue, a search attribute name) fails silently at run time: a
workflow nobody polls, or a list filter that matches nothing.
"""

from datetime import timedelta

from temporalio.common import SearchAttributeKey

TASK_QUEUE = "sopflow"
WORKFLOW_ID_PREFIX = "deal-"
# The hourly morning digest's Temporal Schedule (workflows/digest_schedule.py), also the prefix of its runs' ids.
DIGEST_SCHEDULE_ID = "sopflow-morning-digest"

# Custom search attributes. Values are stage ids, playbook ids, role/owner ids and dates: never names or emails,
# because search attributes are stored unencrypted and shown to every operator.
SA_STAGE = SearchAttributeKey.for_keyword("SopStage")
SA_PLAYBOOK = SearchAttributeKey.for_keyword("SopPlaybook")
SA_OWNER = SearchAttributeKey.for_keyword("SopOwner")
SA_NEXT_DUE = SearchAttributeKey.for_datetime("SopNextDue")
SEARCH_ATTRIBUTES = (SA_STAGE, SA_PLAYBOOK, SA_OWNER, SA_NEXT_DUE)
# The server refuses a keyword value over 2 KB by *terminating* the workflow; validation keeps ids far shorter, and the
# workflow cuts anything longer than this before upserting, so no value can ever reach that limit.
SA_KEYWORD_MAX_BYTES = 255

# A lifecycle continues as new at least this often even if the server does not suggest it, so a years-long client
# never replays years of history when a worker picks it up cold.
MAX_RUN_AGE = timedelta(days=365)
# How long after its moment a timer wakes the lifecycle: a request made at that very moment is applied first
# (workflows.options PATCH_REQUESTS_FIRST); the forecast simulates the same order.
REQUESTS_FIRST = timedelta(seconds=1)

# Condition transitions may chain (A -> B -> C) but a playbook whose conditions loop must not spin a workflow task.
MAX_CHAINED_TRANSITIONS = 25

ACTIVITY_TIMEOUT = timedelta(seconds=30)

# One email attempt's whole SMTP conversation (connect to the last answer) ends by this deadline, within the
# activity's timeout: each command's own timeout alone would let five slow answers run for minutes, long after
# Temporal gave up on the attempt and started a retry elsewhere.
EMAIL_SEND_DEADLINE = timedelta(seconds=25)
# The lease on a step's outbox row held by the one attempt allowed to talk SMTP for it: the send deadline plus a
# margin for the writes around it and for clocks that differ between worker hosts by a few seconds.
EMAIL_CLAIM_LEASE = EMAIL_SEND_DEADLINE + timedelta(seconds=10)

# SMTP connections a worker keeps open between emails (activities/smtp.py): as many as emails usually go out at once,
# each closed after SMTP_IDLE_MAX without a message (well within the 5 minutes RFC 5321 asks servers to wait, so a
# kept connection is rarely found closed) or SMTP_MESSAGES_PER_CONNECTION messages (relays cap messages per
# connection, commonly at 100).
SMTP_POOL_SIZE = 4
SMTP_IDLE_MAX = timedelta(seconds=30)
SMTP_MESSAGES_PER_CONNECTION = 100

# How long a stopping worker lets in-flight activities (an SMTP send, a records write) finish before they are
# cancelled and retried by another worker: longer than a normal send, shorter than a deploy's kill timeout.
WORKER_GRACEFUL_SHUTDOWN = timedelta(seconds=20)

# Engine rules that changed while lifecycles ran. The engine asks `Journal.applies(name)` at the point where the rule
# decides (the workflow answers with `workflow.patched`), so a lifecycle recorded before a change replays as it ran
# and only the histories the change touches carry its marker. The workflow's own gates are in workflows/options.py.
# An email whose only known recipients are in cc goes to them (the missing roles journaled) instead of being skipped.
PATCH_CC_STANDS_IN = "cc-receives-an-email-whose-to-is-unknown"
# A cadence anchored on a date field starts at its first due date on or after the stage's entry: dates before the
# stage began are not missed visits (a closeout filed weeks after the launch does not fire a storm of overdue notices).
PATCH_PAST_VISITS_SKIPPED = "cadence-skips-dates-before-its-stage"

# The deal fields (then form fields) that name the client's company, first found wins: what the web board's cards
# and the deal page call the deal beside its id. Each shipped playbook names it one of these ways.
COMPANY_FIELDS = ("company", "company_name", "account_name", "client_name")
