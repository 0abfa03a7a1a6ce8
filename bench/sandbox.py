"""The workflow sandbox's cost per new workflow instance: what a worker pays each time it picks up a client that is
not in its cache (a new deal, an evicted one, a replay).

A replay of a recorded history builds one new instance in a fresh sandbox and runs its activations, exactly what a
cold worker does. The same histories are replayed with each runner, interleaved so a change of load on the shared
machine hits them all alike:

- `default`: the SDK's default sandbox (what the worker used until issue 17);
- `all_passed`: the SDK's sandbox with every module passed through, the workflow modules too (the worker's runner
  from the first slice of issue 17 until the second: it let `datetime.now()` and `random` through from workflow code);
- `sdk_runner`: the SDK's own runner with the worker's restrictions (`workflows.sandbox.RESTRICTIONS`): the
  workflow modules run afresh per instance, every other module passed through;
- `sopflow`: the worker's runner (`workflows.sandbox.WORKFLOW_RUNNER`): the same restrictions, cheaper crossings into
  the sandbox, the workflow modules' code read once per process, each workflow definition validated once;
- `unsandboxed`: no sandbox at all, the floor (never used in production: it would lose the sandbox's checks).

A runner's sandbox cost is its time per replay minus the floor's: the new instance (the workflow modules run afresh)
plus, per activation and per payload, the crossings into the sandbox and the guards around the workflow code. A
`Replayer` also validates each definition per replay (the SDK builds a whole instance for it, a worker only once): the
SDK's runners pay two instances per replay, `sopflow` one.

Replays use the worker's data converter (one type adapter per type, as `tests/workflows/test_replay.py`). The
workflow modules are compiled to bytecode first, as the image does (`compileall` in the Dockerfile): without bytecode
(`PYTHONDONTWRITEBYTECODE=1` and no `compileall`), the SDK's runners would also compile their source for every new
instance; the worker's runner reads a module's code once per process either way.

    python -m bench.sandbox              # 30 replays per runner
    python -m bench.sandbox --replays 5  # a quick check
    python -m bench.sandbox --runners sopflow  # the worker's runner and the floor alone, as in a worker
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import time
from typing import Any

from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from bench.common import emit, exit_now, machine, percentile, table
from sopflow.codec import shared_pydantic_data_converter
from sopflow.config import PROJECT_ROOT
from workflows.lifecycle import ClientLifecycle
from workflows.sandbox import RESTRICTIONS, WORKFLOW_RUNNER

HISTORIES = ["safe_balance_declined.run1.json", "safe_balance_happy_path.run1.json"]
RUNNERS: dict[str, WorkflowRunner] = {
    "default": SandboxedWorkflowRunner(),
    "all_passed": SandboxedWorkflowRunner(restrictions=SandboxRestrictions.default.with_passthrough_all_modules()),
    "sdk_runner": SandboxedWorkflowRunner(restrictions=RESTRICTIONS),
    "sopflow": WORKFLOW_RUNNER,
    "unsandboxed": UnsandboxedWorkflowRunner(),
}
SANDBOXED = [name for name in RUNNERS if name != "unsandboxed"]


def _history(name: str) -> WorkflowHistory:
    path = PROJECT_ROOT / "tests" / "histories" / name
    return WorkflowHistory.from_json(f"deal-{path.stem}", path.read_text())


async def run(replays: int = 30, runners: list[str] | None = None) -> dict[str, Any]:
    """Replay each history `replays` times with each runner (all of `RUNNERS` unless named; the floor always)."""
    chosen = {name: RUNNERS[name] for name in RUNNERS if runners is None or name in runners or name == "unsandboxed"}
    sandboxed = [name for name in chosen if name != "unsandboxed"]
    compileall.compile_dir(PROJECT_ROOT / "workflows", quiet=1)
    histories = [_history(name) for name in HISTORIES]
    replayers = {
        name: Replayer(
            workflows=[ClientLifecycle], data_converter=shared_pydantic_data_converter, workflow_runner=runner
        )
        for name, runner in chosen.items()
    }
    for replayer in replayers.values():  # the first replay in a process imports the modules: paid once, not timed
        await replayer.replay_workflow(histories[0])
    # Wall time, and the process's CPU time (every thread, the SDK's core too): steadier on a busy shared machine.
    walls: dict[str, dict[str, list[float]]] = {h: {r: [] for r in chosen} for h in HISTORIES}
    cpus: dict[str, dict[str, list[float]]] = {h: {r: [] for r in chosen} for h in HISTORIES}
    for _ in range(replays):
        for name, history in zip(HISTORIES, histories, strict=True):
            for runner, replayer in replayers.items():
                began, began_cpu = time.perf_counter(), time.process_time()
                await replayer.replay_workflow(history)
                cpus[name][runner].append((time.process_time() - began_cpu) * 1000)
                walls[name][runner].append((time.perf_counter() - began) * 1000)
    result: dict[str, Any] = {
        "bench": "sandbox",
        "replays": replays,
        "events": {name: len(h.events) for name, h in zip(HISTORIES, histories, strict=True)},
    }
    for kind, samples in (("", walls), ("_cpu", cpus)):
        medians = {h: {r: percentile(v, 50) for r, v in by_runner.items()} for h, by_runner in samples.items()}
        result[f"median_replay{kind}_ms"] = {h: {r: round(v, 2) for r, v in m.items()} for h, m in medians.items()}
        result[f"sandbox_cost{kind}_ms"] = {
            h: {r: round(m[r] - m["unsandboxed"], 2) for r in sandboxed} for h, m in medians.items()
        }
    result["machine"] = machine("bench.sandbox")
    return result


def report(result: dict[str, Any]) -> str:
    """One row per runner; per history its median wall and CPU ms per replay and its sandbox cost in each (that
    minus the floor's)."""
    headers = ["runner"]
    for name, events in result["events"].items():
        headers += [f"{name.split('.')[0]} ({events} events): ms", "cost", "CPU ms", "CPU cost"]
    rows = []
    for runner in result["median_replay_ms"][HISTORIES[0]]:
        row: list[object] = [runner]
        for name in result["events"]:
            for kind in ("", "_cpu"):
                row += [
                    result[f"median_replay{kind}_ms"][name][runner],
                    result[f"sandbox_cost{kind}_ms"][name].get(runner, 0.0),
                ]
        rows.append(row)
    return table(
        f"Sandbox: median per replay of a recorded history ({result['replays']} each, interleaved)", headers, rows
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replays", type=int, default=30)
    parser.add_argument(
        "--runners", nargs="+", choices=SANDBOXED, help="only these (and the floor): a worker runs one runner alone"
    )
    args = parser.parse_args()
    result = asyncio.run(run(args.replays, args.runners))
    emit(report(result), result)
    exit_now()


if __name__ == "__main__":
    main()
