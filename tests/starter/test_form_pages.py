"""The pages behind the form links in emails: opened with the mailed token they show the deal's form, generated from
its playbook; posted by a browser they drive a real lifecycle on the dev server and answer with pages, not JSON."""

from __future__ import annotations

import asyncio
import html
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from sopflow.config import PROJECT_ROOT
from sopflow.constants import TASK_QUEUE
from sopflow.db import FormSubmission, VisitRow
from sopflow.mailsink import MailSink
from sopflow.models import Close
from sopflow.playbook import FieldSpec, FormSpec
from sopflow.playbook_checks import load_playbook
from sopflow.signatures import form_token
from starter.intake import context
from starter.intake.context import IntakeError
from starter.intake.dependencies import get_settings
from starter.intake.form_pages import FormView, browser_fields, error_page, form_page, prefers_html
from tests.conftest import TARGETING, TEMPLATES, make_worker
from tests.starter.conftest import FORM_SECRET, Intake, applied_updates, creation, eventually, launched, to_launch
from workflows.lifecycle import ClientLifecycle

SAFE_BALANCE = load_playbook(PROJECT_ROOT / "playbooks" / "safe_balance.yaml", TEMPLATES)
BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
FORM_ENCODED = {**BROWSER, "Content-Type": "application/x-www-form-urlencoded"}

# What each field type must look like in the page: (tag, input type, inputmode).
EXPECTED_CONTROL = {
    "text": ("input", "text", None),
    "email": ("input", "email", None),
    "emails": ("input", "text", "email"),
    "date": ("input", "date", None),
    "datetime": ("input", "datetime-local", None),
    "number": ("input", "number", None),
    "money": ("input", "text", "decimal"),
    "choice": ("select", None, None),
    "multi_choice": ("input", "checkbox", None),
    "bool": ("input", "checkbox", None),
}


# --- reading a page like a browser ----------------------------------------------------------------------------------


@dataclass
class Page:
    """A form page as a browser sees it: its controls in document order, the label texts, the form's action."""

    action: str | None = None
    method: str | None = None
    controls: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    legends: dict[str, str] = field(default_factory=dict)
    text: str = ""

    def named(self, name: str) -> list[dict[str, Any]]:
        return [c for c in self.controls if c.get("name") == name]

    def marked(self, marker: str) -> set[str]:
        return {c["value"] for c in self.controls if c.get("type") == "hidden" and c.get("name") == marker}

    def submit(self, typed: dict[str, Any]) -> bytes:
        """The body a browser posts after the person typed `typed` (bool: tick or not; list: the ticked options)."""
        pairs: list[tuple[str, str]] = []
        for control in self.controls:
            name, kind = control.get("name"), control.get("type")
            if not name:
                continue
            if control["tag"] == "select":
                chosen = typed.get(name, next((o for o, selected in control["options"] if selected), ""))
                pairs.append((name, chosen))
            elif kind == "checkbox":
                wanted = typed.get(name)
                if wanted is None:
                    ticked = "checked" in control
                elif isinstance(wanted, list):
                    ticked = control["value"] in wanted
                else:
                    ticked = bool(wanted)
                if ticked:
                    pairs.append((name, control["value"]))
            elif kind == "hidden":
                pairs.append((name, control["value"]))
            else:
                pairs.append((name, str(typed.get(name, control.get("value") or ""))))
        return urlencode(pairs).encode()


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.page = Page()
        self._select: dict[str, Any] | None = None
        self._option: tuple[str, bool] | None = None
        self._label_for: str | None = None
        self._legend_of: str | None = None
        self._fieldset: str | None = None
        self._buffer: list[str] = []
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "form":
            self.page.action, self.page.method = attributes.get("action"), attributes.get("method")
        elif tag == "input":
            self.page.controls.append({"tag": "input", **attributes})
        elif tag == "select":
            self._select = {"tag": "select", **attributes, "options": []}
            self.page.controls.append(self._select)
        elif tag == "option" and self._select is not None:
            self._select["options"].append((attributes.get("value") or "", "selected" in attributes))
        elif tag == "label":
            self._label_for, self._buffer = attributes.get("for"), []
        elif tag == "fieldset":
            self._fieldset = attributes.get("id")
        elif tag == "legend":
            self._legend_of, self._buffer = self._fieldset, []

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None
        elif tag == "label" and self._label_for:
            self.page.labels[self._label_for] = " ".join("".join(self._buffer).split())
            self._label_for = None
        elif tag == "legend" and self._legend_of:
            self.page.legends[self._legend_of] = " ".join("".join(self._buffer).split())
            self._legend_of = None

    def handle_data(self, data: str) -> None:
        self._buffer.append(data)
        self._text.append(data)

    def close(self) -> None:
        super().close()
        self.page.text = " ".join("".join(self._text).split())


