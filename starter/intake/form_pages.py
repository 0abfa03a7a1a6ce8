"""The HTML side of web forms: the page a mailed form link opens, and what a browser sees after posting it.

A link in an email (`links.forms.<form>`, see `sopflow.templates.FormLinks`) is opened by a person, not a program,
so `GET /forms/{deal_id}/{form}?token=…` answers with a plain HTML form generated from the playbook's form spec,
and a browser's post of that form gets HTML back (a thank-you page, the form again with the field messages, or an
error page). Server-rendered from the Jinja templates in `templates/_intake/` (autoescaped), no JavaScript; labels,
fieldsets and `aria-describedby` messages make it usable with a screen reader and a keyboard. This module decides
what a page says; the templates only lay it out.

Two hidden-field conventions make a browser's post mean what the person saw (`browser_fields` applies them):

- `_checkbox=<field>`: a bool field shown as a checkbox. Browsers send nothing for an unchecked box, which would read
  as "not answered" (and fail a required field); with the marker, an absent box is posted as "no".
- `_multiple=<field>`: a multi_choice field shown as checkboxes. One ticked option arrives as a single text, which
  the field would split at commas; with the marker it is always a list.

A third hidden field, `_submission`, carries the page's one-time submission id (`starter.intake.idempotency`): drawn
when the page is rendered, it makes the post idempotent, so a double click or a resent page is one submission.

Field names are playbook idents (`[a-z][a-z0-9_]*`), so the leading underscore cannot collide with a real field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

import jinja2
from fastapi.responses import HTMLResponse

from sopflow.config import PROJECT_ROOT
from sopflow.playbook import FieldSpec, FormSpec
from starter.intake.context import RETRY_AFTER_SECONDS, IntakeError
from starter.intake.idempotency import new_key

CHECKBOX_MARKER = "_checkbox"
MULTIPLE_MARKER = "_multiple"
_FIELD = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# What `sopflow.fields.coerce` reads as yes: a re-rendered checkbox is ticked for these.
_YES = {"true", "yes", "y", "1", "on"}

# The token is in the page's URL: no caching, no Referer carrying it to another site, no framing (clickjacking),
# and a policy that allows nothing but the inline style and posting back to this server.
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
}


# --- content negotiation --------------------------------------------------------------------------------------------


def prefers_html(accept: str | None) -> bool:
    """Whether the Accept header ranks text/html above application/json.

    Browsers send `text/html,…,*/*;q=0.8`, so they get pages; API clients send `application/json` or `*/*` (or
    nothing), which ranks both the same, so they keep getting the JSON answers they always had.
    """
    if not accept:
        return False
    ranges = [_media_range(part) for part in accept.split(",") if part.strip()]
    return _quality(ranges, "text", "html") > _quality(ranges, "application", "json")


def _media_range(part: str) -> tuple[str, str, float]:
    media, *params = (piece.strip() for piece in part.split(";"))
    kind, _, subtype = media.lower().partition("/")
    quality = 1.0
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "q":
            try:
                quality = min(max(float(value), 0.0), 1.0)
            except ValueError:
                quality = 0.0
    return kind, subtype or "*", quality


def _quality(ranges: list[tuple[str, str, float]], kind: str, subtype: str) -> float:
    """The q of the most specific range matching kind/subtype (exact, then kind/*, then */*), 0 if none does."""
    best: tuple[int, float] = (-1, 0.0)
    for range_kind, range_subtype, quality in ranges:
        if (range_kind, range_subtype) == (kind, subtype):
            specificity = 2
        elif (range_kind, range_subtype) == (kind, "*"):
            specificity = 1
        elif (range_kind, range_subtype) == ("*", "*"):
            specificity = 0
        else:
            continue
        if specificity > best[0]:
            best = (specificity, quality)
    return best[1]


# --- what a browser posts -------------------------------------------------------------------------------------------


def browser_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Apply the hidden-field conventions (module docstring) to form-encoded fields and drop the markers."""
    checkboxes = _marked(fields.pop(CHECKBOX_MARKER, None))
    multiples = _marked(fields.pop(MULTIPLE_MARKER, None))
    for name in checkboxes:
        fields.setdefault(name, "no")
    for name in multiples:
        if isinstance(fields.get(name), str):
            fields[name] = [fields[name]]
    return fields


def _marked(value: Any) -> list[str]:
    names = value if isinstance(value, list) else [] if value is None else [value]
    return [name for name in names if isinstance(name, str) and _FIELD.match(name)]


