"""Client ongoing planning & servicing (seed 004): A/B/C categories, booked meetings with reminders, per-meeting
tasks and the category cadences, through the real workflow on the time-skipping server."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Any

import pytest

from sopflow.business_calendar import Clock
from sopflow.config import PROJECT_ROOT
from sopflow.durations import duration
from sopflow.playbook import Playbook
from sopflow.playbook_checks import load_playbook
from sopflow.samples import render_check
from sopflow.templates import TemplateRenderer
from starter.rehearse import Rehearsal
from tests.conftest import checked_in_scenario, mail, quiet_start, run

PLAYBOOK_FILE = PROJECT_ROOT / "playbooks" / "financial_servicing.yaml"
TEMPLATES = PROJECT_ROOT / "templates"

DEAL = {
    "advisor_email": "advisor@example.com",
    "advisor_id": "owner-401",
    "assistant_email": "assistant@example.com",
    "client_email": "client@example.com",
    "client_name": "Example Household",
}
A_PROFILE = {"net_worth": 2500000, "investable_assets": 1200000, "household_income": 450000, "client_age": 50}
B_PROFILE = {"net_worth": 800000, "investable_assets": 600000, "household_income": 300000, "client_age": 40}
C_PROFILE = {"net_worth": 300000, "investable_assets": 200000, "household_income": 160000, "client_age": 30}


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
        "next_appointment_at": "$today+90d@14:00",
    }
    return {"at": at, "form": "meeting_log", "fields": fields}


def moment(value: str) -> datetime:
    return datetime.fromisoformat(value)


def entered(result: Rehearsal, stage: str) -> datetime:
    return moment(next(e["at"] for e in result.of_kind("stage") if e["to"] == stage))


def dues(result: Rehearsal) -> list[datetime]:
    return [moment(e["due_at"]) for e in result.of_kind("visit_due")]


# The playbook's clock (US Eastern): meetings on a cadence are dates, due at the close of business (17:00 local).
CLOCK = Clock.of(load_playbook(PLAYBOOK_FILE), DEAL)


def after(span: str, moment: datetime) -> datetime:
    """`span` after a moment in the client's local calendar (a month later is the same local time)."""
    return CLOCK.after(duration(span), moment)


def notice(at: datetime, announces: datetime) -> datetime | None:
    """A reminder due `at` waits for the send window, and is dropped if it would then go out at or after the moment
    it announces (a 1h reminder of a Saturday meeting)."""
    held = CLOCK.hold(at)
    return held if held == at or held < announces else None


def chain(start: datetime, every: str, count: int) -> list[datetime]:
    """The due dates of a cadence nobody logs: every `every` from the local date of `start`, at the close."""
    due, out = CLOCK.due_on(CLOCK.local_date(start)), []
    for _ in range(count):
        due = after(every, due)
        out.append(due)
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
    horizon = after("732d", result.started_at)
    assert missed == [d for d in dues(result) if CLOCK.hold(after("14d", d)) <= horizon]


