"""The Safe Balance site-visit schedule: every 2 weeks for 60 days, monthly to a year, then every 2 months."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest

from sopflow.cadence import interval_at, next_due, schedule
from sopflow.durations import add_months, duration
from sopflow.playbook import Cadence

SAFE_BALANCE = Cadence.model_validate(
    {
        "label": "site visit",
        "touchpoint": "site_visit",
        "phases": [{"until": "60d", "every": "14d"}, {"until": "365d", "every": "1mo"}, {"every": "2mo"}],
    }
)
ANCHORS = [
    datetime(2025, 1, 31, 9, tzinfo=UTC),
    datetime(2024, 1, 31, 9, tzinfo=UTC),
    datetime(2025, 6, 15, 14, 30, tzinfo=UTC),
    datetime(2025, 12, 31, 9, tzinfo=UTC),
    datetime(2025, 3, 22, 9, tzinfo=UTC),
]  # day 70 is May 31: later months clamp to shorter ones


def gaps_by_phase(anchor: datetime) -> dict[str, list[tuple[datetime, datetime]]]:
    """(previous, due) pairs of a three-year schedule, by the phase the previous date lies in."""
    dues = [anchor, *schedule(SAFE_BALANCE, anchor, anchor + timedelta(days=3 * 365))]
    phases: dict[str, list[tuple[datetime, datetime]]] = {"onboarding": [], "first_year": [], "beyond": []}
    for previous, due in pairwise(dues):
        age = (previous - anchor).days
        key = "onboarding" if age < 60 else "first_year" if age < 365 else "beyond"
        phases[key].append((previous, due))
    return phases


@pytest.mark.parametrize("anchor", ANCHORS)
def test_visits_are_exactly_fourteen_days_apart_before_day_sixty(anchor: datetime) -> None:
    onboarding = gaps_by_phase(anchor)["onboarding"]
    assert [due - previous for previous, due in onboarding] == [timedelta(days=14)] * 5
    assert [(due - anchor).days for _, due in onboarding] == [14, 28, 42, 56, 70]


@pytest.mark.parametrize("anchor", ANCHORS)
def test_visits_are_a_calendar_month_apart_until_a_year(anchor: datetime) -> None:
    first_year = gaps_by_phase(anchor)["first_year"]
    assert len(first_year) >= 9
    for previous, due in first_year:
        assert due == add_months(previous, 1)
        assert 28 <= (due - previous).days <= 31


@pytest.mark.parametrize("anchor", ANCHORS)
def test_visits_are_two_calendar_months_apart_after_a_year(anchor: datetime) -> None:
    beyond = gaps_by_phase(anchor)["beyond"]
    assert len(beyond) >= 11
    for previous, due in beyond:
        assert due == add_months(previous, 2)
        assert 59 <= (due - previous).days <= 62


@pytest.mark.parametrize("anchor", ANCHORS)
def test_visits_keep_the_time_of_day_of_the_anchor(anchor: datetime) -> None:
    assert {due.timetz() for due in schedule(SAFE_BALANCE, anchor, anchor + timedelta(days=3 * 365))} == {
        anchor.timetz()
    }


def test_schedule_for_a_client_launched_on_jan_31() -> None:
    anchor = datetime(2025, 1, 31, 9, tzinfo=UTC)
    dues = schedule(SAFE_BALANCE, anchor, datetime(2026, 6, 1, tzinfo=UTC))
    dates = [due.date().isoformat() for due in dues]
    assert dates == [
        "2025-02-14",
        "2025-02-28",
        "2025-03-14",
        "2025-03-28",
        "2025-04-11",  # every 14 days
        "2025-05-11",
        "2025-06-11",
        "2025-07-11",
        "2025-08-11",
        "2025-09-11",
        "2025-10-11",
        "2025-11-11",
        "2025-12-11",
        "2026-01-11",
        "2026-02-11",  # monthly while the previous visit is in the first year
        "2026-04-11",  # then every two months
    ]


def test_schedule_includes_a_due_date_equal_to_the_end() -> None:
    anchor = datetime(2025, 1, 31, 9, tzinfo=UTC)
    assert schedule(SAFE_BALANCE, anchor, anchor + timedelta(days=28))[-1] == anchor + timedelta(days=28)
    assert schedule(SAFE_BALANCE, anchor, anchor + timedelta(days=13)) == []


def test_interval_is_that_of_the_phase_the_base_lies_in() -> None:
    anchor = datetime(2025, 1, 31, 9, tzinfo=UTC)
    assert interval_at(SAFE_BALANCE, anchor, anchor + timedelta(days=59)) == duration("14d")
    assert interval_at(SAFE_BALANCE, anchor, anchor + timedelta(days=60)) == duration("1mo")
    assert interval_at(SAFE_BALANCE, anchor, anchor + timedelta(days=364)) == duration("1mo")
    assert interval_at(SAFE_BALANCE, anchor, anchor + timedelta(days=365)) == duration("2mo")
    assert interval_at(SAFE_BALANCE, anchor, anchor + timedelta(days=2000)) == duration("2mo")


def test_next_due_after_a_late_visit_counts_from_the_visit() -> None:
    anchor = datetime(2025, 1, 31, 9, tzinfo=UTC)
    late_visit = anchor + timedelta(days=20)  # due on day 14, visited on day 20
    assert next_due(SAFE_BALANCE, anchor, late_visit) == anchor + timedelta(days=34)


def test_next_due_after_a_late_first_year_visit_is_a_month_after_the_visit() -> None:
    anchor = datetime(2025, 1, 31, 9, tzinfo=UTC)
    late_visit = datetime(2025, 5, 20, 9, tzinfo=UTC)  # due 2025-05-11
    assert next_due(SAFE_BALANCE, anchor, late_visit) == datetime(2025, 6, 20, 9, tzinfo=UTC)


def test_a_single_phase_cadence_repeats_forever() -> None:
    weekly = Cadence.model_validate({"touchpoint": "review", "phases": [{"every": "1w"}]})
    anchor = datetime(2025, 1, 31, 9, tzinfo=UTC)
    dates = schedule(weekly, anchor, anchor + timedelta(days=400))
    assert len(dates) == 57
    assert {b - a for a, b in pairwise(dates)} == {timedelta(days=7)}


def test_only_the_last_phase_may_run_forever() -> None:
    with pytest.raises(ValueError, match="phase 0 needs 'until': only the last phase may run forever"):
        Cadence.model_validate({"touchpoint": "site_visit", "phases": [{"every": "14d"}, {"every": "1mo"}]})
