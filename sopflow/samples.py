"""Sample contexts for email templates, so every email a playbook can send is rendered before any client needs it.

Templates fail on an undefined variable (never "Dear ,"), which is right when an email goes out but means a typo, or
a variable the sending site does not provide (`visit` in a stage's entry email), only shows when that email falls
due: possibly months into a client's life, as a failed activity. `render_check` renders each place a playbook sends
an email (an `EmailUse`) with the context the engine would build there, in two variants:

- full: every deal field and every form field set, so each branch that shows a value is exercised;
- minimal: only the required fields, optional ones absent (how the engine stores a form whose optional fields were
  left empty), so a template that uses an optional field without a guard is caught too.

Contexts are built exactly like `Engine.template_context` plus the `links` the email activity adds. Conditions on
the email (`when` of the action, the email and its task) are made true where sample data can do it, because the
engine only renders an email whose conditions hold: `needs` of a site visit is set when "site visit needs" is sent.
Pure: nothing here reads files except through the renderer.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

from sopflow.business_calendar import Clock
from sopflow.conditions import evaluate, make_context, role_address
from sopflow.fields import Shape, is_blank, shapes
from sopflow.playbook import Action, Condition, EmailAction, FieldSpec, Playbook, Stage
from sopflow.templates import RenderError, TemplateRenderer, links_for

ExtraKey = Literal["task", "deadline", "visit", "form", "appointment"]

SAMPLE_DEAL_ID = "D-1001"
SAMPLE_PUBLIC_URL = "https://sopflow.example.com"
SAMPLE_DATE = "2025-03-17"
# Canonical datetimes are ISO text in UTC (see sopflow.fields.coerce); due dates in contexts look the same.
SAMPLE_MOMENT = "2025-03-17T09:00:00+00:00"
SAMPLE_VISIT_NUMBER = 2


@dataclass(frozen=True)
class EmailUse:
    """One place in a playbook that sends an email, with what the engine adds to the context there."""

    template: str
    # Where the email is written, in `check_references` style: `stages[4].tasks[0].escalate.email`.
    path: str
    # The extras the engine passes at this site (besides the base context): task, deadline, visit or form.
    extra_keys: tuple[ExtraKey, ...]
    # The stage the email belongs to; None for a form's on_submit (sent from whichever stage the form is open in).
    stage: str | None = None
    # The form whose on_submit sends it (its values are the `form` extra).
    form: str | None = None
    # The task whose remind/escalate sends it (the `task` extra describes it).
    task: str | None = None
    # Everything that must hold for the engine to send it: the action's, the email's and the task's `when`.
    conditions: tuple[Condition, ...] = ()
    # Deal fields set by `set` actions that run before this email in the same action list.
    sets: dict[str, Any] = field(default_factory=dict)
    # The roles it is sent to: the engine skips an email none of whose `to` roles has an address.
    to: tuple[str, ...] = ()


# --- sample values ---------------------------------------------------------------------------------------------------


def sample_value(spec: FieldSpec, name: str, shape: Shape | None = None) -> Any:
    """A realistic value in the canonical form `sopflow.fields.coerce` stores, so templates see what they will get."""
    kind = spec.type
    if kind == "text" and shape == "id":
        return "owner-12"
    if kind == "text" and spec.example is not None:  # a patterned field: its example is what the pattern accepts
        return spec.example
    if kind == "text":
        return f"Example {spec.label or name.replace('_', ' ')}"
    if kind == "email":
        return f"{name}@example.com"
    if kind == "emails":
        return [f"{name}-1@example.com", f"{name}-2@example.com"]
    if kind == "date":
        return SAMPLE_DATE
    if kind == "datetime":
        return SAMPLE_MOMENT
    if kind == "number":
        return 12
    if kind == "money":
        return "1250.00"
    if kind == "choice":
        return (spec.options or [""])[0]
    if kind == "multi_choice":
        return (spec.options or [])[:1]
    if kind == "timezone":
        return "America/Chicago"
    return True  # bool


def sample_values(
    specs: dict[str, FieldSpec], *, minimal: bool, roles: dict[str, Shape] | None = None
) -> dict[str, Any]:
    """Every field (full) or only the required ones (minimal): optional fields left empty are absent, not None.
    `roles` (`sopflow.fields.shapes`) marks the fields that must look like owner ids."""
    return {
        name: sample_value(spec, name, (roles or {}).get(name))
        for name, spec in specs.items()
        if spec.required or not minimal
    }


# --- where emails are sent -------------------------------------------------------------------------------------------


def email_uses(playbook: Playbook) -> list[EmailUse]:
    """Every email site, in the order `check_references` reports them (forms first, then stages in order)."""
    uses: list[EmailUse] = []

    def actions(path: str, items: list[Action], **site: Any) -> None:
        sets: dict[str, Any] = {}
        for ai, action in enumerate(items):
            if action.email is not None:
                uses.append(_use(action.email, f"{path}[{ai}].email", action.when, sets=dict(sets), **site))
            if action.set is not None:
                sets.update(action.set)

    for form_id, form in playbook.forms.items():
        actions(f"forms.{form_id}.on_submit", form.on_submit, extra_keys=("form",), form=form_id)

    for si, stage in enumerate(playbook.stages):
        at = f"stages[{si}]"
        actions(f"{at}.on_enter", stage.on_enter, extra_keys=(), stage=stage.id)
        for ti, task in enumerate(stage.tasks):
            site = {"extra_keys": ("task",), "stage": stage.id, "task": task.id}
            if task.remind is not None:
                uses.append(_use(task.remind, f"{at}.tasks[{ti}].remind", task.when, **site))
            if task.escalate is not None:
                uses.append(_use(task.escalate.email, f"{at}.tasks[{ti}].escalate.email", task.when, **site))
        if stage.deadline is not None:
            site = {"extra_keys": ("deadline",), "stage": stage.id}
            for ri, reminder in enumerate(stage.deadline.remind):
                uses.append(_use(reminder.email, f"{at}.deadline.remind[{ri}].email", None, **site))
            for ei, email in enumerate(stage.deadline.on_expiry.email):
                uses.append(_use(email, f"{at}.deadline.on_expiry.email[{ei}]", None, **site))
        if stage.cadence is not None:
            site = {"extra_keys": ("visit",), "stage": stage.id}
            if stage.cadence.remind is not None:
                uses.append(_use(stage.cadence.remind.email, f"{at}.cadence.remind.email", None, **site))
            if stage.cadence.overdue is not None:
                uses.append(_use(stage.cadence.overdue.email, f"{at}.cadence.overdue.email", None, **site))
        for ai, appointment in enumerate(stage.appointments):
            site = {"extra_keys": ("appointment",), "stage": stage.id}
            for ri, reminder in enumerate(appointment.remind):
                uses.append(_use(reminder.email, f"{at}.appointments[{ai}].remind[{ri}].email", None, **site))
    return uses


def _use(email: EmailAction, path: str, outer: Condition | None, **site: Any) -> EmailUse:
    return EmailUse(email.template, path, conditions=_conditions(outer, email.when), to=tuple(email.to), **site)


def _conditions(*conditions: Condition | None) -> tuple[Condition, ...]:
    return tuple(cond for cond in conditions if cond is not None)


def use_stage(playbook: Playbook, use: EmailUse) -> Stage:
    """The stage an email is sent from: its own, or for a form's on_submit the first stage where the form is open."""
    if use.stage is not None:
        return playbook.stage(use.stage)
    return next((stage for stage in playbook.stages if use.form in stage.forms), playbook.stages[0])


