"""`sopflow dev` end to end: real dev server, real SMTP, real HTTP; and nothing left running afterwards."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import httpx
import pytest
from rich.console import Console
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client

from sopflow.codec import shared_pydantic_data_converter
from sopflow.config import Settings
from sopflow.mailsink import MailSink, free_port
from starter.devstack import DevStackError, run_dev

# What `sopflow dev` does, without depending on the CLI module. SIGINT gets its default handler back because a
# test run started in the background inherits it ignored, and asyncio.run would then never see "Ctrl-C".
STANDALONE = """
import asyncio, signal
from sopflow.config import Settings
from starter.devstack import run_dev
signal.signal(signal.SIGINT, signal.default_int_handler)
try:
    asyncio.run(run_dev(Settings()))
except KeyboardInterrupt:
    print("stopped", flush=True)
"""


def dev_settings(home: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "home": home,
        "database_url": f"sqlite:///{home / 'sopflow.db'}",
        "dev_temporal_port": free_port(),
        "dev_ui_port": free_port(),
        "dev_intake_port": free_port(),
        "smtp_port": free_port(),
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


async def start(settings: Settings, console: Console, pids: list[int]) -> asyncio.Task[None]:
    ready = asyncio.Event()
    task = asyncio.create_task(run_dev(settings, ready=ready, console=console, on_server_pid=pids.append))
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task in done:
        task.result()  # surfaces the startup error
    assert ready.is_set(), "dev stack not ready within 60 s"
    return task


async def stop(task: asyncio.Task[None]) -> float:
    began = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return time.monotonic() - began


def accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def listening_hosts(port: int) -> set[str]:
    """The addresses a TCP socket listens on at `port`, from the kernel's own table (IPv4 and IPv6)."""
    hosts: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for row in path.read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            address, _, port_hex = local.partition(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                packed = bytes.fromhex(address)
                if len(packed) == 4:
                    hosts.add(socket.inet_ntop(socket.AF_INET, packed[::-1]))
                else:
                    words = b"".join(packed[i : i + 4][::-1] for i in range(0, 16, 4))
                    hosts.add(socket.inet_ntop(socket.AF_INET6, words))
    return hosts


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def poll(check: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.05)
    return check()


async def test_dev_stack_serves_everything_and_stops_cleanly(tmp_path: Path) -> None:
    settings = dev_settings(tmp_path)
    output = io.StringIO()
    console = Console(file=output, width=200)
    pids: list[int] = []
    task = await start(settings, console, pids)
    try:
        client = await Client.connect(
            f"127.0.0.1:{settings.dev_temporal_port}", data_converter=shared_pydantic_data_converter
        )
        listed = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace="default"))
        assert dict(listed.custom_attributes) == {
            "SopStage": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
            "SopPlaybook": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
            "SopOwner": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
            "SopNextDue": IndexedValueType.INDEXED_VALUE_TYPE_DATETIME,
        }

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.dev_intake_port}") as http:
            health = await http.get("/healthz")
            readiness = await http.get("/readyz")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        assert (readiness.status_code, readiness.json()) == (200, {"status": "ready"})

        message = EmailMessage()
        message["From"] = "sopflow@example.com"
        message["To"] = "client@example.com"
        message["Subject"] = "Welcome aboard"
        message["Message-ID"] = "<devstack-test@example.com>"
        message.set_content("hello")
        await aiosmtplib.send(message, hostname=settings.smtp_host, port=settings.smtp_port)
        assert await poll(lambda: any((tmp_path / "mail").glob("*.eml")), 10)
        # Without SOPFLOW_FORM_SECRET the stack keeps its own, so form links in its emails carry valid tokens.
        secret = tmp_path / "form-secret"
        assert len(secret.read_text()) == 64 and secret.stat().st_mode & 0o077 == 0
        assert await poll(lambda: "Welcome aboard" in output.getvalue(), 5)
    finally:
        seconds = await stop(task)

    (pid,) = pids
    assert await poll(lambda: gone(pid), 5), f"dev server {pid} still running after shutdown"
    assert not accepts(settings.dev_temporal_port)
    assert not accepts(settings.dev_intake_port)
    assert not accepts(settings.smtp_port)
    assert seconds < 20
    text = output.getvalue()
    assert f"http://localhost:{settings.dev_ui_port}" in text
    assert "Ctrl-C to stop" in text
    assert "Traceback" not in text


