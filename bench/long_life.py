"""Long life: a Safe Balance client rehearsed over five years on the time-skipping server (`starter.rehearse`, the
same path as `sopflow rehearse`), then its histories read back run by run.

The client is launched in its first week and then has every site visit on its due date for five years (fortnightly,
monthly, then every two months), each reporting needs (an email to corporate), so every visit reminder, visit and
email of five years is in the histories. Reported: history events per run and per client-year, the number of runs
(continue-as-new), the time to replay the largest run with `temporalio.worker.Replayer` (what a worker pays to pick
the client up cold), and the rehearsal's wall time.

    python -m bench.long_life              # 5 years
    python -m bench.long_life --years 1    # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from bench.common import BenchError, count_histories, emit, exit_now, machine, table
from bench.safe_balance import DEAL, PRELAUNCH_TASKS, playbook
from sopflow.cadence import schedule
from sopflow.config import PROJECT_ROOT
from sopflow.models import LifecycleInput, workflow_id
from starter.rehearse import Scenario, rehearse, start_test_env
from workflows.lifecycle import ClientLifecycle
from workflows.sandbox import WORKFLOW_RUNNER

DEAL_ID = "LONG-1"
EVENT_LIMIT = 10_240  # Temporal's history event limit warns here (and fails at 51,200)
TARGET_EVENTS_PER_YEAR = 1000
TARGET_WALL_SECONDS = 1.0
LAUNCHED_ON_DAY = 6


def scenario(start: datetime, years: int) -> Scenario:
    """Launched on day 6, then every site visit on its due date until the horizon, each one reporting needs."""
    book = playbook()
    cadence = book.stage("ongoing").cadence
    assert cadence is not None
    horizon = years * 365 + years // 4
    anchor = start + timedelta(days=LAUNCHED_ON_DAY)
    visits = [int((due - start) / timedelta(days=1)) for due in schedule(cadence, anchor, start + timedelta(horizon))]
    targeting = {
        "company": "Long Life Care",
        "signer_name": "Client Signer",
        "signer_email": "signer@example.com",
        "service_tier": "Standard",
    }
    steps: list[dict[str, Any]] = [
        {"at": "0d", "form": "targeting", "fields": targeting},
        {
            "at": "1d",
            "form": "contract_request",
            "fields": {"agreement": "Safe Balance", "term_months": 60, "client_agreed_on": "$today"},
        },
        {"at": "3d", "event": "contract_signed", "event_id": "envelope-long/completed"},
        *({"at": "4d", "task": task} for task in PRELAUNCH_TASKS),
        {"at": "4d", "set": {"launch_date": "$today+2d"}},
        {"at": "5d", "advance": "launch"},
        {"at": f"{LAUNCHED_ON_DAY}d", "task": "launch_checklist"},
        {
            "at": f"{LAUNCHED_ON_DAY}d",
            "form": "closeout",
            "fields": {"launched_on": "$today", "staff_trained": "yes", "all_running": "yes"},
        },
        *(
            {
                "at": f"{day}d",
                "form": "site_visit",
                "fields": {"visited_on": "$today", "steps_cleared": "yes", "needs": f"Visit {n} needs"},
            }
            for n, day in enumerate(visits, start=1)
        ),
    ]
    return Scenario.model_validate({"deal": {"id": DEAL_ID, "fields": DEAL}, "steps": steps, "until": f"{horizon}d"})


async def runs_of(env: WorkflowEnvironment, wf_id: str) -> list[WorkflowHistory]:
    """Every run's history, oldest first, walking back through the continue-as-new links."""
    runs: list[WorkflowHistory] = []
    run_id: str | None = None
    while True:
        history = await env.client.get_workflow_handle(wf_id, run_id=run_id).fetch_history()
        runs.insert(0, history)
        run_id = history.events[0].workflow_execution_started_event_attributes.continued_execution_run_id or None
        if run_id is None:
            return runs


