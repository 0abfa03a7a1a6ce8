"""`sopflow dev`: the whole local stack in one process, so a newcomer needs one command and no Docker.

Temporal runs as a child process (the pinned `temporal` CLI's dev server, persisted in `<home>/temporal.db`);
the worker, the SMTP sink and the webhook intake run in this event loop. Everything is torn down in reverse
order when the coroutine is cancelled (Ctrl-C) or when startup fails halfway, so no dev server is ever left
behind holding the ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path

import uvicorn
from pydantic import SecretStr
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from sqlalchemy.engine import make_url
from temporalio.client import Client
from temporalio.worker import Worker

from sopflow.codec import EncryptionCodec
from sopflow.config import Settings
from sopflow.db import Database
from sopflow.mailsink import MailSink
from starter import codec_server, webhooks
from starter.devserver import (
    HOST,
    NAMESPACE,
    DevStackError,
    register_search_attributes,
    spawn_server,
    stop_process,
    tail,
    wait_until_serving,
)
from worker import schedule_digests, stop_on_signals, worker_for

# Who the dev stack's web board signs in, automatically: a local stack is one developer's.
DEV_USER = "dev@example.com"


def with_dev_secrets(settings: Settings, home: Path) -> Settings:
    """Without SOPFLOW_FORM_SECRET (or SOPFLOW_WEB_SECRET), the dev stack keeps one of its own in `<home>`, so the
    form links in its emails open working pages and the board's sessions stay valid across restarts. The board opens
    signed in as the dev user (`DEV_USER`, or SOPFLOW_WEB_DEV_USER)."""
    update: dict[str, object] = {}
    if settings.form_secret is None:
        update["form_secret"] = SecretStr(_kept_secret(home / "form-secret"))
    if settings.web_secret is None:
        update["web_secret"] = SecretStr(_kept_secret(home / "web-secret"))
    if settings.web_dev_user is None:
        update["web_dev_user"] = DEV_USER
    return settings.model_copy(update=update)


def _kept_secret(path: Path) -> str:
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


class _QuietServer(uvicorn.Server):
    """uvicorn without its own SIGINT/SIGTERM handlers.

    uvicorn would swallow Ctrl-C to stop only itself and re-raise it later; signals belong to `asyncio.run` in
    the CLI, which cancels `run_dev`, which stops everything in order.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def run_dev(
    settings: Settings,
    *,
    ready: asyncio.Event | None = None,
    console: Console | None = None,
    on_server_pid: Callable[[int], None] | None = None,
) -> None:
    """Run the local stack until cancelled (Ctrl-C) or SIGTERM/SIGHUP; set `ready` once every part answers.

    SIGTERM and SIGHUP (a closed terminal) end it normally after the same orderly shutdown, because the dev
    server runs in its own session: killed outright, this process would leave it orphaned on its ports.
    `on_server_pid` receives the dev server's process id as soon as it is spawned, so a caller (the tests) can
    prove that shutdown really ended it.
    """
    console = console or Console()
    home = settings.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    settings = with_dev_secrets(settings, home)
    port = settings.dev_temporal_port
    address = f"{HOST}:{port}"

    _check_ports_free(settings)
    stop = asyncio.Event()
    async with AsyncExitStack() as stack:
        stack.enter_context(stop_on_signals(stop, signal.SIGTERM, signal.SIGHUP))
        # Our own listeners are taken before the dev server starts, which binds random free ports of its own
        # (HTTP API, metrics, internal services) and could otherwise land on one of ours.
        intake_socket = stack.enter_context(
            _bind(settings.dev_intake_port, "webhook intake", "SOPFLOW_DEV_INTAKE_PORT")
        )
        encrypting = settings.encryption_key_ring() is not None
        codec_socket = (
            stack.enter_context(_bind(settings.dev_codec_port, "codec server", "SOPFLOW_DEV_CODEC_PORT"))
            if encrypting
            else None
        )
        await _start_mail_sink(settings, home / "mail", console, stack)
        proc, client, server_seconds = await _start_temporal(settings, address, home, stack, on_server_pid)
        db = await _start_records(settings, stack)
        worker = worker_for(client, db, settings)
        await schedule_digests(client, worker.task_queue)
        worker_task = asyncio.create_task(worker.run(), name="sopflow-worker")
        stack.push_async_callback(_stop_worker, worker, worker_task)
        web_tasks = await _start_web(settings, client, intake_socket, codec_socket, stack)

        console.print(_panel(settings, address, home, server_seconds))
        if ready is not None:
            ready.set()
        try:
            await _supervise(proc, worker_task, web_tasks, stop, home / "temporal.log")
        finally:
            console.print(Text("stopping the local stack...", style="dim"))


