"""Radio station onboarding (seed 001) through the real workflow, activities, SMTP sink and SQLite, time-skipping."""

from __future__ import annotations

import pytest

from sopflow.config import PROJECT_ROOT
from sopflow.playbook import Playbook
from sopflow.playbook_checks import load_playbook
from sopflow.samples import render_check
from sopflow.templates import TemplateRenderer
from tests.conftest import body, checked_in_scenario, mail, quiet_start, run, sent, stage_path

PLAYBOOK_FILE = PROJECT_ROOT / "playbooks" / "radio_onboarding.yaml"
TEMPLATES = PROJECT_ROOT / "templates"
SCENARIOS = PROJECT_ROOT / "playbooks" / "scenarios"

CUSTOMER_BRIEF_TASKS = ["review_brief", "assign_csm"]


@pytest.fixture(scope="module")
def radio() -> Playbook:
    return load_playbook(PLAYBOOK_FILE, TEMPLATES)


def test_playbook_validates_and_every_template_renders(radio):
    assert render_check(radio, TemplateRenderer(TEMPLATES)) == []
    assert [s.id for s in radio.stages if not s.terminal] == [
        "customer_brief",
        "introduction_call",
        "set_up",
        "training",
        "post_training_cs",
        "post_training_sales",
    ]
    assert {s.id: s.terminal for s in radio.stages if s.terminal} == {
        "deal_won": "won",
        "closed_lost": "lost",
        "cancelled": "cancelled",
    }
    # Roles, never people: every address in the playbook is a role resolved from deal data or a team setting.
    assert set(radio.roles) == {"onboarding_lead", "csm", "setup_engineer", "sales_rep", "client_contact", "users"}
    assert all(value.endswith("example.com") for key, value in radio.settings.items() if key.endswith("_email"))


async def test_happy_path_reaches_deal_won_with_every_email_sent_and_every_task_done(ts_env, radio):
    deal, steps, until = checked_in_scenario("radio_onboarding_happy_path")
    result = await run(ts_env, radio, steps, until=until, deal_id="RADIO-1", deal=deal)

    assert stage_path(result) == [
        "customer_brief",
        "introduction_call",
        "set_up",
        "training",
        "post_training_cs",
        "post_training_sales",
        "deal_won",
    ]
    assert result.status.stage == "deal_won" and result.status.outcome == "won"

    emails = sent(result)
    expected = {
        "brief_review_request": ("New onboarding deal: review the customer brief for Example Radio Group", 0.0),
        "csm_assigned": ("You are the CSM for Example Radio Group", 1.0),
        "intro_call_invitation": (
            "Welcome aboard, Example Radio Group: let's schedule your onboarding introduction call",
            1.0,
        ),
        "intro_call_recap": ("Recap of our introduction call (Example Radio Group) and next steps", 6.0),
        "setup_info_request": ("Set-up: the station and user information we need (Example Radio Group)", 7.0),
        "setup_details": ("Station set-up: 3 station(s) for Example Radio Group", 10.0),
        "onboarding_complete": (
            "Onboarding complete for Example Radio Group: congratulations and what comes next",
            30.0,
        ),
        "sales_handoff": ("Onboarding finished: Example Radio Group is back with Sales", 36.0),
    }
    for template, (subject, day) in expected.items():
        assert [(e["subject"], e["status"]) for e in emails[template]] == [(subject, "sent")], template
        assert float(emails[template][0]["day"]) == pytest.approx(day, abs=0.01), template
    schedule = emails["training_schedule"]
    assert len(schedule) == 1 and schedule[0]["status"] == "sent"
    assert schedule[0]["subject"].startswith("Your training schedule: first session ")
    assert set(emails) == {*expected, "training_schedule"}  # no reminder, escalation or closing email
    assert all(e["status"] == "sent" for entries in emails.values() for e in entries)

    # The messages themselves: right people, the CSM as Reply-To, the forms and resources linked.
    (invitation,) = mail(result, "intro_call_invitation")
    assert "gm@example.com" in invitation["To"] and "csm@example.com" in invitation["Reply-To"]
    (details,) = mail(result, "setup_details")
    assert "station-setup@example.com" in details["To"] and "csm@example.com" in details["Cc"]
    (complete,) = mail(result, "onboarding_complete")
    text = body(complete, "plain")
    assert "/forms/RADIO-1/completion_survey" in text and "https://help.example.com/training" in text
    assert "sales@example.com" in complete["Cc"]
    # "[CSM] Sends Onboarding completion email to users": every user on the deal's list, and the onboarding contact.
    for address in ("pd@example.com", "md@example.com", "traffic@example.com", "gm@example.com"):
        assert address in complete["To"], address
    (entry,) = emails["onboarding_complete"]
    assert entry["to"] == ["users", "client_contact"]  # the timeline names roles, never addresses
    (recap,) = mail(result, "intro_call_recap")
    assert "https://help.example.com/getting-started" in body(recap, "plain")

    done = {e["task"] for e in result.of_kind("task") if e["status"] == "done"}
    opened = {e["task"] for e in result.of_kind("task") if e["status"] == "opened"}
    assert opened == done and len(done) == 14
    assert not result.of_kind("reminder") and not result.of_kind("escalation")
    # The one early attempt to leave Customer Brief was refused.
    (rejected,) = result.of_kind("rejected")
    assert rejected["advance"] == "introduction_call"


