"""`sopflow digest`: the morning digest's Temporal Schedule, and a preview of what one person's digest says.

Pausing, triggering and backfilling are Temporal's own (`temporal schedule toggle|trigger|backfill
--schedule-id sopflow-morning-digest`): sopflow does not wrap them, so the `temporal` CLI's documentation is the
only one to read.
"""

from __future__ import annotations

from datetime import date, datetime, time
from typing import Annotated

import typer

from sopflow import zones
from sopflow.connect import connect
from sopflow.constants import DIGEST_SCHEDULE_ID
from sopflow.digest import PublicLinks, digest_due, email_request
from sopflow.digest_query import digest_for
from sopflow.playbook_checks import loadable_playbooks
from sopflow.staff import StaffFileError, load_staff
from sopflow.templates import RenderError, TemplateRenderer
from starter.cli.apps import digest_app
from starter.cli.common import connects, read_records, run, settings
from starter.cli.render import ObjectOutputOpt, Output, fail, out, print_object
from workflows.digest_schedule import ensure_digest_schedule


@digest_app.command("schedule")
@connects
def schedule() -> None:
    """Create the hourly digest schedule, or bring it up to date (a pause is kept). The worker does this as it
    starts."""

    async def go() -> str:
        return await ensure_digest_schedule(await connect())

    outcome = run(go())
    out.print(
        f"[green]✓[/green] schedule {DIGEST_SCHEDULE_ID} {outcome}: every hour on the hour, each person's digest at "
        "their local morning hour (pause, trigger, backfill: `temporal schedule … --schedule-id "
        f"{DIGEST_SCHEDULE_ID}`)",
        highlight=False,
    )


@digest_app.command("preview")
def preview(
    email: Annotated[str, typer.Argument(metavar="EMAIL", help="a person of the staff directory", show_default=False)],
    on: Annotated[
        str | None, typer.Option("--date", metavar="YYYY-MM-DD", help="the morning to preview (default: today)")
    ] = None,
    output: ObjectOutputOpt = Output.text,
) -> None:
    """Print what a person's morning digest would say (from the records database), without sending it."""
    config = settings()
    try:
        person = load_staff(config.staff_path()).find(email)
    except StaffFileError as exc:
        fail(str(exc))
    if person is None:
        fail(f"no staff member {email.strip()!r} (see `sopflow staff list`)")
    tz = zones.zone(person.timezone)
    try:
        day = date.fromisoformat(on) if on else datetime.now(tz).date()
    except ValueError:
        fail(f"--date must be a date (YYYY-MM-DD), not {on!r}")
    # The moment the schedule would send it: the start of their morning hour that day.
    moment = zones.wall(day, time(person.morning_hour), tz)
    secret = config.form_secret.get_secret_value() if config.form_secret else None
    links = PublicLinks(config.public_url, secret)
    playbooks = loadable_playbooks(config.playbooks_dir)
    digest = read_records(lambda session: digest_for(session, person, moment, playbooks, links))
    if print_object(digest.model_dump(mode="json") if digest else {}, output):
        return
    if digest_due(person, moment) is None:
        why = "their digest is off" if not person.digest else f"{day.isoformat()} is not one of their working days"
        out.print(f"note: {why}: no digest is sent that morning", style="dim", highlight=False)
    if digest is None:
        out.print(f"nothing due for {person.email} on {day.isoformat()}: no digest would be sent", highlight=False)
        return
    try:
        rendered = TemplateRenderer(config.templates_dir).render(
            "_system", "morning_digest", {**email_request(digest, "preview", moment).context, "links": {}}
        )
    except RenderError as exc:
        fail(str(exc))
    out.print(f"To: {person.email}\nSubject: {rendered.subject}\n", highlight=False, markup=False)
    out.print(rendered.text, highlight=False, markup=False)
