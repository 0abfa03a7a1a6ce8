"""Email templates: `templates/<playbook>/<name>/{subject.txt,body.txt,body.html}` rendered with Jinja2.

The environment is sandboxed (playbook authors cannot reach Python internals), undefined variables fail rendering
(never "Dear ,"), and only HTML is autoescaped: a subject "A & B" must stay "A & B".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import jinja2
from jinja2 import FileSystemLoader, StrictUndefined
from jinja2.sandbox import SandboxedEnvironment


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


def _date(value: Any, fmt: str = "%b %d, %Y") -> str:
    """Format ISO dates/datetimes the way people read them in an email."""
    if value is None or value == "":
        return ""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.strftime(fmt)


# What rendering can raise besides Jinja's own errors: a filter such as `date` given a value it cannot parse.
_RENDER_FAILURES = (jinja2.TemplateError, ValueError, TypeError, ArithmeticError, LookupError)


class RenderError(Exception):
    """A template that does not render, with the file at fault, so the author knows where to look."""

    def __init__(self, template: str, part: str, message: str) -> None:
        self.template = template
        self.part = part
        self.message = message
        super().__init__(f"template '{template}' ({part}): {message}")


def links_for(public_url: str, deal_id: str) -> dict[str, str]:
    """Links templates may use: `{{ links.forms }}/site_visit` is the deal's site-visit form."""
    base = public_url.rstrip("/")
    return {"forms": f"{base}/forms/{deal_id}", "status": f"{base}/deals/{deal_id}"}


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
        return Rendered(subject=" ".join(parts["subject.txt"].split()), text=parts["body.txt"], html=parts["body.html"])

    def render_part(self, playbook: str, template: str, part: str, context: dict[str, Any]) -> str:
        """One file of a template, so a caller that checks templates can say which file failed."""
        env = self._html if part.endswith(".html") else self._text
        return env.get_template(f"{playbook}/{template}/{part}").render(context)

    def attachment_path(self, playbook: str, name: str) -> Path:
        return self.templates_dir / playbook / "attachments" / name


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