def read(answer: httpx.Response | HTMLResponse) -> Page:
    reader = _Reader()
    reader.feed(answer.text if isinstance(answer, httpx.Response) else bytes(answer.body).decode())
    reader.close()
    return reader.page


def assert_renders_every_field(page: Page, form: str) -> None:
    """Every field of the playbook's form, with its label, the input type of its field type and its required mark."""
    spec = SAFE_BALANCE.forms[form]
    names = {c["name"] for c in page.controls if c.get("name") and not c["name"].startswith("_")}
    assert names == set(spec.fields)
    for name, field_spec in spec.fields.items():
        tag, kind, inputmode = EXPECTED_CONTROL[field_spec.type]
        controls = page.named(name)
        assert {c["tag"] for c in controls} == {tag}, name
        assert all(c.get("type") == kind and c.get("inputmode") == inputmode for c in controls), (name, controls)
        label = field_spec.label or name.replace("_", " ").capitalize()
        if field_spec.type == "multi_choice":
            assert page.legends[f"field-{name}"].startswith(label)
            assert [c["value"] for c in controls] == field_spec.options
            assert [page.labels[c["id"]] for c in controls] == field_spec.options
            assert name in page.marked("_multiple")
            legend = page.legends[f"field-{name}"]
            assert legend.endswith("(required)") == field_spec.required
            continue
        (control,) = controls
        assert control["id"] == f"field-{name}"
        assert page.labels[control["id"]].startswith(label)
        if field_spec.type == "bool":
            # Always answered: unticked posts "no" through the marker, so the box itself is never required.
            assert control["value"] == "yes" and name in page.marked("_checkbox") and "required" not in control
            continue
        assert ("required" in control) == field_spec.required, name
        assert page.labels[control["id"]].endswith("(required)") == field_spec.required
        if field_spec.type == "choice":
            assert control["options"] == [("", False), *((option, False) for option in field_spec.options or [])]


# --- a deal through the browser --------------------------------------------------------------------------------------


def form_url(deal: str, form: str, token: str | None = None) -> str:
    return f"/forms/{deal}/{form}?{urlencode({'token': token or form_token(FORM_SECRET, deal, form)})}"


async def open_form(intake: Intake, deal: str, form: str) -> Page:
    answer = await intake.http.get(form_url(deal, form), headers=BROWSER)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/html")
    assert answer.headers["cache-control"] == "no-store" and answer.headers["referrer-policy"] == "no-referrer"
    page = read(answer)
    assert page.method == "post" and page.action == f"{form}?token={form_token(FORM_SECRET, deal, form)}"
    return page


async def post_page(intake: Intake, deal: str, form: str, body: bytes) -> httpx.Response:
    """Post as the browser does: to the form's action, resolved against the page's URL."""
    return await intake.http.post(form_url(deal, form), content=body, headers=FORM_ENCODED)


async def email_form(intake: Intake, deal: str, form: str) -> dict[str, Any]:
    context = await intake.client.get_workflow_handle(f"deal-{deal}").query(ClientLifecycle.email_context)
    values: dict[str, Any] = context["forms"][form]
    return values