async def test_restart_on_the_same_home_keeps_search_attributes(tmp_path: Path) -> None:
    """The second start finds the db file that makes start-dev ignore --search-attribute: must still work."""
    settings = dev_settings(tmp_path)
    console = Console(file=io.StringIO())
    await stop(await start(settings, console, []))
    task = await start(settings, console, [])
    try:
        client = await Client.connect(f"127.0.0.1:{settings.dev_temporal_port}")
        listed = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace="default"))
        assert {"SopStage", "SopPlaybook", "SopOwner", "SopNextDue"} <= set(listed.custom_attributes)
    finally:
        await stop(task)


async def test_busy_temporal_port_is_reported_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        settings = dev_settings(tmp_path, dev_temporal_port=squatter.getsockname()[1])
        with pytest.raises(DevStackError, match="another `sopflow dev`"):
            await run_dev(settings, console=Console(file=io.StringIO()))
    assert not (tmp_path / "temporal.db").exists()


async def test_failure_midway_still_stops_the_dev_server(tmp_path: Path) -> None:
    """The records database fails only once Temporal is up: the server must not outlive the error."""
    closed_port = free_port()
    settings = dev_settings(tmp_path, database_url=f"postgresql+psycopg://u:secret@127.0.0.1:{closed_port}/x")
    pids: list[int] = []
    with pytest.raises(DevStackError, match="records database") as failure:
        await asyncio.wait_for(run_dev(settings, console=Console(file=io.StringIO()), on_server_pid=pids.append), 60)
    assert "secret" not in str(failure.value)
    (pid,) = pids
    assert await poll(lambda: gone(pid), 5)
    assert not accepts(settings.dev_temporal_port)


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
async def test_standalone_process_stops_its_dev_server_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    """How it really ends: a signal to the Python process. The dev server, in its own session, must go too."""
    settings = dev_settings(tmp_path)
    env = {
        **os.environ,
        "SOPFLOW_HOME": str(tmp_path),
        "SOPFLOW_DATABASE_URL": settings.database_url,
        "SOPFLOW_DEV_TEMPORAL_PORT": str(settings.dev_temporal_port),
        "SOPFLOW_DEV_UI_PORT": str(settings.dev_ui_port),
        "SOPFLOW_DEV_INTAKE_PORT": str(settings.dev_intake_port),
        "SOPFLOW_SMTP_PORT": str(settings.smtp_port),
        "COLUMNS": "200",
    }
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", STANDALONE, env=env, stdout=stdout, stderr=stderr
        )
    try:
        assert await poll(lambda: "Ctrl-C to stop" in out.read_text(), 60), err.read_text()
        (server,) = children(proc.pid)
        proc.send_signal(sig)
        began = time.monotonic()
        code = await asyncio.wait_for(proc.wait(), 30)
        seconds = time.monotonic() - began
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0, err.read_text()
    assert await poll(lambda: gone(server), 5), f"dev server {server} outlived its parent"
    assert not accepts(settings.dev_temporal_port)
    assert "Traceback" not in err.read_text() + out.read_text()
    assert "stopping the local stack" in out.read_text()
    if sig == signal.SIGINT:
        assert "stopped" in out.read_text().splitlines()[-1]
    assert seconds < 20


