"""The email outbox in the records database: what was sent, what failed."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from sopflow import reports, zones
from sopflow.db import OutboxEmail
from starter.cli.apps import mail_app
from starter.cli.common import db_fail, records, write_file
from starter.cli.render import (
    ObjectOutputOpt,
    Output,
    RowsOutputOpt,
    display_zone,
    fail,
    iso,
    out,
    plural,
    print_object,
    print_rows,
)


class MailStatus(StrEnum):
    pending = "pending"
    sent = "sent"
    partial = "partial"
    failed = "failed"


MAIL_COLUMNS = (
    "id",
    "key",
    "workflow_id",
    "deal_id",
    "playbook",
    "template",
    "to",
    "cc",
    "subject",
    "attachments",
    "message_id",
    "status",
    "attempts",
    "error",
    "scheduled_at",
    "sent_at",
)


def _mail_row(row: OutboxEmail, *, bodies: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": row.id,
        "key": row.key,
        "workflow_id": row.workflow_id,
        "deal_id": row.deal_id,
        "playbook": row.playbook,
        "template": row.template,
        "to": row.to,
        "cc": row.cc,
        "subject": row.subject,
        "attachments": row.attachments,
        "message_id": row.message_id,
        "status": row.status,
        "attempts": row.attempts,
        "error": row.error,
        "scheduled_at": iso(row.scheduled_at),
        "sent_at": iso(row.sent_at),
    }
    if bodies:
        data["body_text"], data["body_html"] = row.body_text, row.body_html
    return data


@mail_app.command("list")
def mail_list(
    deal: Annotated[str | None, typer.Option("--deal", metavar="DEAL_ID", help="only this deal's emails")] = None,
    status: Annotated[MailStatus | None, typer.Option("--status", help="only emails in this state")] = None,
    limit: Annotated[int, typer.Option(metavar="N", help="at most this many, newest first")] = 50,
    output: RowsOutputOpt = Output.text,
) -> None:
    """List outbox emails, newest first: what went out, to whom, and what failed."""
    query = select(OutboxEmail).order_by(OutboxEmail.scheduled_at.desc(), OutboxEmail.id.desc()).limit(limit)
    if deal is not None:
        query = query.where(OutboxEmail.deal_id == deal)
    if status is not None:
        query = query.where(OutboxEmail.status == status.value)
    db = records()
    try:
        with db.session() as session:
            rows = list(session.scalars(query))
    except SQLAlchemyError as exc:
        db_fail(exc)
    finally:
        db.dispose()
    if print_rows([_mail_row(row, bodies=False) for row in rows], output, MAIL_COLUMNS):
        return
    table = Table("id", "when", "deal", "template", "to", "status", "subject")
    colours = {"sent": "green", "failed": "red", "partial": "yellow"}
    for row in rows:
        table.add_row(
            str(row.id),
            zones.show(reports.utc(row.scheduled_at), display_zone()),
            Text(row.deal_id),
            Text(row.template),
            Text(row.to),
            Text(row.status, style=colours.get(row.status, "")),
            Text(row.subject),
        )
    out.print(table)
    out.print(plural(len(rows), "email"), style="dim", highlight=False)


@mail_app.command("show")
def mail_show(
    email_id: Annotated[int, typer.Argument(metavar="ID", help="the id `sopflow mail list` shows")],
    html: Annotated[
        Path | None, typer.Option("--html", metavar="FILE", help="write the HTML body to this file")
    ] = None,
    output: ObjectOutputOpt = Output.text,
) -> None:
    """Show one outbox email: every column and the text body (`--html FILE` saves the HTML body)."""
    db = records()
    try:
        with db.session() as session:
            row = session.get(OutboxEmail, email_id)
    except SQLAlchemyError as exc:
        db_fail(exc)
    finally:
        db.dispose()
    if row is None:
        fail(f"no email with id {email_id} in the outbox (see `sopflow mail list`)")
    if html is not None:
        if not row.body_html:
            fail(f"email {email_id} has no HTML body (status {row.status}: it was never rendered)")
        write_file(html, row.body_html)
    data = _mail_row(row, bodies=True)
    if print_object(data, output):
        return
    grid = Table.grid(padding=(0, 2))
    for key, value in data.items():
        if key not in ("body_text", "body_html"):
            grid.add_row(Text(key, style="dim"), Text("" if value is None else str(value)))
    out.print(grid)
    out.print()
    out.print(row.body_text or "(no text body: the email was never rendered)", markup=False, highlight=False)
    if html is not None:
        out.print(f"HTML body written to {html}", style="dim", highlight=False)