# --- the form ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FormView:
    """One deal's form as its page shows it: the spec from the deal's playbook and where the deal stands."""

    deal_id: str
    form: str
    spec: FormSpec
    playbook_title: str
    stage_title: str
    # The deal's zone: date-times typed on the page are its local times (None: UTC, a playbook without a zone).
    timezone: str | None = None

    @property
    def zone_hint(self) -> str:
        """What a date-time typed on this page means (the zone, not an abbreviation: EST or EDT depends on the date
        typed, which the page does not know yet)."""
        return f"local time in {self.timezone or 'UTC'}"

    @property
    def title(self) -> str:
        return self.spec.title or _humane(self.form)


@dataclass(frozen=True)
class Option:
    value: str
    selected: bool


@dataclass(frozen=True)
class Control:
    """One field as HTML: `kind` picks the markup (input, checkbox, checkboxes, select)."""

    name: str
    id: str
    label: str
    kind: str
    required: bool = False
    input_type: str = "text"
    inputmode: str | None = None
    step: str | None = None
    value: str = ""
    checked: bool = False
    options: list[Option] = field(default_factory=list)
    error: str | None = None
    hint: str | None = None


# Field type -> (input type, inputmode, step) for the fields shown as a single <input>.
_INPUTS: dict[str, tuple[str, str | None, str | None]] = {
    "text": ("text", None, None),
    "email": ("email", None, None),
    # A list of addresses typed as one line ("a@example.com, b@example.com"): a type=email input refuses commas.
    "emails": ("text", "email", None),
    "date": ("date", None, None),
    # The browser sends wall-clock time without an offset; the deal reads it in its zone (the page says which).
    "datetime": ("datetime-local", None, None),
    "timezone": ("text", None, None),
    "number": ("number", None, "any"),
    # Text, not type=number: "1,250.00" and "$1250" are amounts the field accepts, and number inputs refuse them.
    "money": ("text", "decimal", None),
}


def controls(spec: FormSpec, values: Mapping[str, Any], errors: Mapping[str, str]) -> list[Control]:
    """The form's fields in playbook order, each with what the person typed (`values`) and its message."""
    return [_control(name, field_spec, values.get(name), errors.get(name)) for name, field_spec in spec.fields.items()]


def view_controls(view: FormView, values: Mapping[str, Any], errors: Mapping[str, str]) -> list[Control]:
    """The deal's form's controls, a date-and-time field hinting at the deal's zone (the browser sends wall time)."""
    return [
        replace(c, hint=view.zone_hint) if view.spec.fields[c.name].type == "datetime" else c
        for c in controls(view.spec, values, errors)
    ]


def _control(name: str, spec: FieldSpec, typed: Any, error: str | None) -> Control:
    control = Control(name=name, id=f"field-{name}", label=spec.label or _humane(name), kind="input", error=error)
    if spec.type == "bool":
        # Always answered (unticked posts "no", see browser_fields), so never marked required.
        return replace(control, kind="checkbox", checked=str(typed).strip().lower() in _YES)
    if spec.type in ("choice", "multi_choice"):
        chosen = {str(item).strip().casefold() for item in (typed if isinstance(typed, list) else [typed])}
        options = [Option(option, option.casefold() in chosen) for option in spec.options or []]
        kind = "select" if spec.type == "choice" else "checkboxes"
        return replace(control, kind=kind, required=spec.required, options=options)
    input_type, inputmode, step = _INPUTS[spec.type]
    value = "" if typed is None else ", ".join(map(str, typed)) if isinstance(typed, list) else str(typed)
    return replace(
        control,
        required=spec.required,
        input_type=input_type,
        inputmode=inputmode,
        step=step,
        value=value,
        hint=_format_hint(spec),
    )


def _format_hint(spec: FieldSpec) -> str | None:
    """What a patterned field expects, shown under it, so the format is known before a refusal names it."""
    if spec.pattern is None:
        return None
    parts = [f"Format: {spec.format}"] if spec.format else []
    if spec.example:
        parts.append(f"e.g. {spec.example}")
    return ", ".join(parts) or None


def _humane(ident: str) -> str:
    return ident.replace("_", " ").capitalize()


# --- pages ------------------------------------------------------------------------------------------------------------

