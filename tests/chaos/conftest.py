"""Whatever happens to a chaos run, its dev server and workers do not outlive its test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.chaos.harness import LIVE_STACKS


@pytest.fixture(autouse=True)
def no_stack_left_running() -> Iterator[None]:
    """A run cut by pytest's timeout never reaches `Stack.stop` (the timeout interrupts the event loop, not the
    coroutine): kill what it started, or its server and workers would keep running after the session."""
    yield
    for stack in list(LIVE_STACKS):
        stack.kill_now()
