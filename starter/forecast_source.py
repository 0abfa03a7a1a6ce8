"""The Temporal side of the forecast's source: ask the lifecycles whose stored state is behind for their seed.

`sopflow.forecast_source.load_seeds` reads nearly every client from the records store; the few it lists as stale
(an update recorded since their last local record, or no state stored yet) are asked here through the
`forecast_seed` query, a few at a time so that a forecast never floods the workers with queries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import timedelta

from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.service import RPCError

from sopflow.models import ClientSeed
from workflows.lifecycle import ClientLifecycle

# How long one lifecycle may take to answer: a worker that is down or saturated fails its clients, not the forecast.
QUERY_TIMEOUT = timedelta(seconds=10)


async def refresh(
    client: Client, workflow_ids: Iterable[str], concurrency: int = 8, timeout: timedelta = QUERY_TIMEOUT
) -> tuple[list[ClientSeed], list[str]]:
    """The seeds of `workflow_ids`, asked of each lifecycle (at most `concurrency` queries at once), and the ids
    whose query failed: no worker answered within `timeout` (none running, or all busy), the workflow is gone, or it
    runs on a worker from before the query existed. The caller says how many in one line and forecasts without them;
    the order of the seeds follows `workflow_ids`.

    A query adds nothing to the lifecycle's history, but it is a workflow task on a worker (replaying the whole
    history of a lifecycle the worker evicted), which is why `load_seeds` asks only for the stale ones."""
    ids = list(workflow_ids)
    gate = asyncio.Semaphore(max(1, concurrency))

    async def ask(workflow_id: str) -> ClientSeed | None:
        async with gate:
            try:
                seed: ClientSeed = await client.get_workflow_handle(workflow_id).query(
                    ClientLifecycle.forecast_seed, rpc_timeout=timeout
                )
            except (RPCError, WorkflowQueryFailedError):
                return None
            return seed

    answers = await asyncio.gather(*(ask(workflow_id) for workflow_id in ids))
    seeds = [seed for seed in answers if seed is not None]
    failed = [workflow_id for workflow_id, seed in zip(ids, answers, strict=True) if seed is None]
    return seeds, failed
