"""The workflow sandbox the worker runs lifecycles in: the workflow code sandboxed, every other module passed through,
and the SDK's crossings into the sandbox made cheaper.

What a new workflow instance cost in the SDK's sandbox (issue 17, `bench/sandbox.py`): with the SDK's default, the
workflow modules and whatever they import outside `imports_passed_through()` are imported afresh; then, per
activation and per payload, a crossing into the sandbox: the SDK compiles a small source string and applies its
import and builtins guards (swapping `sys.modules`, `__import__` and five builtins) every time, also to ask the
instance for the serialization context of each payload it encodes or decodes: 118 crossings for the 78 events of a
declined deal, most of the cost on a short history. Inside, `isinstance` and `issubclass` are wrapped (they unwrap the
sandbox's proxies), thousands of calls per instance.

What this configuration keeps, and why each change is safe:

- Which modules run afresh: the `workflows` package and the module of every workflow class the runner instantiates
  (`_AllModulesBut`, as the SDK's default reloads a workflow's own module). So `workflows.lifecycle`,
  `workflows.calls` and `workflows.digest` run in each instance's sandbox and their module globals are the sandbox's
  restricted proxies: `datetime.now()`, `datetime.utcnow()`, `time.time()`, `random`, `uuid4()`, `os`, sockets and
  every other member of the SDK's `invalid_module_members_default` are refused when workflow code calls them, and
  `open`, `input` and `breakpoint` are refused everywhere inside the sandbox (the builtins guard).
  `tests/workflows/test_sandbox.py` proves it. Until issue 17's second slice this module passed *every* module
  through (`with_passthrough_all_modules()`), the workflow modules too, which let `datetime.now()` and `random` through
  from workflow code unnoticed: only the builtins guard was left.
- Every other module (the standard library, the SDK, pydantic, holidays, our pure engine `sopflow.*`,
  `workflows.options`, `workflows.guards`) is one shared copy per worker, never re-imported, also when passed-through
  code imports lazily while a workflow runs. Those modules must keep no mutable state that a workflow changes (the
  engine's caches hold pure functions' results; `workflows.guards` installs the holiday guard once, on the host), and
  the engine gets its time from the workflow (`workflow.now()`), never the clock: the replay of every recorded history
  in `tests/histories/` (`tests/workflows/test_replay.py`) catches a non-determinism they would bring.
- `LeanSandboxedWorkflowRunner` changes no check, only the crossings: its snippets are compiled once per process
  instead of at every crossing; the serialization and external-store contexts (SDK code reading its own table of
  pending commands: no workflow code, no import, only host classes) are read from the instance directly instead of
  through the guards; `isinstance` and `issubclass` unwrap proxies in one function instead of three; and a workflow
  definition is validated once per runner instead of each time a worker is made (a `Replayer` makes one per replay).
  Activations, where all workflow code runs, run inside every guard.
- The workflow modules' code objects are read once per process and shared by every sandbox (`_SharedCodeLoader`):
  a code object is immutable; each sandbox still runs it into a module of its own, so globals, classes and functions
  stay per instance. Without it every cached workflow kept ~80 KB of code objects of its own.

It reaches into the SDK's private `_Instance`, `Importer.current_importer()` and `Importer.restricted_builtins`
(temporalio is pinned, 1.35.0); the replay tests and `tests/workflows/test_sandbox.py` fail if a new SDK changes what
it relies on.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec, PathFinder, SourceFileLoader
from types import CodeType, ModuleType
from typing import Any, ClassVar, cast

import temporalio.workflow
from temporalio.converter import SerializationContext
from temporalio.converter._extstore import StorageDriverStoreContext
from temporalio.worker import WorkflowInstance, WorkflowInstanceDetails
from temporalio.worker._command_aware_visitor import CommandInfo
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions
from temporalio.worker.workflow_sandbox._importer import Importer
from temporalio.worker.workflow_sandbox._in_sandbox import InSandbox
from temporalio.worker.workflow_sandbox._restrictions import _RestrictedProxy
from temporalio.worker.workflow_sandbox._runner import _Instance

# Packages whose modules hold workflow code: each instance runs them afresh, behind the sandbox's restrictions.
WORKFLOW_PACKAGES = frozenset({"workflows"})


class _AllModulesBut(set[str]):
    """A `passthrough_modules` that holds every module name but those of the workflow packages and the module of
    each workflow class the runner instantiates (`sandbox_module`), as the SDK's default reloads a workflow's module.

    The SDK checks a module's name, then each of its parent packages', with `in`; a workflow module's parents are left
    out too, or the check of a parent would pass the module through. A name outside is passed through, so a module
    that passed-through code imports lazily while a workflow runs (pydantic's, holidays' country modules) is never
    re-imported into a sandbox. The set's own items are the SDK's default passthrough modules, so a plain `set` made
    from it stays a working configuration.
    """

    def __init__(self, packages: Iterable[str]) -> None:
        super().__init__(SandboxRestrictions.passthrough_modules_default)
        self.packages = frozenset(packages)
        self.modules: frozenset[str] = frozenset()  # workflow classes' modules and their parent packages

    def sandbox_module(self, name: str) -> None:
        """Run this module (a workflow class's own) afresh in each sandbox too."""
        if name == "__main__":  # the SDK imports a script's workflows under this name, never `__main__` itself
            name = "__temporal_main__"
        if name not in self.modules:
            parts = name.split(".")
            self.modules = self.modules | {".".join(parts[:end]) for end in range(1, len(parts) + 1)}

    def __contains__(self, name: object) -> bool:
        # `type() is`, not `isinstance`: in the sandbox `isinstance` is the guard's, slower; this runs per import.
        return type(name) is str and name not in self.modules and name.partition(".")[0] not in self.packages

    def __or__(self, other: AbstractSet[Any]) -> set[Any]:
        """It already holds every other name: the SDK's `with_passthrough_modules` (debug mode) keeps this rule."""
        return self

    __ror__ = __or__


@lru_cache(maxsize=64)
def _compiled(source: str) -> CodeType:
    """The SDK's few crossing snippets (one per kind, plus one per workflow class to import), compiled once."""
    return compile(source, "<string>", "exec")


def _unwrapping(check: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    """`isinstance` or `issubclass` as the sandbox's guard gives them to workflow code: restricted proxies unwrapped
    first (a proxied class is not a class to `isinstance`). The SDK's guard does the same through a partial and two
    function calls per check; the thousands of checks of a new instance (class creation, the SDK's inspection of the
    workflow class, pydantic) make that a measurable part of its cost."""
    proxy_type = _RestrictedProxy
    get_state = object.__getattribute__

    def unwrapped(obj: Any, cls: Any) -> bool:
        if type(obj) is proxy_type:
            obj = get_state(obj, "__temporal_state").obj
        if type(cls) is proxy_type:
            cls = get_state(cls, "__temporal_state").obj
        return check(obj, cls)

    return unwrapped


_UNWRAPPING = {"isinstance": _unwrapping(isinstance), "issubclass": _unwrapping(issubclass)}


class _SharedCodeLoader(SourceFileLoader):
    """Loads a module's code object once per process (per version of its file) for every sandbox that imports it.

    Each sandbox runs a workflow module afresh, into a module of its own; the SDK's import reads (or, without
    bytecode, compiles) the file again each time, so every cached workflow kept its own copy of the module's code
    objects, ~80 KB for `workflows.lifecycle` and `workflows.calls`. A code object is immutable and holds no state:
    what each sandbox must own, the module's globals (its restricted proxies) and the functions and classes made from
    the code, is still made afresh by running it in the new module."""

    _codes: ClassVar[dict[tuple[str, float, int], CodeType]] = {}

    def get_code(self, fullname: str) -> CodeType | None:
        stats = self.path_stats(self.path)
        key = (self.path, stats["mtime"], stats.get("size", -1))
        code = self._codes.get(key)
        if code is None:
            code = super().get_code(fullname)
            if code is not None:
                self._codes[key] = code
        return code


class _SharedCodeFinder(MetaPathFinder):
    """Gives the modules a sandbox imports afresh (only the workflow modules: every other is passed through) the
    `_SharedCodeLoader`; outside a sandbox it finds nothing, and Python's own finders go on as before."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if Importer.current_importer() is None:
            return None
        spec = PathFinder.find_spec(fullname, path)
        if spec is None or type(spec.loader) is not SourceFileLoader or spec.origin is None:
            return None
        spec.loader = _SharedCodeLoader(fullname, spec.origin)
        return spec


_SHARED_CODE_FINDER = _SharedCodeFinder()


def _share_code() -> None:
    """Put `_SharedCodeFinder` first on `sys.meta_path`, once (when the runner makes its first instance)."""
    if _SHARED_CODE_FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _SHARED_CODE_FINDER)


class _LeanInstance(_Instance):
    """The SDK's sandboxed instance with cheaper crossings; the same guards around all workflow code."""

    def _create_instance(self) -> None:
        # The importer exists (made by the SDK's `__init__`), the workflow module is not imported yet: swap in the
        # leaner `isinstance` and `issubclass` guards, the same checks.
        self.importer.restricted_builtins = [
            (name, thread_local, _UNWRAPPING.get(name, guard))
            for name, thread_local, guard in self.importer.restricted_builtins
        ]
        super()._create_instance()

    def _run_code(self, code: str, **extra_globals: Any) -> None:
        # As the SDK's own (temporalio 1.35.0), with the snippet compiled once instead of at every crossing.
        for k, v in extra_globals.items():
            self.globals_and_locals[k] = v
        try:
            temporalio.workflow.unsafe._set_in_sandbox(True)
            self._current_thread_id = threading.get_ident()
            exec(_compiled(code), self.globals_and_locals, self.globals_and_locals)
        finally:
            temporalio.workflow.unsafe._set_in_sandbox(False)
            self._current_thread_id = None
            for k in extra_globals:
                self.globals_and_locals.pop(k, None)

    def _in_sandbox(self) -> InSandbox:
        """The SDK's object inside the sandbox, which holds the workflow instance (set by `_create_instance`)."""
        return cast(InSandbox, self.globals_and_locals["__temporal_in_sandbox"])

    def get_serialization_context(self, command_info: CommandInfo | None) -> SerializationContext | None:
        # Asked before each payload is encoded or decoded; the SDK answers from its pending-command table (no
        # workflow code runs), so no guard is needed, and every class involved is the host's own (passed through).
        return self._in_sandbox().get_serialization_context(command_info)

    def get_external_store_context(self, command_info: CommandInfo | None) -> StorageDriverStoreContext:
        # As `get_serialization_context`: SDK bookkeeping only.
        return self._in_sandbox().get_external_store_context(command_info)


@dataclass(frozen=True)
class LeanSandboxedWorkflowRunner(SandboxedWorkflowRunner):
    """`SandboxedWorkflowRunner` whose instances cross into the sandbox cheaply (`_LeanInstance`), and which validates
    a workflow definition once: the SDK builds a whole sandboxed instance to validate it each time a worker is made,
    which a `Replayer` does for every history it replays."""

    _validated: list[temporalio.workflow._Definition] = field(
        default_factory=list, init=False, repr=False, compare=False
    )

    def prepare_workflow(self, defn: temporalio.workflow._Definition) -> None:
        # The code of a process does not change: a definition that loaded in this runner's sandbox once loads again.
        if any(done is defn for done in self._validated):
            return
        super().prepare_workflow(defn)
        self._validated.append(defn)

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        _share_code()
        if isinstance(self.restrictions.passthrough_modules, _AllModulesBut):
            self.restrictions.passthrough_modules.sandbox_module(det.defn.cls.__module__)
        return _LeanInstance(det, self.runner_class, self.restrictions)


# The SDK's default restrictions, with every module but the workflow packages passed through.
RESTRICTIONS = dataclasses.replace(SandboxRestrictions.default, passthrough_modules=_AllModulesBut(WORKFLOW_PACKAGES))
WORKFLOW_RUNNER = LeanSandboxedWorkflowRunner(restrictions=RESTRICTIONS)
