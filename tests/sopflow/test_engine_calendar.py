"""The engine on a playbook with a time zone and a business calendar: "same day" tasks, visits that are dates,
reminders held to the send window, appointments exact across daylight-saving switches, local input."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from sopflow import views
from sopflow.engine import Engine
from sopflow.errors import Rejected
from sopflow.models import Advance, SetFields, SubmitForm
from sopflow.playbook import Playbook
from sopflow.playbook_checks import parse_playbook
from sopflow.zones import zone
from tests.conftest import friday_before_a_monday_holiday

NY: ZoneInfo = zone("America/New_York")
EMAIL = {"template": "note", "to": ["owner"]}
PLAYBOOK: dict[str, Any] = {
    "id": "zoned",
    "version": 1,
    "timezone": "America/New_York",
    "timezone_field": "deal.timezone",
    "calendar": {"holidays": {"country": "US"}, "send_window": {"start": "09:00", "end": "17:00"}},
    "roles": {"owner": {"email": "deal.owner_email"}},
    "deal": {
        "owner_email": {"type": "email", "required": True},
        "timezone": {"type": "timezone"},
        "meeting_at": {"type": "datetime"},
    },
    "forms": {"visit": {"repeatable": True, "fields": {"visited_on": {"type": "date", "required": True}}}},
    "stages": [
        {
            "id": "assigned",
            "tasks": [
                {
                    "id": "intro_call",
                    "title": "Call the admin today",
                    "owner": "owner",
                    "due": "end_of_business_day",
                    "remind": EMAIL,
                    "escalate": {"after": "1bh", "email": EMAIL},
                }
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
            "transitions": [{"to": "visits", "advance": True}],
        },
        {
            "id": "visits",
            "forms": ["visit"],
            "cadence": {
                "label": "site visit",
                "touchpoint": "visit",
                "date_field": "visited_on",
                "phases": [{"every": "14d", "until": "60d"}, {"every": "1mo"}],
                "remind": {"before": "2d", "email": EMAIL},
            },
            "transitions": [{"to": "done", "advance": True}],
        },
        {"id": "done", "terminal": "won"},
    ],
}


@pytest.fixture(scope="module")
def playbook() -> Playbook:
    return parse_playbook(PLAYBOOK)


def local(year: int, month: int, day: int, hour: int = 0, minute: int = 0, tz: ZoneInfo = NY) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=tz).astimezone(UTC)


def started(playbook: Playbook, at: datetime, **fields: Any) -> Engine:
    engine = Engine.start(playbook, "Z-1", {"owner_email": "owner@example.com", **fields}, at, "deal-Z-1")
    engine.take_steps()
    return engine


# --- "same day" -------------------------------------------------------------------------------------------------


def test_an_account_assigned_at_1600_local_is_due_at_todays_close(playbook: Playbook) -> None:
    friday = friday_before_a_monday_holiday(date(2027, 1, 1))
    engine = started(playbook, local(friday.year, friday.month, friday.day, 16, 0))
    assert engine.state.tasks["intro_call"].due_at == local(friday.year, friday.month, friday.day, 17, 0)


def test_an_account_assigned_at_1800_on_the_friday_before_a_holiday_is_due_tuesday_and_escalates_tuesday(
    playbook: Playbook,
) -> None:
    friday = friday_before_a_monday_holiday(date(2027, 1, 1))
    tuesday = friday + timedelta(days=4)
    engine = started(playbook, local(friday.year, friday.month, friday.day, 18, 0))
    due = engine.state.tasks["intro_call"].due_at
    assert due == local(tuesday.year, tuesday.month, tuesday.day, 17, 0)

    engine.tick(due + timedelta(days=2))
    fired = [(s.entry.at, s.entry.kind) for s in engine.take_steps() if s.entry.kind in ("reminder", "escalation")]
    # Overdue at Tuesday's close; the escalation, one business hour later, is Wednesday 10:00, never the weekend.
    wednesday = tuesday + timedelta(days=1)
    assert fired == [(due, "reminder"), (local(wednesday.year, wednesday.month, wednesday.day, 10, 0), "escalation")]


# --- visits are dates -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("clock_time", [time(0, 5), time(23, 55)])
def test_a_visit_logged_on_day_60_gets_the_monthly_interval_whatever_the_clock_time(
    playbook: Playbook, clock_time: time
) -> None:
    engine = started(playbook, local(2027, 4, 1, 10, 0))
    engine.advance(Advance(to="visits", actor="am"), local(2027, 4, 1, 10, 0))
    anchor = date(2027, 4, 1)
    day_60 = anchor + timedelta(days=60)
    filed = datetime.combine(day_60, clock_time, tzinfo=NY).astimezone(UTC)
    engine.tick(filed)
    engine.submit_form(SubmitForm(form="visit", fields={"visited_on": day_60.isoformat()}, actor="am"), filed)
    assert engine.state.cadence is not None
    next_due = engine.state.cadence.next_due.astimezone(NY)
    assert (next_due.date(), next_due.time()) == (date(2027, 6, 30), time(17, 0))


def test_a_visit_logged_on_day_59_keeps_the_two_week_interval(playbook: Playbook) -> None:
    engine = started(playbook, local(2027, 4, 1, 10, 0))
    engine.advance(Advance(to="visits", actor="am"), local(2027, 4, 1, 10, 0))
    day_59 = date(2027, 4, 1) + timedelta(days=59)
    filed = local(day_59.year, day_59.month, day_59.day, 23, 55)
    engine.tick(filed)
    engine.submit_form(SubmitForm(form="visit", fields={"visited_on": day_59.isoformat()}, actor="am"), filed)
    assert engine.state.cadence is not None
    assert engine.state.cadence.next_due.astimezone(NY).date() == day_59 + timedelta(days=14)


def test_the_first_visit_is_due_on_the_local_date_two_weeks_after_entry_at_close_of_business(
    playbook: Playbook,
) -> None:
    engine = started(playbook, local(2027, 4, 1, 23, 30))  # 03:30 UTC on 2 April
    engine.advance(Advance(to="visits", actor="am"), local(2027, 4, 1, 23, 30))
    assert engine.state.cadence is not None
    assert engine.state.cadence.next_due == local(2027, 4, 15, 17, 0)


def test_a_visit_reminder_falling_on_a_sunday_is_held_to_mondays_opening(playbook: Playbook) -> None:
    engine = started(playbook, local(2027, 3, 30, 10, 0))
    engine.advance(
        Advance(to="visits", actor="am"), local(2027, 3, 30, 10, 0)
    )  # first visit due Tuesday 13 April, reminder Sunday 11th
    engine.tick(local(2027, 4, 14, 0, 0))
    reminders = [s.entry.at for s in engine.take_steps() if s.entry.kind == "reminder"]
    assert reminders == [local(2027, 4, 12, 9, 0)]


# --- appointments and local input --------------------------------------------------------------------------------


def test_a_meeting_typed_as_local_time_the_monday_after_the_switch_reminds_at_local_times_within_the_window(
    playbook: Playbook,
) -> None:
    engine = started(playbook, local(2027, 3, 1, 10, 0))
    engine.set_fields(SetFields(fields={"meeting_at": "2027-03-15 15:00"}, actor="advisor"), local(2027, 3, 1, 10, 0))
    assert engine.state.fields["meeting_at"] == "2027-03-15T19:00:00+00:00"  # 15:00 EDT, the Monday after the switch
    engine.tick(local(2027, 3, 15, 15, 0))
    reminders = [
        s.entry.at for s in engine.take_steps() if s.entry.kind == "reminder" and "appointment" in s.entry.detail
    ]
    # A week before is 15:00 EST (a 7-day span of 167 hours), an hour before is 14:00 EDT; a day before is Sunday,
    # outside the business-day send window, so it is held to Monday's opening, still before the meeting.
    assert reminders == [local(2027, 3, 8, 15, 0), local(2027, 3, 15, 9, 0), local(2027, 3, 15, 14, 0)]


def test_a_local_time_in_the_daylight_saving_gap_is_refused_and_nothing_changes(playbook: Playbook) -> None:
    engine = started(playbook, local(2027, 3, 1, 10, 0))
    before = engine.state.model_copy(deep=True)
    with pytest.raises(Rejected) as caught:
        engine.check_set_fields(SetFields(fields={"meeting_at": "2027-03-14 02:30"}, actor="advisor"))
    assert "2027-03-14T02:30 does not exist in America/New_York" in caught.value.field_errors["meeting_at"]
    assert engine.state == before


def test_a_clients_own_zone_reads_its_local_times_and_due_dates_in_that_zone(playbook: Playbook) -> None:
    london = zone("Europe/London")
    engine = started(playbook, local(2027, 3, 3, 15, 0, tz=london), timezone="Europe/London")
    assert engine.state.tasks["intro_call"].due_at == local(2027, 3, 3, 17, 0, tz=london)
    engine.set_fields(SetFields(fields={"meeting_at": "2027-03-20 11:00"}, actor="advisor"), local(2027, 3, 3, 15, 0))
    assert engine.state.fields["meeting_at"] == "2027-03-20T11:00:00+00:00"


def test_the_deals_zone_is_recorded_with_its_status_and_snapshot_for_the_cli_and_reports(playbook: Playbook) -> None:
    engine = started(playbook, local(2027, 3, 1, 10, 0), timezone="Europe/London")
    assert engine.status(local(2027, 3, 1, 10, 0)).timezone == "Europe/London"
    assert views.snapshot(engine.playbook, engine.state).timezone == "Europe/London"
    without_zone = playbook.model_copy(update={"timezone": None, "timezone_field": None, "calendar": None})
    assert views.snapshot(without_zone, engine.state).timezone is None
