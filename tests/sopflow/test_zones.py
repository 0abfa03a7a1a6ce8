"""Zones from the pinned tzdata, local date-times typed without an offset, and how moments are shown."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import tzdata
from hypothesis import given
from hypothesis import strategies as st

from sopflow import zones
from sopflow.fields import FieldErrors, validate_values
from sopflow.playbook import FieldSpec

DATETIME = {"meeting_at": FieldSpec(type="datetime"), "zone": FieldSpec(type="timezone")}
NY = zones.zone("America/New_York")


def test_zones_come_from_the_pinned_tzdata_package_not_the_operating_system() -> None:
    assert tzdata.IANA_VERSION
    assert "America/New_York" in zones.ZONE_NAMES and zones.zone("America/New_York").key == "America/New_York"


@pytest.mark.parametrize(
    ("typed", "suggested"),
    [("America/NewYork", "America/New_York"), ("america/new_york", "America/New_York"), ("Europe/Londn", "London")],
)
def test_an_unknown_zone_is_refused_with_the_nearest_names(typed: str, suggested: str) -> None:
    with pytest.raises(zones.UnknownZone, match=rf"unknown time zone '{typed}' \(did you mean .*{suggested}"):
        zones.zone(typed)


def test_a_date_time_without_an_offset_is_local_to_the_deals_zone() -> None:
    values = validate_values(DATETIME, {"meeting_at": "2027-03-04 15:00"}, tz=NY)
    assert values == {"meeting_at": "2027-03-04T20:00:00+00:00"}


def test_a_date_time_with_an_offset_keeps_it_and_without_a_zone_naive_means_utc() -> None:
    assert validate_values(DATETIME, {"meeting_at": "2027-03-04T15:00+01:00"}, tz=NY)["meeting_at"].startswith(
        "2027-03-04T14:00"
    )
    assert validate_values(DATETIME, {"meeting_at": "2027-03-04 15:00"})["meeting_at"] == "2027-03-04T15:00:00+00:00"


def test_a_local_time_inside_the_daylight_saving_gap_is_a_field_error_naming_it() -> None:
    with pytest.raises(FieldErrors) as caught:
        validate_values(DATETIME, {"meeting_at": "2027-03-14 02:30"}, tz=NY)
    assert caught.value.errors["meeting_at"].startswith("2027-03-14T02:30 does not exist in America/New_York")


def test_a_local_time_repeated_when_clocks_go_back_is_the_first_of_the_two() -> None:
    assert validate_values(DATETIME, {"meeting_at": "2027-11-07 01:30"}, tz=NY)["meeting_at"].startswith(
        "2027-11-07T05:30"
    )


def test_a_timezone_field_accepts_iana_names_and_refuses_others_with_suggestions() -> None:
    assert validate_values(DATETIME, {"zone": " Europe/London "}) == {"zone": "Europe/London"}
    with pytest.raises(FieldErrors) as caught:
        validate_values(DATETIME, {"zone": "EST5"})
    assert caught.value.errors["zone"].startswith("unknown time zone 'EST5'")


def test_moments_are_shown_in_local_time_with_the_zone_abbreviation() -> None:
    assert zones.show(datetime(2027, 3, 15, 13, 0, tzinfo=UTC), NY) == "2027-03-15 09:00 EDT"
    assert zones.show(datetime(2027, 3, 12, 14, 0, tzinfo=UTC), NY) == "2027-03-12 09:00 EST"


@given(st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2030, 12, 31)))
def test_a_typed_local_time_either_round_trips_or_is_refused_as_inside_a_gap(naive: datetime) -> None:
    naive = naive.replace(microsecond=0)
    try:
        moment = zones.localize(naive, NY)
    except ValueError as exc:
        assert "does not exist in America/New_York" in str(exc)
        assert zones.wall(naive.date(), naive.time(), NY).replace(tzinfo=None) > naive  # the jump moves it later
        return
    assert moment.astimezone(UTC).astimezone(NY).replace(tzinfo=None) == naive
    assert moment.fold == 0  # a repeated time is the first of the two