async def run(years: int = 5) -> dict[str, Any]:
    book = playbook()
    with tempfile.TemporaryDirectory(prefix="sopflow-bench-long-") as tmp:
        began = time.perf_counter()
        env = await start_test_env(server_log=Path(tmp) / "test-server.log")
        env_seconds = time.perf_counter() - began
        try:
            start = await env.get_current_time()
            start = start if start.tzinfo else start.replace(tzinfo=UTC)
            plan = scenario(start, years)
            inp = LifecycleInput(deal_id=DEAL_ID, playbook=book, fields=DEAL)
            began = time.perf_counter()
            result = await rehearse(inp, plan, PROJECT_ROOT / "templates", env)
            rehearsal_seconds = time.perf_counter() - began
            histories = await runs_of(env, workflow_id(DEAL_ID))
        finally:
            await env.shutdown()
    if result.status.stage != "ongoing" or result.status.outcome is not None:
        raise BenchError(f"the client ended in {result.status.stage} ({result.status.outcome}), not ongoing")
    visits = len([s for s in plan.steps if s.form == "site_visit"])
    logged = [e for e in result.of_kind("form") if e.get("form") == "site_visit"]
    if len(logged) != visits:
        raise BenchError(f"{len(logged)} of {visits} site visits were logged")

    replayer = Replayer(
        workflows=[ClientLifecycle], data_converter=pydantic_data_converter, workflow_runner=WORKFLOW_RUNNER
    )
    # The first replay in a process also imports the workflow's modules into the sandbox: a worker that picks a
    # client up cold has done that long before, so it is paid here, on the smallest run, and reported apart.
    began = time.perf_counter()
    await replayer.replay_workflow(min(histories, key=lambda h: len(h.events)))
    first_replay_seconds = time.perf_counter() - began
    counts = count_histories(histories).summary()
    per_run = []
    for number, history in enumerate(histories, start=1):
        began = time.perf_counter()
        replayed = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        seconds = time.perf_counter() - began
        if replayed.replay_failure is not None:
            raise BenchError(f"run {number} does not replay: {replayed.replay_failure}")
        first, last = history.events[0].event_time.ToDatetime(), history.events[-1].event_time.ToDatetime()
        per_run.append(
            {
                "run": number,
                "events": len(history.events),
                "days": round((last - first).total_seconds() / 86400, 1),
                "replay_ms": round(seconds * 1000, 1),
            }
        )
    events = sum(r["events"] for r in per_run)
    largest = max(per_run, key=lambda r: r["events"])
    per_year = events / years
    return {
        "bench": "long_life",
        "years": years,
        "site_visits": visits,
        "emails": len(result.emails),
        "timeline_entries": len(result.timeline),
        "runs": len(per_run),
        "per_run": per_run,
        "events": events,
        "events_per_client_year": round(per_year, 1),
        "largest_run_events": largest["events"],
        "largest_run_replay_ms": largest["replay_ms"],
        "first_replay_in_process_ms": round(first_replay_seconds * 1000, 1),
        "activities": round(counts["activities"] * len(histories)),
        "local_activities": round(counts["local_activities"] * len(histories)),
        "workflow_tasks": round(counts["workflow_tasks"] * len(histories)),
        "updates": round(counts["updates"] * len(histories)),
        "timers": round(counts["timers"] * len(histories)),
        "rehearsal_seconds": round(rehearsal_seconds, 3),
        "test_server_start_seconds": round(env_seconds, 3),
        "targets": {
            "events_per_client_year_max": TARGET_EVENTS_PER_YEAR,
            "events_per_run_far_below": EVENT_LIMIT,
            "rehearsal_seconds_max": TARGET_WALL_SECONDS,
        },
        "targets_met": {
            "events_per_client_year": per_year <= TARGET_EVENTS_PER_YEAR,
            "every_run_far_below_limit": largest["events"] <= EVENT_LIMIT // 4,
            "rehearsal_wall": rehearsal_seconds < TARGET_WALL_SECONDS,
        },
        "machine": machine("bench.long_life"),
    }


def render(result: dict[str, Any]) -> str:
    met = result["targets_met"]

    def mark(ok: bool) -> str:
        return "met" if ok else "MISSED"

    rows: list[list[object]] = [[f"run {r['run']}", r["events"], r["days"], r["replay_ms"]] for r in result["per_run"]]
    rows.append(["all runs", result["events"], "", ""])
    title = (
        f"Long life: {result['years']} rehearsed years ({result['site_visits']} site visits, {result['emails']} "
        f"emails), {result['runs']} runs"
    )
    summary = [
        f"history events per client-year: {result['events_per_client_year']} "
        f"(target <= {TARGET_EVENTS_PER_YEAR}: {mark(met['events_per_client_year'])})",
        f"largest run: {result['largest_run_events']} events (limit {EVENT_LIMIT:,}; target far below, "
        f"<= a quarter: {mark(met['every_run_far_below_limit'])}), replayed in {result['largest_run_replay_ms']} ms",
        f"rehearsal wall time: {result['rehearsal_seconds']} s (target < {TARGET_WALL_SECONDS} s: "
        f"{mark(met['rehearsal_wall'])}), plus {result['test_server_start_seconds']} s to start the test server; "
        f"it ran {result['updates']} updates, {result['activities']} activities (server round trips), "
        f"{result['local_activities']} local activities, {result['timers']} timers and "
        f"{result['workflow_tasks']} workflow tasks",
        f"first replay in a fresh process (sandbox imports, smallest run): {result['first_replay_in_process_ms']} ms",
    ]
    return table(title, ["", "events", "days", "replay ms"], rows) + "\n" + "\n".join(summary)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--years", type=int, default=5)
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.years))
    emit(render(result), result)
    exit_now(0)


if __name__ == "__main__":
    main()
