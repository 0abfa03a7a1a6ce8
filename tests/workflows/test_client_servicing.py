"""Client ongoing planning & servicing (seed 004): A/B/C categories and their meeting cadences, time-skipping."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from sopflow.config import PROJECT_ROOT
from sopflow.durations import duration
from sopflow.playbook import Playbook, load_playbook
from sopflow.samples import render_check
from sopflow.templates import TemplateRenderer
from starter.rehearse import Rehearsal
from tests.conftest import checked_in_scenario, run

PLAYBOOK_FILE = PROJECT_ROOT / "playbooks" / "client_servicing.yaml"
TEMPLATES = PROJECT_ROOT / "templates"
SCENARIOS = PROJECT_ROOT / "playbooks" / "scenarios"

DEAL = {
    "advisor_email": "advisor@example.com",
    "advisor_id": "owner-401",
    "assistant_email": "assistant@example.com",
    "client_email": "client@example.com",
    "client_name": "Example Household",
}
A_PROFILE = {"net_worth": 2500000, "investable_assets": 1200000}
C_PROFILE = {"net_worth": 300000, "investable_assets": 200000}


@pytest.fixture(scope="module")
def servicing() -> Playbook:
    return load_playbook(PLAYBOOK_FILE, TEMPLATES)


def confirm(category: str, at: str = "0d") -> list[dict[str, Any]]:
    return [
        {"at": at, "form": "category_review", "fields": {"category": category, "reviewed_on": "$today"}},
        {"at": at, "task": "review_profile"},
    ]


def meeting(at: str, kind: str = "Topic meeting") -> dict[str, Any]:
    fields = {
        "met_on": "$today",
        "meeting_type": kind,
        "next_steps": "Review the proposal",
        "next_appointment_on": "$today+90d",
        "a360_household_updated": "yes",
    }
    return {"at": at, "form": "meeting_log", "fields": fields}


def moment(value: str) -> datetime:
    return datetime.fromisoformat(value)


def entered(result: Rehearsal, stage: str) -> datetime:
    return moment(next(e["at"] for e in result.of_kind("stage") if e["to"] == stage))


def dues(result: Rehearsal) -> list[datetime]:
    return [moment(e["due_at"]) for e in result.of_kind("visit_due")]


def chain(start: datetime, every: str, count: int) -> list[datetime]:
    step, out = duration(every), []
    for _ in range(count):
        start = step.after(start)
        out.append(start)
    return out


def test_playbook_validates_and_every_template_renders(servicing):
    assert render_check(servicing, TemplateRenderer(TEMPLATES)) == []
    assert [s.id for s in servicing.stages] == [
        "categorisation",
        "servicing_a",
        "servicing_b",
        "servicing_c",
        "client_departed",
    ]
    every = {s.id: [str(p.every) for p in s.cadence.phases] for s in servicing.stages if s.cadence}
    assert every == {"servicing_a": ["3mo"], "servicing_b": ["4mo"], "servicing_c": ["6mo"]}
    assert set(servicing.roles) == {"advisor", "assistant", "client", "practice_lead", "design_center"}
    assert all(v.endswith("example.com") for k, v in servicing.settings.items() if k.endswith("_email"))


@pytest.mark.parametrize(
    ("category", "profile", "every", "per_two_years"), [("A", A_PROFILE, "3mo", 8), ("C", C_PROFILE, "6mo", 4)]
)
async def test_meetings_fall_due_on_the_category_cadence_over_two_years(
    ts_env, servicing, category, profile, every, per_two_years
):
    steps = confirm(category)
    result = await run(ts_env, servicing, steps, until="732d", deal_id=f"CS-{category}", deal={**DEAL, **profile})

    stage = f"servicing_{category.lower()}"
    assert [e["to"] for e in result.of_kind("stage")] == ["categorisation", stage]
    start = entered(result, stage)
    assert dues(result) == chain(start, every, per_two_years)
    # Nothing logged: each meeting is reminded a week before, then escalates 14 days after it fell due.
    reminders = [moment(e["due_at"]) for e in result.of_kind("reminder") if "cadence" in e]
    missed = [moment(e["due_at"]) for e in result.of_kind("escalation") if e.get("reason") == "missed"]
    assert reminders == dues(result)
    assert missed == [d for d in dues(result) if duration("14d").after(d) <= duration("732d").after(result.started_at)]


async def test_a_client_happy_path_logged_meetings_reset_the_schedule_and_never_escalate(ts_env, servicing):
    deal, steps, until = checked_in_scenario("client_servicing_a_client")
    result = await run(ts_env, servicing, steps, until=until, deal_id="CS-A-1", deal=deal)

    start = entered(result, "servicing_a")
    forms = [e for e in result.of_kind("form") if e["form"] == "meeting_log"]
    assert len(forms) == 4
    for form in forms:  # each logged meeting: next due = meeting date + 3 months
        assert moment(form["next_due"]) == duration("3mo").after(moment(form["logged_at"]))
    assert not result.of_kind("escalation") and not result.of_kind("visit_due")
    templates = [e["template"] for e in result.of_kind("email")]
    assert templates.count("meeting_recap") == 4 and templates.count("design_center_request") == 2
    assert templates.count("opportunity_pipeline") == 1 and templates.count("meeting_reminder") == 4
    # The first reminder is for the first due date: 3 months after the category was confirmed.
    first = next(e for e in result.of_kind("reminder") if "cadence" in e)
    assert moment(first["due_at"]) == duration("3mo").after(start)
    assert result.status.stage == "servicing_a"


async def test_a_logged_meeting_moves_the_next_due_date(ts_env, servicing):
    steps = [*confirm("A"), meeting("60d")]
    result = await run(ts_env, servicing, steps, until="200d", deal_id="CS-A-2", deal={**DEAL, **A_PROFILE})

    (form,) = [e for e in result.of_kind("form") if e["form"] == "meeting_log"]
    logged = moment(form["logged_at"])
    assert dues(result) == [duration("3mo").after(logged)]
    assert duration("3mo").after(entered(result, "servicing_a")) not in dues(result)


async def test_a_missed_meeting_escalates_to_the_practice_lead(ts_env, servicing):
    result = await run(ts_env, servicing, confirm("B"), until="140d", deal_id="CS-B-1", deal={**DEAL, **A_PROFILE})

    due = duration("4mo").after(entered(result, "servicing_b"))
    (escalation,) = [e for e in result.of_kind("escalation") if e.get("reason") == "missed"]
    assert moment(escalation["due_at"]) == due
    assert moment(escalation["at"]) == duration("14d").after(due)
    overdue = [m for m in result.emails if m["X-Sopflow-Template"] == "client_servicing/meeting_overdue"]
    assert len(overdue) == 1
    assert "advisor@example.com" in overdue[0]["To"] and "practice-lead@example.com" in overdue[0]["Cc"]


async def test_recategorisation_is_checked_against_the_profile_and_re_plans_the_cadence(ts_env, servicing):
    deal, steps, until = checked_in_scenario("client_servicing_recategorised")
    result = await run(ts_env, servicing, steps, until=until, deal_id="CS-C-1", deal=deal)

    assert [e["to"] for e in result.of_kind("stage")] == ["categorisation", "servicing_c", "servicing_a"]
    (rejected,) = result.of_kind("rejected")
    assert "category A needs net worth of $2,000,000+" in rejected["reason"]
    c_start, a_start = entered(result, "servicing_c"), entered(result, "servicing_a")
    assert dues(result) == [duration("6mo").after(c_start), duration("3mo").after(a_start)]
    missed = [moment(e["due_at"]) for e in result.of_kind("escalation") if e.get("reason") == "missed"]
    assert missed == dues(result)


async def test_a_category_above_the_asset_tier_needs_an_override_reason(ts_env, servicing):
    steps = [
        *confirm("B"),
        {
            "at": "1d",
            "form": "category_review",
            "fields": {"category": "B", "reviewed_on": "$today", "override_reason": "Recurring revenue of a B client"},
        },
    ]
    result = await run(ts_env, servicing, steps, until="2d", deal_id="CS-C-2", deal={**DEAL, **C_PROFILE})

    stages = result.of_kind("stage")
    assert [e["to"] for e in stages] == ["categorisation", "servicing_b"]
    assert (
        moment(stages[-1]["at"]) > result.started_at + (duration("1d").after(result.started_at) - result.started_at) / 2
    )
