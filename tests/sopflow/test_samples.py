"""Sample contexts and the render check: every email a playbook can send renders before any client needs it, and a
template that would fail months into a client's life (a typo, a variable its site does not provide, an unguarded
optional field) fails `playbook validate` instead, naming where the email is written."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from sopflow.business_calendar import Clock
from sopflow.durations import duration
from sopflow.engine import Engine
from sopflow.fields import coerce, shapes
from sopflow.models import SubmitForm
from sopflow.playbook import FieldSpec, Playbook
from sopflow.playbook_checks import parse_playbook, template_names
from sopflow.samples import (
    SAMPLE_DEAL_ID,
    SAMPLE_MOMENT,
    EmailUse,
    email_uses,
    render_check,
    sample_context,
    sample_value,
    sample_values,
)
from sopflow.templates import TemplateRenderer, links_for
from tests.conftest import TEMPLATES


@pytest.fixture
def templates_copy(tmp_path: Path) -> Path:
    """The real templates in a folder a test may break."""
    target = tmp_path / "templates"
    shutil.copytree(TEMPLATES, target)
    return target


def use_at(playbook: Playbook, path: str) -> EmailUse:
    return next(use for use in email_uses(playbook) if use.path == path)


def append(templates_dir: Path, template: str, part: str, text: str) -> None:
    """Add a line to one file of a template (before `{% endblock %}` in HTML, where output is rendered)."""
    file = templates_dir / "safe_balance" / template / part
    content = file.read_text()
    if part == "body.html":
        content = content.replace("{% endblock %}", f"{text}\n{{% endblock %}}")
    else:
        content += f"\n{text}\n"
    file.write_text(content)


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("text", None),
        ("email", None),
        ("emails", None),
        ("date", None),
        ("datetime", None),
        ("number", None),
        ("money", None),
        ("choice", ["Basic", "Premium"]),
        ("multi_choice", ["Basic", "Premium"]),
        ("bool", None),
    ],
)
def test_sample_values_are_canonical(kind: str, options: list[str] | None) -> None:
    """Templates see what the engine stores: a sample survives the field coercion unchanged."""
    spec = FieldSpec.model_validate({"type": kind, "options": options} if options else {"type": kind})
    value = sample_value(spec, "signer_email")
    assert coerce(spec, value) == value
    if kind in ("choice", "multi_choice"):
        assert value in ("Basic", ["Basic"])


def test_a_patterned_text_sample_is_its_example_so_it_passes_the_pattern() -> None:
    spec = FieldSpec(type="text", pattern=r"\d\d/\d\d/\d\d_?[A-Z]+: .+", example="04/20/23_MM: Called")
    assert coerce(spec, sample_value(spec, "description")) == "04/20/23_MM: Called"


def test_text_samples_read_like_their_label() -> None:
    assert sample_value(FieldSpec(label="Main contact"), "contact_name") == "Example Main contact"
    assert sample_value(FieldSpec(), "contact_name") == "Example contact name"


def test_email_uses_cover_every_template_with_the_engines_extras(safe_balance: Playbook) -> None:
    uses = email_uses(safe_balance)
    assert {use.template for use in uses} == template_names(safe_balance)
    assert len({use.path for use in uses}) == len(uses)
    by_path = {use.path: use for use in uses}
    assert by_path["stages[5].tasks[0].escalate.email"].extra_keys == ("task",)
    assert by_path["stages[5].tasks[0].escalate.email"].task == "onsite_appointment"
    assert by_path["stages[5].tasks[0].remind"].template == "task_overdue"
    assert by_path["stages[2].deadline.remind[1].email"].extra_keys == ("deadline",)
    assert by_path["stages[2].deadline.on_expiry.email[0]"].template == "contract_expired"
    assert by_path["stages[7].cadence.overdue.email"].extra_keys == ("visit",)
    assert by_path["stages[7].cadence.remind.email"].template == "visit_due"
    assert by_path["stages[5].on_enter[0].email"].extra_keys == ()
    site_visit = by_path["forms.site_visit.on_submit[0].email"]
    assert (site_visit.template, site_visit.extra_keys, site_visit.form) == (
        "site_visit_needs",
        ("form",),
        "site_visit",
    )


def test_the_real_playbook_and_templates_pass_the_render_check(safe_balance: Playbook) -> None:
    assert render_check(safe_balance, TemplateRenderer(TEMPLATES)) == []


def test_full_context_has_every_field_and_minimal_only_required_ones(safe_balance: Playbook) -> None:
    use = use_at(safe_balance, "stages[5].on_enter[0].email")
    full = sample_context(safe_balance, use, minimal=False)
    minimal = sample_context(safe_balance, use, minimal=True)
    assert set(full["deal"]) == set(safe_balance.deal)
    assert set(minimal["deal"]) == {"rep_email"}
    assert set(full["forms"]) == set(minimal["forms"]) == set(safe_balance.forms)
    assert set(full["forms"]["targeting"]) == set(safe_balance.forms["targeting"].fields)
    assert set(minimal["forms"]["targeting"]) == {"company", "signer_name", "signer_email", "service_tier"}
    # Roles resolve like the engine's: a role without a name is called by its id.
    assert full["roles"]["rep"]["name"] == "Example Rep name" and minimal["roles"]["rep"]["name"] == "rep"
    assert full["stage"] == {"id": "prelaunch", "title": "Pre-launch"} and full["deadline"] is None
    assert full["links"] == links_for("https://sopflow.example.com", SAMPLE_DEAL_ID, forms=safe_balance.forms)
    # No form secret in samples: previews and checks never hand out a link that works.
    assert full["links"]["forms"]["site_visit"] == f"https://sopflow.example.com/forms/{SAMPLE_DEAL_ID}/site_visit"


def test_extras_match_the_site(safe_balance: Playbook) -> None:
    escalation = sample_context(safe_balance, use_at(safe_balance, "stages[5].tasks[1].escalate.email"), minimal=True)
    assert escalation["task"]["id"] == "services_onboarded" and escalation["task"]["owner"] == "account_manager"
    visit = sample_context(safe_balance, use_at(safe_balance, "stages[7].cadence.overdue.email"), minimal=True)
    assert visit["visit"]["label"] == "site visit" and visit["visit"]["number"] >= 1
    reminder = sample_context(safe_balance, use_at(safe_balance, "stages[2].deadline.remind[0].email"), minimal=True)
    assert reminder["deadline"] == {"label": "contract expires", "due_at": SAMPLE_MOMENT}
    # An on_enter email gets no extras, but the stage's deadline is always in the context.
    sent = sample_context(safe_balance, use_at(safe_balance, "stages[2].on_enter[0].email"), minimal=True)
    assert sent["deadline"] == reminder["deadline"] and not {"task", "visit", "form"} & set(sent)


def test_an_emails_condition_holds_in_its_minimal_context(safe_balance: Playbook) -> None:
    """site_visit_needs is sent only `when: needs is_set`, so its template may use `form.needs` unguarded."""
    ctx = sample_context(safe_balance, use_at(safe_balance, "forms.site_visit.on_submit[0].email"), minimal=True)
    assert ctx["form"]["needs"] and ctx["form"] is ctx["forms"]["site_visit"]
    assert "staff_met" not in ctx["form"]  # optional and not needed by the condition
    assert ctx["stage"]["id"] == "ongoing"  # the first stage where the form is open


def test_sample_context_is_built_like_the_engines(safe_balance: Playbook) -> None:
    """Drive the real engine with the same sample data: the contract email's context is the sample context."""
    use = use_at(safe_balance, "stages[2].on_enter[0].email")
    expected = sample_context(safe_balance, use, minimal=False)
    deal = sample_values(safe_balance.deal, minimal=False, roles=shapes(safe_balance, "deal"))
    # The contract deadline (14 local days) is due at the sample moment.
    now = Clock.of(safe_balance, deal).before(duration("14d"), datetime.fromisoformat(SAMPLE_MOMENT))
    engine = Engine.start(safe_balance, SAMPLE_DEAL_ID, deal, now, "wf")
    for form_id in ("targeting", "contract_request"):
        fields = sample_values(safe_balance.forms[form_id].fields, minimal=False)
        engine.submit_form(SubmitForm(form=form_id, fields=fields), now)
    queued = [step.email for step in engine.take_steps() if step.email and step.email.template == use.template]
    assert len(queued) == 1
    links = links_for("https://sopflow.example.com", SAMPLE_DEAL_ID, forms=safe_balance.forms)
    actual: dict[str, Any] = {**queued[0].context, "links": links}
    expected["forms"] = {form_id: expected["forms"][form_id] for form_id in actual["forms"]}
    assert actual == expected