# --- contexts --------------------------------------------------------------------------------------------------------


def sample_context(
    playbook: Playbook,
    use: EmailUse,
    *,
    minimal: bool,
    deal_id: str = SAMPLE_DEAL_ID,
    public_url: str = SAMPLE_PUBLIC_URL,
) -> dict[str, Any]:
    """The context `use` is rendered with: `Engine.template_context` of a deal holding sample data, plus `links`."""
    return _build_context(playbook, use, minimal=minimal, deal_id=deal_id, public_url=public_url)[0]


def _build_context(
    playbook: Playbook, use: EmailUse, *, minimal: bool, deal_id: str, public_url: str
) -> tuple[dict[str, Any], bool]:
    """(context, whether the engine would send the email with it): False when its conditions cannot be met."""
    deal_roles = shapes(playbook, "deal")
    full_deal = sample_values(playbook.deal, minimal=False, roles=deal_roles)
    full_forms = {
        form_id: sample_values(form.fields, minimal=False, roles=shapes(playbook, f"forms.{form_id}"))
        for form_id, form in playbook.forms.items()
    }
    deal = {**sample_values(playbook.deal, minimal=minimal, roles=deal_roles), **copy.deepcopy(use.sets)}
    forms = {
        form_id: sample_values(form.fields, minimal=minimal, roles=shapes(playbook, f"forms.{form_id}"))
        for form_id, form in playbook.forms.items()
    }
    satisfier = _Satisfier(playbook, deal, forms, full_deal, full_forms)
    for cond in use.conditions:
        satisfier.satisfy(cond, want=True)
    satisfier.address(use.to)
    ctx = make_context(playbook, deal, forms)
    sent = all(evaluate(cond, ctx) for cond in use.conditions)
    sent = sent and (
        not use.to or any(role_address(playbook, ctx, role)[0] for role in use.to if role in playbook.roles)
    )

    roles = {}
    for role_id in playbook.roles:
        email, display = role_address(playbook, ctx, role_id)
        roles[role_id] = {"email": email, "name": display or role_id.replace("_", " ")}
    stage = use_stage(playbook, use)
    deadline = {"label": stage.deadline.label, "due_at": SAMPLE_MOMENT} if stage.deadline is not None else None
    context: dict[str, Any] = {
        "deal_id": deal_id,
        "deal": dict(deal),
        "forms": forms,
        "settings": dict(playbook.settings),
        "roles": roles,
        "stage": {"id": stage.id, "title": stage.name},
        "playbook": {"id": playbook.id, "title": playbook.title or playbook.id},
        "deadline": deadline,
    }
    if playbook.timezone is not None:
        context["timezone"] = Clock.of(playbook, deal).name
    context.update(_extras(use, stage, forms, deadline))
    # Only the playbook's own forms: a template linking to a misspelt form fails the check instead of a live email.
    # No form secret here, so sample URLs carry no token (previews and checks never hand out working links).
    context["links"] = links_for(public_url, deal_id, forms=playbook.forms)
    return context, sent


