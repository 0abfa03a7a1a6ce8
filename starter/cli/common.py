"""What every command shares: the Temporal connection options, one-line failures, sending a change and waiting
for it. (Output formats are in render.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import functools
import inspect
import os
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
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
from sopflow.models import LifecycleStatus, UpdateResult, workflow_id
from sopflow.playbook import Playbook, PlaybookError
from sopflow.playbook_checks import load_playbook, loadable_playbooks
from starter.cli.render import Output, fail, out, print_status
from starter.intake.idempotency import KEY_RULE, cli_update_id, new_key, valid_key
from starter.lifecycles import Request, send, update_name
from workflows.lifecycle import ClientLifecycle

T = TypeVar("T")


DealIdArg = Annotated[str, typer.Argument(metavar="DEAL_ID", help="the CRM's deal id", show_default=False)]

KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--idempotency-key",
        metavar="KEY",
        help=f"apply this change at most once: reuse the key a 'not confirmed' error printed to retry safely "
        f"({KEY_RULE}; default: a fresh key per run)",
    ),
]
# How long a change waits for the lifecycle to confirm it: long enough for a busy worker, short enough that a
# missing one (the update then waits on the server until a worker comes) is reported instead of hanging forever.
UPDATE_WAIT = 60.0
WaitOpt = Annotated[
    float,
    typer.Option("--wait", min=1, metavar="SECONDS", help="seconds to wait for the lifecycle to confirm the change"),
]
FieldOpt = Annotated[
    list[str] | None, typer.Option("--field", "-f", metavar="KEY=VALUE", help="a field; repeat for more fields")
]
ActorOpt = Annotated[
    str, typer.Option("--actor", envvar="SOPFLOW_ACTOR", metavar="ID", help="who is acting (an id or role)")
]


# --- the Temporal connection: the `temporal` CLI's flags, over its environment variables and temporal.toml ----------

CONNECTION = "Temporal connection"
# Option name -> the environment variable `temporalio.envconfig` (sopflow.connect) reads for the same setting.
CONNECTION_ENV = {
    "address": "TEMPORAL_ADDRESS",
    "namespace": "TEMPORAL_NAMESPACE",
    "profile": "TEMPORAL_PROFILE",
}
_CONNECTION_OPTIONS = {
    "address": Annotated[
        str | None,
        typer.Option(
            "--address",
            envvar="TEMPORAL_ADDRESS",
            metavar="HOST:PORT",
            help="Temporal's gRPC endpoint (default: the profile's, else localhost:7233)",
            rich_help_panel=CONNECTION,
            show_default=False,
        ),
    ],
    "namespace": Annotated[
        str | None,
        typer.Option(
            "--namespace",
            "-n",
            envvar="TEMPORAL_NAMESPACE",
            metavar="NAMESPACE",
            help="Temporal namespace (default: the profile's, else default)",
            rich_help_panel=CONNECTION,
            show_default=False,
        ),
    ],
    "profile": Annotated[
        str | None,
        typer.Option(
            "--profile",
            envvar="TEMPORAL_PROFILE",
            metavar="NAME",
            help="the temporal.toml profile to connect with (the file: TEMPORAL_CONFIG_FILE; default profile: default)",
            rich_help_panel=CONNECTION,
            show_default=False,
        ),
    ],
}


@contextlib.contextmanager
def temporal_environment(values: Mapping[str, str | None]) -> Iterator[None]:
    """The given TEMPORAL_* variables set while the command runs, restored after. The flags become the environment
    `sopflow.connect` already reads (flag > environment > temporal.toml, the `temporal` CLI's order), so the CLI,
    the worker and the intake a command runs all connect the same way."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update({name: value for name, value in values.items() if value is not None})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def connects(command: Callable[..., None]) -> Callable[..., None]:
    """Give a command that talks to Temporal the connection options `--address`, `--namespace/-n` and `--profile`.

    Declared once here instead of on every command: the options are appended to the command's signature (which is
    what typer reads) and taken off again before the command runs, inside `temporal_environment`.
    """
    signature = inspect.signature(command, eval_str=True)
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
        for name, annotation in _CONNECTION_OPTIONS.items()
    ]
    taken = set(signature.parameters) & set(_CONNECTION_OPTIONS)
    if taken:
        raise TypeError(f"{command.__name__} already has parameters named {sorted(taken)}")

    @functools.wraps(command)
    def with_connection(*args: Any, **kwargs: Any) -> None:
        values = {CONNECTION_ENV[name]: kwargs.pop(name, None) for name in _CONNECTION_OPTIONS}
        with temporal_environment(values):
            command(*args, **kwargs)

    parameters = [*signature.parameters.values(), *added]
    with_connection.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    with_connection.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": None}
    return with_connection


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
) -> UpdateResult:
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
        if exc.status == RPCStatusCode.NOT_FOUND and "namespace" in exc.message.lower():
            fail(f"Temporal refused the request: {exc.message} (check --namespace or TEMPORAL_NAMESPACE)")
        if exc.status == RPCStatusCode.NOT_FOUND:
            fail("no lifecycle found for that deal (check the deal id with `sopflow deal list`)")
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

    async def go() -> UpdateResult | LifecycleStatus:
        handle = await handle_of(deal_id)
        try:
            result = await send_update(handle, request, key=chosen, wait=wait, what=message)
        except RPCError as exc:
            reason = await ended(handle, deal_id) if exc.status == RPCStatusCode.NOT_FOUND else None
            if reason is None:
                raise
            fail(reason)
        if output == Output.text:
            return result
        # A script reading JSON, JSON lines or CSV gets the whole status, as `deal status` prints it: the update's own
        # answer is kept small (it is written into history), the status is a query.
        status: LifecycleStatus = await handle.query(ClientLifecycle.status)
        return status

    answer = run(go())
    if isinstance(answer, LifecycleStatus):
        print_status(answer, output)
    else:
        out.print(f"[green]✓[/green] {message} → deal {deal_id} is in [cyan]{answer.stage}[/cyan]", highlight=False)
        if answer.unmet_gate and not answer.outcome:
            out.print("  waiting on: " + "; ".join(answer.unmet_gate), style="dim", highlight=False)


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


def write_file(path: Path, content: str | bytes) -> None:
    try:
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
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
    """Every playbook file of SOPFLOW_PLAYBOOKS_DIR that loads (`loadable_playbooks`)."""
    return loadable_playbooks(settings().playbooks_dir)