def test_a_variable_the_site_does_not_provide_names_path_template_and_variable(
    safe_balance: Playbook, templates_copy: Path
) -> None:
    append(templates_copy, "launch_day", "body.html", "<p>Next visit {{ visit.due_at }}</p>")
    errors = render_check(safe_balance, TemplateRenderer(templates_copy))
    assert len(errors) == 1
    assert errors[0].startswith("stages[6].on_enter[0].email: template 'launch_day' (body.html): 'visit' is undefined")
    assert "(line " in errors[0]


def test_an_unknown_deal_field_fails_at_every_site_sending_the_template(
    safe_balance: Playbook, templates_copy: Path
) -> None:
    append(templates_copy, "task_overdue", "body.txt", "Region: {{ deal.no_such_field }}")
    errors = render_check(safe_balance, TemplateRenderer(templates_copy))
    sites = [use.path for use in email_uses(safe_balance) if use.template == "task_overdue"]
    assert [error.split(": ", 1)[0] for error in errors] == sites
    assert all("template 'task_overdue' (body.txt)" in error and "no_such_field" in error for error in errors)


def test_the_minimal_variant_catches_an_unguarded_optional_field(safe_balance: Playbook, templates_copy: Path) -> None:
    append(templates_copy, "welcome", "subject.txt", "({{ forms.targeting.city }})")
    errors = render_check(safe_balance, TemplateRenderer(templates_copy))
    assert len(errors) == 1
    assert errors[0].startswith("stages[5].on_enter[0].email: template 'welcome' (subject.txt): ")
    assert "'city'" in errors[0] and "only required fields" in errors[0]


