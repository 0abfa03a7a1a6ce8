"""MedTrainer CSM onboarding (seed 003) through the real workflow, activities and SMTP sink on the time-skipping server.

The welcome email's rosters depend on the tier and on Credentialing Software; the same-day call escalates to the
Team Lead; the recap carries the CPR course files; an admin who never schedules is reminded, then escalated.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import yaml

from sopflow.fields import FieldErrors, validate_values
from sopflow.mailsink import MailSink
from sopflow.playbook import Playbook
from sopflow.playbook_checks import load_playbook
from sopflow.samples import render_check
from sopflow.templates import TemplateRenderer
from starter.rehearse import Rehearsal
from tests.conftest import PLAYBOOKS, TEMPLATES, checked_in_scenario, quiet_start, run

PLAYBOOK_FILE = PLAYBOOKS / "medtrainer_onboarding.yaml"
SCENARIOS = PLAYBOOKS / "scenarios"
TEMPLATE = "medtrainer_onboarding/{}"
MONDAY, WEDNESDAY = 0, 2

STANDARD_SETUP = ["Initial Account Configuration Roster.xlsx", "Initial Organization Management Setup.pdf"]
BASIC_CREDENTIALING = ["Payor Roster.xlsx", "Verification & Documents Roster.xlsx"]
CPR_FILES = ["CPR Brochure.pdf", "CPR Document.pdf"]


def deal(tier: str, credentialing_software: bool, **extra: Any) -> dict[str, Any]:
    return {
        "account_name": "Harbor Family Clinic",
        "admin_email": "admin@example.com",
        "csm_email": "csm@example.com",
        "team_lead_email": "lead@example.com",
        "rsm_email": "rsm@example.com",
        "tier": tier,
        "credentialing_software": credentialing_software,
        **extra,
    }


def happy_steps() -> list[dict[str, Any]]:
    """Intro call within hours, call booked for day 5, preparation done by day 3, call held and logged on day 5."""
    return [
        {"at": "2h", "task": "intro_call"},
        {"at": "3h", "set": {"onboarding_call_scheduled_for": "$today+5d"}},
        {"at": "1d", "form": "kyc_survey", "fields": {"organization_type": "Family medicine", "employees": 45}},
        {"at": "1d", "task": "account_review"},
        {"at": "2d", "task": "discovery_sync"},
        {"at": "3d", "task": "presentation"},
        {
            "at": "5d",
            "form": "onboarding_call",
            "fields": {"held_on": "$today", "training_dates": "Admin training Dec 2, staff training Dec 9"},
        },
        {"at": "5d", "task": "activity_logged"},
    ]


def sent(messages: list[EmailMessage], template: str) -> list[EmailMessage]:
    return [m for m in messages if m["X-Sopflow-Template"] == TEMPLATE.format(template)]


def attachment_names(message: EmailMessage) -> list[str]:
    return sorted(part.get_filename() or "" for part in message.iter_attachments())


def stage_moves(result: Rehearsal) -> list[tuple[str, float]]:
    return [(e["to"], float(e["day"])) for e in result.of_kind("stage")]


@pytest.fixture(scope="module")
def medtrainer() -> Playbook:
    return load_playbook(PLAYBOOK_FILE, TEMPLATES)


def test_the_playbook_loads_with_its_templates_and_every_template_renders(medtrainer: Playbook) -> None:
    assert render_check(medtrainer, TemplateRenderer(TEMPLATES)) == []
    assert set(medtrainer.roles) == {"csm", "team_lead", "rsm", "cs_operations", "client_admin"}
    assert medtrainer.deal["tier"].options == ["Basic", "Standard", "Premium"]
    assert medtrainer.deal["onboarding_call_scheduled_for"].type == "date"


@pytest.mark.parametrize(
    ("tier", "credentialing", "expected"),
    [
        ("Basic", True, BASIC_CREDENTIALING),
        ("Basic", False, []),
        ("Standard", False, STANDARD_SETUP),
        ("Premium", True, [*STANDARD_SETUP, "Credentialing Information Roster.xlsx"]),
    ],
)
async def test_the_welcome_email_carries_the_rosters_of_the_tier_and_credentialing_software(
    ts_env, medtrainer, tier, credentialing, expected
):
    with MailSink() as sink:
        result = await run(
            ts_env, medtrainer, [], until="1h", deal=deal(tier, credentialing), deal_id=f"MT-{tier}", sink=sink
        )
        received = list(sink.messages)

    (welcome,) = sent(received, "welcome")
    assert attachment_names(welcome) == sorted(expected)
    assert "admin@example.com" in welcome["To"] and "csm@example.com" in welcome["Reply-To"]
    assert result.status.stage == "assigned"


async def test_the_same_day_call_reminds_the_csm_and_escalates_to_the_team_lead_when_overdue(ts_env, medtrainer):
    """Assigned on a Monday (at midnight, before opening): due at that day's 17:00 close, the CSM reminded then,
    and the Team Lead told one business hour later, at 10:00 on Tuesday."""
    result = await run(ts_env, medtrainer, [], until="2d", deal=deal("Standard", False), start=quiet_start(MONDAY))

    reminder = next(e for e in result.of_kind("reminder") if e.get("task") == "intro_call")
    escalation = next(e for e in result.of_kind("escalation") if e.get("task") == "intro_call")
    assert float(reminder["day"]) * 24 == pytest.approx(17.0, abs=1.05)  # 17:00 local (the hour: DST-safe bound)
    assert reminder["local"][11:16] == "17:00" and escalation["local"][11:16] == "10:00"
    assert float(escalation["day"]) == pytest.approx(1 + 10 / 24, abs=0.05)
    (escalated,) = sent(result.emails, "task_escalation")
    assert "lead@example.com" in escalated["To"] and "csm@example.com" in escalated["Cc"]
    assert len(sent(result.emails, "task_overdue")) == 1


async def test_a_call_made_in_time_is_never_escalated(ts_env, medtrainer):
    result = await run(ts_env, medtrainer, [{"at": "2h", "task": "intro_call"}], until="1d", deal=deal("Basic", True))

    assert not [e for e in result.of_kind("escalation") if e.get("task") == "intro_call"]
    assert not sent(result.emails, "task_escalation")


async def test_the_happy_path_reaches_onboarded_and_the_recap_carries_the_cpr_files(ts_env, medtrainer):
    with MailSink() as sink:
        result = await run(
            ts_env,
            medtrainer,
            happy_steps(),
            until="8d",
            deal=deal("Premium", True),
            sink=sink,
            start=quiet_start(MONDAY),
        )
        received = list(sink.messages)

    moves = stage_moves(result)
    assert [to for to, _ in moves] == ["assigned", "preparation", "recap", "onboarded"]
    assert moves[1][1] == pytest.approx(3 / 24, abs=0.01)
    assert moves[2][1] == pytest.approx(5.0, abs=0.01) and moves[3][1] == pytest.approx(5.0, abs=0.01)
    assert result.status.stage == "onboarded" and result.status.outcome == "won"

    (recap,) = sent(received, "recap")
    assert attachment_names(recap) == CPR_FILES
    body = recap.get_body(("plain",))
    assert body is not None and "Admin training Dec 2, staff training Dec 9" in body.get_content()
    recap_day = next(float(e["day"]) for e in result.of_kind("email") if e["template"] == "recap")
    assert recap_day == pytest.approx(5.0, abs=0.01)  # the same day as the call
    # Scheduled in time: no reminder to the admin; the CSM and RSM are reminded the day before the call.
    assert not sent(received, "scheduling_reminder")
    (prep,) = sent(received, "prep_reminder")
    assert "rsm@example.com" in prep["Cc"]
    prep_day = next(float(e["day"]) for e in result.of_kind("email") if e["template"] == "prep_reminder")
    assert prep_day == pytest.approx(4 + 17 / 24, abs=0.05)  # two days before the call's deadline, at the close


async def test_the_call_form_waits_until_the_discovery_sync_and_presentation_are_done(ts_env, medtrainer):
    steps = [
        {"at": "1h", "set": {"onboarding_call_scheduled_for": "$today+2d"}},
        {"at": "2d", "form": "onboarding_call", "fields": {"held_on": "$today", "training_dates": "Dec 2"}},
        {"at": "2d1h", "task": "account_review"},
        {"at": "2d1h", "task": "discovery_sync"},
        {"at": "2d2h", "task": "presentation"},
    ]
    result = await run(ts_env, medtrainer, steps, until="2d3h", deal=deal("Standard", False))

    recap_move = next(day for to, day in stage_moves(result) if to == "recap")
    assert recap_move == pytest.approx(2 + 2 / 24, abs=0.01)


async def test_an_admin_who_never_schedules_is_reminded_then_escalated_and_the_account_is_cancelled(ts_env, medtrainer):
    scenario = yaml.safe_load(Path(SCENARIOS / "medtrainer_onboarding_basic_no_call.yaml").read_text())
    result = await run(
        ts_env,
        medtrainer,
        scenario["steps"],
        until=scenario["until"],
        deal=scenario["deal"]["fields"],
        deal_id=scenario["deal"]["id"],
        start=quiet_start(WEDNESDAY),
    )

    reminders = [m for m in result.emails if m["X-Sopflow-Template"] == TEMPLATE.format("scheduling_reminder")]
    assert len(reminders) == 2
    assert all(attachment_names(m) == sorted(BASIC_CREDENTIALING) for m in reminders)
    reminder_days = [float(e["day"]) for e in result.of_kind("email") if e["template"] == "scheduling_reminder"]
    # Days 2 and 5 (Friday and Monday) at midnight, each held to the send window's 09:00 opening.
    assert reminder_days == pytest.approx([2 + 9 / 24, 5 + 9 / 24], abs=0.05)
    escalated = next(e for e in result.of_kind("stage") if e["to"] == "escalated")
    assert escalated["trigger"] == "deadline" and float(escalated["day"]) == pytest.approx(7.0, abs=0.01)
    (unresponsive,) = sent(result.emails, "not_scheduled")
    assert "lead@example.com" in unresponsive["To"]
    assert len(sent(result.emails, "escalation_case")) == 1
    assert result.status.stage == "cancelled" and result.status.outcome == "cancelled"


async def test_a_missed_onboarding_call_opens_an_escalation_case_and_a_rescheduled_call_goes_back_to_preparation(
    ts_env, medtrainer
):
    fields, steps, until = checked_in_scenario("medtrainer_onboarding_missed_call")
    result = await run(ts_env, medtrainer, steps, until=until, deal=fields, deal_id="MT-3")

    escalated = next(e for e in result.of_kind("stage") if e["to"] == "escalated")
    assert escalated["trigger"] == "deadline" and "not held" in escalated["reason"]
    assert float(escalated["day"]) == pytest.approx(4 + 17 / 24, abs=0.05)  # the day after the call, at the close
    assert len(sent(result.emails, "call_missed")) == 1
    assert any("escalation_case" in e["reason"] for e in result.of_kind("rejected"))
    assert [to for to, _ in stage_moves(result)][-2:] == ["escalated", "preparation"]
    assert result.status.stage == "preparation"
    assert {task.id for task in result.status.open_tasks} == {"account_review", "discovery_sync", "presentation"}
    # "Before the call": the sync is due the day before the rescheduled call, at the time the call was scheduled.
    sync = next(task for task in result.status.open_tasks if task.id == "discovery_sync")
    rescheduled = datetime.fromisoformat(result.status.fields["onboarding_call_scheduled_for"])
    assert sync.due_at is not None and sync.due_at.date() == (rescheduled - timedelta(days=1)).date()


# --- the SF Escalation case ------------------------------------------------------------------------------------------
# "Fill in the following fields: ... Add the Subject ... Add a Description in the following format:
# MM/DD/YY_Initials:Action (example: 04/20/23MM: Customer called support and asked to cancel his account) ...
# Opportunity Name ... Contact Name ... Add Escalation/Cancellation Reason ... Add Escalation Directives ... in
# following format: MM/DD/YY_Initials:Action ... Add Products: Move the item(s) from the Available List to the
# Chosen Box"

CASE = {
    "subject": "Cancelation Request - Harbor Family Clinic",
    "description": "04/20/23_MM: Customer called support and asked to cancel his account",
    "opportunities": "Harbor Family Clinic - Premium",
    "contact_name": "Office Admin",
    "reason": "Cancellation request",
    "directives": "04/20/23_MM: One more week, Customer unresponsive",
    "products": ["MedTrainer subscription (tier)", "Exclusions"],
}


def test_the_escalation_case_requires_every_field_the_sop_lists(medtrainer: Playbook) -> None:
    with pytest.raises(FieldErrors) as caught:
        validate_values(medtrainer.forms["escalation"].fields, {})
    assert caught.value.errors == dict.fromkeys(
        ["subject", "description", "opportunities", "contact_name", "reason", "directives", "products"], "required"
    )


def test_the_escalation_products_are_chosen_from_the_products_the_deal_records(medtrainer: Playbook) -> None:
    products = medtrainer.forms["escalation"].fields["products"]
    assert products.type == "multi_choice"
    # One option per purchase the deal records: the tier's subscription and each add-on's bool field.
    purchases = {
        "tier": "MedTrainer subscription (tier)",
        "credentialing_software": "Credentialing Software (CRED SOFT)",
        "credentialing_service": "Credentialing Service (CRED SERV / FMC)",
        "exclusions": "Exclusions",
        "lms": "Learning Management System (LMS)",
    }
    assert set(purchases) <= set(medtrainer.deal) and products.options == list(purchases.values())
    assert validate_values(medtrainer.forms["escalation"].fields, {**CASE, "products": "exclusions"})["products"] == [
        "Exclusions"
    ]


@pytest.mark.parametrize("field", ["description", "directives"])
@pytest.mark.parametrize(
    "typed",
    [
        "04/20/23_MM: Customer called support and asked to cancel his account",
        "04/20/23MM: Customer called support and asked to cancel his account",  # the seed's own example
        "04/20/23_MM:One more week",
        "12/31/24 JD : One more week, Customer unresponsive",
    ],
)
def test_description_and_directives_accept_the_format_as_people_type_it(
    medtrainer: Playbook, field: str, typed: str
) -> None:
    assert validate_values(medtrainer.forms["escalation"].fields, {**CASE, field: typed})[field] == typed


@pytest.mark.parametrize(
    "typed",
    ["Customer asked to cancel", "2023-04-20_MM: asked to cancel", "20/04/23_MM: asked to cancel", "04/20/23_MM:"],
)
def test_a_description_out_of_format_is_refused_with_the_format_and_an_example(medtrainer: Playbook, typed: str):
    with pytest.raises(FieldErrors) as caught:
        validate_values(medtrainer.forms["escalation"].fields, {**CASE, "description": typed})
    assert caught.value.errors["description"].endswith(
        "expected MM/DD/YY_Initials: Action, e.g. 04/20/23_MM: Customer called support and asked to cancel his account"
    )


async def test_an_escalation_case_out_of_format_is_refused_and_the_corrected_one_opens_the_case(ts_env, medtrainer):
    steps = [
        {"at": "1h", "form": "escalation", "fields": {**CASE, "directives": "One more week, Customer unresponsive"}},
        {"at": "2h", "form": "escalation", "fields": CASE},
    ]
    result = await run(ts_env, medtrainer, steps, until="3h", deal=deal("Premium", False))

    (rejected,) = result.of_kind("rejected")
    assert "directives" in rejected["reason"] and "e.g. 04/20/23_MM: One more week" in rejected["reason"]
    # Refused by the validator: the lifecycle never recorded it (one submission, the corrected one).
    assert [e["count"] for e in result.of_kind("form") if e["form"] == "escalation"] == [1]
    moves = stage_moves(result)
    assert [to for to, _ in moves] == ["assigned", "escalated"]
    assert moves[1][1] == pytest.approx(2 / 24, abs=0.01)  # the corrected case, not the refused one
    (case,) = sent(result.emails, "escalation_case")
    text = case.get_body(("plain",))
    assert text is not None and CASE["directives"] in text.get_content()


# --- "If ... they do not answer your first call, please send a reminder email" ---------------------------------------


async def test_an_unanswered_first_call_sends_the_reminder_email_at_once_and_later_ones_do_not(ts_env, medtrainer):
    fields, steps, until = checked_in_scenario("medtrainer_onboarding_unanswered_call")
    with MailSink() as sink:
        result = await run(ts_env, medtrainer, steps, until=until, deal=fields, deal_id="MT-4", sink=sink)
        received = list(sink.messages)

    assert [e["count"] for e in result.of_kind("form") if e["form"] == "call_unanswered"] == [1, 2]
    (reminder,) = sent(received, "scheduling_reminder")
    assert "admin@example.com" in reminder["To"] and "csm@example.com" in reminder["Cc"]
    assert attachment_names(reminder) == sorted([*STANDARD_SETUP, "Credentialing Information Roster.xlsx"])
    reminder_day = next(float(e["day"]) for e in result.of_kind("email") if e["template"] == "scheduling_reminder")
    assert reminder_day == pytest.approx(10 / 24, abs=0.01)  # when the unanswered call was logged
    assert result.status.stage == "preparation"


async def test_an_unanswered_call_can_only_be_logged_before_the_onboarding_call_is_scheduled(ts_env, medtrainer):
    steps = [
        {"at": "1h", "set": {"onboarding_call_scheduled_for": "$today+5d"}},
        {"at": "2h", "form": "call_unanswered", "fields": {}},
    ]
    result = await run(ts_env, medtrainer, steps, until="3h", deal=deal("Basic", False))

    (rejected,) = result.of_kind("rejected")
    assert "not open in stage 'preparation'" in rejected["reason"]
    assert not sent(result.emails, "scheduling_reminder")
