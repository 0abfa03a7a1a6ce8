"""What the workflow modules install in the worker once: imported passed through, so it runs on the host, never per
workflow instance.

`workflows.lifecycle` used to set `business_calendar.holiday_guard` at module level. Now that the sandbox runs that
module afresh for every instance (`workflows.sandbox`), the assignment would rebind a module shared by the whole
worker to a function of the latest instance's module, keeping that instance's module alive and writing across
instances: here it happens once, when the worker imports the workflows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from temporalio import workflow

from sopflow import business_calendar


@contextmanager
def holiday_data() -> Iterator[None]:
    """The `holidays` package imports a country's module the first time it is asked for it, and reads its (pinned)
    translation files: both belong outside the sandbox (one copy per worker, not one per workflow run; `open()` is
    refused inside it). The data is pinned with the code, so this stays deterministic."""
    with workflow.unsafe.sandbox_unrestricted(), workflow.unsafe.imports_passed_through():
        yield


business_calendar.holiday_guard = holiday_data
