"""The command tree: `sopflow NOUN VERB` groups, one typer app per noun; each command module adds its commands."""

from __future__ import annotations

from importlib.metadata import version
from typing import Annotated

import typer

app = typer.Typer(
    help="sopflow: client-lifecycle SOPs run as durable Temporal workflows.",
    no_args_is_help=True,
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


deal_app = typer.Typer(help="Start deals and read their history.", no_args_is_help=True)
form_app = typer.Typer(help="Submit forms.", no_args_is_help=True)
task_app = typer.Typer(help="Complete checklist tasks.", no_args_is_help=True)
playbook_app = typer.Typer(help="Validate and inspect playbooks.", no_args_is_help=True)
mail_app = typer.Typer(help="Inspect the email outbox (what was sent, what failed).", no_args_is_help=True)
template_app = typer.Typer(help="Preview email templates.", no_args_is_help=True)
app.add_typer(deal_app, name="deal")
app.add_typer(form_app, name="form")
app.add_typer(task_app, name="task")
app.add_typer(playbook_app, name="playbook")
app.add_typer(mail_app, name="mail")
app.add_typer(template_app, name="template")
db_app = typer.Typer(help="The records database (SQLite by default, PostgreSQL via SOPFLOW_DATABASE_URL).")
app.add_typer(db_app, name="db")


report_app = typer.Typer(
    help="Reports from the records database: pipeline, stalled deals, site visits, time in stage.",
    no_args_is_help=True,
)
app.add_typer(report_app, name="report")
