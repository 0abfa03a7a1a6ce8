"""What every command shares: output format options, one-line failures, sending a change and waiting for it."""

from __future__ import annotations

import asyncio
import contextlib
import difflib
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
import yaml
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from temporalio.client import (
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from sopflow.config import Settings
from sopflow.connect import ConnectionFailed, connect
from sopflow.constants import WORKFLOW_ID_PREFIX
from sopflow.db import Database
from sopflow.errors import Rejected
from sopflow.models import LifecycleStatus, workflow_id
from sopflow.playbook import Playbook, PlaybookError
from sopflow.playbook_checks import load_playbook
from starter.cli.render import Output, fail, out, print_status
from starter.intake.idempotency import KEY_RULE, cli_update_id, new_key, valid_key
from starter.lifecycles import Request, send, update_name
from workflows.lifecycle import ClientLifecycle

T = TypeVar("T")


KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--idempotency-key",
        help=f"apply this change at most once: reuse the key a 'not confirmed' error printed to retry safely "
        f"({KEY_RULE}; default: a fresh key per run)",
    ),
]
# How long a change waits for the lifecycle to confirm it: long enough for a busy worker, short enough that a
# missing one (the update then waits on the server until a worker comes) is reported instead of hanging forever.
UPDATE_WAIT = 60.0
WaitOpt = Annotated[
    float, typer.Option("--wait", min=1, help="seconds to wait for the lifecycle to confirm the change")
]
FieldOpt = Annotated[list[str] | None, typer.Option("--field", "-f", help="key=value; repeat for more fields")]
ActorOpt = Annotated[str, typer.Option("--actor", envvar="SOPFLOW_ACTOR", help="who is acting (an id or role)")]


class Unconfirmed(Exception):
    """A change sent to a lifecycle that did not confirm it in time: it may still be applied (the update waits on the
    server for a worker), so the message says so, and how to retry it safely."""

    def __init__(self, deal_id: str, what: str, key: str, wait: float) -> None:
        super().__init__(
            f"not confirmed yet ({what}, deal {deal_id}): no answer within {wait:g} s (is a worker running?); it may "
            f"still be applied. Retrying with --idempotency-key {key} is safe: it is applied at most once"
        )


def update_key(key: str | None) -> str:
    """The command's idempotency key: the one given (checked, so a typo is one line, not a server error) or a
    fresh one, so that every run is a change of its own and only a deliberate retry reuses a key."""
    if key is None:
        return new_key()
    if not valid_key(key):
        fail(f"--idempotency-key must be {KEY_RULE}, not {key!r}")
    return key


