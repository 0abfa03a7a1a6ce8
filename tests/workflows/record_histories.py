"""Record the workflow histories that `test_replay.py` replays:
`python -m tests.workflows.record_histories [SCENARIO[@LABEL] ...]` (all of `SCENARIOS` by default).

`SCENARIO@LABEL` records a scenario again under a new name (`<scenario>@<label>.runN.json`) without touching the
history recorded before: that is how a change behind `workflow.patched` gets a history of its new path while the old
history keeps guarding the old one (e.g. `safe_balance_happy_path@email-apart`).

Record a new scenario when a change adds behaviour worth guarding. Re-record an existing one only for a deliberate,
compatible change of recorded behaviour; a history recorded by an older version that stops replaying means running
clients would break (guard the change with `workflow.patched`).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from temporalio.client import WorkflowHistory

from sopflow.config import PROJECT_ROOT
from sopflow.constants import WORKFLOW_ID_PREFIX
from sopflow.engine import check_deal_fields
from sopflow.models import LifecycleInput
from sopflow.playbook_checks import load_playbook
from starter.rehearse import load_scenario, rehearse, start_test_env
from tests.conftest import playbook_of

HISTORIES = PROJECT_ROOT / "tests" / "histories"
SCENARIO_DIR = PROJECT_ROOT / "playbooks" / "scenarios"
# Every Safe Balance path, plus the hand-off (a child lifecycle) and the booked-meeting timeline of seed 004.
SCENARIOS = [
    *sorted(SCENARIO_DIR.glob("safe_balance_*.yaml")),
    SCENARIO_DIR / "health_prime_sales_won.yaml",
    SCENARIO_DIR / "financial_servicing_a_client.yaml",
]


async def record(scenario_path: Path, label: str | None = None) -> list[Path]:
    playbook = load_playbook(playbook_of(scenario_path))
    scenario = load_scenario(scenario_path)
    env = await start_test_env()
    try:
        inp = LifecycleInput(
            deal_id=scenario.deal.id, playbook=playbook, fields=check_deal_fields(playbook, scenario.deal.fields)
        )
        await rehearse(inp, scenario, PROJECT_ROOT / "templates", env)
        workflow_id = f"{WORKFLOW_ID_PREFIX}{scenario.deal.id}"
        runs: list[WorkflowHistory] = []
        run_id: str | None = None
        while True:  # walk back from the latest run through continue-as-new links
            history = await env.client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
            runs.insert(0, history)
            started = history.events[0].workflow_execution_started_event_attributes
            run_id = started.continued_execution_run_id or None
            if run_id is None:
                break
    finally:
        await env.shutdown()
    written = []
    for number, history in enumerate(runs, start=1):
        name = f"{scenario_path.stem}@{label}" if label else scenario_path.stem
        path = HISTORIES / f"{name}.run{number}.json"
        path.write_text(history.to_json())
        written.append(path)
    return written


async def record_migration() -> Path:
    """A client moved to a newer playbook version mid-stage (`test_migration.migrate_a_prelaunch_client`)."""
    import tempfile

    from sopflow.db import Database
    from sopflow.mailsink import MailSink
    from tests.conftest import make_worker
    from tests.workflows.test_migration import migrate_a_prelaunch_client

    playbook = load_playbook(PROJECT_ROOT / "playbooks" / "safe_balance.yaml")
    env = await start_test_env()
    try:
        with tempfile.TemporaryDirectory() as tmp, MailSink() as sink:
            db = Database(f"sqlite:///{tmp}/records.db")
            db.create_schema()
            async with make_worker(env.client, db, sink) as worker:
                handle = await migrate_a_prelaunch_client(env, worker, playbook)
                history = await handle.fetch_history()
            db.dispose()
    finally:
        await env.shutdown()
    path = HISTORIES / f"{MIGRATION}.run1.json"
    path.write_text(history.to_json())
    return path


MIGRATION = "safe_balance_migrated"


async def main() -> None:
    HISTORIES.mkdir(parents=True, exist_ok=True)
    names = sys.argv[1:] or [p.stem for p in SCENARIOS] + [MIGRATION]
    for name in names:
        scenario, _, label = name.partition("@")
        if name == MIGRATION:
            paths = [await record_migration()]
        else:
            paths = await record(SCENARIO_DIR / f"{scenario}.yaml", label or None)
        for path in paths:
            print(f"recorded {path.relative_to(PROJECT_ROOT)}")


if __name__ == "__main__":
    asyncio.run(main())
    sys.stdout.flush()
    os._exit(0)  # sdk-python #300: avoid a crash at interpreter exit after a test server and worker ran