async def _start_mail_sink(settings: Settings, mail_dir: Path, console: Console, stack: AsyncExitStack) -> None:
    """The SMTP sink every email goes to in development, printing one line per message it receives."""
    sink = MailSink(
        host=settings.smtp_host, port=settings.smtp_port, store_dir=mail_dir, on_message=_mail_printer(console)
    )
    try:
        await asyncio.to_thread(sink.start)
    except Exception as exc:  # aiosmtpd reports a busy port in several ways
        raise DevStackError(
            f"cannot start the SMTP sink on {settings.smtp_host}:{settings.smtp_port}: "
            f"{exc}; choose another port with SOPFLOW_SMTP_PORT"
        ) from exc
    stack.callback(sink.stop)


async def _start_temporal(
    settings: Settings,
    address: str,
    home: Path,
    stack: AsyncExitStack,
    on_server_pid: Callable[[int], None] | None,
) -> tuple[asyncio.subprocess.Process, Client, float]:
    """The dev server, serving and with sopflow's search attributes, and how long it took to get there."""
    proc = await spawn_server(settings)
    stack.push_async_callback(stop_process, proc)
    if on_server_pid is not None:
        on_server_pid(proc.pid)
    started = time.monotonic()
    client = await wait_until_serving(proc, address, home / "temporal.log", settings)
    await register_search_attributes(address)
    return proc, client, time.monotonic() - started


async def _start_records(settings: Settings, stack: AsyncExitStack) -> Database:
    """The records database, migrated before the worker writes to it."""
    db = Database(settings.database_url)
    stack.callback(db.dispose)
    try:
        await asyncio.to_thread(db.upgrade)
    except Exception as exc:  # any driver's connection error: the message is what matters here
        raise DevStackError(f"records database {_safe_url(settings.database_url)}: {exc}") from exc
    return db


async def _start_web(
    settings: Settings,
    client: Client,
    intake_socket: socket.socket,
    codec_socket: socket.socket | None,
    stack: AsyncExitStack,
) -> dict[str, asyncio.Task[None]]:
    """The webhook intake (and the codec server when payloads are encrypted), by name, once they answer."""
    web, web_task = _start_intake(settings, client, intake_socket)
    stack.push_async_callback(_stop_intake, web, web_task)
    await _wait_until_started(web, web_task)
    web_tasks = {"webhook intake": web_task}
    if codec_socket is not None:
        codec_web, codec_task = _start_codec_server(settings, codec_socket)
        stack.push_async_callback(_stop_intake, codec_web, codec_task)
        await _wait_until_started(codec_web, codec_task)
        web_tasks["codec server"] = codec_task
    return web_tasks


