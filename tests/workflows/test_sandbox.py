"""The worker's workflow sandbox (`workflows.sandbox`) still refuses what would break determinism, and runs only the
workflow modules afresh per instance."""

from __future__ import annotations

import sys
import uuid
from typing import Any

from temporalio.client import WorkflowHistory
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker, WorkflowInstance, WorkflowInstanceDetails
from temporalio.worker.workflow_sandbox._restrictions import RestrictedModule, _RestrictedProxy

import workflows.calls
from sopflow.codec import shared_pydantic_data_converter
from tests.workflows.record_histories import HISTORIES
from tests.workflows.sandbox_probe import SandboxProbe
from workflows.lifecycle import ClientLifecycle
from workflows.sandbox import RESTRICTIONS, WORKFLOW_RUNNER, LeanSandboxedWorkflowRunner, _AllModulesBut


async def test_workflow_code_cannot_read_the_clock_draw_random_numbers_or_open_files(ts_env: WorkflowEnvironment):
    task_queue = f"tq-{uuid.uuid4()}"
    async with Worker(ts_env.client, task_queue=task_queue, workflows=[SandboxProbe], workflow_runner=WORKFLOW_RUNNER):
        outcomes = await ts_env.client.execute_workflow(
            SandboxProbe.run, id=f"probe-{uuid.uuid4()}", task_queue=task_queue
        )
    assert outcomes == {
        "datetime.now()": "refused",
        "datetime.utcnow()": "refused",
        "time.time()": "refused",
        "random.random()": "refused",
        "random.randint()": "refused",
        "uuid.uuid4()": "refused",
        "open()": "refused",
        "workflow.now()": "allowed",
        "workflow.random()": "allowed",
        "workflow.uuid4()": "allowed",
    }


class _Capturing(LeanSandboxedWorkflowRunner):
    """The worker's runner, keeping the instances it makes."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        object.__setattr__(self, "made", [])

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        instance = super().create_instance(det)
        self.made.append(instance)  # type: ignore[attr-defined]
        return instance


async def test_a_lifecycle_instance_runs_the_workflow_modules_afresh_behind_restricted_globals():
    path = HISTORIES / "safe_balance_declined.run1.json"
    runner = _Capturing(restrictions=RESTRICTIONS)
    replayer = Replayer(
        workflows=[ClientLifecycle], data_converter=shared_pydantic_data_converter, workflow_runner=runner
    )
    await replayer.replay_workflow(WorkflowHistory.from_json("deal-1", path.read_text()), raise_on_replay_failure=True)
    instance = runner.made[-1]  # type: ignore[attr-defined]
    sandboxed = instance.globals_and_locals["__temporal_workflow_class"]
    # The workflow's classes are this instance's own, not the worker's: both modules ran afresh in the sandbox.
    assert sandboxed is not ClientLifecycle
    assert (
        sandboxed.__mro__[1].__name__ == "LifecycleCalls" and sandboxed.__mro__[1] is not workflows.calls.LifecycleCalls
    )
    # What the workflow code sees of `datetime` is the sandbox's restricted proxy (its `now()` is refused).
    assert isinstance(sandboxed.run.__globals__["datetime"], _RestrictedProxy)
    # Nothing else runs afresh per instance: every other module is the worker's own (or its restricted proxy).
    fresh = {
        name
        for name, module in instance.importer.new_modules.items()
        if sys.modules.get(name) is not module and not isinstance(module, RestrictedModule)
    }
    assert fresh == {"__main__", "workflows", "workflows.lifecycle", "workflows.calls"}


async def test_instances_share_the_workflow_modules_code_but_not_their_classes_or_globals():
    path = HISTORIES / "safe_balance_declined.run1.json"
    runner = _Capturing(restrictions=RESTRICTIONS)
    replayer = Replayer(
        workflows=[ClientLifecycle], data_converter=shared_pydantic_data_converter, workflow_runner=runner
    )
    await replayer.replay_workflow(WorkflowHistory.from_json("deal-1", path.read_text()), raise_on_replay_failure=True)
    first, second = (instance.globals_and_locals["__temporal_workflow_class"] for instance in runner.made[-2:])  # type: ignore[attr-defined]
    assert first is not second and first.run is not second.run
    assert first.run.__globals__ is not second.run.__globals__
    assert first.run.__code__ is second.run.__code__


def test_every_module_passes_through_but_the_workflow_packages_and_each_workflow_class_module():
    modules = _AllModulesBut({"workflows"})
    assert "sopflow.engine" in modules and "pydantic" in modules and "datetime" in modules
    assert "workflows" not in modules and "workflows.lifecycle" not in modules
    modules.sandbox_module("tests.workflows.sandbox_probe")
    # The probe's parents are left out too: the SDK checks them with `in` and would pass the probe through.
    assert not any(name in modules for name in ("tests", "tests.workflows", "tests.workflows.sandbox_probe"))
    assert "tests.conftest" in modules
    # A script's workflows: the SDK imports the script as `__temporal_main__` in the sandbox.
    modules.sandbox_module("__main__")
    assert "__temporal_main__" not in modules
    # The SDK's `with_passthrough_modules` (debug mode) keeps the rule.
    assert (modules | {"_pydevd_bundle"}) is modules