async def test_leaving_a_stage_with_open_tasks_is_rejected_naming_them(ts_env, radio):
    deal, _, _ = checked_in_scenario("radio_onboarding_happy_path")
    steps = [
        {"at": "0d", "advance": "introduction_call"},
        {"at": "0d", "form": "customer_brief_review", "fields": {"information_complete": "yes"}},
        {"at": "0d", "form": "csm_assignment", "fields": {"csm_email": "csm@example.com"}},
        {"at": "0d", "task": "review_brief"},
        {"at": "1d", "advance": "introduction_call"},  # assign_csm still open
        {"at": "1d", "task": "assign_csm"},
        {"at": "1d", "advance": "introduction_call"},
        {"at": "2d", "advance": "set_up"},  # nothing of stage 2 done yet
    ]
    result = await run(ts_env, radio, steps, until="3d", deal_id="RADIO-3", deal=deal)

    first, second, third = (e["reason"] for e in result.of_kind("rejected"))
    for task in CUSTOMER_BRIEF_TASKS:
        assert f"task '{task}' not done" in first
    assert "form 'customer_brief_review' not submitted" in first and "form 'csm_assignment' not submitted" in first
    assert "task 'assign_csm' not done" in second and "review_brief" not in second
    assert third.startswith("cannot leave 'introduction_call' for 'set_up'")
    for task in ("schedule_intro_call", "hold_intro_call"):
        assert f"task '{task}' not done" in third
    assert "form 'intro_call_outcome' not submitted" in third
    assert stage_path(result) == ["customer_brief", "introduction_call"]
    assert result.status.stage == "introduction_call"


async def test_brief_with_missing_contract_information_cannot_leave_customer_brief(ts_env, radio):
    deal, steps, until = checked_in_scenario("radio_onboarding_incomplete_brief")
    result = await run(ts_env, radio, steps, until=until, deal_id="RADIO-4", deal=deal)

    (rejected,) = result.of_kind("rejected")
    assert "payment_type" in rejected["reason"] and "the signed contract is not on the deal" in rejected["reason"]
    assert "the brief review found information missing" in rejected["reason"]
    assert stage_path(result) == ["customer_brief", "closed_lost"]
    (closed,) = sent(result)["onboarding_closed"]
    assert closed["subject"] == "Deal lost: Example Radio Group" and closed["status"] == "sent"
    assert "Contract never signed" in body(mail(result, "onboarding_closed")[0], "plain")