def _check_ports_free(settings: Settings) -> None:
    """Fail before spawning anything: a half-started stack beside someone else's server only confuses."""
    wanted = [
        ("Temporal", HOST, settings.dev_temporal_port),
        ("Temporal UI", HOST, settings.dev_ui_port),
        ("webhook intake", HOST, settings.dev_intake_port),
        ("SMTP sink", settings.smtp_host, settings.smtp_port),
    ]
    if settings.encryption_key_ring() is not None:
        wanted.append(("codec server", HOST, settings.dev_codec_port))
    for name, host, port in wanted:
        if _port_free(host, port):
            continue
        hint = (
            "is another `sopflow dev` (or a Temporal server) running? Stop it"
            if name == "Temporal"
            else "stop whatever holds it"
        )
        raise DevStackError(
            f"{host}:{port} ({name}) is already in use: {hint}, or choose other ports with "
            "SOPFLOW_DEV_TEMPORAL_PORT / SOPFLOW_DEV_UI_PORT / SOPFLOW_DEV_INTAKE_PORT / "
            "SOPFLOW_SMTP_PORT / SOPFLOW_DEV_CODEC_PORT"
        )


def _port_free(host: str, port: int) -> bool:
    # SO_REUSEADDR: a port left in TIME_WAIT by the previous run is free for the servers, which set it too.
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _mail_printer(console: Console) -> Callable[[EmailMessage, list[str]], None]:
    """One line per captured message, so the developer sees a step's email without opening the folder."""

    def show(message: EmailMessage, recipients: list[str]) -> None:
        to = str(message.get("To") or ", ".join(recipients))
        line = Text.assemble(
            (datetime.now().strftime("%H:%M:%S"), "dim"),
            "  ",
            ("mail", "bold cyan"),
            "  To: ",
            to,
            "  Subject: ",
            (str(message.get("Subject", "")), "bold"),
        )
        console.print(line)

    return show


