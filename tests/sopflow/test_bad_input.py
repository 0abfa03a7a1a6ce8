"""Bad input at scale: whatever a person, a webhook or a script sends, the engine answers with `Rejected` (a clear
message) or applies it, and the state it keeps always serialises, so no workflow task can ever fail on input."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sopflow.config import PROJECT_ROOT
from sopflow.engine import Engine
from sopflow.errors import Rejected
from sopflow.models import Advance, Close, CompleteTask, ExternalEvent, SetFields, SubmitForm
from sopflow.playbook import FieldSpec, Playbook, PlaybookError
from sopflow.playbook_checks import load_playbook, parse_playbook
from sopflow.samples import sample_values
from tests.conftest import CONTRACT_REQUEST, DEAL, TARGETING
from tests.sopflow.conftest import assert_readable_by_the_workflow

T0 = datetime(2026, 1, 5, 9, tzinfo=UTC)
PLAYBOOKS = {p.stem: load_playbook(p) for p in sorted((PROJECT_ROOT / "playbooks").glob("*.yaml"))}
SAFE_BALANCE = PLAYBOOKS["safe_balance"]
HOSTILE_TEXT = ["", " ", "\x00", "💥", "a" * 5000, "1e309", "NaN", "-inf", "2026-02-30", "2026-01-05T25:00", "0x10"]

# Anything JSON (and the payload converter) can carry, plus the values that break naive code.
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(HOSTILE_TEXT),
)
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def names(playbook: Playbook) -> st.SearchStrategy[str]:
    """Names that exist somewhere in the playbook (so validation goes deep), mixed with names that do not."""
    known = set(playbook.forms) | set(playbook.deal) | {s.id for s in playbook.stages} | set(playbook.events)
    for form in playbook.forms.values():
        known |= set(form.fields)
    for stage in playbook.stages:
        known |= {t.id for t in stage.tasks}
    return st.sampled_from(sorted(known)) | st.text(max_size=12)


def field_dicts(playbook: Playbook) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(names(playbook), values, max_size=6)


def engine_at(stage: str) -> Engine:
    """A Safe Balance client in a given stage, reached by valid requests."""
    engine = Engine.start(SAFE_BALANCE, "D-1", dict(DEAL), T0, "deal-D-1")
    if stage != "targeting":
        engine.submit_form(SubmitForm(form="targeting", fields=TARGETING), T0)
        engine.submit_form(SubmitForm(form="contract_request", fields=CONTRACT_REQUEST), T0)
    if stage == "prelaunch":
        engine.event(ExternalEvent(name="contract_signed", event_id="e-1"), T0)
    engine.take_steps()
    return engine


def still_sound(engine: Engine) -> None:
    assert_readable_by_the_workflow(engine, T0 + timedelta(hours=1))


def no_float_trouble(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(no_float_trouble(v) for v in value.values())
    if isinstance(value, list):
        return all(no_float_trouble(v) for v in value)
    return True


STAGES = st.sampled_from(["targeting", "contract", "prelaunch"])
FORM_STAGES = st.sampled_from(["targeting", "contract"])
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def near_valid(specs: dict[str, FieldSpec], data: st.DataObject) -> dict[str, Any]:
    """Valid values with a few replaced, added or dropped: the input that gets past shallow checks."""
    fields = sample_values(specs, minimal=data.draw(st.booleans()))
    for name in data.draw(st.lists(st.sampled_from(sorted(specs)) | st.text(max_size=8), max_size=2)):
        if data.draw(st.booleans()):
            fields[name] = data.draw(values)
        else:
            fields.pop(name, None)
    return fields


@FUZZ
@given(stage=STAGES, form=names(SAFE_BALANCE), fields=field_dicts(SAFE_BALANCE))
def test_any_form_submission_is_applied_or_rejected_with_a_reason(stage: str, form: str, fields: dict) -> None:
    submit_or_reject(engine_at(stage), SubmitForm(form=form, fields=fields, actor="fuzz"))


@FUZZ
@given(stage=STAGES, data=st.data())
def test_a_nearly_valid_form_of_the_stage_is_applied_or_rejected_with_a_reason(stage: str, data: st.DataObject) -> None:
    if stage == "prelaunch":
        stage = "contract"  # prelaunch opens no form
    engine = engine_at(stage)
    form = data.draw(st.sampled_from(engine.stage.forms))
    fields = near_valid(SAFE_BALANCE.forms[form].fields, data)
    submit_or_reject(engine, SubmitForm(form=form, fields=fields, actor="fuzz"))


def submit_or_reject(engine: Engine, request: SubmitForm) -> bool:
    try:
        engine.check_submit(request, T0)
    except Rejected as exc:
        assert str(exc)
        return False
    engine.submit_form(request, T0)
    still_sound(engine)
    return True


@FUZZ
@given(stage=STAGES, data=st.data())
def test_any_field_change_is_applied_or_rejected_with_a_reason(stage: str, data: st.DataObject) -> None:
    engine = engine_at(stage)
    fields = near_valid(SAFE_BALANCE.deal, data) if data.draw(st.booleans()) else data.draw(field_dicts(SAFE_BALANCE))
    request = SetFields(fields=fields or {"x": 1}, actor="fuzz")
    try:
        engine.check_set_fields(request)
    except Rejected as exc:
        assert str(exc)
        return
    engine.set_fields(request, T0)
    still_sound(engine)


@FUZZ
@given(stage=STAGES, target=names(SAFE_BALANCE), task=names(SAFE_BALANCE), note=st.text(max_size=30))
def test_any_advance_or_task_is_applied_or_rejected_with_a_reason(
    stage: str, target: str, task: str, note: str
) -> None:
    engine = engine_at(stage)
    for check, apply in (
        (lambda: engine.check_advance(Advance(to=target, note=note)), lambda: engine.advance(Advance(to=target), T0)),
        (lambda: engine.check_task(CompleteTask(task=task)), lambda: engine.complete_task(CompleteTask(task=task), T0)),
    ):
        try:
            check()
        except Rejected as exc:
            assert str(exc)
            continue
        apply()
    still_sound(engine)


@FUZZ
@given(
    stage=STAGES,
    outcome=st.sampled_from(["lost", "cancelled"]),
    target=st.none() | names(SAFE_BALANCE),
    fields=field_dicts(SAFE_BALANCE),
)
def test_any_close_is_applied_or_rejected_with_a_reason(
    stage: str, outcome: str, target: str | None, fields: dict
) -> None:
    engine = engine_at(stage)
    request = Close(outcome=outcome, reason="fuzz", stage=target, fields=fields)  # type: ignore[arg-type]
    try:
        engine.check_close(request)
    except Rejected as exc:
        assert str(exc)
        return
    engine.close(request, T0)
    still_sound(engine)


@FUZZ
@given(
    stage=STAGES, name=names(SAFE_BALANCE), event_id=st.none() | st.text(max_size=20), data=field_dicts(SAFE_BALANCE)
)
def test_a_signal_can_never_fail_whatever_it_carries(stage: str, name: str, event_id: str | None, data: dict) -> None:
    engine = engine_at(stage)
    for _ in range(2):  # a redelivery too
        engine.event(ExternalEvent(name=name, event_id=event_id, source="fuzz", data=data), T0)
    still_sound(engine)


def test_accepted_values_never_carry_nan_or_infinity_into_the_state() -> None:
    specs = SAFE_BALANCE.forms["contract_request"].fields
    numeric = [name for name, spec in specs.items() if spec.type in ("number", "money")]
    assert numeric
    for bad in (math.nan, math.inf, -math.inf, "NaN", "inf", "1e309", 10**400):
        engine = engine_at("targeting")
        engine.submit_form(SubmitForm(form="targeting", fields=TARGETING), T0)
        fields: dict[str, Any] = {**CONTRACT_REQUEST, **dict.fromkeys(numeric, bad)}
        try:
            engine.submit_form(SubmitForm(form="contract_request", fields=fields), T0)
        except Rejected as exc:
            assert any(name in str(exc) for name in numeric)
            continue
        assert no_float_trouble(engine.state.model_dump(mode="json"))


# --- playbooks ---------------------------------------------------------------------------------------------------

playbook_shapes = st.recursive(
    leaves | st.sampled_from(["stages", "id", "to", "advance", "forms", "fields", "gate", "14d", "deal.x"]),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(
        st.sampled_from(["id", "version", "stages", "forms", "deal", "roles", "transitions", "to", "gate", "tasks",
                         "fields", "type", "when", "field", "equals", "deadline", "within", "cadence", "classify",
                         "appointments", "start_lifecycle", "copy", "skip_gate", "due_at", "of", "before"])
        | st.text(max_size=6),
        inner,
        max_size=5,
    ),
    max_leaves=25,
)  # fmt: skip


@FUZZ
@given(data=playbook_shapes)
def test_a_malformed_playbook_is_a_playbook_error_never_a_crash(data: Any) -> None:
    try:
        parse_playbook(data)
    except PlaybookError as exc:
        assert exc.errors and all(isinstance(e, str) and e for e in exc.errors)


@FUZZ
@given(text=st.text(max_size=200))
def test_any_yaml_text_loads_or_is_a_playbook_error(tmp_path_factory, text: str) -> None:
    path = tmp_path_factory.mktemp("pb") / "fuzz.yaml"
    path.write_text(text)
    try:
        load_playbook(path)
    except PlaybookError as exc:
        assert exc.errors


@FUZZ
@given(playbook=st.sampled_from(sorted(PLAYBOOKS)), data=st.data())
def test_shipped_playbooks_with_one_part_broken_still_fail_cleanly(playbook: str, data: st.DataObject) -> None:
    """Real playbooks, one random key replaced by junk: the shape errors a real author makes."""
    raw = yaml.safe_load((PROJECT_ROOT / "playbooks" / f"{playbook}.yaml").read_text())
    node: Any = raw
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        if isinstance(node, dict) and node:
            key = data.draw(st.sampled_from(sorted(node, key=str)))
            if not isinstance(node[key], dict | list) or data.draw(st.booleans()):
                node[key] = data.draw(values)
                break
            node = node[key]
        elif isinstance(node, list) and node:
            index = data.draw(st.integers(min_value=0, max_value=len(node) - 1))
            if not isinstance(node[index], dict | list):
                node[index] = data.draw(values)
                break
            node = node[index]
    try:
        parse_playbook(raw)
    except PlaybookError as exc:
        assert exc.errors