async def test_a_client_happy_path_logged_meetings_reset_the_schedule_and_never_escalate(ts_env, servicing):
    deal, steps, until = checked_in_scenario("financial_servicing_a_client")
    result = await run(ts_env, servicing, steps, until=until, deal_id="CS-A-1", deal=deal)

    start = entered(result, "servicing_a")
    forms = [e for e in result.of_kind("form") if e["form"] == "meeting_log"]
    assert len(forms) == 4
    for form in forms:  # each logged meeting: next due = meeting date + 3 months (a date, due at the close)
        assert moment(form["next_due"]) == after("3mo", moment(form["logged_at"]))
    assert not result.of_kind("escalation") and not result.of_kind("visit_due")
    templates = [e["template"] for e in result.of_kind("email")]
    assert templates.count("meeting_recap") == 4 and templates.count("design_center_request") == 2
    assert templates.count("meeting_due") == 4
    # The first "book it" reminder is for the first due date: 3 months after the category was confirmed.
    first = next(e for e in result.of_kind("reminder") if "cadence" in e)
    assert moment(first["due_at"]) == chain(start, "3mo", 1)[0]
    assert result.status.stage == "servicing_a"
    assert result.status.fields["suggested_category"] == "A"

    # Every booked meeting: the client one week, one day and one hour before; the advisor's checklist a week before.
    # Booked at 15:00 local; a week and a day before are 15:00 local (held to the send window on a day off), an
    # hour before is exactly an hour.
    meetings = [moment(e["starts_at"]) for e in result.of_kind("appointment")]
    assert len(meetings) == 5 and all(CLOCK.local(m).time() == time(15) for m in meetings)
    held = [m for m in meetings if m <= after("400d", result.started_at)]
    client_reminders = [moment(e["at"]) for e in result.of_kind("email") if e["template"] == "client_meeting_reminder"]
    expected = [notice(CLOCK.before(duration(before), m), m) for m in held[:4] for before in ("7d", "1d", "1h")]
    assert client_reminders == [at for at in expected if at is not None]
    assert len(mail(result, "client_meeting_reminder")) == len(client_reminders)
    assert len(mail(result, "meeting_prep")) == 4
    (reminder,) = [m for m in mail(result, "client_meeting_reminder") if "in one hour" in str(m["Subject"])][:1]
    assert reminder["To"] == "Example Household <client@example.com>"

    # Preparation tasks open once per booked meeting, follow-ups once per logged meeting; all done, none overdue.
    opened = [e["task"] for e in result.of_kind("task") if e["status"] == "opened"]
    assert opened.count("verify_accounts") == 5 and opened.count("trusted_advisor_outreach") == 5
    assert opened.count("update_a360_household") == 4 and opened.count("design_center_collab") == 2
    assert opened.count("open_opportunity_pipelines") == 1
    assert not [e for e in result.of_kind("reminder") if "task" in e]
    # One servicing year per run.
    assert result.status.run == 2


async def test_a_logged_meeting_moves_the_next_due_date(ts_env, servicing):
    steps = [*confirm("A"), meeting("60d")]
    result = await run(ts_env, servicing, steps, until="200d", deal_id="CS-A-2", deal={**DEAL, **A_PROFILE})

    (form,) = [e for e in result.of_kind("form") if e["form"] == "meeting_log"]
    logged = moment(form["logged_at"])
    assert dues(result) == [after("3mo", logged)]
    assert chain(entered(result, "servicing_a"), "3mo", 1)[0] not in dues(result)


async def test_a_missed_meeting_escalates_to_the_practice_lead(ts_env, servicing):
    result = await run(ts_env, servicing, confirm("B"), until="140d", deal_id="CS-B-1", deal={**DEAL, **B_PROFILE})

    (due,) = chain(entered(result, "servicing_b"), "4mo", 1)
    (escalation,) = [e for e in result.of_kind("escalation") if e.get("reason") == "missed"]
    assert moment(escalation["due_at"]) == due
    assert moment(escalation["at"]) == CLOCK.hold(after("14d", due))  # 14 days later, in the send window
    overdue = [m for m in result.emails if m["X-Sopflow-Template"] == "financial_servicing/meeting_overdue"]
    assert len(overdue) == 1
    assert "advisor@example.com" in overdue[0]["To"] and "practice-lead@example.com" in overdue[0]["Cc"]


async def test_recategorisation_is_checked_against_the_profile_and_re_plans_the_cadence(ts_env, servicing):
    deal, steps, until = checked_in_scenario("financial_servicing_recategorised")
    result = await run(ts_env, servicing, steps, until=until, deal_id="CS-C-1", deal=deal)

    assert [e["to"] for e in result.of_kind("stage")] == ["categorisation", "servicing_c", "servicing_a"]
    (rejected,) = result.of_kind("rejected")
    assert "the profile does not suggest category A" in rejected["reason"]
    suggested = [e["values"]["suggested_category"] for e in result.of_kind("fields") if "values" in e]
    assert suggested == ["C", "A"]  # at the start, then once the profile grew
    c_start, a_start = entered(result, "servicing_c"), entered(result, "servicing_a")
    assert dues(result) == [chain(c_start, "6mo", 1)[0], chain(a_start, "3mo", 1)[0]]
    missed = [moment(e["due_at"]) for e in result.of_kind("escalation") if e.get("reason") == "missed"]
    assert missed == dues(result)


