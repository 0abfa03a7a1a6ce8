"""The fault-injection runs, small: `make chaos` and `make chaos-pg` run 200 clients; these keep `make test` honest
about both topologies."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import uuid
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from sopflow.mailsink import MailSink
from tests.chaos.harness import (
    LIVE_STACKS,
    ChaosConfig,
    ChaosReport,
    Stack,
    failing_tasks,
    print_report,
    run_chaos,
    write_report,
)
from tests.conftest import postgres_database, until


async def test_worker_kills_a_server_restart_and_a_flaky_relay_lose_and_duplicate_nothing(tmp_path: Path):
    config = ChaosConfig(clients=8, kills=1, restarts=1, smtp_fail_every=5, interval=2.0)
    report = await run_chaos(config, tmp_path)
    print_report(report)

    assert report.problems == []
    assert (report.kills, report.server_restarts) == (1, 1)
    assert report.smtp_dropped > 0 and report.smtp_deferred > 0  # the relay really was flaky
    assert report.emails_arrived == report.emails_expected > 0


async def test_several_workers_on_postgresql_killed_a_database_restart_and_a_slow_relay_lose_and_duplicate_nothing(
    tmp_path: Path,
):
    with postgres_database():  # skips without a PostgreSQL (fails in CI, which has one)
        pass
    if not (shutil.which("pg_ctlcluster") and os.path.isdir("/etc/postgresql") and os.geteuid() == 0):
        if os.environ.get("SOPFLOW_REQUIRE_POSTGRES") == "1":
            pytest.fail("restarting PostgreSQL needs Debian's pg_ctlcluster, run as root (as CI does)")
        pytest.skip("restarting PostgreSQL needs Debian's pg_ctlcluster, run as root")
    config = ChaosConfig(
        clients=12,
        workers=2,
        kills=2,
        restarts=0,
        database="postgres",
        db_restarts=1,
        smtp_fail_every=7,
        slow_every=15,
        interval=2.0,
    )
    report = await run_chaos(config, tmp_path)
    print_report(report)

    assert report.problems == []
    assert (report.kills, report.db_restarts) == (2, 1)
    assert report.smtp_dropped > 0 and report.smtp_deferred > 0
    assert report.emails_arrived == report.emails_expected > 0


async def test_a_run_cut_short_leaves_no_process_of_its_stack_running(tmp_path: Path) -> None:
    """What the autouse fixture does after a timeout: the processes' groups are killed without the event loop."""
    stack = Stack(tmp_path, MailSink(port=1025), ChaosConfig())
    stack.server = await asyncio.create_subprocess_exec("sleep", "600", start_new_session=True)
    assert stack in LIVE_STACKS

    stack.kill_now()

    assert await stack.server.wait() == -signal.SIGKILL
    assert stack not in LIVE_STACKS


def test_every_problem_is_printed_and_kept_one_per_line_with_the_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    problems = [f"deal-CHAOS-{n:04d}: reached 'contract', expected ongoing" for n in range(120)]
    problems.append("deal-CHAOS-0001-3: refused: not open\nin stage 'contract_expired'")
    report = ChaosReport(clients=200, kills=5, problems=problems)

    print_report(report)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("PROBLEM: ")]
    assert len(printed) == 121  # all of them: no cap
    write_report(report, tmp_path)

    kept = (tmp_path / "problems.txt").read_text().splitlines()
    assert len(kept) == 121
    assert kept[:120] == problems[:120]
    assert kept[120] == "deal-CHAOS-0001-3: refused: not open\\nin stage 'contract_expired'"
    counts = json.loads((tmp_path / "report.json").read_text())
    assert counts["problems"] == 121 and counts["ok"] is False and counts["kills"] == 5


def test_a_clean_run_keeps_an_empty_problem_list(tmp_path: Path) -> None:
    write_report(ChaosReport(clients=8), tmp_path)
    assert (tmp_path / "problems.txt").read_text() == ""
    assert json.loads((tmp_path / "report.json").read_text())["ok"] is True


@workflow.defn(name="AlwaysFailingTask", sandboxed=False)
class AlwaysFailingTask:
    @workflow.run
    async def run(self) -> None:
        raise RuntimeError("a bug in workflow code")  # not a workflow failure: the task fails, again and again


async def test_a_lifecycle_whose_workflow_task_fails_is_named_with_its_cause_and_its_history_kept(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    client = dev_env.client
    task_queue = f"tq-{uuid.uuid4()}"
    workflow_id = f"failing-{uuid.uuid4()}"
    async with Worker(client, task_queue=task_queue, workflows=[AlwaysFailingTask]):
        await client.start_workflow(AlwaysFailingTask.run, id=workflow_id, task_queue=task_queue)
        found: list[str] = []

        async def named() -> bool:  # the server reports it after a retry, and visibility is eventually consistent
            found[:] = [line for line in await failing_tasks(client, tmp_path) if line.startswith(workflow_id)]
            return bool(found)

        await until(named, "the server to report the failing workflow task")

    saved = tmp_path / "histories" / f"{workflow_id}.json"
    assert str(saved) in found[0]
    history = WorkflowHistory.from_json(workflow_id, saved.read_text())
    assert any(e.HasField("workflow_task_failed_event_attributes") for e in history.events)
