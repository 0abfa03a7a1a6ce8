"""`sopflow.forecast`: a client's own playbook run forward on a simulated clock, counted per week and group.

Seeds are made by the same simulation from a deal's start (its correctness against the real workflow is
tests/workflows/test_forecast_against_rehearsal.py), so each spec reads as "a client in this situation today".
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sopflow.business_calendar import Clock
from sopflow.durations import duration
from sopflow.forecast import CATEGORIES, Forecast, MemoClock, forecast, horizon
from sopflow.models import ClientSeed, LifecycleInput
from sopflow.playbook import Playbook
from starter.rehearse import Scenario, simulate
from tests.conftest import DEAL, launched_steps, sales_steps

# A Monday morning in New York (Safe Balance's zone), so week 0 starts on START's date.
START = datetime(2027, 3, 1, 14, tzinfo=UTC)


def seed(playbook: Playbook, steps: list[dict[str, Any]], days_ago: int, deal_id: str = "D-1") -> ClientSeed:
    """A client that started `days_ago` days before START and did `steps` since."""
    began = START - timedelta(days=days_ago)
    scenario = Scenario.model_validate({"deal": {"id": deal_id, "fields": DEAL}, "steps": steps, "until": "0d"})
    inp = LifecycleInput(deal_id=deal_id, playbook=playbook, fields=DEAL)
    sim, _ = simulate(inp, scenario, began)
    sim.run_until(START)
    state = sim.engine.state
    return ClientSeed(workflow_id=f"deal-{deal_id}", deal_id=deal_id, playbook=playbook, state=state, as_of=START)


def edit(playbook: Playbook, change: Callable[[dict[str, Any]], Any]) -> Playbook:
    """An edited copy of a playbook, as an SOP author's edited file would load (same version number)."""
    data = playbook.model_dump(mode="json", by_alias=True, exclude_unset=True)
    change(data)
    return Playbook.model_validate(data)


def stage(data: dict[str, Any], stage_id: str) -> dict[str, Any]:
    return next(s for s in data["stages"] if s["id"] == stage_id)


