"""A worker that starts before its records store is reachable waits for it instead of exiting."""

from __future__ import annotations

import asyncio
import logging
import uuid

import psycopg
import pytest
from sqlalchemy import inspect

from sopflow.db import Database
from tests.conftest import POSTGRES_ADMIN, postgres_database
from worker import until_migrated


async def test_a_worker_waits_for_a_database_that_is_not_there_yet_then_migrates_it(caplog: pytest.LogCaptureFixture):
    with postgres_database():  # skips (or fails in CI) without a PostgreSQL
        pass
    name = f"sopflow_test_{uuid.uuid4().hex[:12]}"
    db = Database(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
    with caplog.at_level(logging.WARNING, logger="sopflow.worker"):
        waiting = asyncio.create_task(until_migrated(db))
        while not any("not reachable" in r.message for r in caplog.records):  # it tried, and waits to try again
            assert not waiting.done()
            await asyncio.sleep(0.05)
    assert name not in caplog.text  # the log names the error's class, never the database URL
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            assert await asyncio.wait_for(waiting, timeout=120) is True
            assert "outbox" in inspect(db.engine).get_table_names()
        finally:
            db.dispose()
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
