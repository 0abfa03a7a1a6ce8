"""What each kind of timeline entry carries: one model per `JournalEntry.kind` describing its `detail`.

`JournalEntry.detail` stays a plain dict because it is what history holds: it travels in activity inputs (the
records batch) and in the continue-as-new input (`unrecorded`), and recorded histories must keep replaying. The
models here describe that dict exactly: field names and types as the engine has always written them (moments as ISO
text, `datetime.isoformat()`), so `stored()` of a model gives the very dict, key order included, that was stored
before these models existed. Writers build a model and store `stored()`; readers call `detail_of(entry)` (or
`parse_detail` for a journal row read back from the database) and get typed attributes instead of string keys.

Compatibility, both ways:
- Writing is strict (`extra="forbid"`): a misspelt field is a type error for mypy and a validation error at runtime,
  never a new key silently written into history.
- Reading is tolerant: a key this version does not know (a newer version added it) is readable in `model_extra`
  (`stored()` writes only the fields described here; only the engine's own fresh entries are ever written back). A
  kind this version does not know gives `UnknownDetail` with every key, so a reader never crashes on it: it skips it
  (the records projection) or shows it as written (the audit trail). `JournalEntry.kind` is a closed `Literal`, so
  in practice such a kind reaches a reader as a journal row read back from the database (a newer version wrote it,
  and this one was rolled back to).
- A known kind whose detail does not fit its model is corrupt data, not a newer version: `parse_detail` raises
  pydantic's `ValidationError`, so the records projection never silently drops, say, a stage transition. (The audit
  trail catches it and shows that row as written.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from sopflow.models import Actor, JournalEntry, JournalKind

# Moments are stored as ISO 8601 text (`datetime.isoformat()`, UTC offset included): that is the type history holds,
# so the models keep it as text; a datetime field would put a datetime object (python mode) or pydantic's own text
# ('Z' for UTC, json mode) into the dict instead. Readers parse it where they need a moment.
IsoMoment = str


class Detail(BaseModel):
    """Base of every entry detail. `stored()` is the dict a `JournalEntry` keeps."""

    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    def stored(self) -> dict[str, Any]:
        """The detail as history keeps it: unset (None) keys left out, as the engine always did; values as given
        (python mode: a form's values keep their own types); aliases (`from`) as the key names."""
        return self.model_dump(mode="python", by_alias=True, exclude_none=True)


class KnownDetail(Detail):
    """The detail of a kind this version writes; `kind` is the `JournalEntry.kind` it belongs to."""

    kind: ClassVar[JournalKind]


class StageDetail(KnownDetail):
    """A move into a stage: the stage transitions table and time-in-stage are built from these."""

    kind: ClassVar[JournalKind] = "stage"
    from_: str | None = Field(default=None, alias="from")
    """The stage left; absent for the lifecycle's first stage (nothing was left)."""
    to: str
    """The stage entered."""
    trigger: str
    """Why it moved: 'start', 'advance', 'close', 'deadline', 'migration', 'condition', 'form:<id>', 'event:<name>'."""
    reason: str | None = None
    """A person's note (advance, close) or the playbook's (deadline expiry): shown in the audit trail."""
    by: Actor | None = None
    """Who moved it; absent when the lifecycle moved by itself."""


class FormDetail(KnownDetail):
    """A form submitted; when the form is the stage's cadence touchpoint, also the visit it logs."""

    kind: ClassVar[JournalKind] = "form"
    form: str
    """The form's id in the playbook."""
    count: int
    """How many times this form has been submitted, this one included: a resubmission replaces the values."""
    by: Actor | None = None
    """Who submitted it."""
    values: dict[str, Any] | None = None
    """The submitted values as checked: free-form by design, their shape is the playbook's form, not the engine's.
    Absent from entries written before values were journaled (recorded histories hold some)."""
    next_due: IsoMoment | None = None
    """Touchpoint only: when the next visit is due now that this one is logged (older entries have only this)."""
    logged_at: IsoMoment | None = None
    """Touchpoint only: when the visit took place (the form's date field, else the submission)."""
    touchpoint: str | None = None
    """Touchpoint only: the cadence's label; its presence is what makes the records log a visit."""


class TaskDetail(KnownDetail):
    """A task opened, done or rescheduled; the records keep one row per opening and update it from the others."""

    kind: ClassVar[JournalKind] = "task"
    task: str
    """The task's id in the stage (or a fix-the-address task's generated id)."""
    title: str | None = None
    """Opened only: what to do, for the tasks table."""
    status: str
    """'opened', 'done' or 'rescheduled' (text, so a status added later still reads)."""
    by: Actor | None = None
    """Done only: who completed it."""
    owner: str | None = None
    """Opened and rescheduled: the role that owns it."""
    due_at: IsoMoment | None = None
    """Opened and rescheduled: when it falls due; absent for a task without a due date."""
    occurrence: int | None = None
    """Opened only, from the second time a task due at a moment opens again (a meeting booked again)."""


class EmailDetail(KnownDetail):
    """An email queued (roles only, never addresses), then its outcome once the email activity answered."""

    kind: ClassVar[JournalKind] = "email"
    template: str
    """The template sent."""
    to: list[str]
    """Roles addressed, each once; a role without an address is in `missing_roles` instead."""
    cc: list[str]
    """Roles copied."""
    missing_roles: list[str] | None = None
    """Roles that had no address when the email was queued: someone must fill them in."""
    status: str | None = None
    """'skipped' (nobody to send to), then from the activity: 'sent', 'partial', 'already_sent' or 'failed'; absent
    while the email is in flight."""
    reason: str | None = None
    """Skipped only: why (the roles without an address)."""
    subject: str | None = None
    """Sent: the rendered subject, for the audit trail."""
    message_id: str | None = None
    """Sent: the Message-ID, to find the email in a mailbox."""
    refused: int | None = None
    """Partially sent: how many recipients the server refused (their fix-the-address task follows)."""
    error: str | None = None
    """Failed: why it was not sent."""


class EventDetail(KnownDetail):
    """An external event received: accepted, or ignored with the reason (signals cannot be refused)."""

    kind: ClassVar[JournalKind] = "event"
    event: str
    """The event's name."""
    source: str | None = None
    """Who sent it (a webhook, the CLI), when the sender said."""
    status: str
    """'accepted' or 'ignored'."""
    reason: str | None = None
    """Ignored only: why (unknown, not expected in this stage, already received)."""


class FieldsDetail(KnownDetail):
    """Deal fields changed, by a person or by the playbook (actions, classification)."""

    kind: ClassVar[JournalKind] = "fields"
    changed: list[str]
    """The names changed, sorted: the values may be personal data and are mostly not repeated here."""
    by: Actor | None = None
    """Who changed them: a person, or 'playbook'."""
    values: dict[str, Any] | None = None
    """Classification only: the computed values (a tier and its explanation), so staff see why."""


class ReminderDetail(KnownDetail):
    """A reminder: a task overdue, a deadline, a cadence visit or an appointment coming up. One of `task`,
    `deadline`, `cadence` or `appointment` says which."""

    kind: ClassVar[JournalKind] = "reminder"
    task: str | None = None
    """Task overdue: the task's id."""
    owner: str | None = None
    """Task overdue: the role that owns the task."""
    reason: str | None = None
    """Task overdue: 'task overdue'."""
    deadline: str | None = None
    """Deadline reminder: the deadline's label."""
    cadence: str | None = None
    """Visit reminder: the cadence's label."""
    appointment: str | None = None
    """Appointment reminder: the appointment's label."""
    due_at: IsoMoment | None = None
    """Deadline, visit or appointment: when it is due (or starts)."""


# An undeliverable email's escalation has always been written in this key order (the others keep field order).
_UNDELIVERABLE_ORDER = ("template", "roles", "owner", "task")


class EscalationDetail(KnownDetail):
    """An escalation: a task overdue past its grace, a cadence visit missed, or an email that could not be delivered
    (which opens a fix-the-address task). `template` marks the last, `cadence` the second, else a task."""

    kind: ClassVar[JournalKind] = "escalation"
    task: str | None = None
    """Task overdue: the task's id; undeliverable email: the fix-the-address task opened for it."""
    owner: str | None = None
    """The role that owns the task (overdue or fix-the-address)."""
    cadence: str | None = None
    """Visit missed: the cadence's label; its presence is what makes the records log a missed visit."""
    due_at: IsoMoment | None = None
    """Visit missed: when it was due."""
    template: str | None = None
    """Undeliverable email: the template that could not be delivered."""
    roles: list[str] | None = None
    """Undeliverable email: the roles it did not reach."""
    reason: str | None = None
    """'task overdue', 'missed', or why the email was not delivered."""

    @model_serializer(mode="wrap")
    def _stored_order(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Undeliverable-email escalations were written template, roles, owner, task first: history keeps that."""
        data: dict[str, Any] = handler(self)
        if self.template is None:
            return data
        first = {key: data.pop(key) for key in _UNDELIVERABLE_ORDER if key in data}
        return {**first, **data}


class VisitDueDetail(KnownDetail):
    """A cadence visit fell due: the records log it as due, so the visits report sees it coming."""

    kind: ClassVar[JournalKind] = "visit_due"
    cadence: str
    """The cadence's label."""
    due_at: IsoMoment
    """When the visit is due."""


class LinkedDetail(KnownDetail):
    """A hand-off to another playbook's lifecycle: requested, then its outcome once the workflow started it."""

    kind: ClassVar[JournalKind] = "linked"
    playbook: str
    """The playbook handed off to."""
    deal_id: str
    """The linked lifecycle's deal id (derived from this one)."""
    status: str
    """'requested', then 'started', 'already started' or 'failed'."""
    workflow_id: str | None = None
    """Started: the linked lifecycle's workflow id."""
    error: str | None = None
    """Failed: why."""


class NotifiedDetail(KnownDetail):
    """An event sent to the lifecycle that handed this one off (a `notify` action), then its outcome."""

    kind: ClassVar[JournalKind] = "notified"
    event: str
    """The event sent."""
    status: str
    """'requested', then 'sent' or 'failed'."""
    workflow_id: str | None = None
    """The lifecycle told (its workflow id)."""
    error: str | None = None
    """Failed: why (the lifecycle told has ended)."""


class MigratedDetail(KnownDetail):
    """The lifecycle moved onto a newer version of its playbook."""

    kind: ClassVar[JournalKind] = "migrated"
    from_version: int
    """The version it ran."""
    to_version: int
    """The version it runs now."""
    by: Actor | None = None
    """Who migrated it."""


class ContinuedAsNewDetail(KnownDetail):
    """A new run of the same lifecycle began (continue-as-new keeps history small)."""

    kind: ClassVar[JournalKind] = "continued_as_new"
    run: int
    """The new run's number, counting from 1."""


class ErrorDetail(KnownDetail):
    """A rule raised something other than a refusal (a bug): nothing changed, and staff see why in the timeline."""

    kind: ClassVar[JournalKind] = "error"
    during: str
    """What was being applied: a request's name or a timer's summary."""
    error: str
    """The exception's type name."""
    message: str | None = None
    """The exception's message, cut to a few hundred characters; absent when it had none."""


class RejectedDetail(KnownDetail):
    """The engine refused to go on by itself (automatic transitions looping): the playbook needs fixing."""

    kind: ClassVar[JournalKind] = "rejected"
    reason: str
    """What was refused and what to check."""


class AppointmentDetail(KnownDetail):
    """An appointment planned (or moved) from a date field: its reminders are armed from here."""

    kind: ClassVar[JournalKind] = "appointment"
    label: str
    """The appointment's label."""
    starts_at: IsoMoment
    """When it starts."""
    skipped_reminders: list[int] | None = None
    """Indexes of its reminders whose time had already passed when it was planned: skipped, not sent late."""


class UnknownDetail(Detail):
    """The detail of a kind this version does not know (written by a newer one): every key kept as stored, in
    `model_extra`, so a reader can skip it or show it as it is."""

    model_config = ConfigDict(extra="allow")


DETAILS: Mapping[str, type[KnownDetail]] = {
    model.kind: model
    for model in (
        StageDetail,
        FormDetail,
        TaskDetail,
        EmailDetail,
        EventDetail,
        FieldsDetail,
        ReminderDetail,
        EscalationDetail,
        VisitDueDetail,
        LinkedDetail,
        NotifiedDetail,
        MigratedDetail,
        ContinuedAsNewDetail,
        ErrorDetail,
        RejectedDetail,
        AppointmentDetail,
    )
}
"""Each kind's detail model: the one place a kind's shape is described."""


def parse_detail(kind: str, detail: Mapping[str, Any]) -> Detail:
    """A stored detail as its kind's model (an entry's, or a journal row's read back from the database).

    Unknown keys are kept (`model_extra`) and an unknown kind gives `UnknownDetail`: see the module docstring.
    Raises pydantic's `ValidationError` when a known kind's detail does not fit its model.
    """
    model = DETAILS.get(kind)
    if model is None:
        return UnknownDetail.model_validate(dict(detail))
    return model.model_validate(detail, extra="allow")


def detail_of(entry: JournalEntry) -> Detail:
    """An entry's detail as its kind's model; narrow it with `isinstance` (`StageDetail`, ...). Parsed on each call:
    it is cheap, and an entry's detail changes once the outcome of its email or hand-off is known, so a cache could
    go stale."""
    return parse_detail(entry.kind, entry.detail)


D = TypeVar("D", bound=Detail)


def detail_as(entry: JournalEntry, model: type[D]) -> D:
    """An entry's detail as `model`, for a caller that knows the kind (the engine updating its own email or hand-off
    entry with the outcome); a `TypeError` if the entry is of another kind."""
    detail = detail_of(entry)
    if not isinstance(detail, model):
        raise TypeError(f"entry {entry.seq} is a {entry.kind!r} entry, not {model.__name__}")
    return detail
