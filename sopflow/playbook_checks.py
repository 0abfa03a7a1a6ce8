"""Loading a playbook, and the checks pydantic cannot do: names used must exist, bounds must hold, links must load.

The models live in `sopflow.playbook` and stay permissive, because pinned copies are decoded again on every replay;
these checks run only when a playbook is loaded or validated. Each error starts with a path such as
`stages[2].gate.forms[0]`, and errors come in document order, so an SOP author can read them top to bottom.
Everything public here is also importable from `sopflow.playbook`.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from sopflow import zones
from sopflow.business_calendar import check_holidays
from sopflow.durations import Duration
from sopflow.fields import pattern_problem
from sopflow.playbook import (
    TEMPLATE_PARTS,
    Action,
    Cadence,
    Classifier,
    Condition,
    Deadline,
    EmailAction,
    FieldSpec,
    Playbook,
    PlaybookError,
    Stage,
    StartLifecycle,
    TaskSpec,
    format_loc,
)

# Playbook text shown in the Temporal UI (the workflow summary and current details) stays short.
MAX_TITLE_LENGTH = 200


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
    problems = (
        check_references(playbook, templates_dir)
        + check_limits(playbook)
        + check_patterns(playbook)
        + check_calendar(playbook)
    )
    if problems:
        raise PlaybookError(source, problems)
    return playbook


def loadable_playbooks(playbooks_dir: Path) -> list[Playbook]:
    """Every playbook file in `playbooks_dir` that loads, for what reads running deals (stage order, stall thresholds,
    the commands that settle work). A file that fails to load is skipped: a report or a digest must not depend on an
    unrelated YAML typo (`sopflow playbook validate` finds it)."""
    playbooks = []
    for path in sorted(playbooks_dir.glob("*.yaml")):
        try:
            playbooks.append(load_playbook(path))
        except PlaybookError:
            continue
    return playbooks


def load_playbook(path: Path, templates_dir: Path | None = None) -> Playbook:
    """Read, parse and check a playbook file, including the playbooks it hands off to (found next to it)."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise PlaybookError(str(path), [f"cannot read: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        raise PlaybookError(str(path), [f"not valid YAML: {exc}"]) from None
    read_holiday_file(data, path.parent, str(path))
    playbook = parse_playbook(data, str(path), templates_dir)
    problems = check_links(playbook, path.parent)
    if problems:
        raise PlaybookError(str(path), problems)
    return playbook


def check_references(playbook: Playbook, templates_dir: Path | None = None) -> list[str]:
    """Cross-reference checks pydantic cannot do: every name used must be defined, every template must exist."""
    checker = _References(playbook, templates_dir)
    checker.check()
    return checker.errors


