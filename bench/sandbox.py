"""The workflow sandbox's cost per new workflow instance: what a worker pays each time it picks up a client that is
not in its cache (a new deal, an evicted one, a replay).

A replay of a recorded history builds one new instance in a fresh sandbox and runs its activations, exactly what a
cold worker does. The same histories are replayed with three runners, interleaved so a change of load on the shared
machine hits all three alike:

- `default`: the SDK's default sandbox (what the worker used until issue 17);
- `sopflow`: the worker's runner (`workflows.sandbox.WORKFLOW_RUNNER`): every module passed through, so a new
  instance runs only the workflow module's own code afresh;
- `unsandboxed`: no sandbox at all, the floor (never used in production: it would lose the sandbox's checks).

A runner's sandbox cost is its time per replay minus the floor's: the new instance (module set-up, mostly) plus a
little per activation (each runs inside the sandbox's import and builtins guards). On a short history it is nearly
all instantiation.

    python -m bench.sandbox              # 30 replays per runner
    python -m bench.sandbox --replays 5  # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from bench.common import emit, exit_now, machine, percentile, table
from sopflow.config import PROJECT_ROOT
from workflows.lifecycle import ClientLifecycle
from workflows.sandbox import WORKFLOW_RUNNER

HISTORIES = ["safe_balance_declined.run1.json", "safe_balance_happy_path.run1.json"]
RUNNERS: dict[str, WorkflowRunner] = {
    "default": SandboxedWorkflowRunner(),
    "sopflow": WORKFLOW_RUNNER,
    "unsandboxed": UnsandboxedWorkflowRunner(),
}


def _history(name: str) -> WorkflowHistory:
    path = PROJECT_ROOT / "tests" / "histories" / name
    return WorkflowHistory.from_json(f"deal-{path.stem}", path.read_text())


async def run(replays: int = 30) -> dict[str, Any]:
    histories = [_history(name) for name in HISTORIES]
    replayers = {
        name: Replayer(workflows=[ClientLifecycle], data_converter=pydantic_data_converter, workflow_runner=runner)
        for name, runner in RUNNERS.items()
    }
    for replayer in replayers.values():  # the first replay in a process imports the modules: paid once, not timed
        await replayer.replay_workflow(histories[0])
    times: dict[str, dict[str, list[float]]] = {h: {r: [] for r in RUNNERS} for h in HISTORIES}
    for _ in range(replays):
        for name, history in zip(HISTORIES, histories, strict=True):
            for runner, replayer in replayers.items():
                began = time.perf_counter()
                await replayer.replay_workflow(history)
                times[name][runner].append((time.perf_counter() - began) * 1000)
    medians = {h: {r: percentile(v, 50) for r, v in by_runner.items()} for h, by_runner in times.items()}
    return {
        "bench": "sandbox",
        "replays": replays,
        "events": {name: len(h.events) for name, h in zip(HISTORIES, histories, strict=True)},
        "median_replay_ms": {h: {r: round(v, 2) for r, v in m.items()} for h, m in medians.items()},
        "sandbox_cost_ms": {
            h: {r: round(m[r] - m["unsandboxed"], 2) for r in ("default", "sopflow")} for h, m in medians.items()
        },
        "machine": machine("bench.sandbox"),
    }


def report(result: dict[str, Any]) -> str:
    rows = []
    for name, medians in result["median_replay_ms"].items():
        cost = result["sandbox_cost_ms"][name]
        rows.append(
            [
                f"{name} ({result['events'][name]} events)",
                medians["default"],
                medians["sopflow"],
                medians["unsandboxed"],
                cost["default"],
                cost["sopflow"],
            ]
        )
    return table(
        f"Sandbox: median ms per replay of a recorded history ({result['replays']} each, interleaved)",
        ["history", "default", "sopflow", "unsandboxed", "sandbox cost default", "sandbox cost sopflow"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replays", type=int, default=30)
    args = parser.parse_args()
    result = asyncio.run(run(args.replays))
    emit(report(result), result)
    exit_now()


if __name__ == "__main__":
    main()
