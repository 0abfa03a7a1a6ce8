"""Worker tuning: SOPFLOW_WORKER_* reach the Temporal Worker; the defaults are the SDK's (documented in README)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from temporalio.testing import WorkflowEnvironment

from sopflow.config import Settings
from sopflow.db import Database
from worker import worker_for

TUNING = (
    "SOPFLOW_WORKER_CACHE_SIZE",
    "SOPFLOW_WORKER_MAX_CONCURRENT_WORKFLOW_TASKS",
    "SOPFLOW_WORKER_MAX_CONCURRENT_ACTIVITIES",
)


async def test_worker_tuning_variables_reach_the_worker(
    ts_env: WorkflowEnvironment, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in zip(TUNING, ("250", "20", "8"), strict=True):
        monkeypatch.setenv(name, value)
    config = worker_for(ts_env.client, db, Settings()).config()
    assert config.get("max_cached_workflows") == 250
    assert config.get("max_concurrent_workflow_tasks") == 20
    assert config.get("max_concurrent_activities") == 8


async def test_without_tuning_variables_the_worker_gets_the_documented_defaults(
    ts_env: WorkflowEnvironment, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in TUNING:
        monkeypatch.delenv(name, raising=False)
    config = worker_for(ts_env.client, db, Settings()).config()
    assert (
        config.get("max_cached_workflows"),
        config.get("max_concurrent_workflow_tasks"),
        config.get("max_concurrent_activities"),
    ) == (1000, 100, 100)


def test_a_workflow_task_limit_below_two_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOPFLOW_WORKER_MAX_CONCURRENT_WORKFLOW_TASKS", "1")  # the SDK needs 2 with a cache
    with pytest.raises(ValidationError, match="worker_max_concurrent_workflow_tasks"):
        Settings()
