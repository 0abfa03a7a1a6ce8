"""Where `sopflow forecast` starts each client from: the engine states the records store keeps (`lifecycle_states`).

A forecast of 10,000 clients cannot ask 10,000 workflows for their state (each query a round trip to the server and
a workflow task on a worker, an evicted lifecycle replayed first). Every local timeline record carries the engine's
state into the store instead (`JournalBatch.state`, no history cost), so one SQL read serves nearly every client.
A stored state can be behind: an update's record is a regular activity, which never carries the state, so until the
lifecycle's next local record the journal holds newer entries than the state; and a lifecycle that never recorded
locally (started before the local records, or running a run from before them) has none. Those come back as `stale`,
for the caller to ask the lifecycles themselves (`starter.forecast_source.refresh`, the `forecast_seed` query).

Pure SQL side, no Temporal. The states hold deal fields, contacts included: never log them.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from sopflow.db import Database, DealRow, JournalRow, LifecycleStateRow, PinnedPlaybook
from sopflow.models import ClientSeed, LifecycleState
from sopflow.playbook import Playbook, shared
from sopflow.reports import utc


@dataclass
class SeedSet:
    """The live clients a forecast starts: `seeds` from their stored states, and `stale`, the workflow ids whose
    stored state is missing or older than their journal (ask those lifecycles: `refresh`)."""

    seeds: list[ClientSeed] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)


def load_seeds(db: Database, playbook: str | None = None) -> SeedSet:
    """Every live deal (no outcome in its `deals` row) of `playbook` (every playbook when None), as a seed when its
    stored state is current, else as stale.

    Current means no journal entry is newer than the state (`journal.seq > lifecycle_states.seq`, one probe of the
    journal's (workflow_id, seq) key per deal), which is what an update's regular record leaves behind. That is
    stricter than the deal row's `last_seq`, which moves only with batches whose deal snapshot changed: completing
    one of four tasks changes the state but often not the snapshot. A state that says the client closed is left out,
    as its deal row soon will be.

    Each stored playbook is parsed once per content hash and shared (`sopflow.playbook.shared`): 10,000 clients of
    one version share one copy, as a worker's lifecycles do."""
    newer_entry = exists().where(JournalRow.workflow_id == DealRow.workflow_id, JournalRow.seq > LifecycleStateRow.seq)
    query = (
        select(
            DealRow.workflow_id,
            DealRow.deal_id,
            LifecycleStateRow.playbook_hash,
            LifecycleStateRow.as_of,
            LifecycleStateRow.state,
            newer_entry.label("behind"),
        )
        .outerjoin(LifecycleStateRow, LifecycleStateRow.workflow_id == DealRow.workflow_id)
        .where(DealRow.outcome.is_(None))
        .order_by(DealRow.workflow_id)
    )
    if playbook is not None:
        query = query.where(DealRow.playbook == playbook)
    seeds = SeedSet()
    with _collector_paused(), db.session() as session:
        rows = session.execute(query).all()
        current = [row for row in rows if row.state is not None and not row.behind]
        playbooks = _playbooks(session, {row.playbook_hash for row in current})
        for row in rows:
            pinned = playbooks.get(row.playbook_hash) if row.state is not None and not row.behind else None
            if pinned is None:
                seeds.stale.append(row.workflow_id)
                continue
            state = LifecycleState.model_validate_json(row.state)
            if state.outcome is not None:
                continue
            # Built from models just validated: validating them again would cost a fifth of the load.
            seed = ClientSeed.model_construct(
                workflow_id=row.workflow_id, deal_id=row.deal_id, playbook=pinned, state=state, as_of=utc(row.as_of)
            )
            seeds.seeds.append(seed)
    return seeds


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while the rows are read and the states decoded, back as it was after.

    Every row and decoded state (a few dozen containers each) stays alive, so each of the collector's passes walks
    a larger heap than the last: on 10,000 clients they took well over half the load (1.2-1.4 s instead of about
    0.5 s on SQLite, `bench.forecast_source`). Reading and decoding make next to no reference cycles; what little
    there is waits for the collector's next pass."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _playbooks(session: Session, hashes: set[str]) -> dict[str, Playbook]:
    """The stored playbooks of `hashes`, each parsed once (a large one takes milliseconds to validate). A hash the
    store lacks is missing from the answer, and its clients are asked instead."""
    if not hashes:
        return {}
    stored = session.execute(
        select(PinnedPlaybook.content_hash, PinnedPlaybook.content).where(PinnedPlaybook.content_hash.in_(hashes))
    ).all()
    return {content_hash: shared(Playbook.model_validate_json(content)) for content_hash, content in stored}