class _References:
    """One pass over a playbook, collecting every unknown name; state lives here so each part is a small method."""

    def __init__(self, playbook: Playbook, templates_dir: Path | None) -> None:
        self.playbook = playbook
        self.templates_dir = templates_dir
        self.stage_ids = [stage.id for stage in playbook.stages]
        self.errors: list[str] = []

    def check(self) -> None:
        """The parts in document order, so errors read top to bottom (tests compare the exact list)."""
        self.roles()
        self.forms()
        for si, stage in enumerate(self.playbook.stages):
            self.stage(si, stage)
        for target, classifier in self.playbook.classify.items():
            self.classifier(target, classifier)
        if self.playbook.stages[0].terminal:
            self.errors.append("stages[0]: the first stage is where clients start; it cannot be terminal")

    # Single references, the building blocks of every part.

    def ref(self, path: str, value: str) -> None:
        """A `deal.`, `settings.` or `forms.<form>.<field>` reference must name something the playbook defines."""
        playbook = self.playbook
        kind, _, rest = value.partition(".")
        if kind == "deal" and rest not in playbook.deal:
            self.errors.append(f"{path}: unknown deal field '{rest}'")
        elif kind == "settings" and rest not in playbook.settings:
            self.errors.append(f"{path}: unknown setting '{rest}'")
        elif kind == "forms":
            form_id, _, field = rest.partition(".")
            if form_id not in playbook.forms:
                self.errors.append(f"{path}: unknown form '{form_id}'")
            elif field not in playbook.forms[form_id].fields:
                self.errors.append(f"{path}: form '{form_id}' has no field '{field}'")

    def dated(self, path: str, value: str) -> None:
        """A moment must come from a date or date-time field, or it could never be scheduled."""
        self.ref(path, value)
        spec = field_spec(self.playbook, value)
        if spec is not None and spec.type not in ("date", "datetime"):
            self.errors.append(f"{path}: '{value}' is a {spec.type} field; a moment needs a date or datetime field")

    def condition(self, path: str, cond: Condition | None) -> None:
        """Every field a condition tests must exist, or it would silently never hold."""
        if cond is not None:
            for value in cond.refs():
                self.ref(path, value)

    def role(self, path: str, role_id: str | None) -> None:
        """A role must be defined, or nobody could be resolved to own or receive the work."""
        if role_id is not None and role_id not in self.playbook.roles:
            self.errors.append(f"{path}: unknown role '{role_id}'")

    def deal_field(self, path: str, key: str) -> None:
        """A deal field written or required by name must be declared under `deal`."""
        if key not in self.playbook.deal:
            self.errors.append(f"{path}: unknown deal field '{key}'")

    def form(self, path: str, form_id: str) -> None:
        """A form named by a stage or gate must be defined under `forms`."""
        if form_id not in self.playbook.forms:
            self.errors.append(f"{path}: unknown form '{form_id}'")

    def stage_ref(self, path: str, stage_id: str) -> None:
        """A stage a client can be moved to must exist."""
        if stage_id not in self.stage_ids:
            self.errors.append(f"{path}: unknown stage '{stage_id}'")

    # Emails and actions, used by forms, stages, tasks, deadlines, cadences and appointments alike.

    def email(self, path: str, action: EmailAction) -> None:
        """An email needs known recipients, a template on disk and attachments inside the attachments folder."""
        for i, role_id in enumerate(action.to):
            self.role(f"{path}.to[{i}]", role_id)
        for i, role_id in enumerate(action.cc):
            self.role(f"{path}.cc[{i}]", role_id)
        self.role(f"{path}.from_role", action.from_role)
        self.condition(f"{path}.when", action.when)
        self.template(path, action.template)
        for i, attachment in enumerate(action.attach):
            try:
                attachment_file(attachment.file, self.playbook.id, self.templates_dir)
            except AttachmentRefused as refused:
                self.errors.append(f"{path}.attach[{i}].file: {refused}")
            self.condition(f"{path}.attach[{i}].when", attachment.when)

    def template(self, path: str, template: str) -> None:
        """Every part of a template must exist (checked only when a templates folder is given)."""
        if self.templates_dir is None:
            return
        folder = self.templates_dir / self.playbook.id / template
        missing = [part for part in TEMPLATE_PARTS if not (folder / part).is_file()]
        if missing:
            self.errors.append(f"{path}.template: template '{template}' is missing {', '.join(missing)}")

    def actions(self, path: str, items: list[Action]) -> None:
        """Each action of a stage entry or form submission, at its own index."""
        for ai, action in enumerate(items):
            self.action(f"{path}[{ai}]", action)

    def action(self, at: str, action: Action) -> None:
        """An action may only write declared deal fields, and read references that exist."""
        self.condition(f"{at}.when", action.when)
        if action.email is not None:
            self.email(f"{at}.email", action.email)
        for key in action.set or {}:
            self.deal_field(f"{at}.set.{key}", key)
        for key, source in (action.copy_ or {}).items():
            self.deal_field(f"{at}.copy.{key}", key)
            self.ref(f"{at}.copy.{key}", source)
        if action.start_lifecycle is not None:
            for key, source in action.start_lifecycle.fields.items():
                self.ref(f"{at}.start_lifecycle.fields.{key}", source)

    # The parts of a playbook, in document order.

    def roles(self) -> None:
        """A role resolves to people from deal data, so each of its references must exist."""
        for name, spec in self.playbook.roles.items():
            for attr in ("email", "name", "id"):
                value = getattr(spec, attr)
                if value is not None:
                    self.ref(f"roles.{name}.{attr}", value)
            listed = field_spec(self.playbook, spec.email)
            if listed is not None and listed.type == "emails" and (spec.name or spec.id):
                # One name or owner id for a list of people would be shown as each one's.
                self.errors.append(
                    f"roles.{name}: a role of several addresses ({spec.email} is an emails field) has no name or id"
                )

    def forms(self) -> None:
        """A form's claim key must be one of its fields; its submit actions are checked like any others."""
        for form_id, form in self.playbook.forms.items():
            if form.claims is not None and form.claims not in form.fields:
                self.errors.append(f"forms.{form_id}.claims: form has no field '{form.claims}'")
            if form.claim_contact is not None:
                if form.claims is None:
                    self.errors.append(f"forms.{form_id}.claim_contact: the form claims no account ('claims')")
                self.role(f"forms.{form_id}.claim_contact", form.claim_contact)
            self.actions(f"forms.{form_id}.on_submit", form.on_submit)

    def stage(self, si: int, stage: Stage) -> None:
        """One stage: its own settings first, then its tasks, gate, transitions, deadline, cadence, appointments."""
        at = f"stages[{si}]"
        if self.stage_ids.index(stage.id) != si:
            self.errors.append(f"{at}.id: duplicate stage '{stage.id}'")
        self.role(f"{at}.owner", stage.owner)
        if stage.terminal and (stage.transitions or stage.tasks or stage.deadline or stage.cadence or stage.forms):
            self.errors.append(
                f"{at}: terminal stage '{stage.id}' ends the lifecycle: it cannot have transitions, "
                "tasks, forms, a deadline or a cadence"
            )
        for fi, field in enumerate(stage.reason_fields):
            self.deal_field(f"{at}.reason_fields[{fi}]", field)
        if stage.close_checks and not stage.terminal:
            self.errors.append(f"{at}.close_checks: only a terminal stage is closed into")
        for ci, check in enumerate(stage.close_checks):
            self.condition(f"{at}.close_checks[{ci}].condition", check.condition)
        self.actions(f"{at}.on_enter", stage.on_enter)
        for fi, form_id in enumerate(stage.forms):
            self.form(f"{at}.forms[{fi}]", form_id)
        for ti, task in enumerate(stage.tasks):
            self.task(f"{at}.tasks[{ti}]", ti, task, stage)
        self.gate(at, stage)
        self.transitions(at, stage)
        if stage.deadline is not None:
            self.deadline(f"{at}.deadline", stage.deadline)
        if stage.cadence is not None:
            self.cadence(f"{at}.cadence", stage.cadence, stage)
        for ai, appointment in enumerate(stage.appointments):
            self.dated(f"{at}.appointments[{ai}].at", appointment.at)
            for ri, reminder in enumerate(appointment.remind):
                self.email(f"{at}.appointments[{ai}].remind[{ri}].email", reminder.email)

    def task(self, tat: str, ti: int, task: TaskSpec, stage: Stage) -> None:
        """A task's id is unique in its stage, its prerequisites are tasks of that stage, and reminders need a due."""
        task_ids = [t.id for t in stage.tasks]
        if task_ids.index(task.id) != ti:
            self.errors.append(f"{tat}.id: duplicate task '{task.id}'")
        self.role(f"{tat}.owner", task.owner)
        self.condition(f"{tat}.when", task.when)
        for ri, required in enumerate(task.requires):
            if required not in task_ids:
                self.errors.append(f"{tat}.requires[{ri}]: unknown task '{required}' in stage '{stage.id}'")
        if task.remind is not None:
            self.email(f"{tat}.remind", task.remind)
        if task.escalate is not None:
            self.email(f"{tat}.escalate.email", task.escalate.email)
        if task.due_at is not None:
            self.dated(f"{tat}.due_at.of", task.due_at.of)
        if (task.remind or task.escalate) and task.due is None and task.due_at is None:
            self.errors.append(f"{tat}: a task with remind or escalate needs 'due' or 'due_at'")

    def gate(self, at: str, stage: Stage) -> None:
        """A gate may only wait on fields, forms and tasks that exist (tasks of its own stage)."""
        gate = stage.gate
        for gi, field_ref in enumerate(gate.fields):
            self.ref(f"{at}.gate.fields[{gi}]", field_ref)
        for gi, form_id in enumerate(gate.forms):
            self.form(f"{at}.gate.forms[{gi}]", form_id)
        if isinstance(gate.tasks, list):
            task_ids = [task.id for task in stage.tasks]
            for gi, task_id in enumerate(gate.tasks):
                if task_id not in task_ids:
                    self.errors.append(f"{at}.gate.tasks[{gi}]: unknown task '{task_id}' in stage '{stage.id}'")
        for gi, check in enumerate(gate.checks):
            self.condition(f"{at}.gate.checks[{gi}].condition", check.condition)

    def transitions(self, at: str, stage: Stage) -> None:
        """A transition leads to another existing stage, on a form open in this stage or a declared event."""
        for ti, transition in enumerate(stage.transitions):
            tat = f"{at}.transitions[{ti}]"
            self.stage_ref(f"{tat}.to", transition.to)
            if transition.to == stage.id:
                self.errors.append(f"{tat}.to: a stage cannot transition to itself")
            if transition.form is not None and transition.form not in stage.forms:
                self.errors.append(
                    f"{tat}.form: form '{transition.form}' is not open in stage '{stage.id}' "
                    "(list it under the stage's forms)"
                )
            if transition.event is not None and transition.event not in self.playbook.events:
                self.errors.append(f"{tat}.event: unknown event '{transition.event}'")
            self.condition(f"{tat}.when", transition.when)

    def deadline(self, at: str, deadline: Deadline) -> None:
        """A deadline counts from a known field, mails known roles, and expires into an existing stage."""
        if deadline.from_ is not None:
            self.ref(f"{at}.from", deadline.from_)
        for ri, reminder in enumerate(deadline.remind):
            self.email(f"{at}.remind[{ri}].email", reminder.email)
        self.stage_ref(f"{at}.on_expiry.to", deadline.on_expiry.to)
        for ei, action in enumerate(deadline.on_expiry.email):
            self.email(f"{at}.on_expiry.email[{ei}]", action)

    def cadence(self, at: str, cadence: Cadence, stage: Stage) -> None:
        """Touchpoints are logged with a form open in the stage, dated by one of that form's fields."""
        forms = self.playbook.forms
        touchpoint, date_field = cadence.touchpoint, cadence.date_field
        if touchpoint not in stage.forms:
            self.errors.append(f"{at}.touchpoint: form '{touchpoint}' is not open in stage '{stage.id}'")
        elif date_field is not None and touchpoint in forms and date_field not in forms[touchpoint].fields:
            self.errors.append(f"{at}.date_field: form '{touchpoint}' has no field '{date_field}'")
        if cadence.anchor is not None:
            self.ref(f"{at}.anchor", cadence.anchor)
        if cadence.remind is not None:
            self.email(f"{at}.remind.email", cadence.remind.email)
        if cadence.overdue is not None:
            self.email(f"{at}.overdue.email", cadence.overdue.email)

    def classifier(self, target: str, classifier: Classifier) -> None:
        """A classifier's tiers are the options of a choice deal field, and its conditions test known fields."""
        cat = f"classify.{target}"
        target_spec = self.playbook.deal.get(target)
        if target_spec is None or target_spec.type != "choice":
            self.errors.append(f"{cat}: the target must be a choice deal field (its options are the tiers, best first)")
            return
        for name, tiers in classifier.criteria.items():
            for tier, cond in tiers.items():
                if tier not in (target_spec.options or []):
                    self.errors.append(
                        f"{cat}.criteria.{name}.{tier}: '{tier}' is not an option of deal field '{target}'"
                    )
                self.condition(f"{cat}.criteria.{name}.{tier}", cond)
        if classifier.explain is not None and classifier.explain not in self.playbook.deal:
            self.errors.append(f"{cat}.explain: unknown deal field '{classifier.explain}'")


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


