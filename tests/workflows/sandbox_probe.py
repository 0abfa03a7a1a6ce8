"""A workflow that tries what workflow code must not do, for `test_sandbox.py`: its own module, so the worker's runner
sandboxes it as it sandboxes every workflow class's module (`workflows.sandbox`)."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from datetime import datetime

from temporalio import workflow
from temporalio.worker.workflow_sandbox import RestrictedWorkflowAccessError

ATTEMPTS: dict[str, Callable[[], object]] = {
    "datetime.now()": datetime.now,
    "datetime.utcnow()": datetime.utcnow,
    "time.time()": time.time,
    "random.random()": random.random,
    "random.randint()": lambda: random.randint(1, 6),
    "uuid.uuid4()": uuid.uuid4,
    "open()": lambda: open(__file__),  # noqa: SIM115  (refused before a file is opened)
    "workflow.now()": workflow.now,
    "workflow.random()": lambda: workflow.random().random(),
    "workflow.uuid4()": workflow.uuid4,
}


@workflow.defn
class SandboxProbe:
    @workflow.run
    async def run(self) -> dict[str, str]:
        """What happened to each attempt: `refused` by the sandbox or `allowed`."""
        outcomes = {}
        for what, attempt in ATTEMPTS.items():
            try:
                attempt()
            except RestrictedWorkflowAccessError:
                outcomes[what] = "refused"
            else:
                outcomes[what] = "allowed"
        return outcomes
