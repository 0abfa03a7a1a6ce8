"""The timeline's typed details: each kind's model describes exactly the dict history holds, so recorded histories
and records stores read the same before and after, and a reader never crashes on what a newer version wrote."""

from __future__ import annotations

import base64
import json
from collections import Counter
from typing import Any, get_args

import pytest
from pydantic import ValidationError

from sopflow.config import PROJECT_ROOT
from sopflow.engine import Engine
from sopflow.models import EmailResult, JournalEntry, JournalKind, SubmitForm
from sopflow.playbook_checks import load_playbook
from sopflow.timeline import (
    DETAILS,
    EmailDetail,
    EscalationDetail,
    FormDetail,
    StageDetail,
    TaskDetail,
    UnknownDetail,
    detail_as,
    detail_of,
    parse_detail,
)
from tests.sopflow.conftest import DEAL, T0, TARGETING

HISTORIES = PROJECT_ROOT / "tests" / "histories"

# Each kind's detail as the engine stores it today, every shape it takes (keys in the order they are written).
STORED: list[tuple[JournalKind, dict[str, Any]]] = [
    ("stage", {"to": "targeting", "trigger": "start"}),
    ("stage", {"to": "targeting", "trigger": "start", "by": "cli"}),
    ("stage", {"from": "targeting", "to": "contract_request", "trigger": "form:targeting"}),
    ("stage", {"from": "contract", "to": "contract_expired", "trigger": "deadline", "reason": "not signed"}),
    ("stage", {"from": "prelaunch", "to": "launch", "trigger": "advance", "reason": "cleared", "by": "alex"}),
    ("form", {"form": "targeting", "count": 1, "by": "riley", "values": {"company": "Acme", "services": ["a", "b"]}}),
    ("form", {"form": "meeting_log", "count": 2, "values": {"met_on": "2026-03-12", "note": None}}),
    (
        "form",
        {
            "form": "site_visit",
            "count": 1,
            "by": "riley",
            "values": {"visited_on": "2025-02-12", "steps_cleared": True},
            "next_due": "2025-02-26T09:00:00+00:00",
            "logged_at": "2025-02-12T09:00:00+00:00",
            "touchpoint": "site visit",
        },
    ),
    # Written before form values were journaled: recorded histories hold these.
    ("form", {"form": "site_visit", "count": 4, "by": "rehearsal", "next_due": "2027-04-02T17:22:43.185000+00:00"}),
    ("task", {"task": "cleared_for_launch", "title": "Clear the client", "status": "opened", "owner": "am"}),
    (
        "task",
        {
            "task": "prepare",
            "title": "Prepare the meeting",
            "status": "opened",
            "owner": "owner",
            "due_at": "2026-04-09T09:00:00+00:00",
            "occurrence": 2,
        },
    ),
    ("task", {"task": "onsite_appointment", "status": "done", "by": "alex"}),
    ("task", {"task": "prepare", "status": "rescheduled", "owner": "owner", "due_at": "2026-03-20T09:00:00+00:00"}),
    ("email", {"template": "account_claimed", "to": ["rep"], "cc": ["account_manager"]}),
    ("email", {"template": "prep", "to": ["csm"], "cc": [], "missing_roles": ["rsm"]}),
    (
        "email",
        {"template": "t", "to": [], "cc": [], "missing_roles": ["csm"], "status": "skipped", "reason": "no address"},
    ),
    ("email", {"template": "t", "to": ["rep"], "cc": [], "status": "sent", "subject": "S", "message_id": "<m>"}),
    (
        "email",
        {
            "template": "t",
            "to": ["rep"],
            "cc": ["am"],
            "status": "partial",
            "subject": "S",
            "message_id": "<m>",
            "refused": 1,
        },
    ),
    ("email", {"template": "t", "to": ["rep"], "cc": [], "status": "failed", "error": "SMTP 550"}),
    ("event", {"event": "contract_signed", "source": "docusign", "status": "accepted"}),
    ("event", {"event": "envelope_opened", "status": "ignored", "reason": "unknown event"}),
    ("fields", {"changed": ["launch_date"]}),
    ("fields", {"changed": ["launch_date"], "by": "alex"}),
    ("fields", {"changed": ["tier", "tier_basis"], "by": "playbook", "values": {"tier": "A", "tier_basis": None}}),
    ("reminder", {"task": "onsite_appointment", "owner": "rep", "reason": "task overdue"}),
    ("reminder", {"deadline": "contract expires", "due_at": "2025-02-14T09:00:00+00:00"}),
    ("reminder", {"cadence": "site visit", "due_at": "2025-02-14T09:00:00+00:00"}),
    ("reminder", {"appointment": "Client meeting", "due_at": "2026-04-01T14:00:00+00:00"}),
    ("escalation", {"task": "onsite_appointment", "owner": "rep", "reason": "task overdue"}),
    ("escalation", {"cadence": "site visit", "due_at": "2025-02-14T09:00:00+00:00", "reason": "missed"}),
    ("escalation", {"template": "t", "roles": ["rep"], "owner": "rep", "task": "fix_email_t", "reason": "bounced"}),
    ("visit_due", {"cadence": "site visit", "due_at": "2025-02-14T09:00:00+00:00"}),
    ("linked", {"playbook": "onboarding", "deal_id": "M-1.onboarding", "status": "requested"}),
    ("linked", {"playbook": "onboarding", "deal_id": "M-1.onboarding", "status": "started", "workflow_id": "deal-M"}),
    ("linked", {"playbook": "other", "deal_id": "D-0.other", "status": "failed", "error": "no such playbook"}),
    ("notified", {"event": "deal_lost", "status": "requested", "workflow_id": "deal-L-1"}),
    ("notified", {"event": "deal_won", "status": "failed", "workflow_id": "deal-L-1", "error": "workflow not found"}),
    ("migrated", {"from_version": 1, "to_version": 2}),
    ("migrated", {"from_version": 1, "to_version": 2, "by": "ops"}),
    ("continued_as_new", {"run": 2}),
    ("error", {"during": "complete_task", "error": "KeyError"}),
    ("error", {"during": "complete_task", "error": "ZeroDivisionError", "message": "division by zero"}),
    ("rejected", {"reason": "more than 20 chained transitions: check the playbook's 'when' transitions for a loop"}),
    ("appointment", {"label": "Client meeting", "starts_at": "2026-04-01T14:00:00+00:00"}),
    ("appointment", {"label": "Client meeting", "starts_at": "2026-03-03T21:00:00+00:00", "skipped_reminders": [0]}),
]