async def test_a_deal_goes_from_targeting_to_site_visits_through_the_form_pages(live: Intake):
    deal = live.deal(801)
    assert (await live.hubspot([creation(live.portal, 801)])).json()["results"][0]["outcome"] == "started"

    # Targeting: every field, as its type wants it; the site-visit form is not open yet.
    targeting = await open_form(live, deal, "targeting")
    assert_renders_every_field(targeting, "targeting")
    assert "Targeting form" in targeting.text and f"deal {deal}" in targeting.text
    early = await live.http.get(form_url(deal, "site_visit"), headers=BROWSER)
    assert early.status_code == 409 and "not open while the deal is in Targeting" in html.unescape(early.text)

    typed = {
        "company": f"Clinic <{deal}> & Co",
        "signer_name": "Client Signer",
        "signer_email": "nobody",
        "service_tier": "Standard",
        "services": ["Balance assessment", "Remote monitoring"],
    }
    invalid = await post_page(live, deal, "targeting", targeting.submit(typed))
    assert invalid.status_code == 422 and invalid.headers["content-type"].startswith("text/html")
    again = read(invalid)
    assert "'nobody' is not an email address" in again.text and "Please correct this answer" in again.text
    (email,) = again.named("signer_email")
    assert email["aria-invalid"] == "true" and email["aria-describedby"] == "field-signer_email-error"
    assert email["value"] == "nobody" and again.named("company")[0]["value"] == typed["company"]
    assert [c["value"] for c in again.named("services") if "checked" in c] == typed["services"]
    assert again.named("service_tier")[0]["options"][2] == ("Standard", True)
    assert f"Clinic &lt;{deal}&gt; &amp; Co" in invalid.text  # typed values are escaped, never markup
    assert (await live.status(deal)).stage == "targeting"

    accepted = await post_page(live, deal, "targeting", again.submit({"signer_email": "signer@example.com"}))
    assert accepted.status_code == 200, accepted.text
    assert "Thank you, form received; the deal is now in Contract request." in read(accepted).text
    assert (await email_form(live, deal, "targeting"))["services"] == typed["services"]

    # Closeout on launch day, one box left unticked: it is a "no", not a missing answer.
    await to_launch(live, deal)
    closeout = await open_form(live, deal, "closeout")
    assert_renders_every_field(closeout, "closeout")
    body = closeout.submit({"launched_on": "2026-01-06", "staff_trained": False, "all_running": True})
    done = await post_page(live, deal, "closeout", body)
    assert done.status_code == 200, done.text
    assert "the deal is now in Ongoing client management." in read(done).text
    stored = await email_form(live, deal, "closeout")
    assert stored["staff_trained"] is False and stored["all_running"] is True

    # Site visits, logged again and again from the same link.
    site_visit = await open_form(live, deal, "site_visit")
    assert_renders_every_field(site_visit, "site_visit")
    visited = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    body = site_visit.submit({"visited_on": visited, "steps_cleared": False, "notes": "Tablet needs charging"})
    logged = await post_page(live, deal, "site_visit", body)
    assert logged.status_code == 200, logged.text
    assert "the deal is now in Ongoing client management." in read(logged).text
    stored = await email_form(live, deal, "site_visit")
    assert stored["visited_on"] == visited and stored["steps_cleared"] is False
    assert stored["notes"] == "Tablet needs charging" and stored["needs"] is None

    # An API client posting the same body still gets JSON.
    plain = {"Content-Type": FORM_ENCODED["Content-Type"]}
    api = await live.http.post(form_url(deal, "site_visit"), content=body, headers=plain)
    assert api.status_code == 200 and api.json()["stage"] == "ongoing"


def submission_of(page: Page) -> str:
    (control,) = page.named("_submission")
    assert control["type"] == "hidden"
    value: str = control["value"]
    return value


