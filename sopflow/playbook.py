"""The playbook: an SOP written as data, validated before any client runs on it.

A playbook is pinned into each workflow's input, so this schema is also a wire format: every model must round-trip
through JSON unchanged (aliases are serialised by alias, durations as text).

Validation has two layers. Pydantic checks shape and types here; `sopflow.playbook_checks` (`load_playbook`,
`check_references`, ...) then checks that every name used somewhere (a form in a gate, a role in an email, a stage
in a transition, a template on disk) exists. Both report errors with a path such as `stages[2].gate.forms[0]`, so
an SOP author can find the line at fault.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import date, time
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from sopflow.durations import Duration, parse_duration

FieldType = Literal[
    "text", "email", "emails", "date", "datetime", "number", "money", "choice", "multi_choice", "bool", "timezone"
]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# A task's due moment stated as a day rather than a span: the end of the day it opens on ("same day"), or of the
# business day (after hours or on a day off: the end of the next business day).
DueForm = Literal["end_of_day", "end_of_business_day"]
Outcome = Literal["won", "lost", "expired", "cancelled"]
TEMPLATE_PARTS = ("subject.txt", "body.txt", "body.html")

_ID = r"^[a-z][a-z0-9_]*$"
Ident = Annotated[str, Field(pattern=_ID, max_length=64)]
# A reference to a value in a deal's context: a deal field, a submitted form's field, or a playbook setting.
Ref = Annotated[
    str, Field(pattern=r"^(deal\.[a-z][a-z0-9_]*|forms\.[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*|settings\.[a-z][a-z0-9_]*)$")
]


class Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )

    @model_serializer(mode="wrap")
    def _as_written(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Serialise only what the author wrote: the pinned snapshot stays small and re-validates identically."""
        data = handler(self)
        fields = type(self).model_fields
        written = {fields[name].alias or name for name in self.model_fields_set}
        return {key: value for key, value in data.items() if key in written}


class FieldSpec(Model):
    """One typed field of a form or of the deal record."""

    type: FieldType = "text"
    label: str | None = None
    required: bool = False
    options: list[str] | None = None
    # A text field's shape, as a regular expression the whole value must match (Salesforce's
    # "MM/DD/YY_Initials:Action"): `format` says it in words and `example` shows one, so a refusal tells the person
    # what to type. The regex is compiled and the example matched when the playbook is loaded (`playbook_checks`).
    pattern: str | None = Field(default=None, max_length=500)
    format: str | None = Field(default=None, max_length=200)
    example: str | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _options_match_type(self) -> FieldSpec:
        if self.type in ("choice", "multi_choice") and not self.options:
            raise ValueError(f"a {self.type} field needs 'options'")
        if self.type not in ("choice", "multi_choice") and self.options is not None:
            raise ValueError(f"'options' only apply to choice and multi_choice fields, not {self.type}")
        if self.type != "text" and self.pattern is not None:
            raise ValueError(f"'pattern' only applies to text fields, not {self.type}")
        if self.pattern is None and (self.format is not None or self.example is not None):
            raise ValueError("'format' and 'example' describe a 'pattern'; add one")
        return self


class FormSpec(Model):
    title: str | None = None
    fields: dict[Ident, FieldSpec]
    # Site-visit style forms are logged again and again; most forms are filled once and then corrected.
    repeatable: bool = False
    # Submitting this form claims an account for the deal, keyed by this field; another deal cannot claim it.
    claims: Ident | None = None
    # The role a refused claim tells the rep to contact, with its address ("contact the partner manager").
    claim_contact: Ident | None = None
    on_submit: list[Action] = []


class RoleSpec(Model):
    """A role is resolved from deal data at run time, so playbooks never name people."""

    email: Ref
    name: Ref | None = None
    # An opaque owner/team id (a CRM user id), safe for search attributes where a name or email is not.
    id: Ref | None = None


class Condition(Model):
    """A test on the deal's context: one field operator, or a combination with all/any/not."""

    field: Ref | None = None
    equals: Any = None
    in_: list[Any] | None = Field(default=None, alias="in")
    is_set: bool | None = None
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None
    all: list[Condition] | None = None
    any: list[Condition] | None = None
    not_: Condition | None = Field(default=None, alias="not")

    @model_validator(mode="after")
    def _one_test(self) -> Condition:
        operators = [
            name for name in ("equals", "in_", "is_set", "gt", "gte", "lt", "lte") if name in self.model_fields_set
        ]
        combinators = [name for name in ("all", "any", "not_") if name in self.model_fields_set]
        if self.field is not None:
            if len(operators) != 1 or combinators:
                raise ValueError("a field condition needs exactly one of equals, in, is_set, gt, gte, lt, lte")
        elif len(combinators) != 1 or operators:
            raise ValueError("a condition needs 'field' with one operator, or exactly one of all, any, not")
        return self

    def refs(self) -> Iterator[str]:
        if self.field is not None:
            yield self.field
        for child in (self.all or []) + (self.any or []) + ([self.not_] if self.not_ else []):
            yield from child.refs()