def _extras(
    use: EmailUse, stage: Stage, forms: dict[str, dict[str, Any]], deadline: dict[str, Any] | None
) -> dict[str, Any]:
    """The `extra` dict the engine passes to `_email` at this site (see the rules in `sopflow.engine.timers` and
    `Engine.submit_form`)."""
    extras: dict[str, Any] = {}
    for key in use.extra_keys:
        if key == "task":
            spec = stage.task(use.task or "")
            assert spec is not None, f"{use.path}: task '{use.task}' is not in stage '{stage.id}'"
            extras["task"] = {"id": spec.id, "title": spec.title, "owner": spec.owner, "due_at": SAMPLE_MOMENT}
        elif key == "deadline":
            extras["deadline"] = deadline
        elif key == "visit":
            label = stage.cadence.label if stage.cadence is not None else "touchpoint"
            extras["visit"] = {"label": label, "due_at": SAMPLE_MOMENT, "number": SAMPLE_VISIT_NUMBER}
            if stage.cadence is not None and stage.cadence.names:
                extras["visit"]["name"] = stage.cadence.names[0]
        elif key == "appointment":
            label = stage.appointments[0].label if stage.appointments else "appointment"
            extras["appointment"] = {"label": label, "at": SAMPLE_MOMENT, "before": "1d"}
        elif key == "form":
            # The engine passes the very values it stores for the form.
            extras["form"] = forms[use.form or ""]
    return extras