async def test_stalled_training_reminds_the_csm_escalates_to_the_lead_and_the_client_cancels(ts_env, radio):
    deal, steps, until = checked_in_scenario("radio_onboarding_training_stalls")
    # Started on a Monday: the tasks fall due at midnight on Mondays, so their notices wait for the 09:00 window.
    result = await run(ts_env, radio, steps, until=until, deal_id="RADIO-2", deal=deal, start=quiet_start(0, 60))

    training = next(e for e in result.of_kind("stage") if e["to"] == "training")
    entered = float(training["day"])
    assert entered == pytest.approx(14.0, abs=0.01)

    reminders = [(e["task"], float(e["day"])) for e in result.of_kind("reminder")]
    assert reminders == [
        ("conduct_training", pytest.approx(entered + 21 + 9 / 24, abs=0.05)),
        ("training_follow_ups", pytest.approx(entered + 28 + 9 / 24, abs=0.05)),
    ]
    (escalation,) = result.of_kind("escalation")
    assert escalation["task"] == "conduct_training"
    assert float(escalation["day"]) == pytest.approx(entered + 21 + 7 + 9 / 24, abs=0.05)
    escalated = mail(result, "task_escalation")
    assert len(escalated) == 1
    assert "onboarding@example.com" in escalated[0]["To"] and "sales@example.com" in escalated[0]["Cc"]
    overdue = [e for e in sent(result)["task_overdue"] if e["status"] == "sent"]
    assert [e["to"] for e in overdue] == [["csm"], ["csm"]]

    (rejected,) = result.of_kind("rejected")
    assert "task 'conduct_training' not done" in rejected["reason"]
    assert "form 'training_session' not submitted" in rejected["reason"]

    assert stage_path(result)[-2:] == ["training", "cancelled"]
    assert result.status.stage == "cancelled" and result.status.outcome == "cancelled"
    (closed,) = sent(result)["onboarding_closed"]
    assert closed["subject"] == "Onboarding cancelled: Example Community Radio" and closed["status"] == "sent"
    text = body(mail(result, "onboarding_closed")[0], "plain")
    assert "Station sold; the new owner keeps the legacy system" in text
    # Closed: no reminder after the cancellation.
    assert all(float(e["day"]) <= 50 for e in result.of_kind("reminder") + result.of_kind("escalation"))


async def test_the_completion_email_reaches_every_user_set_on_the_deal_and_training_waits_for_the_list(ts_env, radio):
    """ "[CSM] Sends Onboarding completion email to users": the users list is the deal's (set here as staff would with
    `sopflow deal set D -f users=a@example.com,b@example.com`); training cannot end without it."""
    deal, steps, _ = checked_in_scenario("radio_onboarding_happy_path")
    for step in steps:
        if step.get("form") == "station_setup_details":
            step["fields"].pop("user_emails")
    until_completion = [s for s in steps if s.get("advance") != "post_training_sales" and float(s["at"][:-1]) <= 30]
    users = "ana@example.com, ben@example.com;cy@example.com"
    late = [
        *until_completion[:-1],
        {"at": "30d", "advance": "post_training_cs"},  # refused: no users list yet
        {"at": "30d1h", "set": {"users": users}},
        {"at": "30d1h", "advance": "post_training_cs"},
    ]
    result = await run(ts_env, radio, late, until="31d", deal_id="RADIO-7", deal=deal)

    (refused,) = [e for e in result.of_kind("rejected") if e.get("advance") == "post_training_cs"]
    assert "users" in refused["reason"]
    assert result.status.fields["users"] == ["ana@example.com", "ben@example.com", "cy@example.com"]
    (complete,) = mail(result, "onboarding_complete")
    recipients = str(complete["To"])
    assert all(user in recipients for user in ("ana@example.com", "ben@example.com", "cy@example.com"))
    assert "gm@example.com" in recipients and "Hello everyone" in body(complete, "plain")
