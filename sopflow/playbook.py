"""The playbook: an SOP written as data, validated before any client runs on it.

A playbook is pinned into each workflow's input, so this schema is also a wire format: every model must round-trip
through JSON unchanged (aliases are serialised by alias, durations as text).

Validation has two layers. Pydantic checks shape and types; `check_references` then checks that every name used
somewhere (a form in a gate, a role in an email, a stage in a transition, a template on disk) exists. Both report
errors with a path such as `stages[2].gate.forms[0]`, so an SOP author can find the line at fault.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from sopflow.durations import Duration

FieldType = Literal["text", "email", "date", "datetime", "number", "money", "choice", "multi_choice", "bool"]
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

    @model_validator(mode="after")
    def _options_match_type(self) -> FieldSpec:
        if self.type in ("choice", "multi_choice") and not self.options:
            raise ValueError(f"a {self.type} field needs 'options'")
        if self.type not in ("choice", "multi_choice") and self.options is not None:
            raise ValueError(f"'options' only apply to choice and multi_choice fields, not {self.type}")
        return self


class FormSpec(Model):
    title: str | None = None
    fields: dict[Ident, FieldSpec]
    # Site-visit style forms are logged again and again; most forms are filled once and then corrected.
    repeatable: bool = False
    # Submitting this form claims an account for the deal, keyed by this field; another deal cannot claim it.
    claims: Ident | None = None
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
    folder, checked by `attachment_file` (not here: a pinned playbook re-validates on every replay, and one pinned
    before the check existed must still load; the email activity refuses its bad paths at send time)."""

    file: str
    when: Condition | None = None


class AttachmentRefused(ValueError):
    """An `attach[].file` that is not a file inside `templates/<playbook>/attachments/`; the message names it."""


def attachment_file(file: str, playbook_id: str, templates_dir: Path | None) -> Path | None:
    """The file `attach[].file` names, resolved with symlinks followed; AttachmentRefused unless it is a file inside
    `templates/<playbook>/attachments/`. Without `templates_dir`, only what no folder can make right is refused (an
    absolute path, `..`) and None is returned.

    Used by `playbook validate` and again when the email is sent: a playbook names files a worker will read and mail
    to clients, so `../../etc/passwd`, or a symlink in the folder that points out of it, must never be attached,
    whatever the playbook was validated against when its lifecycle started."""
    folder = f"templates/{playbook_id}/attachments/"
    if "\x00" in file:
        raise AttachmentRefused(f"{file!r} is not a file name")
    if Path(file).is_absolute() or ".." in Path(file).parts:
        raise AttachmentRefused(f"{file!r} is outside {folder}")
    if templates_dir is None:
        return None
    try:
        base = (templates_dir / playbook_id / "attachments").resolve()
        target = (base / file).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        raise AttachmentRefused(f"{file!r} cannot be resolved in {folder}") from None
    if not target.is_relative_to(base):
        raise AttachmentRefused(f"{file!r} is outside {folder}")
    if not target.is_file():
        raise AttachmentRefused(f"{file!r} is not a file in {folder}")
    return target


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


class Action(Model):
    """What a stage entry or a form submission does: send an email, set deal fields to fixed values, copy values
    into deal fields (a form's meeting date becomes the deal's next meeting), or start a linked lifecycle."""

    email: EmailAction | None = None
    set: dict[Ident, Any] | None = None
    copy_: dict[Ident, Ref] | None = Field(default=None, alias="copy")
    start_lifecycle: StartLifecycle | None = None
    when: Condition | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Action:
        kinds = [self.email, self.set, self.copy_, self.start_lifecycle]
        if sum(kind is not None for kind in kinds) != 1:
            raise ValueError("an action is exactly one of 'email', 'set', 'copy' or 'start_lifecycle'")
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
    due: Duration | None = None
    due_at: Moment | None = None
    when: Condition | None = None
    requires: list[Ident] = []
    remind: EmailAction | None = None
    escalate: Escalation | None = None

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


class Playbook(Model):
    id: Ident
    version: int = Field(ge=1)
    title: str | None = None
    description: str | None = None
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


def parse_playbook(data: Any, source: str = "<playbook>", templates_dir: Path | None = None) -> Playbook:
    """Validate raw playbook data; raise PlaybookError listing every problem with its path."""
    try:
        playbook = Playbook.model_validate(data)
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            # Pydantic names the union/model branch in the loc (e.g. 'function-after[...]'); users need the path only.
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
            errors.append(f"{format_loc(loc)}: {err['msg'].removeprefix('Value error, ')}")
        raise PlaybookError(source, errors) from None
    problems = check_references(playbook, templates_dir) + check_limits(playbook)
    if problems:
        raise PlaybookError(source, problems)
    return playbook


