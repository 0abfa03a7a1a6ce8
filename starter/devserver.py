"""The Temporal dev server as sopflow runs it: its command line (SQLite pragmas, UI codec endpoint), a process in
its own session, ready once the namespace answers, sopflow's search attributes registered at every start, and an
orderly stop. Used by `sopflow dev`, the benches and the fault-injection harness, so all three run the same server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeIndexedValueType

from sopflow import telemetry
from sopflow.codec import data_converter
from sopflow.config import Settings
from sopflow.constants import SEARCH_ATTRIBUTES
from starter.binaries import temporal_cli

HOST = "127.0.0.1"
NAMESPACE = "default"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
CLI_TIMEOUT = 20.0
# WAL + synchronous=normal about doubled throughput (shared notes; `python -m bench.sqlite_pragmas` measures it on
# this stack): SQLite syncs are the limit.
SQLITE_PRAGMAS = ("journal_mode=wal", "synchronous=normal")

# The CLI spells search attribute types its own way; a type missing here fails at startup, not in a workflow.
_CLI_TYPES = {
    SearchAttributeIndexedValueType.KEYWORD: "Keyword",
    SearchAttributeIndexedValueType.DATETIME: "Datetime",
    SearchAttributeIndexedValueType.TEXT: "Text",
    SearchAttributeIndexedValueType.INT: "Int",
    SearchAttributeIndexedValueType.DOUBLE: "Double",
    SearchAttributeIndexedValueType.BOOL: "Bool",
    SearchAttributeIndexedValueType.KEYWORD_LIST: "KeywordList",
}


class DevStackError(RuntimeError):
    """A failure of the local stack, worded for the terminal: the CLI prints it without a traceback."""


def server_args(settings: Settings, sqlite_pragmas: Sequence[str] = SQLITE_PRAGMAS) -> list[str]:
    """The dev server's command line; `sqlite_pragmas` is a parameter only so `bench.sqlite_pragmas` can measure
    what the pragmas are worth against the server's defaults with everything else equal."""
    home = settings.home.resolve()
    args = [
        "server",
        "start-dev",
        "--db-filename",
        str(home / "temporal.db"),
        "--port",
        str(settings.dev_temporal_port),
        "--ui-port",
        str(settings.dev_ui_port),
        "--ip",
        HOST,
        "--namespace",
        NAMESPACE,
        "--log-level",
        "warn",
    ]
    for pragma in sqlite_pragmas:
        args += ["--sqlite-pragma", pragma]
    if settings.encryption_key_ring() is not None:
        # The UI sends the ciphertext it shows to our codec server (the browser calls it, hence 127.0.0.1).
        args += ["--ui-codec-endpoint", f"http://{HOST}:{settings.dev_codec_port}"]
    return args


async def spawn_server(
    settings: Settings, sqlite_pragmas: Sequence[str] = SQLITE_PRAGMAS
) -> asyncio.subprocess.Process:
    home = settings.home.resolve()
    log_path = home / "temporal.log"
    args = server_args(settings, sqlite_pragmas)
    with log_path.open("a", encoding="utf-8") as log:
        stamp = datetime.now().isoformat(timespec="seconds")
        log.write(f"\n--- sopflow dev: starting Temporal at {stamp} ---\n")
        log.flush()
        # Own session: Ctrl-C reaches only us, so the worker stops before the server it talks to.
        return await asyncio.create_subprocess_exec(
            temporal_cli(),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )


async def wait_until_serving(
    proc: asyncio.subprocess.Process, address: str, log_path: Path, settings: Settings
) -> Client:
    """Poll until the namespace answers: a listening port alone does not mean `default` exists yet.

    The client gets the same data converter as every other sopflow client, so the dev stack's worker encrypts
    exactly as a production worker with the same SOPFLOW_ENCRYPTION_KEYS would.
    """
    converter = data_converter(settings)
    deadline = time.monotonic() + READY_TIMEOUT
    last_error = "no attempt"
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise DevStackError(
                f"the Temporal dev server exited with code {proc.returncode} while starting; "
                f"end of {log_path}:\n{tail(log_path)}"
            )
        try:
            connecting = Client.connect(
                address, namespace=NAMESPACE, data_converter=converter, runtime=telemetry.runtime()
            )
            client = await asyncio.wait_for(connecting, 5)
            await client.workflow_service.describe_namespace(
                DescribeNamespaceRequest(namespace=NAMESPACE), timeout=timedelta(seconds=5)
            )
            return client
        except (RuntimeError, TimeoutError) as exc:  # RPCError and connect errors alike: not up yet
            last_error = str(exc)
        await asyncio.sleep(0.1)
    raise DevStackError(
        f"the Temporal dev server did not answer at {address} within {READY_TIMEOUT:.0f} s "
        f"({last_error}); end of {log_path}:\n{tail(log_path)}"
    )


async def register_search_attributes(address: str) -> None:
    """Register at every start: start-dev ignores `--search-attribute` once its db file exists (shared notes).

    Registering an existing attribute of the same type succeeds; the same name with another type is an error
    worth stopping for, since every workflow upserting it would fail.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
    for key in SEARCH_ATTRIBUTES:
        kind = _CLI_TYPES[key.indexed_value_type]
        cli = await asyncio.create_subprocess_exec(
            temporal_cli(),
            "operator",
            "search-attribute",
            "create",
            "--name",
            key.name,
            "--type",
            kind,
            "--address",
            address,
            "--namespace",
            NAMESPACE,
            "--disable-config-file",
            "--disable-config-env",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        try:
            output, _ = await asyncio.wait_for(cli.communicate(), CLI_TIMEOUT)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                cli.kill()
            raise
        text = output.decode(errors="replace").strip()
        if cli.returncode == 0 or ("already exists" in text and "different type" not in text):
            continue
        raise DevStackError(f"registering search attribute {key.name} ({kind}) failed: {text}")


async def stop_process(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT; kill at once if our own shutdown is cancelled (2nd Ctrl-C).

    The server runs in its own session, so nothing else would ever stop it: every path out of here ends it.
    """
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])