def check_limits(playbook: Playbook) -> list[str]:
    """Bounds a playbook must keep so no lifecycle can overflow a date or a UI field, checked at load time only:
    the models themselves stay as permissive as before, because pinned copies are decoded again on every replay."""
    errors = [
        f"{path}: {span} is longer than 100 years"
        for path, span in _durations("", playbook)
        if isinstance(span, Duration) and span.too_long
    ]
    titles = [("title", playbook.title), *((f"stages[{i}].title", s.title) for i, s in enumerate(playbook.stages))]
    for path, text in titles:
        if text is not None and len(text) > MAX_TITLE_LENGTH:
            errors.append(f"{path}: {len(text)} characters long; at most {MAX_TITLE_LENGTH}")
    return errors


def check_patterns(playbook: Playbook) -> list[str]:
    """Every text field's `pattern` compiles and matches its own example, checked at load time only: the field
    validator would otherwise refuse every value (or the example would teach a format that is refused)."""
    specs = [(f"deal.{name}", spec) for name, spec in playbook.deal.items()]
    for form_id, form in playbook.forms.items():
        specs += [(f"forms.{form_id}.fields.{name}", spec) for name, spec in form.fields.items()]
    errors = []
    for path, spec in specs:
        problem = pattern_problem(spec.pattern, spec.example) if spec.pattern is not None else None
        if problem:
            errors.append(f"{path}.pattern: {problem}")
    return errors


