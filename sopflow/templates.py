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
        base = f"{playbook}/{template}"
        subject = self._text.get_template(f"{base}/subject.txt").render(context)
        return Rendered(
            subject=" ".join(subject.split()),
            text=self._text.get_template(f"{base}/body.txt").render(context),
            html=self._html.get_template(f"{base}/body.html").render(context),
        )

    def attachment_path(self, playbook: str, name: str) -> Path:
        return self.templates_dir / playbook / "attachments" / name
