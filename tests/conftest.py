"""Shared fixtures: real Temporal servers (time-skipping and dev), a real SMTP sink, a real SQLite records store."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.email import SmtpConfig
from sopflow.config import PROJECT_ROOT
from sopflow.constants import SEARCH_ATTRIBUTES
from sopflow.db import Database
from sopflow.mailsink import MailSink
from sopflow.playbook import Playbook, load_playbook
from starter.binaries import temporal_cli
from starter.rehearse import start_test_env
from worker import build_worker

TEMPLATES = PROJECT_ROOT / "templates"
PLAYBOOKS = PROJECT_ROOT / "playbooks"


@pytest.fixture
async def ts_env() -> AsyncIterator[WorkflowEnvironment]:
    """A fresh time-skipping server per test: the virtual clock of one test never leaks into another."""
    env = await start_test_env()
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    """One real dev server for the session: search attributes and visibility need it."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        data_converter=pydantic_data_converter,
        search_attributes=SEARCH_ATTRIBUTES,
    )
    yield env
    await env.shutdown()


@pytest.fixture
def smtp_sink() -> Iterator[MailSink]:
    with MailSink() as sink:
        yield sink


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'records.db'}")
    database.create_schema()
    yield database
    database.dispose()


@pytest.fixture(scope="session")
def safe_balance() -> Playbook:
    return load_playbook(PLAYBOOKS / "safe_balance.yaml", TEMPLATES)


def make_worker(client: Client, db: Database, sink: MailSink) -> Worker:
    smtp = SmtpConfig(host=sink.host, port=sink.port, mail_from="sopflow <sopflow@example.com>")
    return build_worker(client, db, smtp, TEMPLATES, task_queue=f"tq-{uuid.uuid4()}")
