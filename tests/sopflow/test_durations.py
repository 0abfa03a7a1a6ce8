"""Durations as SOP authors write them, and the calendar arithmetic the schedules rely on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import BaseModel

from sopflow.durations import Duration, add_months, duration


@pytest.mark.parametrize(
    ("text", "months", "days", "seconds"),
    [
        ("14d", 0, 14, 0),
        ("2w", 0, 14, 0),
        ("1mo", 1, 0, 0),
        ("36h", 0, 0, 36 * 3600),
        ("1y", 12, 0, 0),
        ("1y2mo", 14, 0, 0),
        ("1mo2d", 1, 2, 0),
        ("1d12h", 0, 1, 12 * 3600),
        ("90m", 0, 0, 90 * 60),
        ("45s", 0, 0, 45),
        (" 1y 2mo ", 14, 0, 0),
    ],
)
def test_duration_text_parses_into_calendar_months_and_days_and_fixed_seconds(
    text: str, months: int, days: int, seconds: int
) -> None:
    parsed = duration(text)
    assert (parsed.months, parsed.days, parsed.seconds) == (months, days, seconds)


@pytest.mark.parametrize(("text", "business_days", "business_hours"), [("3bd", 3, 0), ("4bh", 0, 4), ("1bd2bh", 1, 2)])
def test_business_days_and_hours_parse_apart_from_calendar_units(
    text: str, business_days: int, business_hours: int
) -> None:
    parsed = duration(text)
    assert (parsed.business_days, parsed.business_hours) == (business_days, business_hours)
    assert parsed.is_business
    assert str(parsed) == text


@pytest.mark.parametrize("text", ["0bd", "0bh"])
def test_zero_business_days_or_hours_is_refused_naming_the_value(text: str) -> None:
    with pytest.raises(ValueError, match=rf"invalid duration '{text}': zero business"):
        duration(text)


def test_business_units_cannot_be_mixed_with_calendar_units() -> None:
    with pytest.raises(ValueError, match="cannot be mixed with calendar units"):
        duration("1bd2h")


def test_business_time_needs_a_calendar_to_become_a_moment() -> None:
    with pytest.raises(ValueError, match="3bd counts business time"):
        duration("3bd").after(datetime(2027, 1, 4, tzinfo=UTC))


def test_m_means_minutes_and_mo_means_months() -> None:
    assert duration("1m") == Duration(seconds=60)
    assert duration("1mo") == Duration(months=1)


def test_a_day_and_a_half_written_in_hours_stays_in_hours_because_a_day_can_have_23_or_25() -> None:
    assert duration("36h") != duration("1d12h")
    start = datetime(2025, 1, 31, 9, tzinfo=UTC)
    assert duration("36h").after(start) == duration("1d12h").after(start)  # in UTC every day has 24 hours


def test_two_weeks_and_fourteen_days_are_the_same_duration() -> None:
    assert duration("2w") == duration("14d")


@pytest.mark.parametrize("text", ["", "   ", "14", "d", "14 days", "1.5d", "-3d", "14D", "2 weeks", "1x"])
def test_invalid_duration_is_rejected_with_a_message_showing_the_accepted_form(text: str) -> None:
    with pytest.raises(ValueError, match=r"invalid duration .*use a number and a unit, e\.g\. 14d, 2w, 1mo"):
        duration(text)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("14d", "14d"),
        ("2w", "14d"),
        ("36h", "36h"),
        ("1d12h", "1d12h"),
        ("1mo", "1mo"),
        ("14mo", "1y2mo"),
        ("1y2mo", "1y2mo"),
        ("90m", "1h30m"),
        ("0d", "0s"),
    ],
)
def test_str_gives_canonical_text_that_parses_back_to_the_same_duration(text: str, canonical: str) -> None:
    parsed = duration(text)
    assert str(parsed) == canonical
    assert duration(str(parsed)) == parsed


def test_one_month_after_jan_31_is_feb_29_in_a_leap_year() -> None:
    assert duration("1mo").after(datetime(2024, 1, 31, 9, tzinfo=UTC)) == datetime(2024, 2, 29, 9, tzinfo=UTC)


def test_one_month_after_jan_31_is_feb_28_otherwise() -> None:
    assert duration("1mo").after(datetime(2025, 1, 31, 9, tzinfo=UTC)) == datetime(2025, 2, 28, 9, tzinfo=UTC)


def test_a_month_is_the_same_day_next_month_not_thirty_days() -> None:
    assert duration("1mo").after(datetime(2025, 3, 15, tzinfo=UTC)) == datetime(2025, 4, 15, tzinfo=UTC)
    assert duration("1mo").after(datetime(2025, 1, 15, tzinfo=UTC)) == datetime(2025, 2, 15, tzinfo=UTC)


def test_months_cross_year_boundaries_in_both_directions() -> None:
    assert add_months(datetime(2025, 11, 30, tzinfo=UTC), 3) == datetime(2026, 2, 28, tzinfo=UTC)
    assert add_months(datetime(2025, 1, 31, tzinfo=UTC), -2) == datetime(2024, 11, 30, tzinfo=UTC)


def test_one_year_after_feb_29_is_feb_28() -> None:
    assert duration("1y").after(datetime(2024, 2, 29, tzinfo=UTC)) == datetime(2025, 2, 28, tzinfo=UTC)


def test_months_and_days_combine_months_first() -> None:
    assert duration("1mo2d").after(datetime(2025, 1, 31, tzinfo=UTC)) == datetime(2025, 3, 2, tzinfo=UTC)


def test_fixed_units_add_exact_time_and_keep_the_time_zone() -> None:
    start = datetime(2025, 1, 31, 9, tzinfo=UTC)
    assert duration("36h").after(start) == start + timedelta(hours=36)
    assert duration("36h").after(start).tzinfo is UTC


def test_before_subtracts_the_same_calendar_span() -> None:
    assert duration("7d").before(datetime(2025, 2, 14, 9, tzinfo=UTC)) == datetime(2025, 2, 7, 9, tzinfo=UTC)
    assert duration("1mo").before(datetime(2025, 3, 31, tzinfo=UTC)) == datetime(2025, 2, 28, tzinfo=UTC)


class _Holder(BaseModel):
    every: Duration
    grace: Duration | None = None


def test_duration_serialises_as_its_text_inside_a_pydantic_model() -> None:
    holder = _Holder.model_validate({"every": "2w", "grace": "1y2mo"})
    assert holder.model_dump_json() == '{"every":"14d","grace":"1y2mo"}'
    assert holder.model_dump() == {"every": "14d", "grace": "1y2mo"}


def test_duration_round_trips_through_json_inside_a_pydantic_model() -> None:
    holder = _Holder(every=duration("1mo"), grace=duration("36h"))
    assert _Holder.model_validate_json(holder.model_dump_json()) == holder


def test_invalid_duration_inside_a_model_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"every\n.*invalid duration '14 days'"):
        _Holder.model_validate({"every": "14 days"})


@pytest.mark.parametrize("text", ["101y", "1201mo", "99999d", "9999999999999999999s"])
def test_durations_longer_than_a_century_are_flagged(text: str) -> None:
    assert duration(text).too_long


def test_a_century_is_not_too_long() -> None:
    assert not duration("100y").too_long
