"""The workflow sandbox the worker runs lifecycles in: every module passed through.

The SDK's default sandbox re-imports, for each new workflow instance, every module the workflow imports that is not
passed through; a worker pays that each time it picks up a client outside its cache (a new deal, an evicted one, a
replay), `bench/sandbox.py` measures it. Passing every module through leaves only the workflow module's own code to
run afresh per instance, and keeps one copy of each module per worker instead of one per sandbox.

What it costs: a module imported by a workflow is shared by all workflows of the worker, so none may keep mutable
module state that a workflow changes. Our workflow code imports only deterministic modules (the pure engine and its
models, whose caches hold pure functions' results); the sandbox still refuses non-deterministic calls made from the
workflow module itself (`datetime.now()`, `random`, I/O), and the replay of every recorded history in
`tests/histories/` (`tests/workflows/test_replay.py`) catches what it would not.
"""

from __future__ import annotations

from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

WORKFLOW_RUNNER = SandboxedWorkflowRunner(restrictions=SandboxRestrictions.default.with_passthrough_all_modules())
