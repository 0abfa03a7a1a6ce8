"""Engine features driven by data rather than stage entry: moments held in fields (appointments, tasks due before
a meeting), copied values, gate-skipping transitions, hand-offs to linked lifecycles and classified fields."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sopflow.engine import Engine
from sopflow.errors import Rejected
from sopflow.models import Advance, CompleteTask, SetFields, SubmitForm
from sopflow.playbook import Playbook
from sopflow.playbook_checks import parse_playbook

T0 = datetime(2026, 3, 2, 9, tzinfo=UTC)
EMAIL = {"template": "note", "to": ["owner"]}
PLAYBOOK: dict[str, Any] = {
    "id": "moments",
    "version": 1,
    "roles": {"owner": {"email": "deal.owner_email"}},
    "deal": {
        "owner_email": {"type": "email", "required": True},
        "meeting_at": {"type": "datetime"},
        "lost_reason": {"type": "text"},
        "checklist_done": {"type": "bool"},
        "company": {"type": "text"},
        "assets": {"type": "money"},
        "income": {"type": "money"},
        "tier": {"type": "choice", "options": ["A", "B", "C"]},
        "tier_basis": {"type": "text"},
    },
    "classify": {
        "tier": {
            "explain": "tier_basis",
            "min_known": 2,
            "criteria": {
                "assets": {"A": {"field": "deal.assets", "gte": 1000}, "B": {"field": "deal.assets", "gte": 500}},
                "income": {"A": {"field": "deal.income", "gte": 400}, "B": {"field": "deal.income", "gte": 250}},
            },
        }
    },
    "forms": {
        "meeting_log": {
            "repeatable": True,
            "fields": {"met_on": {"type": "date", "required": True}, "next_at": {"type": "datetime"}},
            "on_submit": [{"copy": {"meeting_at": "forms.meeting_log.next_at"}}],
        }
    },
    "stages": [
        {
            "id": "servicing",
            "forms": ["meeting_log"],
            "tasks": [
                {
                    "id": "prepare",
                    "title": "Prepare the meeting",
                    "owner": "owner",
                    "due_at": {"of": "deal.meeting_at", "before": "2d"},
                    "remind": EMAIL,
                },
                {
                    "id": "follow_up",
                    "title": "Send the follow-up",
                    "owner": "owner",
                    "due_at": {"of": "forms.meeting_log.met_on", "after": "2d"},
                },
            ],
            "appointments": [
                {
                    "label": "Client meeting",
                    "at": "deal.meeting_at",
                    "remind": [
                        {"before": "7d", "email": EMAIL},
                        {"before": "1d", "email": EMAIL},
                        {"before": "1h", "email": EMAIL},
                    ],
                }
            ],
            "gate": {"fields": ["deal.checklist_done"]},
            "transitions": [
                {"to": "lost", "skip_gate": True, "when": {"field": "deal.lost_reason", "is_set": True}},
                {"to": "done", "advance": True},
                {"to": "handed_off", "advance": True, "skip_gate": True},
            ],
        },
        {"id": "done", "terminal": "won"},
        {
            "id": "handed_off",
            "terminal": "won",
            "on_enter": [
                {
                    "start_lifecycle": {
                        "playbook": "onboarding",
                        "fields": {"company": "deal.company", "tier": "deal.tier"},
                    }
                }
            ],
        },
        {"id": "lost", "terminal": "lost", "on_enter": [{"notify": {"event": "deal_lost"}}]},
    ],
}


@pytest.fixture(scope="module")
def playbook() -> Playbook:
    return parse_playbook(PLAYBOOK)


def started(playbook: Playbook, handed_off_by: str | None = None, **fields: Any) -> Engine:
    fields = {"owner_email": "owner@example.com", **fields}
    engine = Engine.start(playbook, "M-1", fields, T0, "deal-M-1", handed_off_by=handed_off_by)
    engine.take_steps()
    return engine


def at(days: float) -> datetime:
    return T0 + timedelta(days=days)


def set_fields(engine: Engine, when: datetime, **fields: Any) -> None:
    engine.set_fields(SetFields(fields=fields, actor="staff"), when)


def fire_until(engine: Engine, when: datetime) -> list[tuple[datetime, str]]:
    """Tick through every timer up to `when`; the appointment reminders sent, as (time, entry kind)."""
    engine.tick(when)
    steps = engine.take_steps()
    return [(s.entry.at, s.entry.kind) for s in steps if s.entry.kind == "reminder" and "appointment" in s.entry.detail]


# --- appointments ----------------------------------------------------------------------------------------------


def test_a_booked_meeting_reminds_one_week_one_day_and_one_hour_before(playbook: Playbook) -> None:
    engine = started(playbook)
    meeting = at(30).replace(hour=14)
    set_fields(engine, T0, meeting_at=meeting.isoformat())
    assert [d.label for d in engine.due_items() if d.kind == "appointment"] == ["Client meeting"]
    # The records store's deal row carries it, for the work queue across deals.
    snapshot = engine.snapshot()
    assert (snapshot.meeting_label, snapshot.meeting_at) == ("Client meeting", meeting)

    reminders = fire_until(engine, at(31))
    assert [when for when, _ in reminders] == [
        meeting - timedelta(days=7),
        meeting - timedelta(days=1),
        meeting - timedelta(hours=1),
    ]


def test_a_meeting_booked_for_tomorrow_skips_the_week_before_reminder(playbook: Playbook) -> None:
    engine = started(playbook)
    meeting = at(1.5)
    set_fields(engine, T0, meeting_at=meeting.isoformat())
    (planned,) = [s.entry.detail for s in engine.take_steps() if s.entry.kind == "appointment"]
    assert planned["skipped_reminders"] == [0]

    reminders = fire_until(engine, at(2))
    assert [when for when, _ in reminders] == [meeting - timedelta(days=1), meeting - timedelta(hours=1)]


def test_rescheduling_a_meeting_re_arms_its_reminders_for_the_new_time(playbook: Playbook) -> None:
    engine = started(playbook)
    set_fields(engine, T0, meeting_at=at(10).isoformat())
    assert fire_until(engine, at(3.5)) == [(at(3), "reminder")]
    set_fields(engine, at(3.5), meeting_at=at(20).isoformat())

    reminders = fire_until(engine, at(21))
    assert [when for when, _ in reminders] == [at(13), at(19), at(20) - timedelta(hours=1)]


def test_appointment_reminder_emails_carry_the_appointment(playbook: Playbook) -> None:
    engine = started(playbook)
    set_fields(engine, T0, meeting_at=at(10).isoformat())
    engine.take_steps()
    engine.tick(at(3))
    (email,) = [s.email for s in engine.take_steps() if s.email is not None]
    assert email.context["appointment"] == {"label": "Client meeting", "at": at(10).isoformat(), "before": "7d"}


# --- tasks due at a moment -------------------------------------------------------------------------------------


def test_a_task_due_before_a_meeting_opens_only_once_the_meeting_is_booked(playbook: Playbook) -> None:
    engine = started(playbook)
    assert "prepare" not in engine.state.tasks
    set_fields(engine, T0, meeting_at=at(10).isoformat())
    assert engine.state.tasks["prepare"].due_at == at(8)


def test_moving_the_meeting_moves_the_open_task_and_re_arms_its_reminder(playbook: Playbook) -> None:
    engine = started(playbook)
    set_fields(engine, T0, meeting_at=at(10).isoformat())
    engine.tick(at(8))
    assert engine.state.tasks["prepare"].reminded
    set_fields(engine, at(8), meeting_at=at(20).isoformat())
    task = engine.state.tasks["prepare"]
    assert (task.due_at, task.reminded, task.occurrence) == (at(18), False, 1)
    assert any(s.entry.detail.get("status") == "rescheduled" for s in engine.take_steps())


def test_a_done_task_opens_again_for_the_next_meeting(playbook: Playbook) -> None:
    engine = started(playbook)
    set_fields(engine, T0, meeting_at=at(10).isoformat())
    engine.complete_task(CompleteTask(task="prepare", actor="staff"), at(7))
    assert engine.state.tasks["prepare"].done_at == at(7)

    engine.submit_form(
        SubmitForm(form="meeting_log", fields={"met_on": "2026-03-12", "next_at": at(40).isoformat()}), at(10)
    )
    prepare = engine.state.tasks["prepare"]
    assert (prepare.done_at, prepare.due_at, prepare.occurrence) == (None, at(38), 2)
    # The follow-up belongs to the meeting just logged: due two days after it.
    assert engine.state.tasks["follow_up"].due_at == datetime(2026, 3, 14, 9, tzinfo=UTC)


def test_copy_actions_put_a_form_value_into_a_deal_field(playbook: Playbook) -> None:
    engine = started(playbook)
    engine.submit_form(
        SubmitForm(form="meeting_log", fields={"met_on": "2026-03-02", "next_at": at(30).isoformat()}), T0
    )
    assert engine.state.fields["meeting_at"] == at(30).isoformat()


# --- transitions -----------------------------------------------------------------------------------------------


def test_a_skip_gate_transition_fires_although_the_gate_is_unmet(playbook: Playbook) -> None:
    engine = started(playbook)
    assert engine.unmet()
    set_fields(engine, at(1), lost_reason="budget")
    assert engine.state.stage == "lost" and engine.state.outcome == "lost"


def test_an_ordinary_advance_still_needs_the_gate(playbook: Playbook) -> None:
    engine = started(playbook)
    with pytest.raises(Rejected, match="checklist_done"):
        engine.check_advance(Advance(to="done"))


# --- hand-off --------------------------------------------------------------------------------------------------


def test_a_hand_off_is_queued_once_with_the_mapped_fields_under_a_derived_deal_id(playbook: Playbook) -> None:
    engine = started(playbook, company="Example Co")
    engine.advance(Advance(to="handed_off", actor="staff"), at(1))
    (step,) = [s for s in engine.take_steps() if s.start is not None]
    assert step.entry.kind == "linked"
    assert step.start is not None
    assert (step.start.playbook, step.start.deal_id) == ("onboarding", "M-1.onboarding")
    # Blank source values are left out, so the linked playbook's own defaults and requirements apply.
    assert step.start.fields == {"company": "Example Co"}
    assert engine.state.linked == {"onboarding": "M-1.onboarding"}


def test_a_handed_off_lifecycle_tells_the_one_that_started_it_how_it_ended(playbook: Playbook) -> None:
    """A lost deal returns its lead to Recycled: the deal's lifecycle sends its lead's lifecycle an event."""
    engine = started(playbook, handed_off_by="deal-L-1")
    set_fields(engine, at(1), lost_reason="budget")
    (step,) = [s for s in engine.take_steps() if s.notice is not None]
    assert step.entry.kind == "notified"
    assert step.entry.detail == {"event": "deal_lost", "status": "requested", "workflow_id": "deal-L-1"}
    assert step.notice is not None
    assert (step.notice.name, step.notice.event_id, step.notice.source) == ("deal_lost", "M-1/deal_lost", "M-1")
    engine.notified(step, "sent")
    assert step.entry.detail["status"] == "sent"
    assert engine.state.notified == ["deal_lost"]


def test_a_lifecycle_nobody_handed_off_has_nobody_to_tell(playbook: Playbook) -> None:
    engine = started(playbook)
    set_fields(engine, at(1), lost_reason="budget")
    steps = engine.take_steps()
    assert engine.state.stage == "lost"
    assert not [s for s in steps if s.notice is not None or s.entry.kind == "notified"]


# --- classification --------------------------------------------------------------------------------------------


def test_classified_fields_follow_the_profile_with_their_explanation(playbook: Playbook) -> None:
    engine = started(playbook, assets="1200")
    assert engine.state.fields.get("tier") is None  # one known row of the two required
    set_fields(engine, at(1), income="300")
    assert engine.state.fields["tier"] == "B"
    assert engine.state.fields["tier_basis"] == "B (median of 2 rows: A on assets; B on income)"
    set_fields(engine, at(2), income="450")
    assert engine.state.fields["tier"] == "A"


def test_a_date_only_appointment_is_not_re_planned_by_later_changes_at_another_time_of_day() -> None:
    data = {**PLAYBOOK, "deal": {**PLAYBOOK["deal"], "meeting_at": {"type": "date"}}}
    engine = started(parse_playbook(data))
    set_fields(engine, T0, meeting_at="2026-03-20")
    planned = engine.state.appointments["deal.meeting_at"]
    set_fields(engine, T0 + timedelta(days=1, hours=5), company="Example Co")
    assert engine.state.appointments["deal.meeting_at"] == planned
    assert planned.at == datetime(2026, 3, 20, 9, tzinfo=UTC)
