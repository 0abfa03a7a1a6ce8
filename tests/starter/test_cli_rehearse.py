"""`sopflow rehearse` on every shipped scenario, as an SOP author runs it: each one rehearses to its horizon and
prints its timeline; what a scenario does after its lifecycle ended is a refusal on the timeline, not a crash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sopflow.mailsink import free_port
from tests.conftest import SCENARIOS, playbook_of
from tests.starter.conftest import Cli

SHIPPED = sorted(SCENARIOS.glob("*.yaml"))


@pytest.mark.parametrize("scenario", SHIPPED, ids=[path.stem for path in SHIPPED])
async def test_every_shipped_scenario_rehearses_through_the_cli(scenario: Path) -> None:
    cli = Cli(f"127.0.0.1:{free_port()}")  # a rehearsal brings its own server
    code, stdout, stderr = await cli("rehearse", playbook_of(scenario).stem, str(scenario), "-o", "jsonl")
    assert code == 0, stderr
    assert "Traceback" not in stderr
    timeline = [json.loads(line) for line in stdout.splitlines()]
    assert timeline and timeline[0]["kind"] == "stage"


async def test_a_step_after_the_lifecycle_ended_is_refused_on_the_timeline(tmp_path: Path) -> None:
    scenario = yaml.safe_load((SCENARIOS / "safe_balance_declined.yaml").read_text())
    scenario["steps"].append({"at": scenario["until"], "event": "contract_signed", "event_id": "late"})
    scenario["steps"].append({"at": scenario["until"], "form": "site_visit", "fields": {"visited_on": "$today"}})
    path = tmp_path / "late.yaml"
    path.write_text(yaml.safe_dump(scenario))

    cli = Cli(f"127.0.0.1:{free_port()}")
    code, stdout, stderr = await cli("rehearse", "safe_balance", str(path), "-o", "jsonl")
    assert code == 0, stderr
    late = [json.loads(line) for line in stdout.splitlines()][-2:]
    assert [e["kind"] for e in late] == ["rejected", "rejected"]
    assert all("the lifecycle has ended" in e["reason"] for e in late)