class Attachment(Model):
    """A file of `templates/<playbook>/attachments/`, attached when `when` holds: `file` is a path inside that
    folder, checked by `playbook_checks.attachment_file` (not here: a pinned playbook re-validates on every replay,
    and one pinned before the check existed must still load; the email activity refuses its bad paths at send time)."""

    file: str
    when: Condition | None = None


class EmailAction(Model):
    template: Ident
    to: list[Ident] = Field(min_length=1)
    cc: list[Ident] = []
    # The role the email is sent on behalf of (Reply-To), e.g. the account manager's welcome email.
    from_role: Ident | None = None
    when: Condition | None = None
    attach: list[Attachment] = []


class StartLifecycle(Model):
    """A hand-off: start another playbook's lifecycle for the same client (Closed Won -> onboarding).

    The linked lifecycle's deal id is `<this deal id>.<playbook>`, so a hand-off retried or replayed finds the
    lifecycle it already started instead of starting a second one.
    """

    playbook: Ident
    # The new lifecycle's deal fields, each copied from this deal's context.
    fields: dict[Ident, Ref] = {}


class Notify(Model):
    """Tell the lifecycle that handed this one off (its `start_lifecycle`) that something happened, as an event it
    receives like `sopflow deal event`: a lost deal returns its lead to Recycled. Delivered once per lifecycle and
    event; a lifecycle nobody handed off has nobody to tell and does nothing."""

    event: Ident


class Action(Model):
    """What a stage entry or a form submission does: send an email, set deal fields to fixed values, copy values
    into deal fields (a form's meeting date becomes the deal's next meeting), start a linked lifecycle, or notify
    the lifecycle that started this one."""

    email: EmailAction | None = None
    set: dict[Ident, Any] | None = None
    copy_: dict[Ident, Ref] | None = Field(default=None, alias="copy")
    start_lifecycle: StartLifecycle | None = None
    notify: Notify | None = None
    when: Condition | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Action:
        kinds = [self.email, self.set, self.copy_, self.start_lifecycle, self.notify]
        if sum(kind is not None for kind in kinds) != 1:
            raise ValueError("an action is exactly one of 'email', 'set', 'copy', 'start_lifecycle' or 'notify'")
        return self


class Escalation(Model):
    after: Duration = Duration()
    email: EmailAction


class Moment(Model):
    """A moment relative to a date/time field: `{of: deal.call_at, before: 1h}`; neither offset means the moment."""

    of: Ref
    before: Duration | None = None
    after: Duration | None = None

    @model_validator(mode="after")
    def _one_offset(self) -> Moment:
        if self.before is not None and self.after is not None:
            raise ValueError("a moment is 'before' or 'after' its field, not both")
        return self