# Our own pages (not playbook authors' templates), shipped with the code in `templates/_intake/`: a plain
# autoescaping environment (not sandboxed: nothing in them is written by a user), undefined names fail.
PAGES_DIR = PROJECT_ROOT / "templates" / "_intake"
_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(PAGES_DIR),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _page(template: str, status: int, headers: Mapping[str, str] | None = None, **context: Any) -> HTMLResponse:
    html = _env.get_template(template).render(**context)
    return HTMLResponse(html, status_code=status, headers={**_PAGE_HEADERS, **(headers or {})})


def _action(form: str, token: str | None) -> str:
    """The form's own URL, token included; relative, so it works behind a proxy serving the intake under a prefix."""
    return f"{form}?{urlencode({'token': token})}" if token else form


def form_page(
    view: FormView,
    token: str | None,
    values: Mapping[str, Any] | None = None,
    errors: Mapping[str, str] | None = None,
    status: int = 200,
    *,
    submission: str | None = None,
) -> HTMLResponse:
    """The form, empty or as typed with one message per invalid field (422), posting to its own URL. `submission`
    is the page's one-time submission id (a fresh one when not given): each rendering is a submission of its own."""
    fields = view_controls(view, values or {}, errors or {})
    return _page(
        "form.html",
        status,
        view=view,
        action=_action(view.form, token),
        submission=submission or new_key(),
        controls=fields,
        fields={c.name: c for c in fields},
        errors=dict(errors or {}),
    )


def thanks_page(stage_title: str) -> HTMLResponse:
    return _page(
        "message.html",
        200,
        title="Thank you",
        paragraphs=[f"Thank you, form received; the deal is now in {stage_title}."],
        items=[],
    )


# What a person needs to read for each refusal. The intake's own messages are written for webhook senders' logs;
# they are shown where they help (why a form is not open), never for 401 (the caller proved nothing) or 503 (they
# name Temporal internals).
_TITLES = {
    400: "The form could not be read",
    401: "This link does not work",
    404: "Form not found",
    409: "This form cannot be submitted now",
    413: "The form is too large",
    415: "The form could not be read",
    422: "Some answers need correcting",
    503: "Please try again in a minute",
}


def error_page(exc: IntakeError) -> HTMLResponse:
    """An IntakeError as a page, with the same status code (and Retry-After for 503) as the JSON answer."""
    title = _TITLES.get(exc.status, "Something went wrong")
    if exc.status == 401:
        paragraphs = [
            "The link is incomplete, or it belongs to another deal or form. "
            "Open the form from the link in your most recent email."
        ]
    elif exc.status == 503:
        # Opening a page saves nothing; a post's 503 is `unconfirmed_page`, which says what is true of the post.
        paragraphs = ["The service is busy or briefly unavailable. Please try again in a minute."]
    else:
        paragraphs = [exc.message]
    fields = exc.extra.get("fields")
    items = [f"{name}: {message}" for name, message in fields.items()] if isinstance(fields, dict) else []
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if exc.status == 503 else None
    return _page("message.html", exc.status, headers, title=title, paragraphs=paragraphs, items=items)


def unconfirmed_page(
    form: str, token: str | None, pairs: Sequence[tuple[str, str]] | None, *, safe: bool
) -> HTMLResponse:
    """A post answered 503: what is true is that it is not confirmed yet (it may still be recorded, when the service
    catches up), not that nothing was saved. With the post's own pairs (form-encoded, its submission id among them)
    the page offers "Submit again", which sends the same submission: applied at most once. `safe` is False for a
    post without a submission id, whose copy could be recorded twice."""
    paragraphs = [
        "Your answers are not confirmed yet: the service is busy or briefly unavailable. "
        "They may still be recorded in a moment."
    ]
    if not safe:
        paragraphs.append(
            "This form had no submission id, so sending it again might record it twice: before you do, please check "
            "with your contact whether it arrived."
        )
    elif pairs is not None:
        paragraphs.append(
            "Sending the same submission again is safe: it is recorded only once, however often it is sent. "
            "Please press “Submit again” in a minute."
        )
    else:
        paragraphs.append(
            "Sending the same submission again is safe: it is recorded only once. Please reload this page in a "
            "minute and confirm sending the form again."
        )
    return _page(
        "resend.html",
        503,
        {"Retry-After": RETRY_AFTER_SECONDS},
        title="Not confirmed yet",
        paragraphs=paragraphs,
        items=[],
        action=_action(form, token),
        pairs=list(pairs) if pairs is not None and safe else None,
    )