async def test_a_neglected_meeting_reminds_and_escalates_its_tasks_then_the_client_leaves(ts_env, servicing):
    deal, steps, until = checked_in_scenario("financial_servicing_neglected")
    # Started on a Wednesday with no holiday ahead: every due moment below falls on a working day.
    result = await run(ts_env, servicing, steps, until=until, deal_id="FS-B-1", deal=deal, start=quiet_start(2, 70))

    # A straddling profile gets one answer, with the rows that pulled each way.
    assert result.status.fields["suggested_category"] == "B"
    assert result.status.fields["category_basis"] == (
        "B (median of 8 rows: A on net_worth, investable_assets; B on household_income, ages, initial_revenue, "
        "recurring_revenue, products; C on referrals)"
    )
    (meeting,) = [moment(e["starts_at"]) for e in result.of_kind("appointment")][:1]
    task_reminders = {e["task"]: moment(e["at"]) for e in result.of_kind("reminder") if "task" in e}
    # Preparation not done: both preparers are reminded when it falls due, two days before the meeting.
    assert (
        task_reminders["verify_accounts"] == task_reminders["trusted_advisor_outreach"] == meeting - timedelta(days=2)
    )
    # The A360 update after the logged meeting: due 3 days after the meeting's date at the close, reminded then,
    # escalated a week after that.
    logged = moment(next(e["at"] for e in result.of_kind("form") if e["form"] == "meeting_log"))
    due = after("3d", CLOCK.due_on(CLOCK.local_date(logged)))
    assert task_reminders["update_a360_household"] == due
    (escalation,) = [e for e in result.of_kind("escalation") if e.get("task") == "update_a360_household"]
    assert moment(escalation["at"]) == after("7d", due)
    (escalated,) = mail(result, "task_escalation")
    assert "practice-lead@example.com" in escalated["To"]
    assert [e["to"] for e in result.of_kind("stage")][-1] == "client_departed"
    assert result.status.outcome == "cancelled"
    assert result.status.fields["departure_reason"] == "Moved to a family office"


async def test_a_category_other_than_the_suggestion_needs_an_override_reason(ts_env, servicing):
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


# "Timeline - B Clients / Preparing for Review: ... Submit to Design Center and schedule collab as needed / Update A360
# Household / Create new Opportunity pipelines if necessary": the A and C timelines' preparation has no such items.
B_REVIEW_PREPARATION = {"b_review_design_center", "b_review_update_a360_household", "b_review_opportunity_pipelines"}


def opened(result: Rehearsal) -> list[str]:
    return [e["task"] for e in result.of_kind("task") if e["status"] == "opened"]


@pytest.mark.parametrize(
    ("category", "profile", "gets_them"), [("A", A_PROFILE, False), ("B", B_PROFILE, True), ("C", C_PROFILE, False)]
)
async def test_only_a_b_client_prepares_its_annual_review_with_the_b_timelines_own_items(
    ts_env, servicing, category, profile, gets_them
):
    booking = {"meeting_at": "$today+10d@15:00", "meeting_type": "Annual review"}
    steps = [*confirm(category), {"at": "1d", "form": "meeting_booking", "fields": booking}]
    result = await run(ts_env, servicing, steps, until="2d", deal={**DEAL, **profile})

    assert result.status.stage == f"servicing_{category.lower()}"
    open_ids = {task.id for task in result.status.open_tasks}
    assert {"verify_accounts", "trusted_advisor_outreach"} <= open_ids
    assert (open_ids >= B_REVIEW_PREPARATION) is gets_them
    assert bool(B_REVIEW_PREPARATION & open_ids) is gets_them


async def test_a_b_clients_review_preparation_belongs_to_the_review_not_to_its_other_meetings(ts_env, servicing):
    fields, steps, until = checked_in_scenario("financial_servicing_b_client")
    result = await run(ts_env, servicing, steps, until=until, deal=fields, deal_id="FS-B-1")

    log_day = next(float(e["day"]) for e in result.of_kind("form") if e["form"] == "meeting_log")
    b_items = [e for e in result.of_kind("task") if e["task"] in B_REVIEW_PREPARATION and e["status"] == "opened"]
    assert {e["task"] for e in b_items} == B_REVIEW_PREPARATION
    assert all(float(e["day"]) >= log_day for e in b_items)  # not for the book meeting booked on day 2
    review = moment(result.status.fields["next_meeting_at"])
    assert all(moment(e["due_at"]) == review - timedelta(days=2) for e in b_items)
    assert opened(result).count("verify_accounts") == 2
    assert not [e for e in result.of_kind("reminder") if e.get("task")]  # every preparation done in time
    assert not result.of_kind("escalation") and result.status.stage == "servicing_b"