def _durations(path: str, node: Any) -> Iterator[tuple[str, Any]]:
    """Every duration (and task due form) anywhere in the playbook with its path, in document order."""
    if isinstance(node, Duration) or (path.endswith(".due") and isinstance(node, str)):
        yield path, node
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            yield from _durations(f"{path}.{name.rstrip('_')}" if path else name.rstrip("_"), getattr(node, name))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _durations(f"{path}[{i}]", item)
    elif isinstance(node, dict):
        for key, item in node.items():
            yield from _durations(f"{path}.{key}", item)


def check_calendar(playbook: Playbook) -> list[str]:
    """Zones, holidays and business time: a zone tzdata knows (with the nearest names when not), a per-deal zone
    field of type timezone, holidays the `holidays` package has, and business units or day-based due forms only
    where there is a zone for them to count in."""
    errors: list[str] = []
    if playbook.timezone is not None and not zones.is_known(playbook.timezone):
        errors.append(f"timezone: {zones.unknown_zone_message(playbook.timezone)}")
    if playbook.timezone is None:
        for name in ("timezone_field", "calendar"):
            if getattr(playbook, name) is not None:
                errors.append(f"{name}: needs the playbook's timezone (e.g. timezone: America/New_York)")
    if playbook.timezone_field is not None:
        spec = field_spec(playbook, playbook.timezone_field)
        if spec is None or not playbook.timezone_field.startswith("deal.") or spec.type != "timezone":
            errors.append(f"timezone_field: {playbook.timezone_field} must be a deal field of type timezone")
    holidays = playbook.calendar.holidays if playbook.calendar else None
    if holidays is not None and holidays.country is not None:
        problem = check_holidays(holidays.country, holidays.subdivision)
        if problem:
            errors.append(f"calendar.holidays: {problem}")
    elif holidays is not None and holidays.subdivision is not None:
        errors.append("calendar.holidays.subdivision: needs a country")
    for path, span in _durations("", playbook):
        business = isinstance(span, str) or span.is_business
        if business and playbook.timezone is None:
            errors.append(f"{path}: {span} needs the playbook's timezone and business calendar")
        elif business and path.endswith("stall_after"):
            errors.append(f"{path}: {span}: reports count calendar time; use d, w or mo")
    return errors


