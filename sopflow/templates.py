"""Email templates: `templates/<playbook>/<name>/{subject.txt,body.txt,body.html}` rendered with Jinja2.

The environment is sandboxed (playbook authors cannot reach Python internals), undefined variables fail rendering
(never "Dear ,"), and only HTML is autoescaped: a subject "A & B" must stay "A & B".
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from jinja2 import FileSystemLoader, StrictUndefined, pass_context
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment

from sopflow import zones
from sopflow.playbook_checks import attachment_file
from sopflow.signatures import form_token


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


@pass_context
def _date(ctx: Context, value: Any, fmt: str = "%b %d, %Y") -> str:
    """Format ISO dates/datetimes the way people read them in an email: a moment in the deal's local time when the
    context names its zone (`%Z` gives the abbreviation, EST or EDT), a date as the date it is."""
    if value is None or value == "":
        return ""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    zone_name = ctx.get("timezone")
    if moment.tzinfo is not None and isinstance(zone_name, str) and zones.is_known(zone_name):
        moment = moment.astimezone(zones.zone(zone_name))
    return moment.strftime(fmt)


# Characters a header line must not carry. C0/C1 controls: CR/LF would start a new header, NUL and ESC garble
# terminals, logs and some mail clients. Bidi controls make a line display in an order other than what it says (an
# RLO turns "invoice fdp.exe" into "invoice exe.pdf"). Lone surrogates cannot be encoded at all.
_NOT_IN_A_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def one_line(text: str) -> str:
    """`text` as one header line that reads as it looks: whitespace of any kind (CR, LF, tab, VT, FF, NEL, U+2028...)
    becomes one space, other control and bidi characters are dropped, the ends are trimmed.

    Used for rendered subjects and display names: both come from deal data that people typed, and a subject or a
    name is one line whatever the template or the data say."""
    visible = _NOT_IN_A_LINE.sub(lambda match: " " if match.group().isspace() else "", text)
    return " ".join(visible.split())


# What rendering can raise besides Jinja's own errors: a filter such as `date` given a value it cannot parse.
_RENDER_FAILURES = (jinja2.TemplateError, ValueError, TypeError, ArithmeticError, LookupError)


class RenderError(Exception):
    """A template that does not render, with the file at fault, so the author knows where to look."""

    def __init__(self, template: str, part: str, message: str) -> None:
        self.template = template
        self.part = part
        self.message = message
        super().__init__(f"template '{template}' ({part}): {message}")


# A form id as playbooks spell them (`sopflow.playbook.Ident`): the only names `links.forms` answers for.
_FORM_ID = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class FormLinks:
    """`links.forms`: the deal's web-form URLs by form id, so a template writes `{{ links.forms.site_visit }}`.

    Each URL opens the intake's form page (`GET /forms/<deal>/<form>?token=…`) and carries the per-form token, so
    the person clicking it can submit that form for that deal and nothing else. Built lazily, because the email
    activity knows only the playbook's id, not its forms: any form id answers, unless `forms` restricts the ids
    (the render check passes the playbook's own, so a misspelt form id fails `sopflow playbook validate` instead of
    mailing a dead link).

    Deliberately not a Mapping: a mapping's `items`, `keys` or `get` would shadow forms of those names in templates.
    It has no public attributes at all; its state sits in underscore slots, which the sandbox refuses to templates.
    """

    __slots__ = ("_base", "_deal_id", "_forms", "_secret")
    # Not iterable: without a form list there is nothing to iterate, and Python would otherwise try __getitem__(0).
    __iter__ = None

    def __init__(self, base: str, deal_id: str, secret: str | None, forms: Iterable[str] | None) -> None:
        self._base = base.rstrip("/")
        self._deal_id = deal_id
        self._secret = secret or None
        self._forms = frozenset(forms) if forms is not None else None

    def __getitem__(self, form: str) -> str:
        known = isinstance(form, str) and bool(_FORM_ID.match(form))
        if not known or (self._forms is not None and form not in self._forms):
            raise KeyError(form)
        url = f"{self._base}/forms/{quote(self._deal_id, safe='')}/{form}"
        if self._secret is None:
            return url  # no form secret configured: the intake refuses every post anyway, so no token to give
        return f"{url}?{urlencode({'token': form_token(self._secret, self._deal_id, form)})}"

    def __getattr__(self, name: str) -> str:
        # Only reached for names that are not real attributes. Dunder probes (`__html__`, `__deepcopy__`) must get
        # AttributeError, not a URL: markupsafe and copy look for them with hasattr().
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __contains__(self, form: object) -> bool:
        try:
            self[form]  # type: ignore[index]
        except KeyError:
            return False
        return True

    def __str__(self) -> str:
        # The old `{{ links.forms }}/site_visit` produced a URL nobody could open; fail the render loudly instead.
        raise TypeError("links.forms is not a URL: write {{ links.forms.<form id> }}, e.g. {{ links.forms.closeout }}")

    def __repr__(self) -> str:
        return f"FormLinks({self._base!r}, {self._deal_id!r}, secret={'set' if self._secret else None})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FormLinks):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[str, str, str | None, frozenset[str] | None]:
        return (self._base, self._deal_id, self._secret, self._forms)


def links_for(
    public_url: str, deal_id: str, form_secret: str | None = None, forms: Iterable[str] | None = None
) -> dict[str, FormLinks]:
    """The `links` every email gets: `{{ links.forms.site_visit }}` is the deal's site-visit form, token included.

    `form_secret` is the intake's (`SOPFLOW_FORM_SECRET`); without it the URLs carry no token. `forms` restricts
    the form ids templates may link to (see FormLinks). There is no deal status page, hence no `links.status`.
    """
    return {"forms": FormLinks(public_url, deal_id, form_secret, forms)}


class TemplateRenderer:
    def __init__(self, templates_dir: Path) -> None:
        self.templates_dir = templates_dir
        loader = FileSystemLoader(str(templates_dir))
        self._text = SandboxedEnvironment(
            loader=loader, undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False
        )
        self._html = SandboxedEnvironment(loader=loader, undefined=StrictUndefined, autoescape=True)
        for env in (self._text, self._html):
            env.filters["date"] = _date

    def render(self, playbook: str, template: str, context: dict[str, Any]) -> Rendered:
        """Render all three files; raise RenderError naming the template, the file and Jinja's message."""
        parts: dict[str, str] = {}
        for part in ("subject.txt", "body.txt", "body.html"):
            try:
                parts[part] = self.render_part(playbook, template, part, context)
            except _RENDER_FAILURES as exc:
                raise RenderError(template, part, _describe(exc, part)) from exc
        return Rendered(subject=one_line(parts["subject.txt"]), text=parts["body.txt"], html=parts["body.html"])

    def render_part(self, playbook: str, template: str, part: str, context: dict[str, Any]) -> str:
        """One file of a template, so a caller that checks templates can say which file failed."""
        env = self._html if part.endswith(".html") else self._text
        return env.get_template(f"{playbook}/{template}/{part}").render(context)

    def attachment_path(self, playbook: str, name: str) -> Path:
        """The resolved file of attachment `name`, or AttachmentRefused unless it is a file inside
        `templates/<playbook>/attachments/` (symlinks followed). Checked here, at send time, as well as by `playbook
        validate`: a running lifecycle's pinned playbook was validated by the rules of the day it started."""
        path = attachment_file(name, playbook, self.templates_dir)
        assert path is not None  # given a templates folder, attachment_file returns the file or raises
        return path


def _describe(exc: Exception, part: str) -> str:
    """Jinja's message on one line, with where it happened when that is known (line, or another file such as the
    shared layout)."""
    if isinstance(exc, jinja2.TemplateNotFound):
        return f"missing file {exc.name}"
    file: str | None
    line: int | None
    if isinstance(exc, jinja2.TemplateSyntaxError):
        file, line = exc.filename or exc.name, exc.lineno
    else:
        file, line = _template_frame(exc.__traceback__)
    raw = exc.message if isinstance(exc, jinja2.TemplateError) else f"{type(exc).__name__}: {exc}"
    message = " ".join(str(raw or exc).split())
    if line is None:
        return message
    if file is None or _short(file) == part:
        return f"{message} (line {line})"
    return f"{message} ({_short(file)} line {line})"


def _template_frame(tb: TracebackType | None) -> tuple[str | None, int | None]:
    """The innermost template frame: Jinja rewrites tracebacks so template lines appear as frames of their file."""
    file, line = None, None
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if name.endswith((".txt", ".html")):
            file, line = name, tb.tb_lineno
        tb = tb.tb_next
    return file, line


def _short(file: str) -> str:
    return file.replace("\\", "/").rsplit("/", 1)[-1]