async def test_every_rendering_of_a_form_page_carries_its_own_one_time_submission_id(live: Intake):
    deal = live.deal(810)
    assert (await live.hubspot([creation(live.portal, 810)])).json()["results"][0]["outcome"] == "started"
    first, second = await open_form(live, deal, "targeting"), await open_form(live, deal, "targeting")
    ids = {submission_of(first), submission_of(second)}
    assert len(ids) == 2 and all(re.fullmatch(r"[0-9a-f]{32}", value) for value in ids)


async def test_one_site_visit_page_posted_twice_at_once_is_one_visit_and_both_posts_are_thanked(live: Intake):
    deal = await launched(live, 811)
    page = await open_form(live, deal, "site_visit")
    visited = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    body = page.submit({"visited_on": visited, "steps_cleared": True, "needs": "More brochures"})
    before = await applied_updates(live.client, deal, "submit_form")

    answers = await asyncio.gather(*(post_page(live, deal, "site_visit", body) for _ in range(2)))

    assert [answer.status_code for answer in answers] == [200, 200], [answer.text for answer in answers]
    assert all("Thank you, form received" in read(answer).text for answer in answers)
    after = await applied_updates(live.client, deal, "submit_form")
    assert after[len(before) :] == [f"form:{deal}:site_visit:{submission_of(page)}"]

    async def one_visit_recorded() -> None:
        with live.db.session() as session:
            forms = session.scalars(select(FormSubmission).where(FormSubmission.deal_id == deal)).all()
            visits = session.scalars(select(VisitRow).where(VisitRow.deal_id == deal, VisitRow.status == "logged"))
            assert [row.form for row in forms].count("site_visit") == 1 and len(visits.all()) == 1

    await eventually(one_visit_recorded)
    # Resent later (a reload of the thank-you page) it is still the same visit; a new page is a new one.
    again = await post_page(live, deal, "site_visit", body)
    assert again.status_code == 200 and await applied_updates(live.client, deal, "submit_form") == after
    fresh = await open_form(live, deal, "site_visit")
    assert (await post_page(live, deal, "site_visit", fresh.submit({"visited_on": visited}))).status_code == 200
    assert len(await applied_updates(live.client, deal, "submit_form")) == len(after) + 1


@pytest.mark.parametrize(
    "pairs",
    [
        [("_submission", "short")],
        [("_submission", "x" * 65)],
        [("_submission", "has spaces in it")],
        [("_submission", "form:D-1:x:abcdefgh")],
        [("_submission", "a" * 32), ("_submission", "b" * 32)],
    ],
    ids=["short", "long", "spaces", "colons", "twice"],
)
async def test_a_damaged_submission_id_is_a_400_page_before_the_lifecycle_is_asked(
    offline: Intake, pairs: list[tuple[str, str]]
):
    deal = offline.deal(812)  # no lifecycle at all: the 400 comes first
    body = urlencode([("company", "Clinic"), *pairs]).encode()
    answer = await post_page(offline, deal, "targeting", body)
    assert answer.status_code == 400 and answer.headers["content-type"].startswith("text/html")
    page = read(answer)
    assert "The form could not be read" in page.text and "open the form again" in page.text
    api = await offline.http.post(
        form_url(deal, "targeting"), content=body, headers={"Content-Type": FORM_ENCODED["Content-Type"]}
    )
    assert api.status_code == 400 and "_submission" in api.json()["error"]


