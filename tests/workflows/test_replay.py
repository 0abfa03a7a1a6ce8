"""Recorded histories replay against the current workflow code: what runs today keeps running after a deploy."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from tests.workflows.record_histories import HISTORIES
from workflows.lifecycle import ClientLifecycle

RECORDED = sorted(HISTORIES.glob("*.json"))


def test_histories_are_recorded_for_every_shipped_scenario():
    assert len(RECORDED) >= 5  # four scenarios, the happy path spanning several runs


@pytest.mark.parametrize("path", RECORDED, ids=[p.stem for p in RECORDED])
async def test_recorded_history_replays_deterministically(path: Path):
    history = WorkflowHistory.from_json(f"deal-{path.stem}", path.read_text())
    replayer = Replayer(workflows=[ClientLifecycle], data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None
