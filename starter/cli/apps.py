"""The command tree: `sopflow NOUN VERB` groups, one typer app per noun; each command module adds its commands.

Every app is a `Commands`, so every command and group labels its parameters the same way (`usage.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import version
from typing import Annotated, Any

import typer
from typer.core import TyperCommand
from typer.models import CommandFunctionType

from starter.cli.usage import LabelledCommand, LabelledGroup

# The top-level help lists nouns (groups of verbs) apart from the services that run the system, and the day's work
# (`sopflow tasks`) apart from both.
SERVICES = "Services"
WORK = "Your work"


class Commands(typer.Typer):
    """A typer app whose groups and commands name their parameters `DEAL_ID`, `KEY=VALUE`, `TEXT` in help and
    usage lines, and which shows its help when called without a command."""

    def __init__(self, **options: Any) -> None:
        super().__init__(cls=LabelledGroup, no_args_is_help=True, **options)

    def command(
        self, name: str | None = None, *, cls: type[TyperCommand] | None = None, **options: Any
    ) -> Callable[[CommandFunctionType], CommandFunctionType]:
        return super().command(name, cls=cls or LabelledCommand, **options)


app = Commands(
    help="sopflow: client-lifecycle SOPs run as durable Temporal workflows.\n\nNouns are groups and verbs act on them "
    "(`sopflow deal status D-1`); the services that run the system are top-level (`sopflow worker`).",
    pretty_exceptions_enable=False,
)


def _print_version(asked: bool) -> None:
    if asked:
        typer.echo(f"sopflow {version('sopflow')}")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="print the version and exit"),
    ] = False,
) -> None:
    """sopflow: client-lifecycle SOPs run as durable Temporal workflows."""


deal_app = Commands(help="Start, move, close and read deals (one lifecycle each).")
form_app = Commands(help="Submit forms.")
task_app = Commands(help="Complete checklist tasks; list the work queue across deals.")
playbook_app = Commands(help="Validate, inspect and draw playbooks; migrate running deals to a new version.")
mail_app = Commands(help="Inspect the email outbox (what was sent, what failed).")
template_app = Commands(help="Preview email templates.")
db_app = Commands(help="The records database (SQLite by default, PostgreSQL via SOPFLOW_DATABASE_URL).")
report_app = Commands(help="Reports from the records database: pipeline, stalled deals, site visits, time in stage.")
staff_app = Commands(help="The staff directory: zones, holidays, morning digest, web-board limits and access tokens.")
digest_app = Commands(help="The morning digest: its Temporal Schedule, and a preview of a person's digest.")
app.add_typer(deal_app, name="deal")
app.add_typer(form_app, name="form")
app.add_typer(task_app, name="task")
app.add_typer(playbook_app, name="playbook")
app.add_typer(mail_app, name="mail")
app.add_typer(template_app, name="template")
app.add_typer(db_app, name="db")
app.add_typer(report_app, name="report")
app.add_typer(staff_app, name="staff")
app.add_typer(digest_app, name="digest")
