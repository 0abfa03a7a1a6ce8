"""`sopflow staff`: the staff directory (`sopflow.staff`, SOPFLOW_STAFF_FILE): who gets the morning digest, when,
what they may see on the web board, and their board access tokens.

The file is edited whole (read, change, write atomically): it is a short list changed by hand now and then, and one
writer at a time is all an administrator's terminal needs. A token is printed once and only its hash is kept.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError

from sopflow.staff import (
    Holidays,
    Limits,
    Person,
    Staff,
    StaffFileError,
    first_error,
    load_staff,
    new_token,
    save_staff,
    token_hash,
)
from starter.cli.apps import staff_app
from starter.cli.common import settings
from starter.cli.render import Output, RowsOutputOpt, err, fail, out, plural, print_rows

EmailArg = Annotated[str, typer.Argument(metavar="EMAIL", help="the person's email address", show_default=False)]


def _load() -> Staff:
    try:
        return load_staff(settings().staff_path())
    except StaffFileError as exc:
        fail(str(exc))


def _save(staff: Staff) -> None:
    path = settings().staff_path()
    try:
        save_staff(path, staff)
    except OSError as exc:
        fail(f"cannot write the staff file {path}: {exc.strerror}")


def _invalid(exc: ValidationError) -> NoReturn:
    fail(first_error(exc))


def _person(staff: Staff, email: str) -> Person:
    found = staff.find(email)
    if found is None:
        fail(f"no staff member {email.strip()!r} (see `sopflow staff list`)")
    return found


def _holidays(value: str) -> Holidays:
    """`US` or `US-CA`: a country's public holidays, or a subdivision's as well."""
    country, _, subdivision = value.strip().partition("-")
    return Holidays(country=country.upper(), subdivision=subdivision.upper() or None)


@staff_app.command("add")
def add(
    email: EmailArg,
    timezone: Annotated[
        str, typer.Option("--timezone", metavar="ZONE", help="IANA zone, e.g. America/Chicago")
    ] = "UTC",
    holidays: Annotated[
        str | None,
        typer.Option("--holidays", metavar="CC[-SUB]", help="public holidays with no digest: US, or US-CA"),
    ] = None,
    morning_hour: Annotated[
        int, typer.Option("--morning-hour", metavar="H", help="the local hour (0-23) the morning digest is sent")
    ] = 7,
    role: Annotated[
        list[str] | None, typer.Option("--role", metavar="ROLE", help="limit to deals of this role; repeat for more")
    ] = None,
    owner: Annotated[
        list[str] | None,
        typer.Option("--owner", metavar="OWNER", help="limit to deals of this owner id (rep:owner-17); repeatable"),
    ] = None,
) -> None:
    """Add a person to the staff directory (no --role or --owner: they see every deal)."""
    staff = _load()
    if staff.find(email) is not None:
        fail(f"{email.strip()} is already in the staff directory (see `sopflow staff list`)")
    fields: dict[str, Any] = {"email": email, "timezone": timezone, "morning_hour": morning_hour}
    try:
        if holidays:
            fields["holidays"] = _holidays(holidays)
        if role or owner:
            fields["limits"] = Limits(roles=role or [], owners=owner or [])
        person = Person.model_validate(fields)
    except ValidationError as exc:
        _invalid(exc)
    staff.people.append(person)
    _save(staff)
    out.print(f"[green]✓[/green] added {person.email}", highlight=False)


def _row(person: Person) -> dict[str, Any]:
    """A person as listed: everything but the token hashes, which are counted."""
    holidays = person.holidays
    return {
        "email": person.email,
        "timezone": person.timezone,
        "holidays": (holidays.country + (f"-{holidays.subdivision}" if holidays.subdivision else ""))
        if holidays
        else "",
        "morning_hour": person.morning_hour,
        "digest": "on" if person.digest else "off",
        "roles": person.limits.roles if person.limits else [],
        "owners": person.limits.owners if person.limits else [],
        "tokens": len(person.tokens),
    }


@staff_app.command("list")
def list_staff(output: RowsOutputOpt = Output.text) -> None:
    """The staff directory: zones, holidays, digest hour and opt-out, limits, how many access tokens (never them)."""
    rows = [_row(person) for person in _load().people]
    if print_rows(rows, output):
        return
    for row in rows:
        limits = ", ".join([*row["roles"], *row["owners"]]) or "every deal"
        out.print(
            f"{row['email']}  {row['timezone']}  holidays {row['holidays'] or '-'}  digest {row['digest']} at "
            f"{row['morning_hour']:02d}:00  sees {limits}  {plural(row['tokens'], 'token')}",
            highlight=False,
        )
    out.print(plural(len(rows), "person", "people"), style="dim", highlight=False)


class Switch(StrEnum):
    on = "on"
    off = "off"


@staff_app.command("digest")
def digest(
    email: EmailArg,
    switch: Annotated[Switch, typer.Argument(metavar="on|off", help="on: send the morning digest; off: opt out")],
) -> None:
    """Turn a person's morning digest on or off."""
    staff = _load()
    _person(staff, email).digest = switch == Switch.on
    _save(staff)
    out.print(f"[green]✓[/green] morning digest {switch.value} for {email.strip().lower()}", highlight=False)


@staff_app.command("token")
def token(
    email: EmailArg,
    revoke: Annotated[bool, typer.Option("--revoke", help="remove every access token of this person")] = False,
) -> None:
    """Issue a new web-board access token (printed once, only its hash kept), or --revoke all of them."""
    staff = _load()
    person = _person(staff, email)
    if revoke:
        count = len(person.tokens)
        person.tokens = []
        _save(staff)
        out.print(f"[green]✓[/green] revoked {plural(count, 'token')} of {person.email}", highlight=False)
        return
    issued = new_token()
    person.tokens.append(token_hash(issued))
    _save(staff)
    typer.echo(issued)
    # On stderr: `TOKEN=$(sopflow staff token rep@example.com)` captures the token alone.
    err.print(
        f"This token for {person.email} is shown only once: only its hash is stored. Keep it somewhere safe.",
        highlight=False,
        style="dim",
    )


@staff_app.command("remove")
def remove(email: EmailArg) -> None:
    """Remove a person (and their access tokens) from the staff directory."""
    staff = _load()
    person = _person(staff, email)
    staff.people.remove(person)
    _save(staff)
    out.print(f"[green]✓[/green] removed {person.email}", highlight=False)
