"""Typed payloads crossing the workflow boundary: input, the carried state, updates, signals, queries, activities.

One model per payload keeps history readable in the Temporal UI and lets validators reject bad input by type before
any business rule runs. `LifecycleState` is the single model carried through continue-as-new.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from sopflow.constants import WORKFLOW_ID_PREFIX
from sopflow.playbook import Playbook

Actor = str
DEAL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$"


def valid_deal_id(deal_id: str) -> bool:
    """A CRM id, never personal data: no '@', and the whole string must match (re.match's `$` allows a newline)."""
    return re.fullmatch(DEAL_ID_PATTERN.strip("^$"), deal_id) is not None


def workflow_id(deal_id: str) -> str:
    """One lifecycle per deal id, for good: its records, email keys and timeline are keyed by this id."""
    return f"{WORKFLOW_ID_PREFIX}{deal_id}"


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- carried state --------------------------------------------------------------------------------------------


class Resend(Payload):
    """An email to send again, to freshly resolved addresses, once its fix-the-address task is done."""

    template: str
    playbook: str
    to: list[str]
    cc: list[str] = []
    from_role: str | None = None
    extra: dict[str, Any] = {}
    # Addresses of the resent roles that already have it: a role of several addresses (a client's users) where only
    # some bounced is sent again to the others only. Empty for a role of one address (its address is what bounced).
    delivered: list[str] = []


class TaskState(Payload):
    id: str
    title: str
    owner: str
    opened_at: datetime
    due_at: datetime | None = None
    done_at: datetime | None = None
    done_by: Actor | None = None
    note: str | None = None
    reminded: bool = False
    escalated: bool = False
    resend: Resend | None = None
    # For a task due at a moment: the field value it belongs to, and how many times it has opened.
    anchor: str | None = None
    occurrence: int = 1


class DeadlineState(Payload):
    label: str
    due_at: datetime
    reminders_sent: list[int] = []


class CadenceState(Payload):
    label: str
    anchor: datetime
    # The schedule counts from here: the anchor, the last logged touchpoint, or the last missed due date.
    base: datetime
    next_due: datetime
    reminded: bool = False
    announced: bool = False
    logged: int = 0
    missed: int = 0
    last_logged_at: datetime | None = None


class AppointmentState(Payload):
    label: str
    # The field's value it was planned from: a date-only value names a moment at the time of day it was set, so
    # only a new value (not a later time of day) re-plans it.
    value: str
    at: datetime
    # When this value was set: reminders whose time had already passed then are skipped, not sent late.
    planned_at: datetime
    # Indexes of the appointment's reminders already sent (or skipped) for this value.
    sent: list[int] = []


class FormRecord(Payload):
    values: dict[str, Any]
    submitted_at: datetime
    by: Actor | None = None
    count: int = 1


class TransitionRecord(Payload):
    from_stage: str | None
    to_stage: str
    at: datetime
    actor: Actor | None = None
    trigger: str
    reason: str | None = None


class LifecycleState(Payload):
    deal_id: str
    started_at: datetime
    fields: dict[str, Any] = {}
    forms: dict[str, FormRecord] = {}
    stage: str
    stage_entered_at: datetime
    stage_visit: int = 1
    # Events received while in the current stage (name -> when); cleared on every stage change.
    stage_events: dict[str, datetime] = {}
    # Ids of external events already applied, so a redelivered webhook is a no-op (bounded, newest last).
    seen_event_ids: list[str] = []
    tasks: dict[str, TaskState] = {}
    deadline: DeadlineState | None = None
    cadence: CadenceState | None = None
    # The current stage's appointments, keyed by the field holding each (e.g. 'deal.next_meeting_at').
    appointments: dict[str, AppointmentState] = {}
    # Lifecycles this one started (playbook -> deal id): a hand-off happens once per playbook.
    linked: dict[str, str] = {}
    # The workflow id of the lifecycle that handed this one off (its parent), which `notify` actions tell.
    handed_off_by: str | None = None
    # Events already sent to it: each once, however often its action runs.
    notified: list[str] = []
    outcome: str | None = None
    close_reason: str | None = None
    history: list[TransitionRecord] = []
    seq: int = 0
    run: int = 1
    run_started_at: datetime


class LifecycleInput(Payload):
    """The pinned playbook travels with every run: editing the YAML never changes a running client."""

    deal_id: str = Field(pattern=DEAL_ID_PATTERN)
    playbook: Playbook
    fields: dict[str, Any] = {}
    actor: Actor | None = None
    state: LifecycleState | None = None
    # Playbook time per real time: 1 in production; 86400 runs a playbook day in a second (demos, chaos runs).
    time_scale: float = Field(default=1, ge=1)
    # Timeline entries the records store refused (RecordRefused), carried over continue-as-new to be offered again
    # with the next batch: the store is a projection that must catch up once it is fixed, not lose them.
    unrecorded: list[JournalEntry] = []


# --- updates, signals ------------------------------------------------------------------------------------------


class SubmitForm(Payload):
    form: str
    fields: dict[str, Any] = {}
    actor: Actor | None = None


class CompleteTask(Payload):
    task: str
    actor: Actor | None = None
    note: str | None = None


class Advance(Payload):
    to: str
    actor: Actor | None = None
    note: str | None = None


class SetFields(Payload):
    fields: dict[str, Any] = Field(min_length=1)
    actor: Actor | None = None


class Close(Payload):
    outcome: Literal["lost", "cancelled"]
    reason: str = Field(min_length=1, max_length=2000)
    stage: str | None = None
    fields: dict[str, Any] = {}
    actor: Actor | None = None


class MigratePlaybook(Payload):
    """Move a running client onto a newer version of its playbook (`sopflow migrate --to-version`)."""

    playbook: Playbook
    # Where a client in a stage the new version no longer has goes: old stage id -> new stage id.
    stage_map: dict[str, str] = {}
    actor: Actor | None = None


class ExternalEvent(Payload):
    name: str
    # The sender's id for this delivery (an envelope id + status, a webhook event id): repeats are ignored.
    event_id: str | None = None
    source: str | None = None
    data: dict[str, Any] = {}


# --- query -----------------------------------------------------------------------------------------------------


class TaskView(Payload):
    id: str
    title: str
    owner: str
    due_at: datetime | None = None
    overdue: bool = False
    blocked_by: list[str] = []


class DueView(Payload):
    kind: Literal["deadline", "task", "cadence", "appointment"]
    label: str
    due_at: datetime


class LifecycleStatus(Payload):
    deal_id: str
    playbook: str
    playbook_version: int
    stage: str
    stage_title: str
    stage_entered_at: datetime
    outcome: str | None = None
    close_reason: str | None = None
    owner: str | None = None
    open_tasks: list[TaskView] = []
    done_tasks: list[str] = []
    unmet_gate: list[str] = []
    advance_to: list[str] = []
    open_forms: list[str] = []
    events: list[str] = []
    # The events the current stage moves on (None: answered by a worker from before this field existed).
    awaited_events: list[str] | None = None
    forms_submitted: dict[str, datetime] = {}
    due: list[DueView] = []
    fields: dict[str, Any] = {}
    history: list[TransitionRecord] = []
    linked: dict[str, str] = {}
    run: int = 1
    # The deal's IANA zone, in which people read its times (None: the playbook has none, times are UTC).
    timezone: str | None = None


class UpdateResult(BaseModel):
    """What an update answers: where the deal is now, what this request changed and what is still needed.

    Temporal writes every update's answer into the lifecycle's history and each one is converted twice (worker and
    client), so it carries only what the one who made the change reads next; the full `LifecycleStatus` (tasks,
    fields, history, due dates: 1-3 KB) is the `status` query's. Unknown fields are ignored, and the ones this
    version added have defaults, so a client of this version also reads the full status that a worker from before
    answered updates with (deploy clients before workers: the README's "Versioning" section).
    """

    model_config = ConfigDict(extra="ignore")

    deal_id: str
    playbook_version: int
    stage: str
    stage_title: str
    outcome: str | None = None
    # The stage this request moved the deal out of (None: it stayed), and the kinds of the timeline entries it
    # wrote, in order (`sopflow deal timeline` shows them whole).
    moved_from: str | None = None
    changes: list[str] = []
    # What is still needed: the current stage's unmet gate, its forms and the open tasks' ids.
    unmet_gate: list[str] = []
    open_forms: list[str] = []
    open_task_ids: list[str] = []


# --- activities ------------------------------------------------------------------------------------------------


class LinkedStart(Payload):
    """A hand-off to another playbook: the workflow loads that playbook and starts its lifecycle as a child."""

    playbook: str
    deal_id: str = Field(pattern=DEAL_ID_PATTERN)
    fields: dict[str, Any] = {}
    actor: Actor | None = None


class Recipient(Payload):
    role: str
    email: str
    name: str | None = None


class EmailRequest(Payload):
    # Idempotency key: workflow id + step, stable across retries and continue-as-new (never the run id).
    key: str
    workflow_id: str
    deal_id: str
    playbook: str
    template: str
    at: datetime
    to: list[Recipient]
    cc: list[Recipient] = []
    reply_to: Recipient | None = None
    context: dict[str, Any] = {}
    attachments: list[str] = []


class EmailResult(Payload):
    status: Literal["sent", "partial", "already_sent"]
    subject: str
    message_id: str
    # Recipients the server refused permanently while accepting the others.
    refused: list[str] = []


JournalKind = Literal[
    "stage",
    "email",
    "task",
    "reminder",
    "escalation",
    "rejected",
    "visit_due",
    "form",
    "fields",
    "event",
    "continued_as_new",
    "linked",
    "appointment",
    "migrated",
    "notified",
    # A rule raised something other than a refusal (a bug): the request or timer changed nothing, and staff see why.
    "error",
]


class JournalEntry(Payload):
    """One line of a client's timeline, written to the records store and printed by `rehearse`."""

    seq: int
    at: datetime
    kind: JournalKind
    stage: str
    detail: dict[str, Any] = {}


class ContactView(Payload):
    role: str
    email: str | None = None
    name: str | None = None


class DealSnapshot(Payload):
    """Where the deal stands after a batch of entries: the records' `deals` row mirrors it."""

    playbook_version: int
    stage: str
    stage_title: str
    stage_entered_at: datetime
    owner: str | None = None
    next_due: datetime | None = None
    next_visit_due: datetime | None = None
    visit_label: str | None = None
    deadline_label: str | None = None
    deadline_due: datetime | None = None
    meeting_label: str | None = None
    meeting_at: datetime | None = None
    outcome: str | None = None
    started_at: datetime
    contacts: list[ContactView] = []
    # The deal's IANA zone (None: a playbook without one, UTC), so reports show each deal's local times.
    timezone: str | None = None
    # The client's company as the deal names it (`views.company`), for the web board.
    company: str | None = None


# The fields of a batch (`JournalBatch`) only a local record carries: they are written only when set.
BATCH_LOCAL_FIELDS = ("state", "as_of", "playbook_hash", "playbook_version", "pinned", "history_length")


class JournalBatch(Payload):
    """One `record_journal` call: timeline entries, the deal's snapshot when it changed, and, in a local record
    only, the engine's whole state (what `sopflow forecast` starts a client from, `sopflow.forecast_source`).

    The state rides only on local records because a local activity's input is never written to history (only its
    result marker is): keeping every client's state in the records store then costs no history bytes, and lets the
    forecast read 10,000 clients from SQL instead of querying 10,000 workflows. A regular record's input is in
    history, so it never carries the state (`workflows.calls.record_batch` strips it on the fallback); the stored
    state then lags behind the journal until the next local record, which the forecast sees by its `seq`.
    """

    workflow_id: str
    deal_id: str
    playbook: str
    entries: list[JournalEntry]
    snapshot: DealSnapshot | None = None
    # The engine's state after this batch's entries (local records only), and the workflow (playbook) time it was
    # taken at: where a forecast of this client starts.
    state: LifecycleState | None = None
    as_of: datetime | None = None
    # The run's pinned playbook, named by `sopflow.playbook.playbook_hash` and its version, sent with `state`.
    playbook_hash: str | None = None
    playbook_version: int | None = None
    # The pinned playbook itself, in the first local record of each run and the first after a migration, so the
    # store holds the exact playbook each client runs (once per hash: `pinned_playbooks`).
    pinned: Playbook | None = None
    # The run's history length in the workflow task the local record runs in (`decided_at`). A task can write its
    # local record and then fail to complete (its worker killed, the server restarted); its next attempt sees more
    # history (new signals, applied first) and may number its entries differently, and its record must replace what
    # the failed attempt wrote (`activities.records.supersedes`). A regular record's batch comes from a completed task
    # and carries none.
    history_length: int | None = None

    @model_serializer(mode="wrap")
    def _without_absent_state(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leave the state fields out when unset, so a batch without them is the very JSON it was before they
        existed: a regular record's input in history stays byte for byte as it was, and an activity worker of the
        version before (whose model forbids unknown fields) still reads it while a deploy rolls."""
        data: dict[str, Any] = handler(self)
        for name in BATCH_LOCAL_FIELDS:
            if data.get(name, 0) is None:
                del data[name]
        return data

    @property
    def decided_at(self) -> tuple[int, int] | None:
        """Where in the workflow's history this batch was decided, (run, history length), for a local record; None
        for a regular one. Later attempts of a workflow task see longer histories, and later runs come after earlier
        ones whatever their lengths, so the pair orders two records of one workflow as they happened."""
        if self.state is None or self.history_length is None:
            return None
        return self.state.run, self.history_length

    @model_validator(mode="after")
    def _state_named(self) -> JournalBatch:
        """A state is stored with the time it was taken and the playbook it runs on (`lifecycle_states`)."""
        if self.state is not None and None in (self.as_of, self.playbook_hash, self.playbook_version):
            raise ValueError("a batch's state comes with as_of, playbook_hash and playbook_version")
        return self


class ClientSeed(Payload):
    """What the forecast (`sopflow forecast`) starts one client from: its engine state, the playbook it runs (the
    pinned one, which may be older or newer than the YAML file) and the workflow (playbook) time the state was taken
    at, from which the forecast simulates forward. Read from the records store (`sopflow.forecast_source`), or asked
    of the lifecycle itself (the `forecast_seed` query) when the stored state is behind."""

    workflow_id: str
    deal_id: str
    playbook: Playbook
    state: LifecycleState
    as_of: datetime


class ClaimRequest(Payload):
    playbook: str
    account_key: str
    deal_id: str
    at: datetime


class ClaimResult(Payload):
    granted: bool
    holder_deal_id: str | None = None


# --- the morning digest (sopflow.digest) ----------------------------------------------------------------------------


class MorningDigestInput(Payload):
    """`MorningDigest`'s input. Empty when the schedule starts it (the scheduled time comes from the run itself); a
    manual run may name the hour to send for."""

    at: datetime | None = None


class DigestRun(Payload):
    """The hour the digests are sent for: the schedule's time, not the moment a worker got to it."""

    at: datetime


class DigestOutcome(Payload):
    """How many people a digest run reached, by what became of each: counts only, never who."""

    due: int = 0
    sent: int = 0
    already_sent: int = 0
    nothing_due: int = 0
    opted_out: int = 0
    failed: int = 0