class TaskSpec(Model):
    """A task opens when its stage is entered, due `due` after entry; an overdue task reminds, then escalates.

    A task with `due_at` instead belongs to each value of a date field (a meeting, a call): it opens once that field
    is set, moves with it, and opens again for the next value after it was done, so "prepare for the meeting" recurs
    for every meeting.
    """

    id: Ident
    title: str
    owner: Ident
    due: DueForm | Duration | None = None
    due_at: Moment | None = None
    when: Condition | None = None
    requires: list[Ident] = []
    remind: EmailAction | None = None
    escalate: Escalation | None = None

    @field_validator("due", mode="wrap")
    @classmethod
    def _due_form_or_span(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """One message for a bad `due`, naming both accepted forms, instead of one per member of the union."""
        if isinstance(value, str) and value.strip() not in get_args(DueForm):
            try:
                parse_duration(value)
            except ValueError as exc:
                raise ValueError(f"{exc}; or end_of_day, end_of_business_day") from None
        return handler(value)

    @model_validator(mode="after")
    def _one_due(self) -> TaskSpec:
        if self.due is not None and self.due_at is not None:
            raise ValueError("a task is 'due' after stage entry or 'due_at' a moment, not both")
        return self


class GateCheck(Model):
    condition: Condition
    message: str


class Gate(Model):
    """What must be true before a client may leave a stage (other than by closing or a deadline expiring)."""

    fields: list[Ref] = []
    forms: list[Ident] = []
    tasks: Literal["all"] | list[Ident] = []
    checks: list[GateCheck] = []


class Transition(Model):
    """Where a stage leads. `advance` is a staff decision; form/event/when fire by themselves once the gate is met."""

    to: Ident
    advance: bool = False
    form: Ident | None = None
    event: Ident | None = None
    when: Condition | None = None
    # Leave without meeting the gate: the way out of a deal that is lost, whatever the stage still needed.
    skip_gate: bool = False

    @model_validator(mode="after")
    def _one_trigger(self) -> Transition:
        triggers = sum([self.advance, self.form is not None, self.event is not None])
        if triggers > 1:
            raise ValueError("a transition has one trigger: advance, form or event (plus an optional 'when')")
        if triggers == 0 and self.when is None:
            raise ValueError("a transition needs a trigger: advance: true, form, event, or when")
        return self


class Reminder(Model):
    before: Duration
    email: EmailAction


class Expiry(Model):
    to: Ident
    reason: str = "deadline expired"
    email: list[EmailAction] = []


class Deadline(Model):
    """ "Must happen within N of X": leaving the stage in time meets it; otherwise the client moves on expiry."""

    label: str = "deadline"
    within: Duration
    # A date field to count from; by default the moment the stage was entered.
    from_: Ref | None = Field(default=None, alias="from")
    remind: list[Reminder] = []
    on_expiry: Expiry


class Phase(Model):
    every: Duration
    # Measured from the anchor; the last phase has no end.
    until: Duration | None = None


class CadenceReminder(Model):
    before: Duration
    email: EmailAction


class Overdue(Model):
    grace: Duration
    email: EmailAction


class Cadence(Model):
    """Recurring touchpoints (site visits, reviews) logged by submitting a form."""

    label: str = "touchpoint"
    # What each touchpoint is, in turn (topic meeting, book meeting, ..., annual review); the list repeats.
    names: list[str] = []
    touchpoint: Ident
    # The form field holding the actual date of the touchpoint; by default the submission time counts.
    date_field: Ident | None = None
    anchor: Ref | None = None
    phases: list[Phase] = Field(min_length=1)
    remind: CadenceReminder | None = None
    overdue: Overdue | None = None

    @field_validator("phases")
    @classmethod
    def _only_last_phase_is_open(cls, phases: list[Phase]) -> list[Phase]:
        for index, phase in enumerate(phases[:-1]):
            if phase.until is None:
                raise ValueError(f"phase {index} needs 'until': only the last phase may run forever")
        return phases


class Appointment(Model):
    """A scheduled moment held in a date/time field (the next client meeting), with reminders before it.

    Rescheduling (a new value) re-arms every reminder; a reminder whose time had already passed when the
    appointment was set is skipped, so booking a meeting for tomorrow does not send the week-before reminder.
    """

    label: str = "appointment"
    at: Ref
    remind: list[Reminder] = Field(min_length=1)


class Classifier(Model):
    """Places a client in a tier (A/B/C) from its profile; see `sopflow.classify` for the rule.

    `criteria` are the rows of a service model (net worth, income, ...): for each row, one condition per tier, best
    tier first, in the order of the target field's options.
    """

    criteria: dict[Ident, dict[str, Condition]] = Field(min_length=1)
    # Fewer known rows than this leave the tier unset: a guess from one number is worse than none.
    min_known: int = Field(default=1, ge=1)
    # A text deal field that receives the reasoning ("A on 3 of 8 rows, B on 4 ..."), shown to the person confirming.
    explain: Ident | None = None


class Stage(Model):
    id: Ident
    title: str | None = None
    owner: Ident | None = None
    terminal: Outcome | None = None
    # Deal fields a close into this terminal stage must provide (e.g. lost reason category and details).
    reason_fields: list[Ident] = []
    # What must hold for a close into this terminal stage, on the deal's fields with the close's own: an SOP that
    # names when an outcome applies ("backed out *after a contract is signed*") refuses it otherwise, naming why.
    close_checks: list[GateCheck] = []
    on_enter: list[Action] = []
    forms: list[Ident] = []
    tasks: list[TaskSpec] = []
    gate: Gate = Gate()
    transitions: list[Transition] = []
    deadline: Deadline | None = None
    cadence: Cadence | None = None
    appointments: list[Appointment] = []
    # Reports call a client stalled after this long in the stage.
    stall_after: Duration | None = None

    @property
    def name(self) -> str:
        return self.title or self.id.replace("_", " ").capitalize()

    def task(self, task_id: str) -> TaskSpec | None:
        return next((task for task in self.tasks if task.id == task_id), None)


class Hours(Model):
    """A daily span of local time, `{start: "09:00", end: "17:00"}`."""

    start: time
    end: time

    @model_validator(mode="after")
    def _ordered(self) -> Hours:
        if self.start >= self.end:
            raise ValueError(f"start {self.start:%H:%M} must be before end {self.end:%H:%M}")
        return self


class Holidays(Model):
    """Days off besides the weekend: a country's public holidays from the pinned `holidays` package (by ISO code
    and subdivision, `{country: US, subdivision: NY}`), plus the company's own `extra` dates. A `file:` of dates,
    one per line, is read into `extra` when the playbook is loaded, so the pinned playbook carries the dates."""

    country: str | None = Field(default=None, pattern=r"^[A-Z]{2,3}$")
    subdivision: str | None = Field(default=None, max_length=16)
    extra: list[date] = []


class SendWindow(Hours):
    """When reminders, escalations and overdue notices may go out, in the deal's local time: one falling outside is
    held to the next opening (on business days, unless `days: every_day`)."""

    days: Literal["business", "every_day"] = "business"


class BusinessCalendar(Model):
    """Working days, working hours and holidays: what business days (`3bd`), business hours (`4bh`) and
    `end_of_business_day` count, in the deal's time zone."""

    working_days: list[Weekday] = Field(default=["mon", "tue", "wed", "thu", "fri"], min_length=1)
    working_hours: Hours = Hours(start=time(9), end=time(17))
    holidays: Holidays = Holidays()
    send_window: SendWindow | None = None


class Playbook(Model):
    id: Ident
    version: int = Field(ge=1)
    title: str | None = None
    description: str | None = None
    # An IANA zone (America/New_York): with it, days are the client's local calendar days, dates are dates, and
    # business time counts; without it (playbooks written before zones), every rule keeps its UTC meaning.
    timezone: str | None = Field(default=None, max_length=64)
    # A deal field (type timezone) that overrides the playbook's zone for one client, e.g. set from the CRM.
    timezone_field: Ref | None = None
    calendar: BusinessCalendar | None = None
    settings: dict[Ident, str] = {}
    roles: dict[Ident, RoleSpec] = {}
    deal: dict[Ident, FieldSpec] = {}
    forms: dict[Ident, FormSpec] = {}
    events: dict[Ident, str] = {}
    # Deal fields computed from other deal fields whenever they change: target field -> classifier.
    classify: dict[Ident, Classifier] = {}
    stages: list[Stage] = Field(min_length=1)

    def stage(self, stage_id: str) -> Stage:
        for stage in self.stages:
            if stage.id == stage_id:
                return stage
        raise KeyError(stage_id)

    def has_stage(self, stage_id: str) -> bool:
        return any(stage.id == stage_id for stage in self.stages)

    def terminal_stages(self, outcome: str | None = None) -> list[Stage]:
        return [s for s in self.stages if s.terminal and (outcome is None or s.terminal == outcome)]


# One parsed copy of each playbook per process (see `shared`), by (id, version); a few copies per key at most.
_SHARED: dict[tuple[str, int], list[Playbook]] = {}
_COPIES_PER_VERSION = 4


def shared(playbook: Playbook) -> Playbook:
    """The process's one copy of a playbook equal to `playbook` (itself, the first time it is seen).

    Every lifecycle carries its pinned playbook in its input, and each parsed copy costs about 116 KB: a worker
    caching 10,000 lifecycles of one playbook would hold 10,000 identical copies. A playbook is never changed once
    parsed (a migration brings a new one), so the workflows of a worker can share one. Compared by content, not only
    by version, so a file edited without a new version number is never mistaken for another one; a version seen in
    more than a few contents (a playbook being written) simply stops being shared.
    """
    copies = _SHARED.setdefault((playbook.id, playbook.version), [])
    for copy in copies:
        if copy == playbook:
            return copy
    if len(copies) < _COPIES_PER_VERSION:
        copies.append(playbook)
    return playbook


def playbook_hash(playbook: Playbook) -> str:
    """A content hash of a playbook as it is pinned (its JSON, as the lifecycle's input carries it): 32 hex digits.

    The records store keeps each pinned playbook once under this key (`pinned_playbooks`) and each lifecycle's state
    names the one it runs, so 10,000 clients of one version share one stored copy, and a file edited without a new
    version number is still told apart. Deterministic (the same model dumps to the same JSON), so the workflow may
    compute it."""
    return hashlib.sha256(playbook.model_dump_json().encode()).hexdigest()[:32]


class PlaybookError(Exception):
    """Every problem in a playbook, each prefixed with its path, so one run of `validate` shows them all."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = errors
        super().__init__(f"{source}: {len(errors)} error(s)\n" + "\n".join(f"  {e}" for e in errors))


def format_loc(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            part = {"in_": "in", "not_": "not", "from_": "from", "copy_": "copy"}.get(part, part)
            text += f".{part}" if text else part
    return text or "(top)"


FormSpec.model_rebuild()
