"""Shared by the CLI tests: the `sopflow` executable driven as a user would, against the session's dev server."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from sopflow.constants import TASK_QUEUE
from sopflow.db import Database
from sopflow.mailsink import MailSink
from tests.conftest import TEMPLATES
from worker import build_worker

SOPFLOW = str(Path(sys.executable).parent / "sopflow")


class Cli:
    def __init__(self, address: str) -> None:
        self.env = {**os.environ, "TEMPORAL_ADDRESS": address, "TEMPORAL_NAMESPACE": "default", "COLUMNS": "200"}
        self.cwd: Path | None = None

    async def __call__(self, *args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            SOPFLOW, *args, env=self.env, cwd=self.cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
        return proc.returncode or 0, stdout.decode(), stderr.decode()

    async def start_deal(self, deal: str, *fields: str, playbook: str = "safe_balance") -> str:
        """`sopflow deal start` with `key=value` fields."""
        pairs = [arg for field in fields for arg in ("-f", field)]
        return await self.ok("deal", "start", "--deal-id", deal, "--playbook", playbook, *pairs)

    async def ok(self, *args: str) -> str:
        code, stdout, stderr = await self(*args)
        assert code == 0, f"sopflow {' '.join(args)} failed: {stderr}"
        return stdout


@pytest.fixture
async def lifecycle_worker(dev_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Database]:
    """A worker on the real task queue of the session's dev server (where the CLI and the intake start lifecycles),
    its records in a fresh SQLite file, its mail in a sink; yields the records database."""
    db = Database(f"sqlite:///{tmp_path / 'records.db'}")
    db.create_schema()
    from activities.email import SmtpConfig

    with MailSink() as sink:
        smtp = SmtpConfig(host=sink.host, port=sink.port, mail_from="sopflow <sopflow@example.com>")
        async with build_worker(dev_env.client, db, smtp, TEMPLATES, task_queue=TASK_QUEUE):
            yield db
    db.dispose()


@pytest.fixture
def cli(dev_env: WorkflowEnvironment, lifecycle_worker: Database) -> Cli:
    """The CLI pointed at the session's dev server, with a worker running."""
    return Cli(dev_env.client.service_client.config.target_host)


async def eventually(check, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    """Visibility is eventually consistent: poll (briefly) until the check passes or the deadline is reached."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await check()
        except AssertionError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)