class _Satisfier:
    """Changes sample data so a condition holds (or does not), as far as sample data can: settings are fixed, and
    contradictory conditions stay unmet. The engine only sends an email whose conditions hold, so a template may
    rely on them (`form.needs` unguarded in an email sent only `when: needs is_set`)."""

    def __init__(
        self,
        playbook: Playbook,
        deal: dict[str, Any],
        forms: dict[str, dict[str, Any]],
        full_deal: dict[str, Any],
        full_forms: dict[str, dict[str, Any]],
    ) -> None:
        self.playbook = playbook
        self.deal, self.forms = deal, forms
        self.full_deal, self.full_forms = full_deal, full_forms

    def satisfy(self, cond: Condition, *, want: bool) -> None:
        if evaluate(cond, make_context(self.playbook, self.deal, self.forms)) == want:
            return
        if cond.not_ is not None:
            self.satisfy(cond.not_, want=not want)
        elif cond.all is not None:
            # all true: every child true; all false: one child false.
            for child in cond.all if want else cond.all[:1]:
                self.satisfy(child, want=want)
        elif cond.any is not None:
            for child in cond.any[:1] if want else cond.any:
                self.satisfy(child, want=want)
        elif cond.field is not None:
            self._field(cond, want)

    def address(self, to: tuple[str, ...]) -> None:
        """Give the first `to` role an address when none has one (a minimal deal may lack the optional email field
        a role reads): the engine skips an email without a recipient, so it never renders it like that."""
        ctx = make_context(self.playbook, self.deal, self.forms)
        roles = [self.playbook.roles[role] for role in to if role in self.playbook.roles]
        if not roles or any(role_address(self.playbook, ctx, role)[0] for role in to if role in self.playbook.roles):
            return
        target = self._target(roles[0].email)
        if target is not None and target[1] in target[2]:
            values, name, full, _ = target
            values[name] = full[name]

    def _field(self, cond: Condition, want: bool) -> None:
        assert cond.field is not None
        target = self._target(cond.field)
        if target is None:
            return
        values, name, full, spec = target
        operators = cond.model_fields_set
        if "is_set" in operators:
            if want == bool(cond.is_set):
                if is_blank(values.get(name)) and name in full:
                    values[name] = copy.deepcopy(full[name])
            else:
                values.pop(name, None)
            return
        if not want:
            # A missing value fails equals, in and every comparison.
            values.pop(name, None)
            return
        if "equals" in operators:
            values[name] = _typed(spec, cond.equals)
        elif "in_" in operators and cond.in_:
            values[name] = _typed(spec, cond.in_[0])
        else:
            bound = next(
                (
                    (op, value)
                    for op, value in (("gt", cond.gt), ("gte", cond.gte), ("lt", cond.lt), ("lte", cond.lte))
                    if op in operators and value is not None
                ),
                None,
            )
            if bound is not None:
                op, value = bound
                number = value + 1 if op == "gt" else value - 1 if op == "lt" else value
                values[name] = _number(spec, number)

    def _target(self, ref: str) -> tuple[dict[str, Any], str, dict[str, Any], FieldSpec | None] | None:
        kind, _, rest = ref.partition(".")
        if kind == "deal":
            return self.deal, rest, self.full_deal, self.playbook.deal.get(rest)
        if kind == "forms":
            form_id, _, name = rest.partition(".")
            if form_id not in self.forms:
                return None
            spec = self.playbook.forms[form_id].fields.get(name)
            return self.forms[form_id], name, self.full_forms.get(form_id, {}), spec
        return None  # settings are the playbook's own: sample data cannot change them


def _typed(spec: FieldSpec | None, value: Any) -> Any:
    """A condition's value as the field holds it: an option as the playbook spells it, a list for multi_choice."""
    if spec is not None and spec.options and isinstance(value, str):
        value = next((option for option in spec.options if option.casefold() == value.casefold()), value)
    if spec is not None and spec.type == "multi_choice" and not isinstance(value, list):
        return [value]
    return value


def _number(spec: FieldSpec | None, number: float) -> Any:
    if spec is not None and spec.type == "money":
        return f"{number:.2f}"
    return int(number) if float(number).is_integer() else number


# --- rendering -------------------------------------------------------------------------------------------------------


def render_check(playbook: Playbook, renderer: TemplateRenderer) -> list[str]:
    """Render every email use in both variants; one error line per failure, prefixed with the use's path.

    An error only the minimal variant shows says so: it means a template uses an optional field without a guard.
    """
    errors: list[str] = []
    for use in email_uses(playbook):
        failures: list[str] = []
        for minimal in (False, True):
            context, sent = _build_context(
                playbook, use, minimal=minimal, deal_id=SAMPLE_DEAL_ID, public_url=SAMPLE_PUBLIC_URL
            )
            if not sent:
                continue  # the engine would never send this email with data like this
            try:
                renderer.render(playbook.id, use.template, context)
            except RenderError as exc:
                if str(exc) in failures:
                    continue
                failures.append(str(exc))
                suffix = " (when only required fields are set)" if minimal and len(failures) == 1 else ""
                errors.append(f"{use.path}: {exc}{suffix}")
    return errors