def same_stored(detail: dict[str, Any], expected: dict[str, Any]) -> bool:
    """Equal as history holds it: same keys in the same order, same values of the same types."""
    return repr(detail) == repr(expected)


def recorded_entries() -> list[dict[str, Any]]:
    """Every timeline entry the recorded histories hold, in the records batches the workflow scheduled."""
    entries = []
    for path in sorted(HISTORIES.rglob("*.json")):
        for event in json.loads(path.read_text())["events"]:
            scheduled = event.get("activityTaskScheduledEventAttributes")
            if scheduled is None or scheduled["activityType"]["name"] != "record_journal":
                continue
            for payload in scheduled["input"]["payloads"]:
                entries += json.loads(base64.b64decode(payload["data"]))["entries"]
    return entries


def test_every_kind_of_entry_has_a_detail_model() -> None:
    assert set(DETAILS) == set(get_args(JournalKind))
    assert all(model.kind == kind for kind, model in DETAILS.items())


@pytest.mark.parametrize(("kind", "stored"), STORED, ids=[f"{kind}-{i}" for i, (kind, _) in enumerate(STORED)])
def test_each_kind_reads_and_writes_back_the_detail_stored_today_unchanged(
    kind: JournalKind, stored: dict[str, Any]
) -> None:
    detail = parse_detail(kind, stored)
    assert isinstance(detail, DETAILS[kind])
    assert same_stored(detail.stored(), stored)
    assert not detail.model_extra


def test_every_kind_is_among_the_examples() -> None:
    assert {kind for kind, _ in STORED} == set(get_args(JournalKind))


