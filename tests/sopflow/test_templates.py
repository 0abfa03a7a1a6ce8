"""Safe Balance email templates: each renders with the context the engine builds, fails loudly on a missing
variable, escapes HTML only, and cannot reach Python internals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from jinja2.exceptions import SecurityError, UndefinedError

from sopflow.conditions import make_context, role_address
from sopflow.config import PROJECT_ROOT
from sopflow.engine import Engine
from sopflow.models import Advance, CompleteTask, ExternalEvent, SetFields, SubmitForm
from sopflow.playbook_checks import load_playbook, template_names
from sopflow.signatures import form_token
from sopflow.templates import FormLinks, Rendered, RenderError, TemplateRenderer, links_for, one_line

TEMPLATES = PROJECT_ROOT / "templates"
PLAYBOOK = load_playbook(PROJECT_ROOT / "playbooks" / "safe_balance.yaml")
ALL_TEMPLATES = sorted(template_names(PLAYBOOK))
PUBLIC_URL = "https://sop.example.com"
DEAL_ID = "D-1001"
FORM_SECRET = "form-secret-for-template-tests"

# Where each template is sent (the deal's stage when the email is queued) and which extras the engine adds.
SENT_FROM: dict[str, tuple[str, str | None]] = {
    "account_claimed": ("contract_request", None),
    "contract_sent": ("contract", None),
    "contract_reminder": ("contract", "deadline"),
    "contract_expired": ("contract", "deadline"),
    "welcome": ("prelaunch", None),
    "prelaunch_kickoff": ("prelaunch", None),
    "task_overdue": ("prelaunch", "task"),
    "task_escalation": ("prelaunch", "task"),
    "launch_day": ("launch", None),
    "launch_closeout": ("ongoing", None),
    "visit_due": ("ongoing", "visit"),
    "visit_overdue": ("ongoing", "visit"),
    "site_visit_needs": ("ongoing", "form"),
}
# Forms already submitted when the deal enters each stage (the gates make them so).
FORMS_AT: dict[str, list[str]] = {
    "contract_request": ["targeting"],
    "contract": ["targeting", "contract_request"],
    "prelaunch": ["targeting", "contract_request"],
    "launch": ["targeting", "contract_request"],
    "ongoing": ["targeting", "contract_request", "closeout"],
}
# The form the reader must fill out next, linked from the email.
FORM_LINKS = {
    "account_claimed": "contract_request",
    "launch_day": "closeout",
    "launch_closeout": "site_visit",
    "visit_due": "site_visit",
    "visit_overdue": "site_visit",
}

FULL_DEAL: dict[str, Any] = {
    "rep_email": "rep@example.com",
    "rep_name": "Alex Rep",
    "rep_id": "crm-101",
    "account_manager_email": "am@example.com",
    "account_manager_name": "Morgan Manager",
    "account_manager_id": "crm-202",
    "launch_date": "2025-05-05",
}
FULL_FORMS: dict[str, dict[str, Any]] = {
    "targeting": {
        "company": "Example Care Center",
        "city": "Springfield",
        "contact_name": "Pat Contact",
        "signer_name": "Casey Signer",
        "signer_email": "signer@example.com",
        "service_tier": "Premium",
        "services": ["Balance assessment", "Remote monitoring"],
        "notes": "Prefers morning calls",
    },
    "contract_request": {
        "agreement": "Life in Balance",
        "term_months": 24,
        "monthly_fee": "450.00",
        "client_agreed_on": "2025-03-01",
        "notes": None,
    },
    "closeout": {
        "launched_on": "2025-05-06",
        "staff_trained": True,
        "went_well": "Staff engaged from day one",
        "sore_spots": "Night shift needs a second training",
        "all_running": False,
    },
    "site_visit": {
        "visited_on": "2025-05-20",
        "steps_cleared": True,
        "staff_met": "Head nurse, two aides",
        "notes": "Good progress",
        "needs": "More assessment kits\nA refresher session for new staff",
    },
}
# What the engine holds when only required values were given: optional fields are absent, not None.
MINIMAL_DEAL: dict[str, Any] = {"rep_email": "rep@example.com"}
MINIMAL_FORMS: dict[str, dict[str, Any]] = {
    "targeting": {
        "company": "Example Care Center",
        "signer_name": "Casey Signer",
        "signer_email": "signer@example.com",
        "service_tier": "Basic",
    },
    "contract_request": {"agreement": "Safe Balance", "term_months": 12, "client_agreed_on": "2025-03-01"},
    "closeout": {"launched_on": "2025-05-06", "staff_trained": True, "all_running": True},
    "site_visit": {"visited_on": "2025-05-20", "steps_cleared": False, "needs": "Replacement tablet"},
}


def links(deal_id: str = DEAL_ID) -> dict[str, FormLinks]:
    """What the email activity adds to the engine's context, restricted to the playbook's forms so a template that
    links to a form the playbook does not have fails here."""
    return links_for(PUBLIC_URL, deal_id, FORM_SECRET, PLAYBOOK.forms)


def sample_context(template: str, *, minimal: bool = False) -> dict[str, Any]:
    """The context `template` is rendered with, built as `Engine.template_context` builds it, plus `links`."""
    stage_id, extra_kind = SENT_FROM[template]
    deal = dict(MINIMAL_DEAL if minimal else FULL_DEAL)
    values = MINIMAL_FORMS if minimal else FULL_FORMS
    forms = {form_id: dict(values[form_id]) for form_id in FORMS_AT[stage_id]}
    if extra_kind == "form":
        forms["site_visit"] = dict(values["site_visit"])
    ctx = make_context(PLAYBOOK, deal, forms)
    roles = {}
    for role_id in PLAYBOOK.roles:
        email, display = role_address(PLAYBOOK, ctx, role_id)
        roles[role_id] = {"email": email, "name": display or role_id.replace("_", " ")}
    stage = PLAYBOOK.stage(stage_id)
    extra: dict[str, Any] = {}
    if extra_kind == "deadline":
        extra["deadline"] = {"label": "contract expires", "due_at": "2025-03-17T09:00:00+00:00"}
    elif extra_kind == "task":
        spec = stage.task("onsite_appointment")
        assert spec is not None
        extra["task"] = {"id": spec.id, "title": spec.title, "owner": spec.owner, "due_at": "2025-03-24T09:00:00+00:00"}
    elif extra_kind == "visit":
        extra["visit"] = {"label": "site visit", "due_at": "2025-05-20T09:00:00+00:00", "number": 2}
    elif extra_kind == "form":
        extra["form"] = forms["site_visit"]
    deadline = (
        {"label": "contract expires", "due_at": "2025-03-17T09:00:00+00:00"} if stage.deadline is not None else None
    )
    return {
        "deal_id": DEAL_ID,
        "deal": deal,
        "forms": forms,
        "settings": dict(PLAYBOOK.settings),
        "roles": roles,
        "stage": {"id": stage.id, "title": stage.name},
        "playbook": {"id": PLAYBOOK.id, "title": PLAYBOOK.title or PLAYBOOK.id},
        "deadline": deadline,
        **extra,
        "links": links(),
    }


@pytest.fixture(scope="module")
def renderer() -> TemplateRenderer:
    return TemplateRenderer(TEMPLATES)


def render(renderer: TemplateRenderer, template: str, context: dict[str, Any]) -> Rendered:
    return renderer.render(PLAYBOOK.id, template, context)


def test_every_playbook_template_exists() -> None:
    assert set(SENT_FROM) == set(ALL_TEMPLATES)
    # Loading with the templates dir checks that each template has subject.txt, body.txt and body.html.
    load_playbook(PROJECT_ROOT / "playbooks" / "safe_balance.yaml", TEMPLATES)


@pytest.mark.parametrize("minimal", [False, True], ids=["full", "minimal"])
@pytest.mark.parametrize("template", ALL_TEMPLATES)
def test_template_renders(renderer: TemplateRenderer, template: str, minimal: bool) -> None:
    out = render(renderer, template, sample_context(template, minimal=minimal))
    assert out.subject.strip() and "\n" not in out.subject
    assert out.text.strip() and out.html.strip()
    assert f"sent by sopflow for deal {DEAL_ID}" in out.html
    assert PLAYBOOK.title is not None and PLAYBOOK.title.replace("&", "&amp;") in out.html
    for part in (out.subject, out.text, out.html):
        assert "None" not in part and "{{" not in part and "{%" not in part
    if template in FORM_LINKS:
        form = FORM_LINKS[template]
        link = f"{PUBLIC_URL}/forms/{DEAL_ID}/{form}?token={form_token(FORM_SECRET, DEAL_ID, form)}"
        assert link in out.text and f'href="{link}"' in out.html


def test_contract_sent_states_the_14_day_deadline(renderer: TemplateRenderer) -> None:
    out = render(renderer, "contract_sent", sample_context("contract_sent"))
    for body in (out.text, out.html):
        assert "within 14 days" in body and "Mar 17, 2025" in body
    assert "Life in Balance" in out.subject
    # The engine queues on_enter emails before it starts the stage deadline: the 14 days must still be stated.
    ctx = {**sample_context("contract_sent"), "deadline": None}
    out = render(renderer, "contract_sent", ctx)
    assert "within 14 days" in out.text and "within 14 days" in out.html


def test_greetings_use_role_names(renderer: TemplateRenderer) -> None:
    assert "Hello Casey Signer," in render(renderer, "welcome", sample_context("welcome")).text
    assert "Hello Alex Rep," in render(renderer, "visit_due", sample_context("visit_due")).text
    minimal = render(renderer, "account_claimed", sample_context("account_claimed", minimal=True))
    assert "Hello rep," in minimal.text


@pytest.mark.parametrize(
    ("template", "key"),
    [
        ("task_overdue", "task"),
        ("visit_due", "visit"),
        ("site_visit_needs", "form"),
        ("welcome", "roles"),
        ("account_claimed", "links"),
        ("launch_day", "deal_id"),
    ],
)
def test_missing_variable_fails(renderer: TemplateRenderer, template: str, key: str) -> None:
    ctx = sample_context(template)
    del ctx[key]
    with pytest.raises(RenderError, match=f"'{key}' is undefined") as failure:
        render(renderer, template, ctx)
    assert isinstance(failure.value.__cause__, UndefinedError)


def test_missing_variable_fails_in_any_part(tmp_path: Path) -> None:
    folder = tmp_path / "pb" / "greeting"
    folder.mkdir(parents=True)
    (folder / "subject.txt").write_text("Hello")
    (folder / "body.txt").write_text("Dear {{ name }},")
    (folder / "body.html").write_text("<p>Hello</p>")
    with pytest.raises(RenderError) as failure:
        TemplateRenderer(tmp_path).render("pb", "greeting", {})
    assert str(failure.value) == "template 'greeting' (body.txt): 'name' is undefined (line 1)"


def test_html_is_escaped_and_text_is_not(renderer: TemplateRenderer) -> None:
    ctx = sample_context("account_claimed")
    ctx["deal"]["rep_name"] = "<script>alert(1)</script>"
    ctx["roles"]["rep"]["name"] = "<script>alert(1)</script>"
    ctx["forms"]["targeting"]["company"] = "A & B"
    out = render(renderer, "account_claimed", ctx)
    assert "<script>" not in out.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out.html
    assert "A &amp; B" in out.html and "A & B" not in out.html
    assert out.subject == "Account claimed: A & B"
    assert "A & B" in out.text and "<script>alert(1)</script>" in out.text


@pytest.mark.parametrize("part", ["subject.txt", "body.txt", "body.html"])
@pytest.mark.parametrize(
    "expression",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ deal.__class__.__init__.__globals__ }}",
    ],
)
def test_sandbox_refuses_python_internals(tmp_path: Path, part: str, expression: str) -> None:
    folder = tmp_path / "pb" / "evil"
    folder.mkdir(parents=True)
    for name in ("subject.txt", "body.txt", "body.html"):
        (folder / name).write_text(expression if name == part else "harmless")
    with pytest.raises(RenderError, match="unsafe") as failure:
        TemplateRenderer(tmp_path).render("pb", "evil", {"deal": {}})
    assert isinstance(failure.value.__cause__, SecurityError) and failure.value.part == part


def test_emails_the_engine_queues_all_render(renderer: TemplateRenderer) -> None:
    """Drive the real engine through the lifecycle and render every email with the context it queued."""
    start = datetime(2025, 3, 3, 9, tzinfo=UTC)
    targeting = SubmitForm(form="targeting", fields=MINIMAL_FORMS["targeting"])
    contract = SubmitForm(form="contract_request", fields=MINIMAL_FORMS["contract_request"])
    rendered: dict[str, list[Rendered]] = {}

    def drain(engine: Engine) -> None:
        for step in engine.take_steps():
            if step.email is not None:
                ctx = {**step.email.context, "links": links(step.email.deal_id)}
                out = render(renderer, step.email.template, ctx)
                rendered.setdefault(step.email.template, []).append(out)

    # The contract is not signed: two reminders (sent on weekdays, 09:00 Eastern, inside the send window), then it
    # expires.
    sent_at = datetime(2025, 3, 5, 14, tzinfo=UTC)
    lapsed = Engine.start(PLAYBOOK, "D-2", dict(FULL_DEAL), sent_at, "wf-2")
    lapsed.submit_form(targeting, sent_at)
    lapsed.submit_form(contract, sent_at)
    lapsed.tick(sent_at + timedelta(days=15))
    drain(lapsed)
    assert len(rendered["contract_reminder"]) == 2 and "contract_expired" in rendered

    # The happy path, with every task late enough to be reminded and escalated.
    now = start
    engine = Engine.start(PLAYBOOK, DEAL_ID, dict(MINIMAL_DEAL), now, "wf-1")
    engine.submit_form(targeting, now)
    engine.submit_form(contract, now)
    engine.event(ExternalEvent(name="contract_signed", event_id="env-1"), now)
    # No account manager yet: the assignment task is reminded and escalated before one is set.
    now += timedelta(days=3)
    engine.tick(now)
    engine.set_fields(SetFields(fields={"account_manager_email": "am@example.com"}), now)
    now += timedelta(days=25)
    engine.tick(now)
    for task in ("onsite_appointment", "services_onboarded", "prelaunch_call", "cleared_for_launch"):
        engine.complete_task(CompleteTask(task=task), now)
    engine.set_fields(SetFields(fields={"launch_date": "2025-04-01"}), now)
    engine.advance(Advance(to="launch"), now)
    now += timedelta(days=4)
    engine.tick(now)
    engine.complete_task(CompleteTask(task="launch_checklist"), now)
    closeout = {**MINIMAL_FORMS["closeout"], "launched_on": now.date().isoformat()}
    engine.submit_form(SubmitForm(form="closeout", fields=closeout), now)
    now += timedelta(days=30)
    engine.tick(now)
    engine.submit_form(
        SubmitForm(form="site_visit", fields={**MINIMAL_FORMS["site_visit"], "visited_on": now.date().isoformat()}), now
    )
    drain(engine)

    assert set(rendered) == set(ALL_TEMPLATES)
    for outs in rendered.values():
        for out in outs:
            assert out.subject and "\n" not in out.subject and "None" not in out.text + out.html
    assert "within 14 days" in rendered["contract_sent"][0].text


def test_form_links_carry_the_token_of_their_deal_and_form_and_work_in_the_sandbox(tmp_path: Path) -> None:
    folder = tmp_path / "pb" / "links"
    folder.mkdir(parents=True)
    (folder / "subject.txt").write_text("{{ links.forms.site_visit }}")
    (folder / "body.txt").write_text("{{ links.forms['closeout'] }} {{ 'targeting' in links.forms }}")
    (folder / "body.html").write_text('<a href="{{ links.forms.site_visit }}">visit</a>')
    out = TemplateRenderer(tmp_path).render("pb", "links", {"links": links_for(PUBLIC_URL + "/", "D:7", "s3cret")})

    visit = f"{PUBLIC_URL}/forms/D%3A7/site_visit?token={form_token('s3cret', 'D:7', 'site_visit')}"
    assert out.subject == visit
    assert out.text == f"{PUBLIC_URL}/forms/D%3A7/closeout?token={form_token('s3cret', 'D:7', 'closeout')} True"
    assert out.html == f'<a href="{visit}">visit</a>'
    # Without a form secret the intake refuses every post: the links carry no token.
    assert links_for(PUBLIC_URL, "D-1")["forms"]["site_visit"] == f"{PUBLIC_URL}/forms/D-1/site_visit"


@pytest.mark.parametrize(
    ("expression", "failure"),
    [
        ("{{ links.forms }}/site_visit", "links.forms is not a URL"),  # the old shape must not mail a dead link
        ("{{ links.forms.site_vist }}", "has no attribute 'site_vist'"),  # not a form of the playbook
        ("{{ links.forms.Site_Visit }}", "has no attribute 'Site_Visit'"),
        ("{{ links.forms._secret }}", "unsafe"),
        ("{{ links.forms.__class__.__mro__ }}", "unsafe"),
        ("{% for form in links.forms %}{% endfor %}", "not iterable"),
    ],
)
@pytest.mark.parametrize("part", ["body.txt", "body.html"])
def test_form_links_refuse_what_is_not_a_form_link(tmp_path: Path, part: str, expression: str, failure: str) -> None:
    folder = tmp_path / "pb" / "links"
    folder.mkdir(parents=True)
    for name in ("subject.txt", "body.txt", "body.html"):
        (folder / name).write_text(expression if name == part else "harmless")
    with pytest.raises(RenderError, match=failure) as refused:
        TemplateRenderer(tmp_path).render("pb", "links", {"links": links()})
    assert refused.value.part == part


@pytest.mark.parametrize(
    ("raw", "line"),
    [
        ("Account claimed:\r\nBcc: eve@example.com", "Account claimed: Bcc: eve@example.com"),
        ("tab\tvertical\x0bform\x0cnext\x85line\u2028para\u2029end", "tab vertical form next line para end"),
        ("nul\x00 esc\x1b[31m del\x7f c1\x9b", "nul esc[31m del c1"),
        ("invoice \u202egpj.exe\u202c", "invoice gpj.exe"),
        ("\u2066isolate\u2069 \u200emarks\u200f \u061carabic", "isolate marks arabic"),
        ("lone \ud800surrogate", "lone surrogate"),
        ("  Welcome,   Sunrise Care  ", "Welcome, Sunrise Care"),
        ("Café · 東京 ✓", "Café · 東京 ✓"),
    ],
)
def test_one_line_keeps_readable_text_and_drops_control_and_bidi_characters(raw: str, line: str) -> None:
    assert one_line(raw) == line


def test_a_rendered_subject_is_one_line_without_control_or_bidi_characters(tmp_path: Path) -> None:
    folder = tmp_path / "pb" / "hello"
    folder.mkdir(parents=True)
    (folder / "subject.txt").write_text("Welcome,\n{{ company }}\n")
    (folder / "body.txt").write_text("{{ company }}")
    (folder / "body.html").write_text("<p>{{ company }}</p>")
    company = "Acme\r\nBcc: eve@example.com\x00\x1b \u202egpj.exe"

    out = TemplateRenderer(tmp_path).render("pb", "hello", {"company": company})

    assert out.subject == "Welcome, Acme Bcc: eve@example.com gpj.exe"
    assert out.text == company  # bodies are the template's business: only the subject is a header