@contextlib.contextmanager
def _bind(port: int, what: str, setting: str) -> Iterator[socket.socket]:
    """Bind a server's socket ourselves: uvicorn's own bind failure is a sys.exit() that would end the whole stack.

    Always on HOST, the loopback address: the dev stack's servers (the codec server above all, which decodes for
    the UI's origin without a token) are for this machine only.
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as exc:
        sock.close()
        raise DevStackError(
            f"cannot bind the {what} to {HOST}:{port}: {exc}; choose another port with {setting}"
        ) from exc
    with sock:
        yield sock


def _dev_codec_token(settings: Settings) -> str | None:
    token = settings.codec_token.get_secret_value().strip() if settings.codec_token else ""
    return token or None


def _start_codec_server(settings: Settings, sock: socket.socket) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    """The codec server for the dev UI, on the loopback socket `_bind` took.

    Without SOPFLOW_CODEC_TOKEN it trusts the UI's own origin, since the dev UI cannot send a token: on 127.0.0.1
    only what already runs on this machine (which holds the keys) can forge that origin. With a token, the token
    is the only way in, for every client: an origin anyone can claim must not open what the token closes, so the
    dev UI then shows ciphertext (the panel says so) and `temporal --codec-auth` decodes.
    """
    ring = settings.encryption_key_ring()
    assert ring is not None
    token = _dev_codec_token(settings)
    origins = [f"http://localhost:{settings.dev_ui_port}", f"http://{HOST}:{settings.dev_ui_port}"]
    web = codec_server.create_app(
        EncryptionCodec(ring), token=token, ui_origins=origins, namespace=NAMESPACE, trust_ui_origin=token is None
    )
    config = uvicorn.Config(web, host=HOST, port=settings.dev_codec_port, log_level="warning", log_config=None)
    server = _QuietServer(config)

    async def serve() -> None:
        try:
            await server.serve(sockets=[sock])
        except SystemExit as exc:
            raise DevStackError(f"the codec server failed to start (exit {exc.code})") from None

    return server, asyncio.create_task(serve(), name="sopflow-codec-server")


def _start_intake(settings: Settings, client: Client, sock: socket.socket) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    """The webhook intake on the loopback socket `_bind` took. It shares the stack's client (Temporal runs on a port
    TEMPORAL_ADDRESS may not name) and its settings (it checks the same form tokens the worker puts in email links);
    it opens the records database itself, on first use, like a standalone intake."""
    config = uvicorn.Config(
        webhooks.create_app(settings, client),
        host=HOST,
        port=settings.dev_intake_port,
        log_level="warning",
        log_config=None,  # uvicorn's lines go through `sopflow.logs`, like the stack's other lines
        timeout_graceful_shutdown=5,
    )
    server = _QuietServer(config)

    async def serve() -> None:
        try:
            await server.serve(sockets=[sock])
        except SystemExit as exc:
            raise DevStackError(f"the webhook intake failed to start (exit {exc.code})") from None

    return server, asyncio.create_task(serve(), name="sopflow-intake")


async def _wait_until_started(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    while not server.started:
        if task.done():
            task.result()
            raise DevStackError("the webhook intake stopped while starting")
        await asyncio.sleep(0.02)


async def _supervise(
    proc: asyncio.subprocess.Process,
    worker_task: asyncio.Task[None],
    web_tasks: dict[str, asyncio.Task[None]],
    stop: asyncio.Event,
    log_path: Path,
) -> None:
    """Wait for cancellation or a stop signal; a part dying on its own stops all: no half stack."""
    server_task = asyncio.create_task(proc.wait(), name="temporal-dev-server")
    stop_task = asyncio.create_task(stop.wait(), name="stop-signal")
    try:
        done, _ = await asyncio.wait(
            {server_task, stop_task, worker_task, *web_tasks.values()}, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        server_task.cancel()
        stop_task.cancel()
    if stop_task in done:
        return
    if server_task in done:
        raise DevStackError(
            f"the Temporal dev server exited with code {proc.returncode}; end of {log_path}:\n{tail(log_path)}"
        )
    parts = {"worker": worker_task, **web_tasks}
    part, finished = next((name, task) for name, task in parts.items() if task in done)
    if finished.exception() is not None:
        raise DevStackError(f"the {part} failed: {finished.exception()}") from finished.exception()
    raise DevStackError(f"the {part} stopped unexpectedly")


async def _stop_worker(worker: Worker, task: asyncio.Task[None]) -> None:
    if not task.done():
        await worker.shutdown()
    # Its failure, if any, was already reported by _supervise; shutdown must not raise it a second time.
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await task


async def _stop_intake(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await task


def _panel(settings: Settings, address: str, home: Path, server_seconds: float) -> Panel:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("Temporal", f"{address}  (namespace {NAMESPACE}, ready in {server_seconds:.1f} s)")
    grid.add_row("Temporal UI", f"http://localhost:{settings.dev_ui_port}")
    grid.add_row("Webhook intake", f"http://{HOST}:{settings.dev_intake_port}")
    grid.add_row("Web board", f"http://{HOST}:{settings.dev_intake_port}/board  (signed in as {settings.web_dev_user})")
    ring = settings.encryption_key_ring()
    if ring is not None:
        access = (
            "codec token set: clients send it, the UI shows ciphertext"
            if _dev_codec_token(settings)
            else "decodes for the UI's origin"
        )
        grid.add_row(
            "Codec server",
            f"http://{HOST}:{settings.dev_codec_port}  (payloads encrypted, key {ring.current_id}; {access})",
        )
    grid.add_row("SMTP sink", f"{settings.smtp_host}:{settings.smtp_port}  ->  {home / 'mail'}")
    grid.add_row("Records DB", _safe_url(settings.database_url))
    if settings.metrics_port is not None:
        grid.add_row("Metrics", f"http://{settings.metrics_host}:{settings.metrics_port}/metrics")
    grid.add_row("Server log", str(home / "temporal.log"))
    grid.add_row("", Text("Ctrl-C to stop", style="dim"))
    return Panel(grid, title="sopflow dev", border_style="green", expand=False)


def _safe_url(url: str) -> str:
    """Database URLs may carry a password; terminals get screenshotted."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database URL>"