def test_every_entry_in_the_recorded_histories_reads_and_writes_back_unchanged() -> None:
    entries = recorded_entries()
    for entry in entries:
        detail = parse_detail(entry["kind"], entry["detail"])
        assert json.dumps(detail.stored()) == json.dumps(entry["detail"]), entry  # key order included
    kinds = Counter(entry["kind"] for entry in entries)
    assert len(entries) > 700 and len(kinds) >= 12, kinds


def test_detail_of_gives_the_entrys_kind_model_with_typed_fields() -> None:
    entry = JournalEntry(seq=1, at=T0, kind="stage", stage="b", detail={"from": "a", "to": "b", "trigger": "start"})
    detail = detail_of(entry)
    assert isinstance(detail, StageDetail)
    assert (detail.from_, detail.to, detail.trigger, detail.by) == ("a", "b", "start", None)


def test_an_unknown_kind_from_a_newer_version_reads_as_unknown_detail_with_every_key() -> None:
    detail = parse_detail("call_logged", {"who": "rep", "minutes": 12})
    assert isinstance(detail, UnknownDetail)
    assert detail.model_extra == {"who": "rep", "minutes": 12}
    assert detail.stored() == {"who": "rep", "minutes": 12}


def test_a_key_a_newer_version_added_to_a_known_kind_does_not_stop_a_reader() -> None:
    detail = parse_detail("task", {"task": "t", "status": "done", "by": "alex", "channel": "mobile"})
    assert isinstance(detail, TaskDetail) and detail.by == "alex"
    assert detail.model_extra == {"channel": "mobile"}


def test_a_known_kind_whose_detail_does_not_fit_its_model_is_an_error_not_a_silent_skip() -> None:
    with pytest.raises(ValidationError):
        parse_detail("stage", {"to": "targeting"})  # every stage entry ever written names its trigger
    with pytest.raises(ValidationError):
        parse_detail("form", {"form": "f", "count": "many"})


def test_a_misspelt_field_is_refused_when_writing() -> None:
    with pytest.raises(ValidationError):
        TaskDetail(task="t", status="done", done_by="alex")  # type: ignore[call-arg]


def test_detail_as_refuses_an_entry_of_another_kind() -> None:
    entry = JournalEntry(seq=3, at=T0, kind="task", stage="s", detail={"task": "t", "status": "done"})
    assert detail_as(entry, TaskDetail).task == "t"
    with pytest.raises(TypeError, match="entry 3 is a 'task' entry"):
        detail_as(entry, EmailDetail)


def test_unset_fields_are_left_out_but_none_inside_form_values_is_kept() -> None:
    detail = FormDetail(form="f", count=1, by=None, values={"note": None, "when": "2025-01-01"})
    assert same_stored(detail.stored(), {"form": "f", "count": 1, "values": {"note": None, "when": "2025-01-01"}})


def test_an_undeliverable_email_escalation_keeps_the_key_order_it_was_always_written_in() -> None:
    bounced = EscalationDetail(template="t", roles=["rep"], owner="rep", task="fix_email_t", reason="bounced")
    overdue = EscalationDetail(task="t", owner="rep", reason="task overdue")
    assert list(bounced.stored()) == ["template", "roles", "owner", "task", "reason"]
    assert list(overdue.stored()) == ["task", "owner", "reason"]


def test_an_email_outcome_is_written_into_its_entry_with_the_keys_in_their_usual_order() -> None:
    playbook = load_playbook(PROJECT_ROOT / "playbooks" / "safe_balance.yaml")
    engine = Engine.start(playbook, "D-1", dict(DEAL), T0, "deal-D-1")
    engine.submit_form(SubmitForm(form="targeting", fields=TARGETING, actor="riley"), T0)
    step = next(step for step in engine.take_steps() if step.email is not None)
    refused = [step.email.to[0].email] if step.email is not None else []
    engine.email_sent(step, EmailResult(status="partial", subject="S", message_id="<m>", refused=refused), True)

    assert list(step.entry.detail) == ["template", "to", "cc", "status", "subject", "message_id", "refused"]
    assert (step.entry.detail["status"], step.entry.detail["refused"]) == ("partial", 1)
    escalation = next(s.entry for s in engine.take_steps() if s.entry.kind == "escalation")
    assert list(escalation.detail) == ["template", "roles", "owner", "task", "reason"]