async def send_update(
    handle: WorkflowHandle[Any, Any], request: Request, *, key: str, wait: float, what: str
) -> LifecycleStatus:
    """The request with `cli:<update>:<key>` as its update id (Temporal applies an id once per run and answers a
    repeat with the first result), waiting at most `wait` seconds for it to be confirmed."""
    update_id = cli_update_id(update_name(request), key)
    try:
        result = await asyncio.wait_for(send(handle, request, update_id), wait)
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
        raise Unconfirmed(handle.id.removeprefix(WORKFLOW_ID_PREFIX), what, key, wait) from None
    return result


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine, turning every user-caused failure into one line and exit code 1."""
    try:
        return asyncio.run(coro)
    except Unconfirmed as exc:
        fail(str(exc))
    except ConnectionFailed as exc:
        fail(str(exc))
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        fail(cause.message if isinstance(cause, ApplicationError) else str(cause))
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            fail("no lifecycle found for that deal (check the deal id with `sopflow list`)")
        fail(f"Temporal refused the request: {exc.message}")
    except PlaybookError as exc:
        fail(playbook_failure(exc))
    except Rejected as exc:
        fail(str(exc))


def parse_fields(pairs: list[str] | None, file: Path | None = None) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if file is not None:
        try:
            loaded = yaml.safe_load(file.read_text())  # YAML is a superset of JSON: both work
        except (OSError, yaml.YAMLError) as exc:
            fail(f"cannot read {file}: {exc}")
        if not isinstance(loaded, dict):
            fail(f"{file} must hold an object of field names to values")
        values.update(loaded)
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            fail(f"--field expects key=value, got {pair!r}")
        values[key.strip()] = value
    return values


def settings() -> Settings:
    """The SOPFLOW_* configuration, or one line saying what is wrong with it (never the values: they may be secrets)."""
    try:
        return Settings()
    except ValidationError as exc:
        fail("invalid configuration: " + "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors()))


def playbook_failure(exc: PlaybookError) -> str:
    first = exc.errors[0] if exc.errors else "invalid"
    more = f" (and {len(exc.errors) - 1} more: run `sopflow playbook validate {exc.source}`)" if exc.errors[1:] else ""
    return f"{exc.source}: {first}{more}"


def nearest_first(typed: str, options: Iterable[str]) -> list[str]:
    """The options a typo could have meant first, then the rest in order, for "no X (Xs: …)" answers."""
    known = sorted(set(options))
    near = difflib.get_close_matches(typed, known, n=len(known), cutoff=0.5)
    return near + [k for k in known if k not in near]


def load(playbook: str) -> Playbook:
    """A playbook by id (`safe_balance`) or path; an id that names no playbook lists those that exist, nearest first."""
    config = settings()
    path = config.playbook_path(playbook)
    if not path.exists() and path.parent == config.playbooks_dir:
        known = nearest_first(playbook, [p.stem for p in config.playbooks_dir.glob("*.yaml")])
        fail(f"no playbook {playbook!r} (playbooks: {', '.join(known) or 'none'})")
    try:
        return load_playbook(config.playbook_path(playbook), config.templates_dir)
    except PlaybookError as exc:
        fail(playbook_failure(exc))


async def handle_of(deal_id: str) -> WorkflowHandle[Any, Any]:
    client = await connect()
    return client.get_workflow_handle(workflow_id(deal_id))


async def ended(handle: WorkflowHandle[Any, Any], deal_id: str) -> str | None:
    """Why a deal's lifecycle cannot take a change, when Temporal answered NOT_FOUND: it answers so for a lifecycle
    that ended as for one that never existed. None: there is no such lifecycle."""
    try:
        described = await handle.describe()
    except RPCError:
        return None
    with contextlib.suppress(RPCError, WorkflowQueryFailedError):
        status: LifecycleStatus = await handle.query(ClientLifecycle.status)
        if status.outcome:
            return f"deal {deal_id} is closed ({status.outcome}) in stage '{status.stage}'"
    state = described.status.name.lower() if described.status else "closed"
    return f"deal {deal_id}'s lifecycle has ended ({state})"


def update_command(deal_id: str, request: Request, output: Output, message: str, key: str | None, wait: float) -> None:
    """Send one change (an update) to a deal's lifecycle, once per key, and print where the deal is now."""
    chosen = update_key(key)

    async def go() -> LifecycleStatus:
        handle = await handle_of(deal_id)
        try:
            return await send_update(handle, request, key=chosen, wait=wait, what=message)
        except RPCError as exc:
            reason = await ended(handle, deal_id) if exc.status == RPCStatusCode.NOT_FOUND else None
            if reason is None:
                raise
            fail(reason)

    status = run(go())
    if output == Output.json:
        print_status(status, output)
    else:
        out.print(f"[green]✓[/green] {message} → deal {deal_id} is in [cyan]{status.stage}[/cyan]", highlight=False)
        if status.unmet_gate and not status.outcome:
            out.print("  waiting on: " + "; ".join(status.unmet_gate), style="dim", highlight=False)


def records_at(revision: str) -> Database:
    from alembic.util.exc import CommandError

    db = Database(settings().database_url)
    try:
        db.upgrade(revision)
    except SQLAlchemyError as exc:
        db.dispose()
        db_fail(exc)
    except CommandError as exc:  # e.g. a database migrated by a newer sopflow, or an unknown revision
        db.dispose()
        fail(f"cannot migrate the records database: {exc}")
    return db


def records() -> Database:
    """The records store the worker writes to, migrated to the current schema first, so a fresh machine lists or
    reports nothing instead of failing on a missing table."""
    return records_at("head")


def db_fail(exc: SQLAlchemyError) -> NoReturn:
    cause = getattr(exc, "orig", None) or exc
    fail(f"cannot read the records database: {' '.join(str(cause).split())}")


def write_file(path: Path, content: str) -> None:
    try:
        path.write_text(content)
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror}")


def read_records(query: Callable[[Session], T]) -> T:
    db = records()
    try:
        with db.session() as session:
            return query(session)
    except SQLAlchemyError as exc:
        db_fail(exc)
    finally:
        db.dispose()


def shipped_playbooks() -> list[Playbook]:
    """Every playbook file that loads, for stage order and stall thresholds. A file that fails to load is skipped:
    a report on running deals must not depend on an unrelated YAML typo (`sopflow playbook validate` finds it)."""
    playbooks = []
    for path in sorted(settings().playbooks_dir.glob("*.yaml")):
        try:
            playbooks.append(load_playbook(path))
        except PlaybookError:
            continue
    return playbooks