async def test_with_encryption_keys_the_dev_stack_runs_a_codec_server_for_its_ui(tmp_path: Path) -> None:
    from temporalio.common import WorkflowIDConflictPolicy

    from sopflow.codec import ENCODING, data_converter, new_key
    from sopflow.playbook_checks import load_playbook
    from starter.lifecycles import start_lifecycle
    from tests.conftest import PLAYBOOKS, TEMPLATES

    keys = f"k1:{new_key()}"
    settings = dev_settings(tmp_path, encryption_keys=keys, dev_codec_port=free_port())
    output = io.StringIO()
    pids: list[int] = []
    task = await start(settings, Console(file=output, width=200), pids)
    try:
        # The dev server's UI was told where the codec server is.
        cmdline = Path(f"/proc/{pids[0]}/cmdline").read_bytes().split(b"\0")
        endpoint = f"http://127.0.0.1:{settings.dev_codec_port}"
        assert cmdline[cmdline.index(b"--ui-codec-endpoint") + 1] == endpoint.encode()
        assert "Codec server" in output.getvalue()

        # The stack's worker reads what an encrypting client wrote, and the history holds ciphertext.
        address = f"127.0.0.1:{settings.dev_temporal_port}"
        client = await Client.connect(address, data_converter=data_converter(settings))
        playbook = load_playbook(PLAYBOOKS / "safe_balance.yaml", TEMPLATES)
        handle = await start_lifecycle(
            client,
            playbook,
            "DEV-ENC-1",
            {"rep_email": "client-7f3a@example.com"},
            "test",
            WorkflowIDConflictPolicy.FAIL,
        )
        status = await handle.query("status")
        assert status["fields"]["rep_email"] == "client-7f3a@example.com"
        history = await handle.fetch_history()
        started = history.events[0].workflow_execution_started_event_attributes.input.payloads[0]
        assert started.metadata["encoding"] == ENCODING

        # The UI's browser (its origin) gets that payload decoded; another origin without the token does not. It
        # listens on the loopback address only: what could forge the UI's origin there already runs on this machine.
        assert listening_hosts(settings.dev_codec_port) == {"127.0.0.1"}
        wire = {k: base64.b64encode(v).decode() for k, v in started.metadata.items()}
        body = {"payloads": [{"metadata": wire, "data": base64.b64encode(started.data).decode()}]}
        async with httpx.AsyncClient(base_url=endpoint) as http:
            ui = await http.post("/decode", json=body, headers={"Origin": f"http://localhost:{settings.dev_ui_port}"})
            other = await http.post("/decode", json=body, headers={"Origin": "https://evil.example.com"})
        assert ui.status_code == 200 and other.status_code == 401
        assert b"client-7f3a@example.com" in base64.b64decode(ui.json()["payloads"][0]["data"])
    finally:
        await stop(task)
    assert not accepts(settings.dev_codec_port)


async def test_with_a_codec_token_the_dev_codec_server_trusts_no_origin_and_listens_on_loopback_only(
    tmp_path: Path,
) -> None:
    from sopflow.codec import new_key

    token = "dev-codec-token-for-tests"
    settings = dev_settings(tmp_path, encryption_keys=f"k1:{new_key()}", codec_token=token, dev_codec_port=free_port())
    output = io.StringIO()
    task = await start(settings, Console(file=output, width=200), [])
    try:
        assert listening_hosts(settings.dev_codec_port) == {"127.0.0.1"}
        ui = {"Origin": f"http://localhost:{settings.dev_ui_port}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.dev_codec_port}") as http:
            origin_only = await http.post("/decode", json={"payloads": []}, headers=ui)
            with_token = await http.post(
                "/decode", json={"payloads": []}, headers={**ui, "Authorization": f"Bearer {token}"}
            )
        assert origin_only.status_code == 401 and with_token.status_code == 200
        assert "codec token set" in output.getvalue() and token not in output.getvalue()
    finally:
        await stop(task)


async def test_a_restarted_mail_sink_keeps_the_earlier_messages_and_numbers_on(tmp_path: Path) -> None:
    """`sopflow dev` restarted on the same home: the mail folder keeps every message of the earlier runs."""
    mail_dir = tmp_path / "mail"

    async def deliver(subject: str) -> None:
        message = EmailMessage()
        message["From"] = "sopflow@example.com"
        message["To"] = "client@example.com"
        message["Subject"] = subject
        message["Message-ID"] = f"<{subject.replace(' ', '-')}@example.com>"
        message.set_content(subject)
        with MailSink(store_dir=mail_dir) as sink:
            await aiosmtplib.send(message, hostname=sink.host, port=sink.port)

    await deliver("first run")
    (first,) = sorted(mail_dir.glob("*.eml"))
    kept = first.read_bytes()
    (mail_dir / "notes.eml").write_text("not the sink's")  # a file of someone else's is neither counted nor touched
    await deliver("second run")
    await deliver("third run")

    files = sorted(mail_dir.glob("*.eml"))
    assert [f.name for f in files] == ["00001.eml", "00002.eml", "00003.eml", "notes.eml"]
    assert first.read_bytes() == kept
    for path, subject in zip(files, ["first run", "second run", "third run"], strict=False):
        assert f"Subject: {subject}" in path.read_text()
