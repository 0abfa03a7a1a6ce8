"""Whatever validation accepts, the engine can live with for years: no request it let through, on any shipped playbook,
makes the engine raise anything but `Rejected` — when it is applied, or at any later tick, status or continue-as-new.

A lifecycle runs for years on the values it accepted once, so this is a property over whole lives: random requests of
every kind (near-valid values, edge values such as dates at the ends of the accepted range, junk), at random times,
with the timers fired in between, exactly as the workflow drives the engine.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sopflow.config import PROJECT_ROOT
from sopflow.engine import Engine
from sopflow.errors import Rejected
from sopflow.fields import shapes
from sopflow.models import (
    Advance,
    Close,
    CompleteTask,
    ExternalEvent,
    MigratePlaybook,
    SetFields,
    SubmitForm,
)
from sopflow.playbook import FieldSpec, Playbook
from sopflow.playbook_checks import load_playbook
from sopflow.samples import sample_values
from tests.sopflow.conftest import assert_readable_by_the_workflow

T0 = datetime(2026, 1, 5, 9, tzinfo=UTC)
PLAYBOOKS = {p.stem: load_playbook(p) for p in sorted((PROJECT_ROOT / "playbooks").glob("*.yaml"))}
LIVES = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Values at the edges of what validation accepts, and values just past them, per field type.
EDGES: dict[str, list[Any]] = {
    "date": ["1900-01-01", "2200-12-31", "0001-01-02", "9999-12-31", "2026-02-29", "2024-02-29"],
    "datetime": ["1900-01-01T00:00:00+14:00", "2200-12-31T23:59:59-12:00", "2026-03-08T02:30", "0001-01-01T00:00"],
    "number": [0, -1, 10**15, -(10**15), 10**16, 1e-300, "1e15"],
    "money": ["0", "-0.01", "999999999999999", "1e14", "1e15"],
    "text": ["", " ", "x" * 1000, "x" * 1001, "owner-1", "a\nb", "=?utf-8?b?ZQ==?=", "\u202e", "Ünïcødé 💥"],
    "email": ["a@b.co", "a>,<eve@evil.example", "x" * 250 + "@example.com"],
    "emails": [
        "a@b.co, c@d.co",
        ["a@b.co", "A@B.CO"],
        "a>,<eve@evil.example",
        ",".join(f"u{i}@example.com" for i in range(51)),
        [],
    ],
    "bool": ["yes", "no", "maybe"],
    "timezone": ["UTC", "Pacific/Kiritimati", "Etc/GMT+12", "America/NewYork", "../../etc/passwd", "x" * 300],
}
JUNK = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20), st.lists(st.integers()))


def field_value(spec: FieldSpec, data: st.DataObject) -> Any:
    options = [*(spec.options or []), "not an option"]
    if spec.type in ("choice", "multi_choice"):
        return data.draw(st.sampled_from(options) | st.lists(st.sampled_from(options), max_size=3) | JUNK)
    return data.draw(st.sampled_from(EDGES[spec.type]) if data.draw(st.integers(0, 3)) else JUNK)


def near_valid(playbook: Playbook, scope: str, specs: dict[str, FieldSpec], data: st.DataObject) -> dict[str, Any]:
    """Valid values, each replaced by an edge value or junk one time in three, sometimes one dropped or added."""
    fields = sample_values(specs, minimal=data.draw(st.booleans()), roles=shapes(playbook, scope))
    for name, spec in specs.items():
        choice = data.draw(st.integers(0, 5))
        if choice < 2:
            fields[name] = field_value(spec, data)
        elif choice == 2:
            fields.pop(name, None)
    if data.draw(st.integers(0, 9)) == 0:
        fields[data.draw(st.text(max_size=12))] = data.draw(JUNK)
    return fields


def some(names: list[str], data: st.DataObject) -> str:
    """Mostly a name the playbook knows, sometimes any text."""
    known: int = data.draw(st.integers(0, 5))
    if names and known:
        return data.draw(st.sampled_from(names))
    return data.draw(st.text(max_size=10))


def a_request(engine: Engine, data: st.DataObject) -> object:
    """One request of any kind, aimed mostly at what the current stage accepts, so lives go deep."""
    playbook, stage = engine.playbook, engine.stage
    kind = data.draw(st.sampled_from(["form", "form", "task", "task", "advance", "set", "event", "close", "migrate"]))
    if kind == "form":
        form = some(list(stage.forms) or list(playbook.forms), data)
        specs = playbook.forms[form].fields if form in playbook.forms else {}
        return SubmitForm(form=form, fields=near_valid(playbook, f"forms.{form}", specs, data), actor="fuzz")
    if kind == "task":
        return CompleteTask(task=some(list(engine.state.tasks), data), actor="fuzz")
    if kind == "advance":
        return Advance(to=some([t.to for t in stage.transitions] or [s.id for s in playbook.stages], data))
    if kind == "set":
        return SetFields(fields=near_valid(playbook, "deal", playbook.deal, data) or {"x": 1}, actor="fuzz")
    if kind == "event":
        name = some(list(playbook.events), data)
        return ExternalEvent(name=name, event_id=data.draw(st.none() | st.sampled_from(["e-1", "e-2"])))
    if kind == "close":
        outcome = data.draw(st.sampled_from(["lost", "cancelled"]))
        return Close(outcome=outcome, reason="fuzz", fields=near_valid(playbook, "deal", playbook.deal, data))  # type: ignore[arg-type]
    newer = playbook.model_copy(update={"version": playbook.version + 1})
    stage_map = {engine.state.stage: some([s.id for s in playbook.stages], data)} if data.draw(st.booleans()) else {}
    return MigratePlaybook(playbook=newer, stage_map=stage_map)


def validate(engine: Engine, request: object, now: datetime) -> None:
    """What the update validators run (raises Rejected); events are signals and are never refused."""
    match request:
        case SubmitForm():
            engine.check_submit(request, now)
        case CompleteTask():
            engine.check_task(request)
        case Advance():
            engine.check_advance(request)
        case SetFields():
            engine.check_set_fields(request)
        case Close():
            engine.check_close(request)
        case MigratePlaybook():
            engine.check_migrate(request)


def apply(engine: Engine, request: object, now: datetime) -> None:
    match request:
        case SubmitForm():
            engine.submit_form(request, now)
        case CompleteTask():
            engine.complete_task(request, now)
        case Advance():
            engine.advance(request, now)
        case SetFields():
            engine.set_fields(request, now)
        case Close():
            engine.close(request, now)
        case MigratePlaybook():
            engine.migrate(request, now)
        case ExternalEvent():
            engine.event(request, now)


@pytest.mark.parametrize("name", sorted(PLAYBOOKS))
@LIVES
@given(data=st.data())
def test_a_life_of_accepted_requests_and_timers_never_raises_anything_but_rejected(
    name: str, data: st.DataObject
) -> None:
    playbook: Playbook = PLAYBOOKS[name]
    deal = sample_values(playbook.deal, minimal=data.draw(st.booleans()), roles=shapes(playbook, "deal"))
    for field in data.draw(st.lists(st.sampled_from(sorted(playbook.deal)), max_size=2)):
        deal[field] = field_value(playbook.deal[field], data)
    now = T0
    try:
        engine = Engine.start(playbook, "D-1", deal, now, "deal-D-1")
    except Rejected:
        engine = Engine.start(
            playbook,
            "D-1",
            sample_values(playbook.deal, minimal=False, roles=shapes(playbook, "deal")),
            now,
            "deal-D-1",
        )
    assert_readable_by_the_workflow(engine, now)
    for _ in range(data.draw(st.integers(1, 12))):
        # Time passes (minutes to years) and every timer due meanwhile fires, as the workflow's wake-ups do.
        now += timedelta(minutes=data.draw(st.integers(0, 3 * 365 * 24 * 60)))
        engine.tick(now)
        assert_readable_by_the_workflow(engine, now)
        request = a_request(engine, data)
        try:
            validate(engine, request, now)
        except Rejected as exc:
            assert str(exc)
            continue
        try:
            apply(engine, request, now)
        except Rejected as exc:  # allowed: the handler re-checks; never anything else
            assert str(exc)
        assert_readable_by_the_workflow(engine, now)
    engine.tick(now + timedelta(days=data.draw(st.integers(0, 2000))))
    assert_readable_by_the_workflow(engine, now)