def rename_stage(old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        for stage in data["stages"]:
            stage["id"] = new if stage["id"] == old else stage["id"]
            for transition in stage.get("transitions", []):
                transition["to"] = new if transition["to"] == old else transition["to"]

    return change


def totals(result: Forecast) -> dict[str, int]:
    return {category: sum(weeks) for category, weeks in result.totals().items()}


def test_weeks_start_on_the_monday_of_the_first_day_and_the_horizon_covers_the_last_local_day():
    monday, until = horizon(START.date() + timedelta(days=3), 2)
    assert monday == START.date()
    assert until == datetime(2027, 3, 16, tzinfo=UTC)


def test_a_contract_left_unsigned_expires_in_the_week_its_14_days_end(safe_balance):
    client = seed(safe_balance, sales_steps(signed_on=None), days_ago=6)  # sent on day 1: expires in 9 days
    result, _ = forecast([client], START, 4, "nothing", "stage")
    assert result.counts["contract"]["deadlines"] == [0, 1, 0, 0]
    # Nothing happens in either assumption: the signature is the client's to give.
    on_time, _ = forecast([client], START, 4, "on_time", "stage")
    assert on_time.counts["contract"]["deadlines"] == [0, 1, 0, 0]


def test_nothing_happening_misses_every_visit_and_escalates_while_on_time_logs_them(safe_balance):
    client = seed(safe_balance, launched_steps(), days_ago=70)  # past the first 60 days: monthly visits
    nothing, _ = forecast([client], START, 26, "nothing", "playbook")
    on_time, _ = forecast([client], START, 26, "on_time", "playbook")
    assert 5 <= totals(nothing)["visits"] <= 7  # about monthly for half a year
    assert totals(nothing)["escalations"] == totals(nothing)["visits"]  # each missed visit escalates
    assert totals(on_time)["escalations"] == 0
    assert 5 <= totals(on_time)["visits"] <= 7
    # Reminders and overdue notices are the emails: fewer when visits are made.
    assert totals(on_time)["emails"] < totals(nothing)["emails"]


def test_tasks_falling_due_are_counted_at_their_due_date_and_fall_on_their_owners(safe_balance):
    client = seed(safe_balance, sales_steps("3d"), days_ago=4)  # signed yesterday: pre-launch tasks open
    open_tasks = [t for t in client.state.tasks.values() if t.done_at is None and t.due_at is not None]
    result, _ = forecast([client], START, 8, "nothing", "role")
    counted = sum(sum(per["tasks"]) for per in result.counts.values())
    assert counted == len(open_tasks) > 0
    assert set(result.counts) >= {task.owner for task in open_tasks}


def test_by_owner_names_the_role_and_its_crm_owner_id_never_a_person(safe_balance):
    client = seed(safe_balance, launched_steps(), days_ago=70)
    result, _ = forecast([client], START, 8, "nothing", "owner")
    assert set(result.counts) == {"rep:owner-17"}
    assert not any("@" in group for group in result.counts)


def test_a_closed_client_demands_nothing(safe_balance):
    steps = [*sales_steps(signed_on=None), {"at": "2d", "close": "lost", "reason": "went elsewhere"}]
    client = seed(safe_balance, steps, days_ago=5)
    result, _ = forecast([client], START, 4, "nothing", "stage")
    assert result.counts == {} and result.clients == 1


def test_what_if_visits_every_3_weeks_shows_fewer_visits_than_every_2(safe_balance):
    client = seed(safe_balance, launched_steps(), days_ago=10)  # in the fortnightly first 60 days
    edited = edit(safe_balance, lambda data: stage(data, "ongoing")["cadence"]["phases"][0].update(every="21d"))
    today, _ = forecast([client], START, 8, "on_time", "playbook")
    what_if, refused = forecast([client], START, 8, "on_time", "playbook", what_if=edited)
    assert refused == []
    assert totals(what_if)["visits"] < totals(today)["visits"]


def test_what_if_lists_the_clients_a_migration_would_refuse_and_why(safe_balance):
    client = seed(safe_balance, sales_steps(signed_on=None), days_ago=3)  # in 'contract'
    edited = edit(safe_balance, rename_stage("contract", "contract_sent"))
    _, refused = forecast([client], START, 4, "nothing", "stage", what_if=edited)
    assert [r.deal_id for r in refused] == ["D-1"]
    assert "stage 'contract' is not in v4" in refused[0].reason


@pytest.mark.parametrize("category", list(CATEGORIES))
def test_every_category_has_a_row_per_week_for_every_group(safe_balance, category):
    client = seed(safe_balance, launched_steps(), days_ago=70)
    result, _ = forecast([client], START, 3, "nothing", "stage")
    assert all(len(per[category]) == 3 for per in result.counts.values())


NEW_YORK_BUSINESS = Clock.of(
    Playbook.model_validate(
        {
            "id": "p",
            "version": 1,
            "stages": [{"id": "a"}],
            "timezone": "America/New_York",
            "calendar": {"holidays": {"country": "US"}, "send_window": {"start": "09:00", "end": "17:00"}},
        }
    ),
    {},
)
SPANS = [duration(text) for text in ("1d", "2w", "1mo", "36h", "3bd", "4bh", "1bd4bh")]


@given(
    moment=st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)),
    span=st.sampled_from(SPANS),
)
def test_a_clock_that_keeps_its_answers_answers_as_the_deal_clock_does(moment: datetime, span: Any) -> None:
    kept = MemoClock.around(NEW_YORK_BUSINESS)
    assert MemoClock.around(NEW_YORK_BUSINESS) is kept  # one per clock in a process
    for _ in range(2):  # computed, then kept
        assert kept.after(span, moment) == NEW_YORK_BUSINESS.after(span, moment)
        assert kept.before(span, moment) == NEW_YORK_BUSINESS.before(span, moment)
        assert kept.hold(moment) == NEW_YORK_BUSINESS.hold(moment)
