"""The morning digest's rules: whose morning it is (zones, daylight saving, weekends, holidays, opt-out), what a
digest says and links to, and that a person with nothing due gets nothing."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, timedelta

import pytest

from sopflow.db import Database
from sopflow.digest import (
    Digest,
    PublicLinks,
    compose_digest,
    digest_due,
    email_request,
    idempotency_key,
    morning_due,
)
from sopflow.digest_query import digest_for, plate
from sopflow.playbook import Playbook
from sopflow.reports import StalledRow
from sopflow.staff import Holidays, Person
from sopflow.work_queue import WorkItem
from tests.conftest import contact_row, deal_row, task_row

# Monday 2026-03-16, 07:00 in New York (EDT, UTC-4).
MONDAY_7AM_NY = datetime(2026, 3, 16, 11, tzinfo=UTC)
DAY = timedelta(days=1)
LINKS = PublicLinks("https://sop.example.com")


def person(**fields: object) -> Person:
    return Person.model_validate({"email": "Rep@Example.com", "timezone": "America/New_York", **fields})


def item(
    deal_id: str, kind: str, due_at: datetime | None, command: str | None = None, what: str = "x", **settles: str
) -> WorkItem:
    return WorkItem(
        deal_id=deal_id,
        playbook="safe_balance",
        stage="ongoing",
        kind=kind,  # type: ignore[arg-type]
        what=what,
        owner="rep",
        due_at=due_at,
        days_until_due=None,
        command=command or f"sopflow deal status {deal_id}",
        **settles,
    )


# --- whose morning it is --------------------------------------------------------------------------------------------


def test_the_digest_is_due_in_the_persons_local_morning_hour_only() -> None:
    rep = person(morning_hour=7)
    assert morning_due(rep, MONDAY_7AM_NY) == date(2026, 3, 16)
    assert morning_due(rep, MONDAY_7AM_NY - timedelta(hours=1)) is None
    assert morning_due(rep, MONDAY_7AM_NY + timedelta(hours=1)) is None
    assert morning_due(person(morning_hour=8), MONDAY_7AM_NY + timedelta(hours=1)) == date(2026, 3, 16)


def test_the_local_date_is_the_persons_own_not_utcs() -> None:
    # 23:00 UTC on Monday is 08:00 on Tuesday in Tokyo.
    tokyo = person(timezone="Asia/Tokyo", morning_hour=8)
    assert morning_due(tokyo, datetime(2026, 3, 16, 23, tzinfo=UTC)) == date(2026, 3, 17)


def test_the_morning_hour_follows_daylight_saving_time() -> None:
    rep = person(morning_hour=7)
    # Friday before the switch (EST, UTC-5): 07:00 is 12:00 UTC; the Monday after (EDT): 11:00 UTC.
    assert morning_due(rep, datetime(2026, 3, 6, 12, tzinfo=UTC)) == date(2026, 3, 6)
    assert morning_due(rep, datetime(2026, 3, 6, 11, tzinfo=UTC)) is None
    assert morning_due(rep, datetime(2026, 3, 9, 11, tzinfo=UTC)) == date(2026, 3, 9)
    assert morning_due(rep, datetime(2026, 3, 9, 12, tzinfo=UTC)) is None


@pytest.mark.parametrize(
    "zone", ["America/New_York", "Europe/London", "Asia/Kolkata", "Australia/Lord_Howe", "Pacific/Chatham"]
)
@pytest.mark.parametrize("hour", [0, 1, 2, 7, 23])
def test_an_hourly_schedule_sends_once_on_every_working_day_and_never_at_the_weekend(zone: str, hour: int) -> None:
    """Across both daylight-saving switches, in zones a half hour or 45 minutes off UTC and one whose clocks move by
    half an hour: every firing on the hour, each working day is due exactly once."""
    someone = person(timezone=zone, morning_hour=hour)
    start = datetime(2026, 2, 20, tzinfo=UTC)
    counted: Counter[date] = Counter()
    for span in ((start, 80), (datetime(2026, 9, 20, tzinfo=UTC), 80)):
        first, days = span
        for n in range(days * 24):
            day = morning_due(someone, first + timedelta(hours=n))
            if day is not None:
                counted[day] += 1
    assert set(counted.values()) == {1}
    assert all(day.weekday() < 5 for day in counted)
    # Every working day strictly inside the two spans is there (the ends may fall outside in far zones).
    inner = [start.date() + timedelta(days=d) for d in range(2, 78)]
    assert [d for d in inner if d.weekday() < 5 and d not in counted] == []


def test_no_digest_on_a_public_holiday_of_the_persons_calendar() -> None:
    # Friday 2026-07-03 is the observed Independence Day in the US (July 4 is a Saturday); 07:00 EDT is 11:00 UTC.
    friday = datetime(2026, 7, 3, 11, tzinfo=UTC)
    assert morning_due(person(holidays=Holidays(country="US")), friday) is None
    assert morning_due(person(), friday) == date(2026, 7, 3)  # without a holiday calendar it is a working day
    uk = person(timezone="Europe/London", holidays=Holidays(country="GB", subdivision="ENG"))
    assert morning_due(uk, datetime(2026, 7, 3, 6, tzinfo=UTC)) == date(2026, 7, 3)


def test_a_person_who_opted_out_gets_no_digest() -> None:
    assert digest_due(person(digest=False), MONDAY_7AM_NY) is None
    assert digest_due(person(), MONDAY_7AM_NY) == date(2026, 3, 16)


def test_the_idempotency_key_is_person_and_date_without_the_address() -> None:
    key = idempotency_key("Rep@Example.com", date(2026, 3, 16))
    assert key == idempotency_key("rep@example.com", date(2026, 3, 16))
    prefix, hashed, day = key.split(":")
    assert (prefix, len(hashed), day) == ("digest", 16, "2026-03-16")
    assert "example" not in key
    assert idempotency_key("other@example.com", date(2026, 3, 16)) != key


# --- what a digest says ---------------------------------------------------------------------------------------------


def test_nothing_due_means_no_digest() -> None:
    rep = person()
    assert compose_digest(rep, [], [], MONDAY_7AM_NY, LINKS) is None
    # Tasks further out than today, and items with no due moment, are not this morning's news.
    later = [item("D-1", "task", MONDAY_7AM_NY + 3 * DAY), item("D-2", "task", None)]
    assert compose_digest(rep, later, [], MONDAY_7AM_NY, LINKS) is None


def test_the_digest_sorts_items_into_overdue_today_and_this_weeks_visits_and_meetings() -> None:
    items = [
        item("D-1", "task", MONDAY_7AM_NY - 2 * DAY, "sopflow task done D-1 onsite_appointment", "onsite"),
        item("D-2", "deadline", MONDAY_7AM_NY + timedelta(hours=10), "sopflow deal event D-2 contract_signed"),
        item("D-3", "visit", MONDAY_7AM_NY + 3 * DAY, "sopflow form submit D-3 site_visit -f visited_on=YYYY-MM-DD"),
        item("D-4", "meeting", MONDAY_7AM_NY + 5 * DAY),
        item("D-5", "meeting", MONDAY_7AM_NY + 9 * DAY),  # next week: not yet
    ]
    digest = compose_digest(person(), items, [], MONDAY_7AM_NY, LINKS)
    assert digest is not None
    assert [e.deal_id for e in digest.overdue] == ["D-1"]
    assert [e.deal_id for e in digest.due_today] == ["D-2"]
    assert [e.deal_id for e in digest.this_week] == ["D-3", "D-4"]
    assert digest.date == date(2026, 3, 16) and digest.count() == 4
    # Times read in the person's zone.
    assert digest.overdue[0].when == "Sat Mar 14, 07:00 EDT"


def test_each_entry_links_to_its_form_or_to_the_deals_page_on_the_board() -> None:
    items = [
        item("D-1", "task", MONDAY_7AM_NY - DAY, "sopflow task done D-1 onsite_appointment", task="onsite_appointment"),
        item("D 3/x", "visit", MONDAY_7AM_NY - DAY, "sopflow form submit D 3/x site_visit", form="site_visit"),
    ]
    signed = PublicLinks("https://sop.example.com/", form_secret="secret")
    digest = compose_digest(person(), items, [], MONDAY_7AM_NY, signed)
    assert digest is not None
    task, visit = digest.overdue
    assert task.link == "https://sop.example.com/deals/D-1" and task.form is None
    assert visit.form == "site_visit"
    assert visit.link.startswith("https://sop.example.com/forms/D%203%2Fx/site_visit?token=")


def test_stalled_deals_are_listed_even_with_nothing_else_due() -> None:
    row = StalledRow(
        deal_id="D-9",
        playbook="safe_balance",
        stage="prelaunch",
        owner="account_manager",
        days_in_stage=41.7,
        threshold_days=30,
    )
    digest = compose_digest(person(), [], [row], MONDAY_7AM_NY, LINKS)
    assert digest is not None
    assert [(s.deal_id, s.days_in_stage, s.link) for s in digest.stalled] == [
        ("D-9", 41, "https://sop.example.com/deals/D-9")
    ]


def test_the_email_request_is_a_system_template_keyed_person_and_date(safe_balance: Playbook) -> None:
    digest = compose_digest(person(), [item("D-1", "task", MONDAY_7AM_NY - DAY)], [], MONDAY_7AM_NY, LINKS)
    assert isinstance(digest, Digest)
    request = email_request(digest, "sopflow-morning-digest-2026-03-16T11:00:00Z", MONDAY_7AM_NY)
    assert (request.playbook, request.template, request.key) == ("_system", "morning_digest", digest.key)
    assert [r.email for r in request.to] == ["rep@example.com"]
    assert "email" not in request.context and request.context["day"] == "Monday March 16"


# --- from the records store -----------------------------------------------------------------------------------------


def test_the_plate_is_the_persons_items_and_the_deals_stalled_in_the_stages_they_own(
    db: Database, safe_balance: Playbook
) -> None:
    now = MONDAY_7AM_NY
    with db.session() as session:
        session.add_all(
            [
                # D-1: the rep's overdue task; prelaunch is the account manager's stage, stalled (40 days > 30).
                deal_row("D-1", "prelaunch", now, owner="account_manager:am-5", stage_entered_at=now - 40 * DAY),
                task_row("D-1", "onsite_appointment", "rep", now - DAY, now),
                task_row("D-1", "services_onboarded", "account_manager", now + DAY, now),
                contact_row("D-1", "rep", "rep@example.com", now),
                contact_row("D-1", "account_manager", "am@example.com", now),
                # D-2: the rep's own stage, stalled; D-3: someone else's deal.
                deal_row("D-2", "targeting", now, owner="rep", stage_entered_at=now - 31 * DAY),
                contact_row("D-2", "rep", "rep@example.com", now),
                deal_row("D-3", "targeting", now, owner="rep", stage_entered_at=now - 31 * DAY),
                contact_row("D-3", "rep", "other@example.com", now),
            ]
        )
        session.commit()
        items, stuck = plate(session, person(), now, [safe_balance])
        assert [(i.deal_id, i.what) for i in items] == [("D-1", "onsite appointment")]
        assert [s.deal_id for s in stuck] == ["D-2"]
        am = person(email="am@example.com")
        am_items, am_stuck = plate(session, am, now, [safe_balance])
        assert [i.what for i in am_items] == ["services onboarded"]
        assert [s.deal_id for s in am_stuck] == ["D-1"]
        assert digest_for(session, person(email="nobody@example.com"), now, [safe_balance], LINKS) is None
