"""Email templates: `templates/<playbook>/<name>/{subject.txt,body.txt,body.html}` rendered with Jinja2.

The environment is sandboxed (playbook authors cannot reach Python internals), undefined variables fail rendering
(never "Dear ,"), and only HTML is autoescaped: a subject "A & B" must stay "A & B".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

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
        subject = self.render_part(playbook, template, "subject.txt", context)
        return Rendered(
            subject=" ".join(subject.split()),
            text=self.render_part(playbook, template, "body.txt", context),
            html=self.render_part(playbook, template, "body.html", context),
        )

    def render_part(self, playbook: str, template: str, part: str, context: dict[str, Any]) -> str:
        """One file of a template, so a caller that checks templates can say which file failed."""
        env = self._html if part.endswith(".html") else self._text
        return env.get_template(f"{playbook}/{template}/{part}").render(context)

    def attachment_path(self, playbook: str, name: str) -> Path:
        return self.templates_dir / playbook / "attachments" / name
