"""Forms: submit one for a deal."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sopflow.models import (
    SubmitForm,
)
from starter.cli.apps import form_app
from starter.cli.common import (
    UPDATE_WAIT,
    ActorOpt,
    DealIdArg,
    FieldOpt,
    KeyOpt,
    WaitOpt,
    connects,
    parse_fields,
    update_command,
)
from starter.cli.render import ObjectOutputOpt, Output


@form_app.command("submit")
@connects
def form_submit(
    deal_id: DealIdArg,
    form: Annotated[str, typer.Argument(metavar="FORM", help="the form's id in the playbook, e.g. targeting")],
    field: FieldOpt = None,
    file: Annotated[Path | None, typer.Option("--file", metavar="FILE", help="JSON/YAML file of form fields")] = None,
    actor: ActorOpt = "cli",
    output: ObjectOutputOpt = Output.text,
    idempotency_key: KeyOpt = None,
    wait: WaitOpt = UPDATE_WAIT,
) -> None:
    """Submit a form for a deal (validated field by field by the playbook)."""
    payload = SubmitForm(form=form, fields=parse_fields(field, file), actor=actor)
    update_command(deal_id, payload, output, f"form {form} submitted", idempotency_key, wait)
