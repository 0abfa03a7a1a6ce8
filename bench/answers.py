"""What the updates' answers cost: bytes written into history and payload conversion, before and after issue 17's
small answers.

Temporal writes every update's answer into the lifecycle's history, and the worker encodes it and the client decodes
it. Until issue 17 the answer was the whole `LifecycleStatus`; now it is an `UpdateResult`. Both are measured in one
run: the Safe Balance happy path is rehearsed on the time-skipping server with this code (small answers) and compared
with the history of the same scenario recorded before the change (`tests/histories/`, full answers). Bytes are exact
(the same requests on the same scenario); the conversion time is each recorded answer decoded into its model and
encoded again with the worker's converter, both kinds interleaved, so a change of load hits them alike.

    python -m bench.answers                 # 2,000 conversion rounds
    python -m bench.answers --rounds 200
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHistory

from bench.common import count_histories, emit, exit_now, machine, table
from sopflow.codec import shared_pydantic_data_converter
from sopflow.config import PROJECT_ROOT
from sopflow.constants import WORKFLOW_ID_PREFIX
from sopflow.engine import check_deal_fields
from sopflow.models import LifecycleInput, LifecycleStatus, UpdateResult
from sopflow.playbook_checks import load_playbook
from starter.rehearse import load_scenario, rehearse, start_test_env

SCENARIO = PROJECT_ROOT / "playbooks" / "scenarios" / "safe_balance_happy_path.yaml"
# The same scenario's first run, recorded before issue 17 by a worker answering with the whole status.
BEFORE = PROJECT_ROOT / "tests" / "histories" / "safe_balance_happy_path@live-timers.run1.json"


def answers(events: list[HistoryEvent]) -> list[Payload]:
    return [
        payload
        for e in events
        if e.HasField("workflow_execution_update_completed_event_attributes")
        for payload in e.workflow_execution_update_completed_event_attributes.outcome.success.payloads
    ]


async def rehearsed_first_run() -> WorkflowHistory:
    """The scenario's first run, rehearsed now (the run that holds the sales and launch phases' updates)."""
    playbook = load_playbook(PROJECT_ROOT / "playbooks" / "safe_balance.yaml")
    scenario = load_scenario(SCENARIO)
    env = await start_test_env()
    try:
        inp = LifecycleInput(
            deal_id=scenario.deal.id, playbook=playbook, fields=check_deal_fields(playbook, scenario.deal.fields)
        )
        await rehearse(inp, scenario, PROJECT_ROOT / "templates", env)
        handle = env.client.get_workflow_handle(f"{WORKFLOW_ID_PREFIX}{scenario.deal.id}")
        run_id: str | None = None
        while True:  # back to the first run through continue-as-new links
            history = await env.client.get_workflow_handle(handle.id, run_id=run_id).fetch_history()
            started = history.events[0].workflow_execution_started_event_attributes
            run_id = started.continued_execution_run_id or None
            if run_id is None:
                return history
    finally:
        await env.shutdown()


def conversion_us(kinds: dict[str, tuple[list[Payload], type[Any]]], rounds: int) -> dict[str, float]:
    """Microseconds per answer to decode it into its model and encode it again, the kinds interleaved."""
    converter = shared_pydantic_data_converter.payload_converter
    spent = dict.fromkeys(kinds, 0.0)
    for _ in range(rounds):
        for name, (payloads, model) in kinds.items():
            began = time.perf_counter()
            for payload in payloads:
                converter.to_payloads([converter.from_payload(payload, model)])
            spent[name] += time.perf_counter() - began
    return {name: spent[name] / (rounds * len(kinds[name][0])) * 1e6 for name in kinds}


async def run(rounds: int = 2000) -> dict[str, Any]:
    before = WorkflowHistory.from_json("before", BEFORE.read_text())
    after = await rehearsed_first_run()
    histories = {"before (full status)": before, "after (UpdateResult)": after}
    payloads = {name: answers(list(h.events)) for name, h in histories.items()}
    models: dict[str, type[Any]] = {"before (full status)": LifecycleStatus, "after (UpdateResult)": UpdateResult}
    micros = conversion_us({name: (payloads[name], models[name]) for name in histories}, rounds)
    figures = {}
    for name, history in histories.items():
        counts = count_histories([history])
        sizes = [p.ByteSize() for p in payloads[name]]
        figures[name] = {
            "updates": len(sizes),
            "answer_bytes_mean": round(sum(sizes) / len(sizes)),
            "answer_bytes_max": max(sizes),
            "answers_kb": round(sum(sizes) / 1024, 1),
            "history_kb": round(counts.bytes / 1024, 1),
            "conversion_us": round(micros[name], 1),
        }
    return {"bench": "answers", "rounds": rounds, "figures": figures, "machine": machine("bench.answers")}


def render(result: dict[str, Any]) -> str:
    headers = ["run 1 of the happy path", "updates", "bytes/answer", "max", "answers KB", "history KB", "µs/answer"]
    rows = [
        [
            name,
            f["updates"],
            f["answer_bytes_mean"],
            f["answer_bytes_max"],
            f["answers_kb"],
            f["history_kb"],
            f["conversion_us"],
        ]
        for name, f in result["figures"].items()
    ]
    return table(
        f"Update answers: bytes into history and decode+encode per answer ({result['rounds']} rounds, interleaved)",
        headers,
        rows,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.rounds))
    emit(render(result), result)
    exit_now(0)


if __name__ == "__main__":
    main()
