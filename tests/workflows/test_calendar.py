"""Real calendars through the real workflow, activities and SMTP sink on the time-skipping server: MedTrainer's
"same day" call on a Friday before a public holiday, Safe Balance's day-60 visit whatever the clock time, a
contract reminder held to the send window, and a scenario written in local times.

Dates are found from the day the test runs (the next real long weekend), so no test expires.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from sopflow import zones
from sopflow.durations import add_months
from sopflow.playbook import Playbook
from starter.rehearse import Rehearsal
from tests.conftest import (
    CONTRACT_REQUEST,
    PRELAUNCH_TASKS,
    TARGETING,
    friday_before_a_monday_holiday,
    quiet_start,
    run,
)

NY = zones.zone("America/New_York")
MEDTRAINER_DEAL = {
    "account_name": "Harbor Family Clinic",
    "admin_email": "admin@example.com",
    "csm_email": "csm@example.com",
    "team_lead_email": "lead@example.com",
    "rsm_email": "rsm@example.com",
    "tier": "Basic",
    "credentialing_software": False,
}


def new_york(day: date, at: str) -> str:
    """How the rehearsal shows that local time: `2027-01-19 10:00 EST`."""
    return zones.show(zones.localize(datetime.fromisoformat(f"{day}T{at}"), NY), NY)


def local_times(result: Rehearsal, kind: str, **match: Any) -> list[str]:
    """The local times (`2027-07-06 09:00 EDT`) of the timeline entries of a kind that match the given values."""
    return [e["local"] for e in result.of_kind(kind) if all(e.get(k) == v for k, v in match.items())]


def long_weekend() -> date:
    return friday_before_a_monday_holiday(date.today() + timedelta(days=2))


@pytest.mark.parametrize(
    ("assigned_at", "due_day", "escalation"),
    # Assigned at 16:00: due at Friday's close, escalated an hour into Tuesday (Monday is the holiday). Assigned at
    # 18:00, after hours: due at Tuesday's close, escalated at 10:00 on Wednesday. Never on the weekend.
    [("16:00", 0, (4, "10:00")), ("18:00", 4, (5, "10:00"))],
)
async def test_the_same_day_call_is_due_at_the_close_of_the_business_day_and_never_escalates_on_a_holiday(
    ts_env: WorkflowEnvironment,
    playbook: Any,
    assigned_at: str,
    due_day: int,
    escalation: tuple[int, str],
) -> None:
    friday = long_weekend()
    medtrainer: Playbook = playbook("medtrainer_onboarding")
    result = await run(ts_env, medtrainer, [], until="7d", deal=MEDTRAINER_DEAL, start=f"{friday}T{assigned_at}")

    (opened,) = [e for e in result.of_kind("task") if e.get("task") == "intro_call" and e.get("status") == "opened"]
    due = datetime.fromisoformat(opened["due_at"])
    assert zones.show(due, NY) == new_york(friday + timedelta(days=due_day), "17:00")
    assert local_times(result, "reminder", task="intro_call") == [new_york(friday + timedelta(days=due_day), "17:00")]
    days, at = escalation
    assert local_times(result, "escalation", task="intro_call") == [new_york(friday + timedelta(days=days), at)]


def visit_steps(closeout_at: str, visit_at: str) -> list[dict[str, Any]]:
    """Signed on day 3, launched and closed out on day 6 (at `closeout_at`), one visit logged at `visit_at`."""
    return [
        {"at": "0d", "form": "targeting", "fields": TARGETING},
        {"at": "1d", "form": "contract_request", "fields": CONTRACT_REQUEST},
        {"at": "3d", "event": "contract_signed", "event_id": "envelope-1/completed"},
        *({"at": "4d", "task": task} for task in PRELAUNCH_TASKS),
        {"at": "4d", "set": {"launch_date": "$today+2d"}},
        {"at": "5d", "advance": "launch"},
        {"at": "6d", "task": "launch_checklist"},
        {
            "at": closeout_at,
            "form": "closeout",
            "fields": {"launched_on": "$today", "staff_trained": "yes", "all_running": "yes"},
        },
        {"at": visit_at, "form": "site_visit", "fields": {"visited_on": "$today", "steps_cleared": "yes"}},
    ]


@pytest.mark.parametrize("visit_at", ["66d5m", "66d23h55m"])
async def test_a_visit_logged_on_day_60_gets_the_monthly_interval_whatever_the_clock_time(
    ts_env: WorkflowEnvironment, safe_balance: Playbook, visit_at: str
) -> None:
    """ "Onboarding Stage (First 60 Days): Site visit 1x every 2 weeks; 61-365 days: 1x every month": the closeout
    is filed at 14:00 on day 6, so day 60 of the schedule is day 66; a visit that day at 00:05 or at 23:55 local
    both move the schedule to monthly."""
    result = await run(ts_env, safe_balance, visit_steps("6d14h", visit_at), until="67d")
    (logged,) = [e for e in result.of_kind("form") if e.get("form") == "site_visit"]
    day_66 = date.fromisoformat(result.timeline[0]["local"][:10]) + timedelta(days=66)
    monthly = datetime.combine(day_66, time(0))
    assert logged["next_due"].startswith(add_months(monthly, 1).date().isoformat())


async def test_a_contract_reminder_falling_at_midnight_is_held_to_the_send_window_while_the_expiry_is_not(
    ts_env: WorkflowEnvironment, safe_balance: Playbook
) -> None:
    """The contract goes out at midnight on day 1 of a Monday start, so its reminders fall at midnight on day 8 (a
    Tuesday: held to 09:00) and day 13 (a Sunday: held to Monday 09:00); the expiry itself is at midnight on day 15,
    to the minute."""
    monday = date.fromisoformat(quiet_start(0, 16))
    steps = [
        {"at": "0d", "form": "targeting", "fields": TARGETING},
        {"at": "1d", "form": "contract_request", "fields": CONTRACT_REQUEST},
    ]
    result = await run(ts_env, safe_balance, steps, until="16d", start=str(monday))
    reminders = local_times(result, "reminder", deadline="contract expires")
    assert [r[:16] for r in reminders] == [
        f"{monday + timedelta(days=8)} 09:00",
        f"{monday + timedelta(days=14)} 09:00",
    ]
    expired = next(e for e in result.of_kind("stage") if e["to"] == "contract_expired")
    assert expired["local"][11:16] == "00:00" and expired["day"] == pytest.approx(15.0, abs=0.001)


async def test_a_scenario_written_in_local_times_and_business_days_rehearses_in_the_deals_zone(
    ts_env: WorkflowEnvironment, safe_balance: Playbook
) -> None:
    """`at: 2bd` and a meeting typed as local time (`$today+2d@15:00`) are read in the deal's own zone."""
    deal = {"rep_email": "rep@example.com", "account_manager_email": "am@example.com", "timezone": "Europe/London"}
    steps = [
        {"at": "0d", "form": "targeting", "fields": TARGETING},
        {"at": "2bd", "form": "contract_request", "fields": CONTRACT_REQUEST},
    ]
    friday = long_weekend()
    result = await run(ts_env, safe_balance, steps, until="6d", deal=deal, start=str(friday))
    (sent,) = [e for e in result.of_kind("form") if e.get("form") == "contract_request"]
    # Friday + 2 business days of the company's calendar (Monday is its holiday) is Wednesday, 00:00 London time.
    assert sent["local"].startswith(f"{friday + timedelta(days=5)} 00:00 GMT") or sent["local"].startswith(
        f"{friday + timedelta(days=5)} 00:00 BST"
    )