def read_holiday_file(data: Any, folder: Path, source: str) -> None:
    """Replace `calendar.holidays.file` (dates, one per line, `#` comments) with its dates in `extra`, so the pinned
    playbook carries the dates, not a path a worker may not have; PlaybookError naming the line of a bad date."""
    holidays = data.get("calendar", {}).get("holidays") if isinstance(data, dict) else None
    if not isinstance(holidays, dict) or "file" not in holidays:
        return
    name = str(holidays.pop("file"))
    try:
        lines = (folder / name).read_text().splitlines()
    except OSError as exc:
        raise PlaybookError(source, [f"calendar.holidays.file: cannot read {name!r}: {exc.strerror}"]) from None
    found, errors = list(holidays.get("extra") or []), []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            found.append(date.fromisoformat(text))
        except ValueError:
            errors.append(f"calendar.holidays.file: {name} line {number}: {text[:40]!r} is not a date (YYYY-MM-DD)")
    if errors:
        raise PlaybookError(source, errors)
    holidays["extra"] = found


def check_links(playbook: Playbook, playbooks_dir: Path) -> list[str]:
    """A hand-off must name a playbook that exists and give it every required deal field, or it would fail on
    the day a deal is won instead of when the playbook is validated."""
    errors: list[str] = []
    for where, items in _action_lists(playbook):
        for ai, action in enumerate(items):
            if action.start_lifecycle is not None:
                errors += _link_errors(f"{where}[{ai}].start_lifecycle", action.start_lifecycle, playbooks_dir)
    return errors


