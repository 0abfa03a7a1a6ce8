"""Helpers shared by the engine's property tests."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sopflow.engine import Engine
from sopflow.models import LifecycleState


def assert_readable_by_the_workflow(engine: Engine, now: datetime) -> None:
    """What the workflow reads after every request and tick (status, records snapshot, UI details, email context,
    timers, the queued journal) works, and the state survives continue-as-new: it serialises to strict JSON (no NaN)
    and loads back unchanged."""
    engine.status(now)
    engine.snapshot()
    engine.details_markdown(now)
    engine.template_context({})
    engine.owner()
    engine.next_wakeup()
    for step in engine.take_steps():
        json.dumps(step.entry.model_dump(mode="json"), allow_nan=False)
        if step.email is not None:
            json.dumps(step.email.model_dump(mode="json"), allow_nan=False)
    dumped = engine.state.model_dump(mode="json")
    json.dumps(dumped, allow_nan=False)
    assert LifecycleState.model_validate(dumped) == engine.state


# One engine-level sample deal, shared by the engine and timeline specs.
T0 = datetime(2025, 1, 31, 9, tzinfo=UTC)
DEAL = {
    "rep_email": "rep@example.com",
    "rep_name": "Field Rep",
    "rep_id": "hs-17",
    "account_manager_email": "am@example.com",
    "account_manager_name": "Account Manager",
}
TARGETING = {
    "company": "Acme Clinic",
    "signer_name": "Client Signer",
    "signer_email": "signer@example.com",
    "service_tier": "basic",
    "services": "Balance assessment, therapy program",
}
