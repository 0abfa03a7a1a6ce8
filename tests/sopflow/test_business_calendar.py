"""The lifecycle's clock: local days across daylight-saving switches, business days and hours, holidays, "same day"
due forms and send windows. Pure arithmetic, so properties are checked over thousands of moments."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sopflow.business_calendar import UTC_CLOCK, Clock
from sopflow.durations import duration
from sopflow.playbook import Playbook

NEW_YORK = {
    "timezone": "America/New_York",
    "calendar": {"holidays": {"country": "US"}, "send_window": {"start": "09:00", "end": "17:00"}},
}


def clock_of(**overrides: object) -> Clock:
    data = {"id": "p", "version": 1, "stages": [{"id": "a"}], **NEW_YORK, **overrides}
    return Clock.of(Playbook.model_validate(data), {})


NY = clock_of()
LONDON = clock_of(timezone="Europe/London", calendar={"holidays": {"country": "GB", "subdivision": "ENG"}})


def ny(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=NY.tz)


moments = st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC))


def test_a_playbook_without_a_zone_keeps_the_utc_rules_of_before() -> None:
    playbook = Playbook.model_validate({"id": "p", "version": 1, "stages": [{"id": "a"}]})
    clock = Clock.of(playbook, {})
    start = datetime(2027, 3, 13, 16, 17, tzinfo=UTC)
    assert clock is UTC_CLOCK and not clock.zoned
    assert clock.after(duration("1d"), start) == start + timedelta(days=1)
    assert clock.hold(start) == start


def test_a_deal_field_overrides_the_playbook_zone() -> None:
    playbook = Playbook.model_validate(
        {"id": "p", "version": 1, "stages": [{"id": "a"}], "deal": {"zone": {"type": "timezone"}}, **NEW_YORK}
        | {"timezone_field": "deal.zone"}
    )
    assert Clock.of(playbook, {"zone": "Europe/London"}).name == "Europe/London"
    assert Clock.of(playbook, {}).name == "America/New_York"


def test_a_day_later_is_the_same_local_time_across_the_march_switch_while_an_hour_is_an_hour() -> None:
    saturday = ny(2027, 3, 13, 15, 0)  # clocks go forward on Sunday 14 March 2027 at 02:00
    assert NY.local(NY.after(duration("1d"), saturday)) == ny(2027, 3, 14, 15, 0)
    assert NY.after(duration("1d"), saturday) - saturday == timedelta(hours=23)
    assert NY.after(duration("24h"), saturday) - saturday == timedelta(hours=24)


def test_reminders_a_week_a_day_and_an_hour_before_a_meeting_the_monday_after_the_march_switch() -> None:
    meeting = ny(2027, 3, 15, 15, 0)
    assert NY.local(NY.before(duration("7d"), meeting)) == ny(2027, 3, 8, 15, 0)
    assert NY.local(NY.before(duration("1d"), meeting)) == ny(2027, 3, 14, 15, 0)
    assert meeting - NY.before(duration("1h"), meeting) == timedelta(hours=1)


def test_reminders_before_a_london_meeting_across_the_october_switch_keep_local_times() -> None:
    meeting = datetime(2027, 11, 1, 10, 0, tzinfo=LONDON.tz)  # clocks go back on Sunday 31 October 2027
    week_before = LONDON.local(LONDON.before(duration("7d"), meeting))
    assert (week_before.date(), week_before.time(), week_before.tzname()) == (date(2027, 10, 25), time(10), "BST")
    assert meeting.tzname() == "GMT" and meeting - week_before.astimezone(UTC) == timedelta(days=7, hours=1)
    assert LONDON.local(LONDON.before(duration("1d"), meeting)).time() == time(10)
    assert meeting - LONDON.before(duration("1h"), meeting) == timedelta(hours=1)


def test_a_day_later_landing_in_the_skipped_hour_moves_to_the_time_the_clocks_jump_to() -> None:
    assert NY.local(NY.after(duration("1d"), ny(2027, 3, 13, 2, 30))) == ny(2027, 3, 14, 3, 30)


def test_business_days_skip_the_weekend_and_public_holidays() -> None:
    friday = ny(2027, 7, 2, 16, 0)  # Monday 5 July 2027 is Independence Day (observed)
    assert NY.local(NY.after(duration("1bd"), friday)) == ny(2027, 7, 6, 16, 0)
    assert NY.local(NY.before(duration("1bd"), ny(2027, 7, 6, 16, 0))) == friday


def test_business_hours_count_only_working_hours() -> None:
    assert NY.local(NY.after(duration("4bh"), ny(2027, 3, 10, 16, 0))) == ny(2027, 3, 11, 12, 0)
    assert NY.local(NY.after(duration("8bh"), ny(2027, 3, 10, 9, 0))) == ny(2027, 3, 10, 17, 0)
    assert NY.local(NY.after(duration("1bh"), ny(2027, 3, 13, 11, 0))) == ny(2027, 3, 15, 10, 0)  # Saturday
    assert NY.local(NY.before(duration("4bh"), ny(2027, 3, 11, 12, 0))) == ny(2027, 3, 10, 16, 0)


def test_business_days_and_hours_combine_days_first() -> None:
    assert NY.local(NY.after(duration("1bd2bh"), ny(2027, 3, 10, 16, 0))) == ny(2027, 3, 12, 10, 0)


def test_extra_company_holidays_are_days_off() -> None:
    clock = clock_of(calendar={"holidays": {"country": "US", "extra": ["2027-12-24"]}})
    assert clock.local(clock.after(duration("1bd"), ny(2027, 12, 23, 10, 0))) == ny(2027, 12, 27, 10, 0)


def test_same_day_is_todays_close_before_hours_and_the_next_business_days_close_after_them() -> None:
    assert NY.local(NY.end_of_business_day(ny(2027, 3, 10, 7, 0))) == ny(2027, 3, 10, 17, 0)
    assert NY.local(NY.end_of_business_day(ny(2027, 3, 10, 16, 17))) == ny(2027, 3, 10, 17, 0)
    assert NY.local(NY.end_of_business_day(ny(2027, 3, 10, 18, 0))) == ny(2027, 3, 11, 17, 0)
    assert NY.local(NY.end_of_business_day(ny(2027, 7, 2, 18, 0))) == ny(2027, 7, 6, 17, 0)  # Friday before July 5
    assert NY.local(NY.end_of_day(ny(2027, 3, 10, 18, 0))) == ny(2027, 3, 10, 23, 59, 59)


def test_a_notice_outside_the_send_window_is_held_to_its_next_opening() -> None:
    assert NY.local(NY.hold(ny(2027, 3, 10, 3, 0))) == ny(2027, 3, 10, 9, 0)
    assert NY.hold(ny(2027, 3, 12, 17, 0)) == ny(2027, 3, 12, 17, 0)  # the window's end is inside it
    assert NY.local(NY.hold(ny(2027, 3, 12, 17, 1))) == ny(2027, 3, 15, 9, 0)  # Friday after closing: Monday
    assert NY.hold(ny(2027, 3, 10, 12, 0)) == ny(2027, 3, 10, 12, 0)
    every_day = clock_of(calendar={"send_window": {"start": "08:00", "end": "20:00", "days": "every_day"}})
    assert every_day.local(every_day.hold(ny(2027, 3, 13, 21, 0))) == ny(2027, 3, 14, 8, 0)


@given(moments, st.integers(1, 30), st.integers(1, 30))
def test_business_day_addition_is_monotonic_and_never_lands_on_a_day_off(start: datetime, n: int, m: int) -> None:
    a, b = NY.after(duration(f"{n}bd"), start), NY.after(duration(f"{m}bd"), start)
    assert NY.is_working_day(NY.local_date(a))
    assert (a < b) == (n < m) and (a == b) == (n == m)
    assert a > start


@given(moments, st.integers(1, 60))
def test_business_hours_end_inside_working_hours_on_a_working_day(start: datetime, n: int) -> None:
    end = NY.local(NY.after(duration(f"{n}bh"), start))
    assert NY.is_working_day(end.date())
    assert time(9) < end.time() <= time(17)
    assert NY.after(duration(f"{n}bh"), start) < NY.after(duration(f"{n + 1}bh"), start)


@given(moments)
def test_end_of_business_day_is_idempotent_and_lands_on_a_working_days_close(moment: datetime) -> None:
    end = NY.end_of_business_day(moment)
    assert end >= moment
    assert NY.end_of_business_day(end) == end
    assert NY.is_working_day(NY.local_date(end)) and NY.local(end).time() == time(17)


@given(moments)
def test_hold_never_moves_a_notice_earlier_and_lands_inside_the_window(moment: datetime) -> None:
    held = NY.hold(moment)
    assert held >= moment and NY.hold(held) == held
    assert NY.is_working_day(NY.local_date(held)) and time(9) <= NY.local(held).time() <= time(17)


@given(moments, st.sampled_from(["1d", "7d", "1mo", "1y"]))
def test_calendar_units_keep_the_local_time_of_day_unless_it_falls_in_a_gap(start: datetime, span: str) -> None:
    moved = NY.local(NY.after(duration(span), start))
    if NY.local(start).replace(tzinfo=None).time() != moved.replace(tzinfo=None).time():
        assert abs(moved.utcoffset() - NY.local(start).utcoffset()) == timedelta(hours=1)  # type: ignore[operator]


@pytest.mark.parametrize("span", ["1bd", "4bh", "1d"])
def test_after_and_before_are_inverse_on_working_moments(span: str) -> None:
    moment = ny(2027, 3, 10, 11, 0)
    assert NY.before(duration(span), NY.after(duration(span), moment)) == moment
