"""`sopflow worker` on SIGTERM (a deploy, a scale-down): it stops polling, lets the activity in flight finish, and
exits cleanly; the next worker carries on, and no email is lost or sent twice."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import uuid
from email.message import EmailMessage
from pathlib import Path

from sqlalchemy import select
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.testing import WorkflowEnvironment

from sopflow.db import Database, JournalRow, OutboxEmail
from sopflow.mailsink import MailSink
from sopflow.models import SubmitForm
from sopflow.playbook import Playbook
from starter.lifecycles import start_lifecycle
from tests.conftest import DEAL, TARGETING, until
from tests.starter.conftest import SOPFLOW
from workflows.lifecycle import ClientLifecycle


async def start_worker(
    env: WorkflowEnvironment, sink: MailSink, database_url: str, home: Path
) -> asyncio.subprocess.Process:
    environment = {
        **os.environ,
        "TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
        "TEMPORAL_NAMESPACE": "default",
        "SOPFLOW_SMTP_HOST": sink.host,
        "SOPFLOW_SMTP_PORT": str(sink.port),
        "SOPFLOW_DATABASE_URL": database_url,
        "SOPFLOW_HOME": str(home),
    }
    return await asyncio.create_subprocess_exec(
        SOPFLOW, "worker", env=environment, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


async def stop(worker: asyncio.subprocess.Process) -> str:
    worker.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(worker.communicate(), timeout=60)
    assert worker.returncode == 0, stderr.decode()
    return stderr.decode()


async def test_sigterm_lets_the_email_in_flight_finish_and_the_next_worker_carries_on(
    dev_env: WorkflowEnvironment, safe_balance: Playbook, tmp_path: Path
):
    database_url = f"sqlite:///{tmp_path / 'records.db'}"
    db = Database(database_url)
    db.upgrade()
    arrived, released = threading.Event(), threading.Event()

    def hold_first_message(message: EmailMessage, recipients: list[str]) -> None:
        """Keep the SMTP transaction open (the activity in flight) until the worker has been told to stop."""
        if not arrived.is_set():
            arrived.set()
            released.wait(timeout=30)

    deal_id = f"STOP-{uuid.uuid4().hex[:8]}"
    with MailSink(on_message=hold_first_message) as sink:
        first = await start_worker(dev_env, sink, database_url, tmp_path)
        handle = await start_lifecycle(
            dev_env.client, safe_balance, deal_id, DEAL, "test", WorkflowIDConflictPolicy.FAIL
        )
        await handle.execute_update(ClientLifecycle.submit_form, SubmitForm(form="targeting", fields=TARGETING))
        assert await asyncio.to_thread(arrived.wait, 60), "the account-claimed email never reached the sink"

        first.send_signal(signal.SIGTERM)
        released.set()
        _, stderr = await asyncio.wait_for(first.communicate(), timeout=60)
        assert first.returncode == 0, stderr.decode()
        assert "Traceback" not in stderr.decode()

        with db.session() as session:
            (outbox,) = session.scalars(select(OutboxEmail).where(OutboxEmail.deal_id == deal_id)).all()
            assert outbox.status == "sent"  # finished during the graceful stop, not abandoned

        second = await start_worker(dev_env, sink, database_url, tmp_path)

        def recorded() -> bool:
            with db.session() as session:
                rows = session.scalars(select(JournalRow).where(JournalRow.deal_id == deal_id)).all()
                return any(r.kind == "email" and r.detail.get("status") == "sent" for r in rows)

        await until(recorded, "the next worker to record the sent email")
        assert "Traceback" not in await stop(second)

    mine = [m for m in sink.messages if deal_id in str(m["X-Sopflow-Key"])]
    assert [str(m["X-Sopflow-Template"]) for m in mine] == ["safe_balance/account_claimed"]
    assert sink.duplicates == 0


async def test_sigint_while_the_worker_is_still_connecting_stops_it_at_once_even_if_sigint_was_ignored(
    tmp_path: Path,
):
    """Starting takes seconds on a loaded machine, and forever against a server that never answers: a stop signal
    in that window must end the start. The worker is launched the way a non-interactive shell launches a background
    job (CI agents, `nohup`, `make test &`): with SIGINT ignored, which Python keeps until someone installs a handler.
    Before the worker took over its signals ahead of connecting, that SIGINT was dropped and the worker ran on."""
    connecting = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connecting.set()  # the worker is past its migration, inside connect(): its handlers are in place
        await reader.read()  # until the worker hangs up
        writer.close()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    environment = {
        **os.environ,
        "TEMPORAL_ADDRESS": f"{host}:{port}",
        "SOPFLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'records.db'}",
        "SOPFLOW_HOME": str(tmp_path),
    }
    async with server:
        worker = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", f"trap '' INT; exec {SOPFLOW} worker", env=environment, stderr=asyncio.subprocess.PIPE
        )
        try:
            async with asyncio.timeout(120):  # bounds a hang only: a loaded machine may take long to get there
                await connecting.wait()
            worker.send_signal(signal.SIGINT)
            # The SDK's own connect timeout is 30 s; the stop must not wait for it (nor exit 1 after it).
            async with asyncio.timeout(120):
                _, stderr = await worker.communicate()
        finally:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
    assert worker.returncode == 0, stderr.decode()
    assert "worker stopped before it started polling" in stderr.decode()
    assert "Traceback" not in stderr.decode()