# Playbook text shown in the Temporal UI (the workflow summary and current details) stays short.
MAX_TITLE_LENGTH = 200


def check_limits(playbook: Playbook) -> list[str]:
    """Bounds a playbook must keep so no lifecycle can overflow a date or a UI field, checked at load time only:
    the models themselves stay as permissive as before, because pinned copies are decoded again on every replay."""
    errors: list[str] = []

    def walk(path: str, node: Any) -> None:
        if isinstance(node, Duration):
            if node.too_long:
                errors.append(f"{path}: {node} is longer than 100 years")
        elif isinstance(node, BaseModel):
            for name in type(node).model_fields:
                walk(f"{path}.{name.rstrip('_')}" if path else name.rstrip("_"), getattr(node, name))
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(f"{path}[{i}]", item)
        elif isinstance(node, dict):
            for key, item in node.items():
                walk(f"{path}.{key}", item)

    walk("", playbook)
    titles = [("title", playbook.title), *((f"stages[{i}].title", s.title) for i, s in enumerate(playbook.stages))]
    for path, text in titles:
        if text is not None and len(text) > MAX_TITLE_LENGTH:
            errors.append(f"{path}: {len(text)} characters long; at most {MAX_TITLE_LENGTH}")
    return errors


def load_playbook(path: Path, templates_dir: Path | None = None) -> Playbook:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise PlaybookError(str(path), [f"cannot read: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        raise PlaybookError(str(path), [f"not valid YAML: {exc}"]) from None
    playbook = parse_playbook(data, str(path), templates_dir)
    problems = check_links(playbook, path.parent)
    if problems:
        raise PlaybookError(str(path), problems)
    return playbook


def check_references(playbook: Playbook, templates_dir: Path | None = None) -> list[str]:
    """Cross-reference checks pydantic cannot do: every name used must be defined, every template must exist."""
    errors: list[str] = []
    stage_ids = [stage.id for stage in playbook.stages]
    forms = playbook.forms

    def ref(path: str, value: str) -> None:
        kind, _, rest = value.partition(".")
        if kind == "deal" and rest not in playbook.deal:
            errors.append(f"{path}: unknown deal field '{rest}'")
        elif kind == "settings" and rest not in playbook.settings:
            errors.append(f"{path}: unknown setting '{rest}'")
        elif kind == "forms":
            form_id, _, field = rest.partition(".")
            if form_id not in forms:
                errors.append(f"{path}: unknown form '{form_id}'")
            elif field not in forms[form_id].fields:
                errors.append(f"{path}: form '{form_id}' has no field '{field}'")

    def dated(path: str, value: str) -> None:
        """A moment must come from a date or date-time field, or it could never be scheduled."""
        ref(path, value)
        spec = field_spec(playbook, value)
        if spec is not None and spec.type not in ("date", "datetime"):
            errors.append(f"{path}: '{value}' is a {spec.type} field; a moment needs a date or datetime field")

    def condition(path: str, cond: Condition | None) -> None:
        if cond is not None:
            for value in cond.refs():
                ref(path, value)

    def role(path: str, role_id: str | None) -> None:
        if role_id is not None and role_id not in playbook.roles:
            errors.append(f"{path}: unknown role '{role_id}'")

    def email(path: str, action: EmailAction) -> None:
        for i, role_id in enumerate(action.to):
            role(f"{path}.to[{i}]", role_id)
        for i, role_id in enumerate(action.cc):
            role(f"{path}.cc[{i}]", role_id)
        role(f"{path}.from_role", action.from_role)
        condition(f"{path}.when", action.when)
        if templates_dir is not None:
            folder = templates_dir / playbook.id / action.template
            missing = [part for part in TEMPLATE_PARTS if not (folder / part).is_file()]
            if missing:
                errors.append(f"{path}.template: template '{action.template}' is missing {', '.join(missing)}")
        for i, attachment in enumerate(action.attach):
            try:
                attachment_file(attachment.file, playbook.id, templates_dir)
            except AttachmentRefused as refused:
                errors.append(f"{path}.attach[{i}].file: {refused}")
            condition(f"{path}.attach[{i}].when", attachment.when)

    def actions(path: str, items: list[Action]) -> None:
        for ai, action in enumerate(items):
            condition(f"{path}[{ai}].when", action.when)
            if action.email is not None:
                email(f"{path}[{ai}].email", action.email)
            for key in action.set or {}:
                if key not in playbook.deal:
                    errors.append(f"{path}[{ai}].set.{key}: unknown deal field '{key}'")
            for key, source in (action.copy_ or {}).items():
                if key not in playbook.deal:
                    errors.append(f"{path}[{ai}].copy.{key}: unknown deal field '{key}'")
                ref(f"{path}[{ai}].copy.{key}", source)
            if action.start_lifecycle is not None:
                for key, source in action.start_lifecycle.fields.items():
                    ref(f"{path}[{ai}].start_lifecycle.fields.{key}", source)

    def stage_ref(path: str, stage_id: str) -> None:
        if stage_id not in stage_ids:
            errors.append(f"{path}: unknown stage '{stage_id}'")

    for name, spec in playbook.roles.items():
        for attr in ("email", "name", "id"):
            value = getattr(spec, attr)
            if value is not None:
                ref(f"roles.{name}.{attr}", value)
    for form_id, form in forms.items():
        if form.claims is not None and form.claims not in form.fields:
            errors.append(f"forms.{form_id}.claims: form has no field '{form.claims}'")
        actions(f"forms.{form_id}.on_submit", form.on_submit)

    seen: set[str] = set()
    for si, stage in enumerate(playbook.stages):
        at = f"stages[{si}]"
        if stage.id in seen:
            errors.append(f"{at}.id: duplicate stage '{stage.id}'")
        seen.add(stage.id)
        role(f"{at}.owner", stage.owner)
        if stage.terminal and (stage.transitions or stage.tasks or stage.deadline or stage.cadence or stage.forms):
            errors.append(
                f"{at}: terminal stage '{stage.id}' ends the lifecycle: it cannot have transitions, "
                "tasks, forms, a deadline or a cadence"
            )
        for fi, field in enumerate(stage.reason_fields):
            if field not in playbook.deal:
                errors.append(f"{at}.reason_fields[{fi}]: unknown deal field '{field}'")
        actions(f"{at}.on_enter", stage.on_enter)
        for fi, form_id in enumerate(stage.forms):
            if form_id not in forms:
                errors.append(f"{at}.forms[{fi}]: unknown form '{form_id}'")
        task_ids = [task.id for task in stage.tasks]
        for ti, task in enumerate(stage.tasks):
            tat = f"{at}.tasks[{ti}]"
            if task_ids.count(task.id) > 1 and task_ids.index(task.id) != ti:
                errors.append(f"{tat}.id: duplicate task '{task.id}'")
            role(f"{tat}.owner", task.owner)
            condition(f"{tat}.when", task.when)
            for ri, required in enumerate(task.requires):
                if required not in task_ids:
                    errors.append(f"{tat}.requires[{ri}]: unknown task '{required}' in stage '{stage.id}'")
            if task.remind is not None:
                email(f"{tat}.remind", task.remind)
            if task.escalate is not None:
                email(f"{tat}.escalate.email", task.escalate.email)
            if task.due_at is not None:
                dated(f"{tat}.due_at.of", task.due_at.of)
            if (task.remind or task.escalate) and task.due is None and task.due_at is None:
                errors.append(f"{tat}: a task with remind or escalate needs 'due' or 'due_at'")
        gate = stage.gate
        for gi, field_ref in enumerate(gate.fields):
            ref(f"{at}.gate.fields[{gi}]", field_ref)
        for gi, form_id in enumerate(gate.forms):
            if form_id not in forms:
                errors.append(f"{at}.gate.forms[{gi}]: unknown form '{form_id}'")
        if isinstance(gate.tasks, list):
            for gi, task_id in enumerate(gate.tasks):
                if task_id not in task_ids:
                    errors.append(f"{at}.gate.tasks[{gi}]: unknown task '{task_id}' in stage '{stage.id}'")
        for gi, check in enumerate(gate.checks):
            condition(f"{at}.gate.checks[{gi}].condition", check.condition)
        for ti, transition in enumerate(stage.transitions):
            tat = f"{at}.transitions[{ti}]"
            stage_ref(f"{tat}.to", transition.to)
            if transition.to == stage.id:
                errors.append(f"{tat}.to: a stage cannot transition to itself")
            if transition.form is not None and transition.form not in stage.forms:
                errors.append(
                    f"{tat}.form: form '{transition.form}' is not open in stage '{stage.id}' "
                    "(list it under the stage's forms)"
                )
            if transition.event is not None and transition.event not in playbook.events:
                errors.append(f"{tat}.event: unknown event '{transition.event}'")
            condition(f"{tat}.when", transition.when)
        if stage.deadline is not None:
            dl = stage.deadline
            if dl.from_ is not None:
                ref(f"{at}.deadline.from", dl.from_)
            for ri, reminder in enumerate(dl.remind):
                email(f"{at}.deadline.remind[{ri}].email", reminder.email)
            stage_ref(f"{at}.deadline.on_expiry.to", dl.on_expiry.to)
            for ei, action in enumerate(dl.on_expiry.email):
                email(f"{at}.deadline.on_expiry.email[{ei}]", action)
        if stage.cadence is not None:
            cad = stage.cadence
            if cad.touchpoint not in stage.forms:
                errors.append(f"{at}.cadence.touchpoint: form '{cad.touchpoint}' is not open in stage '{stage.id}'")
            elif (
                cad.date_field is not None
                and cad.touchpoint in forms
                and cad.date_field not in forms[cad.touchpoint].fields
            ):
                errors.append(f"{at}.cadence.date_field: form '{cad.touchpoint}' has no field '{cad.date_field}'")
            if cad.anchor is not None:
                ref(f"{at}.cadence.anchor", cad.anchor)
            if cad.remind is not None:
                email(f"{at}.cadence.remind.email", cad.remind.email)
            if cad.overdue is not None:
                email(f"{at}.cadence.overdue.email", cad.overdue.email)
        for ai, appointment in enumerate(stage.appointments):
            dated(f"{at}.appointments[{ai}].at", appointment.at)
            for ri, reminder in enumerate(appointment.remind):
                email(f"{at}.appointments[{ai}].remind[{ri}].email", reminder.email)
    for target, classifier in playbook.classify.items():
        cat = f"classify.{target}"
        target_spec = playbook.deal.get(target)
        if target_spec is None or target_spec.type != "choice":
            errors.append(f"{cat}: the target must be a choice deal field (its options are the tiers, best first)")
            continue
        for name, tiers in classifier.criteria.items():
            for tier, cond in tiers.items():
                if tier not in (target_spec.options or []):
                    errors.append(f"{cat}.criteria.{name}.{tier}: '{tier}' is not an option of deal field '{target}'")
                condition(f"{cat}.criteria.{name}.{tier}", cond)
        if classifier.explain is not None and classifier.explain not in playbook.deal:
            errors.append(f"{cat}.explain: unknown deal field '{classifier.explain}'")
    if playbook.stages[0].terminal:
        errors.append("stages[0]: the first stage is where clients start; it cannot be terminal")
    return errors


def field_spec(playbook: Playbook, ref: str) -> FieldSpec | None:
    """The spec of a deal or form field reference (None for settings and unknown names)."""
    kind, _, rest = ref.partition(".")
    if kind == "deal":
        return playbook.deal.get(rest)
    if kind == "forms":
        form_id, _, field = rest.partition(".")
        form = playbook.forms.get(form_id)
        return form.fields.get(field) if form else None
    return None


def check_links(playbook: Playbook, playbooks_dir: Path) -> list[str]:
    """A hand-off must name a playbook that exists and give it every required deal field, or it would fail on
    the day a deal is won instead of when the playbook is validated."""
    errors: list[str] = []
    starts = [
        (f"{where}[{ai}].start_lifecycle", action.start_lifecycle)
        for where, items in _action_lists(playbook)
        for ai, action in enumerate(items)
        if action.start_lifecycle is not None
    ]
    for path, start in starts:
        assert start is not None
        try:
            linked = load_playbook(playbooks_dir / f"{start.playbook}.yaml")
        except PlaybookError as exc:
            errors.append(f"{path}.playbook: playbook '{start.playbook}' cannot be loaded ({exc.errors[0]})")
            continue
        for key in start.fields:
            if key not in linked.deal:
                errors.append(f"{path}.fields.{key}: playbook '{start.playbook}' has no deal field '{key}'")
        for key, spec in linked.deal.items():
            if spec.required and key not in start.fields:
                errors.append(f"{path}.fields: playbook '{start.playbook}' requires deal field '{key}'")
    return errors


def _action_lists(playbook: Playbook) -> Iterator[tuple[str, list[Action]]]:
    for form_id, form in playbook.forms.items():
        yield f"forms.{form_id}.on_submit", form.on_submit
    for si, stage in enumerate(playbook.stages):
        yield f"stages[{si}].on_enter", stage.on_enter


def template_names(playbook: Playbook) -> set[str]:
    """Every template a playbook can send; used to render-check them all."""
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, EmailAction):
            names.add(node.template)
        if isinstance(node, BaseModel):
            for name in type(node).model_fields:
                walk(getattr(node, name))
        elif isinstance(node, list | tuple):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            for item in node.values():
                walk(item)

    walk(playbook)
    return names


FormSpec.model_rebuild()
