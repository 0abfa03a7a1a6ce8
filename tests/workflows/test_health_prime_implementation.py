"""Health Prime implementation (the lifecycle Closed Won hands off to), through the real workflow, time-skipping."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import pytest

from sopflow.playbook import Playbook
from sopflow.samples import render_check
from sopflow.templates import TemplateRenderer
from tests.conftest import TEMPLATES, body, checked_in_scenario, mail, quiet_start, run, shipped_playbook, stage_path

DEAL = {
    "company_name": "Example Clinic",
    "target_go_live_date": "$today+30d",
    "sales_rep_email": "rep@example.com",
}


@pytest.fixture(scope="module")
def implementation() -> Playbook:
    return shipped_playbook("health_prime_implementation")


def on(value: str) -> date:
    return datetime.fromisoformat(value).date()


def test_playbook_validates_and_every_template_renders(implementation):
    assert render_check(implementation, TemplateRenderer(TEMPLATES)) == []
    assert [s.id for s in implementation.terminal_stages()] == ["live", "backed_out"]


async def test_happy_path_moves_training_and_reminders_with_the_confirmed_go_live_date(ts_env, implementation):
    deal, steps, until = checked_in_scenario("health_prime_implementation_happy_path")
    # Started on a Monday: the go-live is a Thursday, its reminders fall on a Thursday and a Tuesday at 17:00.
    result = await run(
        ts_env,
        implementation,
        steps,
        until=until,
        deal_id="HP-1.health_prime_implementation",
        deal=deal,
        start=quiet_start(0, 62),
    )

    assert stage_path(result) == ["kickoff", "configuration", "live"]
    assert result.status.outcome == "won" and result.status.fields["client_status"] == "Live"
    go_live = on(result.status.fields["target_go_live_date"])
    assert go_live == (result.started_at + timedelta(days=5 + 54)).date()  # the date confirmed at the kickoff
    (training,) = [e for e in result.of_kind("task") if e["task"] == "staff_training" and e["status"] == "opened"]
    assert on(training["due_at"]) == go_live - timedelta(days=7)
    reminders = [on(e["at"]) for e in result.of_kind("email") if e["template"] == "go_live_reminder"]
    assert reminders == [go_live - timedelta(days=14), go_live - timedelta(days=2)]
    assert not result.of_kind("escalation")
    (live,) = mail(result, "went_live")
    assert "rep@example.com" in live["To"] and "sales-vp@example.com" in live["To"]


async def test_a_kickoff_never_scheduled_escalates_to_the_sales_vp(ts_env, implementation):
    # Started on a Friday: due at midnight on day 3 (a Monday), escalated 2 days later when the window opens.
    result = await run(ts_env, implementation, [], until="6d", deal_id="HP-5.impl", deal=DEAL, start=quiet_start(4))

    escalation = next(e for e in result.of_kind("escalation") if e.get("task") == "schedule_kickoff")
    assert float(escalation["day"]) == pytest.approx(5 + 9 / 24, abs=0.05)  # due on day 3, escalated 2 days later
    (mail_sent,) = mail(result, "task_escalation")
    assert "sales-vp@example.com" in mail_sent["To"]
    assert result.status.stage == "kickoff"


async def test_a_back_out_after_signing_is_closed_here_with_its_reason(ts_env, implementation):
    steps: list[dict[str, Any]] = [
        {"at": "23h", "task": "review_ticket"},  # before it falls due on day 1, not at that very moment
        {"at": "1d", "task": "schedule_kickoff"},
        {"at": "2d", "form": "kickoff_call", "fields": {"held_on": "$today"}},
        {
            "at": "9d",
            "close": "cancelled",
            "fields": {"back_out_reason": "Acquired by a hospital group"},
            "reason": "VP",
        },
    ]
    result = await run(ts_env, implementation, steps, until="10d", deal_id="HP-6.impl", deal=DEAL)

    assert stage_path(result) == ["kickoff", "configuration", "backed_out"]
    assert result.status.outcome == "cancelled" and result.status.fields["client_status"] == "Backed out"
    (backed,) = mail(result, "backed_out")
    assert "Acquired by a hospital group" in body(backed, "plain") and "sales-vp@example.com" in backed["To"]