async def test_a_post_not_confirmed_in_time_says_so_and_retrying_that_submission_applies_it_once(
    offline: Intake, monkeypatch: pytest.MonkeyPatch
):
    """No worker: the post times out (503). It is not lost, and not saved either, as far as anyone can tell yet:
    the page says exactly that, and its "Submit again" button resends the same submission."""
    monkeypatch.setattr(context, "TEMPORAL_TIMEOUT", 1.0)
    deal = offline.deal(813)
    assert (await offline.hubspot([creation(offline.portal, 813)])).json()["results"][0]["outcome"] == "started"
    submission = "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6"
    body = urlencode([*TARGETING.items(), ("_submission", submission)]).encode()

    pending = await post_page(offline, deal, "targeting", body)

    assert pending.status_code == 503 and pending.headers["retry-after"]
    page = read(pending)
    assert "not confirmed yet" in page.text and "same submission" in page.text and "safe" in page.text
    assert "Nothing was saved" not in page.text
    assert page.method == "post" and page.action == form_url(deal, "targeting").removeprefix(f"/forms/{deal}/")
    assert submission_of(page) == submission and {c["name"] for c in page.controls if c.get("name")} >= set(TARGETING)

    with MailSink() as sink:
        async with make_worker(offline.client, offline.db, sink, task_queue=TASK_QUEUE):
            monkeypatch.setattr(context, "TEMPORAL_TIMEOUT", 30.0)
            retried = await post_page(offline, deal, "targeting", page.submit({}))
            assert retried.status_code == 200, retried.text
            assert "the deal is now in Contract request" in read(retried).text
            assert await applied_updates(offline.client, deal, "submit_form") == [f"form:{deal}:targeting:{submission}"]
            assert (await offline.status(deal)).stage == "contract_request"


async def test_a_closed_deals_form_is_a_409_page(live: Intake):
    deal = live.deal(802)
    assert (await live.hubspot([creation(live.portal, 802)])).json()["results"][0]["outcome"] == "started"
    handle = live.client.get_workflow_handle(f"deal-{deal}")
    await handle.execute_update(ClientLifecycle.close, Close(outcome="lost", reason="went elsewhere"))
    await handle.result()

    page = await live.http.get(form_url(deal, "targeting"), headers=BROWSER)
    assert page.status_code == 409 and page.headers["content-type"].startswith("text/html")
    assert f"deal {deal} is closed" in read(page).text
    posted = await post_page(live, deal, "targeting", b"company=Clinic")
    assert posted.status_code == 409 and "This form cannot be submitted now" in read(posted).text


async def test_wrong_tokens_and_unknown_deals_are_pages_that_give_nothing_away(offline: Intake):
    deal = offline.deal(803)
    for token in (None, "0" * 64, form_token(FORM_SECRET, deal, "closeout"), form_token("other", deal, "targeting")):
        url = f"/forms/{deal}/targeting" + (f"?token={token}" if token else "")
        page = await offline.http.get(url, headers=BROWSER)
        assert page.status_code == 401 and page.headers["content-type"].startswith("text/html")
        assert "This link does not work" in read(page).text and deal not in page.text
        posted = await offline.http.post(url, content=b"company=x", headers=FORM_ENCODED)
        assert posted.status_code == 401 and "This link does not work" in read(posted).text
    # JSON clients keep their JSON answers.
    refused = await offline.http.post(f"/forms/{deal}/targeting", json={})
    assert refused.json()["error"] == "missing or wrong form token"

    # Only once the token proved the caller may ask: the deal has no lifecycle.
    missing = await offline.http.get(form_url(deal, "targeting"), headers=BROWSER)
    assert missing.status_code == 404 and f"deal {deal} has no lifecycle" in read(missing).text
    bad_form = await offline.http.get(form_url(deal, "Bad-Form"), headers=BROWSER)
    assert bad_form.status_code == 404

    without_secret = offline.settings.model_copy(update={"form_secret": None})
    offline.app.dependency_overrides[get_settings] = lambda: without_secret
    disabled = await offline.http.get(form_url(deal, "targeting"), headers=BROWSER)
    assert disabled.status_code == 401


# --- the page itself, without a server -------------------------------------------------------------------------------

EVERY_TYPE = FormSpec(
    title="Every <type>",
    fields={
        "name": FieldSpec(type="text", required=True, label='Name "quoted" & <b>bold</b>'),
        "email": FieldSpec(type="email"),
        "users": FieldSpec(type="emails"),
        "on": FieldSpec(type="date", required=True),
        "at": FieldSpec(type="datetime"),
        "count": FieldSpec(type="number"),
        "fee": FieldSpec(type="money", label="Monthly fee"),
        "tier": FieldSpec(type="choice", options=["A & B", "C"]),
        "extras": FieldSpec(type="multi_choice", required=True, options=["X, with comma", "Y"]),
        "agreed": FieldSpec(type="bool", required=True),
    },
)