def _link_errors(path: str, start: StartLifecycle, playbooks_dir: Path) -> list[str]:
    """What is wrong with one hand-off: a linked playbook that does not load, or deal fields it does not match."""
    try:
        linked = load_playbook(playbooks_dir / f"{start.playbook}.yaml")
    except PlaybookError as exc:
        return [f"{path}.playbook: playbook '{start.playbook}' cannot be loaded ({exc.errors[0]})"]
    errors = [
        f"{path}.fields.{key}: playbook '{start.playbook}' has no deal field '{key}'"
        for key in start.fields
        if key not in linked.deal
    ]
    errors += [
        f"{path}.fields: playbook '{start.playbook}' requires deal field '{key}'"
        for key, spec in linked.deal.items()
        if spec.required and key not in start.fields
    ]
    return errors


def _action_lists(playbook: Playbook) -> Iterator[tuple[str, list[Action]]]:
    """Every list of actions with its path: form submissions first, then stage entries."""
    for form_id, form in playbook.forms.items():
        yield f"forms.{form_id}.on_submit", form.on_submit
    for si, stage in enumerate(playbook.stages):
        yield f"stages[{si}].on_enter", stage.on_enter


def template_names(playbook: Playbook) -> set[str]:
    """Every template a playbook can send; used to render-check them all."""
    return set(_templates(playbook))


def _templates(node: Any) -> Iterator[str]:
    """The template of every email action found anywhere under `node`."""
    if isinstance(node, EmailAction):
        yield node.template
    if isinstance(node, BaseModel):
        for name in type(node).model_fields:
            yield from _templates(getattr(node, name))
    elif isinstance(node, list | tuple):
        for item in node:
            yield from _templates(item)
    elif isinstance(node, dict):
        for item in node.values():
            yield from _templates(item)