def test_a_link_to_a_form_the_playbook_lacks_or_in_the_old_shape_fails_the_check(
    safe_balance: Playbook, templates_copy: Path
) -> None:
    """Emails link to any form id at send time; the check is where a misspelt one (a dead link) is caught."""
    append(templates_copy, "launch_day", "body.html", '<a href="{{ links.forms.close_out }}">closeout</a>')
    append(templates_copy, "visit_due", "body.txt", "{{ links.forms }}/site_visit")
    errors = render_check(safe_balance, TemplateRenderer(templates_copy))
    assert len(errors) == 2
    assert errors[0].startswith("stages[6].on_enter[0].email: template 'launch_day' (body.html): ")
    assert "has no attribute 'close_out'" in errors[0]
    assert errors[1].startswith("stages[7].cadence.remind.email: template 'visit_due' (body.txt): ")
    assert "links.forms is not a URL" in errors[1]


def test_syntax_errors_and_sandbox_violations_are_reported_not_raised(
    safe_balance: Playbook, templates_copy: Path
) -> None:
    append(templates_copy, "visit_due", "body.txt", "{% if %}")
    append(templates_copy, "launch_closeout", "body.html", "{{ ''.__class__.__mro__ }}")
    errors = render_check(safe_balance, TemplateRenderer(templates_copy))
    assert any(e.startswith("stages[7].cadence.remind.email: template 'visit_due' (body.txt): ") for e in errors)
    assert any(e.startswith("stages[7].on_enter[0].email: template 'launch_closeout' (body.html): ") for e in errors)
    assert all("\n" not in error for error in errors)


def test_a_condition_that_sample_data_cannot_meet_skips_the_email(tmp_path: Path) -> None:
    """An email conditioned on a setting the playbook does not have is never sent: nothing to render."""
    data: dict[str, Any] = {
        "id": "pb",
        "version": 1,
        "settings": {"region": "north"},
        "roles": {"rep": {"email": "deal.rep_email"}},
        "deal": {"rep_email": {"type": "email", "required": True}},
        "stages": [
            {
                "id": "start",
                "on_enter": [
                    {"email": {"template": "never", "to": ["rep"]}, "when": {"field": "settings.region", "equals": "x"}}
                ],
            }
        ],
    }
    folder = tmp_path / "pb" / "never"
    folder.mkdir(parents=True)
    for part in ("subject.txt", "body.txt", "body.html"):
        (folder / part).write_text("{{ nothing_here }}")
    playbook = parse_playbook(data, templates_dir=tmp_path)
    assert render_check(playbook, TemplateRenderer(tmp_path)) == []
    data["stages"][0]["on_enter"][0].pop("when")
    errors = render_check(parse_playbook(data, templates_dir=tmp_path), TemplateRenderer(tmp_path))
    assert errors == [
        "stages[0].on_enter[0].email: template 'never' (subject.txt): 'nothing_here' is undefined (line 1)"
    ]