def test_every_field_type_gets_its_control_and_values_are_escaped():
    view = FormView("D-9", "every", EVERY_TYPE, "Playbook & Co", "Stage <1>")
    typed: dict[str, Any] = {"name": '"><script>alert(1)</script>', "tier": "a & b", "extras": "X, with comma"}
    typed |= {"agreed": "no", "users": ["a@example.com", "b@example.com"]}
    answer = form_page(view, "tok en", typed, {"name": "required", "extras": "required", "*": "a number out of range"})
    page = read(answer)
    assert answer.status_code == 200 and page.action == "every?token=tok+en"
    for name, spec in EVERY_TYPE.fields.items():
        tag, kind, inputmode = EXPECTED_CONTROL[spec.type]
        assert all((c["tag"], c.get("type"), c.get("inputmode")) == (tag, kind, inputmode) for c in page.named(name)), (
            name
        )
    assert page.named("count")[0]["step"] == "any"
    assert page.named("name")[0]["value"] == typed["name"]
    assert page.named("users")[0]["value"] == "a@example.com, b@example.com"  # a list reads back as one line
    text = bytes(answer.body).decode()
    assert "<script>" not in text and "<b>bold</b>" not in text and "Every &lt;type&gt;" in text
    assert page.named("tier")[0]["options"] == [("", False), ("A & B", True), ("C", False)]
    assert [c["value"] for c in page.named("extras") if "checked" in c] == ["X, with comma"]
    assert "checked" not in page.named("agreed")[0]
    assert page.legends["field-extras"] == "Extras (required)" and page.named("extras")[0].get("required") is None
    assert "*: a number out of range" in page.text and "Please correct these answers" in page.text


def test_a_browser_post_means_what_the_person_saw():
    fields = {"_checkbox": ["agreed", "other", "../etc"], "_multiple": "extras", "extras": "X, with comma", "x": "1"}
    assert browser_fields(fields) == {"agreed": "no", "other": "no", "extras": ["X, with comma"], "x": "1"}
    assert browser_fields({"_checkbox": "agreed", "agreed": "yes"}) == {"agreed": "yes"}
    assert browser_fields({"a": "1"}) == {"a": "1"}


@pytest.mark.parametrize(
    ("accept", "html_wins"),
    [
        (BROWSER["Accept"], True),
        ("text/html", True),
        ("application/json", False),
        ("*/*", False),
        (None, False),
        ("", False),
        ("application/json, text/html;q=0.5", False),
        ("text/*, application/json;q=0.5", True),
        ("text/html;q=0, */*", False),
        ("text/html;q=bogus, application/json", False),
    ],
)
def test_only_a_request_preferring_html_gets_pages(accept: str | None, html_wins: bool):
    assert prefers_html(accept) is html_wins


def test_a_503_page_asks_to_retry_without_naming_internals_or_claiming_what_it_cannot_know():
    answer = error_page(IntakeError(503, "Temporal unavailable (status query): connection refused at 10.0.0.7"))
    assert answer.status_code == 503 and answer.headers["retry-after"]
    text = read(answer).text
    assert "10.0.0.7" not in bytes(answer.body).decode() and "try again" in text and "saved" not in text


def test_a_field_with_a_format_shows_it_with_its_example_before_anyone_types():
    dated = FieldSpec(
        type="text",
        required=True,
        pattern=r"\d\d/\d\d/\d\d_?[A-Za-z]+: .+",
        format="MM/DD/YY_Initials: Action",
        example="04/20/23_MM: Customer asked to cancel",
    )
    view = FormView("D-9", "case", FormSpec(fields={"description": dated, "notes": FieldSpec()}), "P", "S")
    page = read(form_page(view, "t"))
    assert "Format: MM/DD/YY_Initials: Action, e.g. 04/20/23_MM: Customer asked to cancel" in page.text
    assert page.text.count("Format:") == 1  # only the patterned field
