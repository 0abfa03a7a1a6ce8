"""The Safe Balance lifecycle driven through `Engine` directly: requests, events and time, no Temporal."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from sopflow.config import PROJECT_ROOT
from sopflow.constants import PATCH_CC_STANDS_IN, PATCH_PAST_VISITS_SKIPPED
from sopflow.durations import duration
from sopflow.engine import Engine, Step, Wakeup
from sopflow.errors import Rejected
from sopflow.models import (
    Advance,
    ClaimResult,
    Close,
    CompleteTask,
    ExternalEvent,
    SetFields,
    SubmitForm,
    UpdateResult,
)
from sopflow.playbook import Playbook
from sopflow.playbook_checks import load_playbook
from tests.sopflow.conftest import DEAL, T0, TARGETING

CONTRACT_REQUEST = {
    "agreement": "safe balance",
    "term_months": "12",
    "monthly_fee": "1500",
    "client_agreed_on": "2025-01-30",
}
CLOSEOUT = {"launched_on": "2025-01-31", "staff_trained": "yes", "all_running": "yes"}
PRELAUNCH_TASKS = ["onsite_appointment", "services_onboarded", "prelaunch_call", "cleared_for_launch"]


@pytest.fixture(scope="module")
def playbook() -> Playbook:
    """Safe Balance without its time zone: the UTC rules every lifecycle started before zones still runs on (exact
    instants, no send window). The same rules in the client's local calendar are in `test_engine_calendar.py`."""
    shipped = load_playbook(PROJECT_ROOT / "playbooks" / "safe_balance.yaml")
    return shipped.model_copy(update={"timezone": None, "timezone_field": None, "calendar": None})


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def kinds(steps: list[Step]) -> list[str]:
    return [step.entry.kind for step in steps]


def templates(steps: list[Step]) -> list[str]:
    return [step.email.template for step in steps if step.email is not None]


def started(playbook: Playbook) -> Engine:
    engine = Engine.start(playbook, "D-1", dict(DEAL), T0, "deal-D-1")
    engine.take_steps()
    return engine


def submit(engine: Engine, form: str, fields: dict[str, Any], at: datetime = T0) -> None:
    engine.submit_form(SubmitForm(form=form, fields=fields, actor="riley"), at)


def in_contract(playbook: Playbook, tier: str = "Basic") -> Engine:
    engine = started(playbook)
    submit(engine, "targeting", {**TARGETING, "service_tier": tier})
    submit(engine, "contract_request", CONTRACT_REQUEST)
    engine.take_steps()
    return engine


def in_prelaunch(playbook: Playbook, tier: str = "Basic") -> Engine:
    engine = in_contract(playbook, tier)
    engine.event(ExternalEvent(name="contract_signed", event_id="env-1:completed", source="docusign"), T0)
    engine.take_steps()
    return engine


def in_launch(playbook: Playbook) -> Engine:
    engine = in_prelaunch(playbook)
    for task in PRELAUNCH_TASKS:
        engine.complete_task(CompleteTask(task=task, actor="alex"), T0)
    engine.set_fields(SetFields(fields={"launch_date": "2025-02-10"}), T0)
    engine.advance(Advance(to="launch", actor="alex"), T0)
    engine.take_steps()
    return engine


def in_ongoing(playbook: Playbook) -> Engine:
    """Launched and closed out at T0: the site-visit schedule is anchored at T0 (first visit due day 14)."""
    engine = in_launch(playbook)
    engine.complete_task(CompleteTask(task="launch_checklist"), T0)
    submit(engine, "closeout", CLOSEOUT)
    engine.take_steps()
    return engine


def visit(engine: Engine, on: datetime, logged_at: datetime, **extra: Any) -> None:
    fields = {"visited_on": on.date().isoformat(), "steps_cleared": "yes", **extra}
    submit(engine, "site_visit", fields, logged_at)


# --- targeting and contract request -------------------------------------------------------------------------


def test_a_new_deal_starts_in_targeting_owned_by_the_rep_id(playbook: Playbook) -> None:
    engine = Engine.start(playbook, "D-1", dict(DEAL), T0, "deal-D-1")
    assert engine.state.stage == "targeting"
    assert engine.owner() == "rep:hs-17"
    [step] = engine.take_steps()
    assert (step.entry.kind, step.entry.detail) == ("stage", {"to": "targeting", "trigger": "start"})


def test_a_new_deal_without_the_required_rep_email_is_rejected(playbook: Playbook) -> None:
    with pytest.raises(Rejected) as caught:
        Engine.start(playbook, "D-1", {"rep_name": "Riley"}, T0, "deal-D-1")
    assert caught.value.field_errors == {"rep_email": "required"}


def test_targeting_form_moves_to_contract_request_and_queues_the_account_claimed_email(playbook: Playbook) -> None:
    engine = started(playbook)
    submit(engine, "targeting", TARGETING)
    assert engine.state.stage == "contract_request"
    assert engine.state.history[-1].trigger == "form:targeting"
    assert engine.state.forms["targeting"].values["service_tier"] == "Basic"
    steps = engine.take_steps()
    assert kinds(steps) == ["form", "stage", "email"]
    email = steps[-1].email
    assert email is not None
    assert email.template == "account_claimed"
    assert [(r.role, r.email) for r in email.to] == [("rep", "rep@example.com")]
    assert [(r.role, r.email) for r in email.cc] == [("account_manager", "am@example.com")]
    assert email.key == f"deal-D-1/{steps[-1].entry.seq}/enter-contract_request-0"


def test_contract_request_form_moves_to_contract_and_sends_the_contract_to_the_signer(playbook: Playbook) -> None:
    engine = started(playbook)
    submit(engine, "targeting", TARGETING)
    engine.take_steps()
    submit(engine, "contract_request", CONTRACT_REQUEST)
    assert engine.state.stage == "contract"
    assert engine.state.history[-1].trigger == "form:contract_request"
    assert engine.state.forms["contract_request"].values == {
        "agreement": "Safe Balance",
        "term_months": 12,
        "monthly_fee": "1500.00",
        "client_agreed_on": "2025-01-30",
    }
    steps = engine.take_steps()
    assert templates(steps) == ["contract_sent"]
    email = steps[-1].email
    assert email is not None
    assert [r.email for r in email.to] == ["signer@example.com"]
    assert [r.email for r in email.cc] == ["rep@example.com"]
    assert email.reply_to is not None and email.reply_to.email == "rep@example.com"


# --- the 14-day contract deadline ---------------------------------------------------------------------------


def test_contract_deadline_is_fourteen_days_after_entering_contract(playbook: Playbook) -> None:
    engine = in_contract(playbook)
    assert engine.state.deadline is not None
    assert engine.state.deadline.due_at == day(14)
    assert engine.next_wakeup() == Wakeup(day(7), "contract expires: reminder")


def test_contract_reminders_go_to_the_signer_at_day_seven_and_day_twelve(playbook: Playbook) -> None:
    engine = in_contract(playbook)
    engine.tick(day(7) - timedelta(seconds=1))
    assert engine.take_steps() == []
    engine.tick(day(7))
    first = engine.take_steps()
    assert kinds(first) == ["reminder", "email"]
    assert templates(first) == ["contract_reminder"]
    assert first[0].entry.at == day(7)
    assert engine.next_wakeup() == Wakeup(day(12), "contract expires: reminder")
    engine.tick(day(12))
    second = engine.take_steps()
    assert templates(second) == ["contract_reminder"]
    assert second[0].entry.at == day(12)
    assert engine.state.stage == "contract"
    assert engine.next_wakeup() == Wakeup(day(14), "contract expires")


def test_unsigned_contract_moves_to_contract_expired_at_day_fourteen_with_trigger_deadline(playbook: Playbook) -> None:
    engine = in_contract(playbook)
    engine.tick(day(14))
    assert engine.state.stage == "contract_expired"
    record = engine.state.history[-1]
    assert (record.from_stage, record.to_stage, record.at, record.trigger) == (
        "contract",
        "contract_expired",
        day(14),
        "deadline",
    )
    assert record.reason == "contract not signed within 14 days"
    steps = engine.take_steps()
    assert templates(steps) == ["contract_reminder", "contract_reminder", "contract_expired"]
    assert engine.state.outcome is None


def test_a_late_tick_catches_up_every_missed_timer_each_at_its_own_time(playbook: Playbook) -> None:
    engine = in_contract(playbook)
    engine.tick(day(20))
    steps = engine.take_steps()
    assert [(s.entry.kind, s.entry.at) for s in steps if s.entry.kind in ("reminder", "stage")] == [
        ("reminder", day(7)),
        ("reminder", day(12)),
        ("stage", day(14)),
    ]
    assert engine.state.deadline is not None
    assert engine.state.deadline.due_at == day(44)  # the 30-day re-send window of contract_expired


def test_an_expired_contract_can_be_resent_with_a_fresh_fourteen_day_deadline(playbook: Playbook) -> None:
    engine = in_contract(playbook)
    engine.tick(day(14))
    engine.advance(Advance(to="contract", actor="riley"), day(15))
    assert engine.state.stage == "contract"
    assert engine.state.deadline is not None
    assert engine.state.deadline.due_at == day(29)
    assert templates(engine.take_steps())[-1] == "contract_sent"


def test_an_expired_contract_not_resent_closes_as_expired_after_thirty_days(playbook: Playbook) -> None:
    engine = in_contract(playbook)
    engine.tick(day(44))
    assert engine.state.stage == "closed_expired"
    assert engine.state.outcome == "expired"
    assert engine.next_wakeup() is None


def test_signing_before_the_deadline_stops_its_reminders(playbook: Playbook) -> None:
    engine = in_prelaunch(playbook)
    assert engine.state.deadline is None
    engine.tick(day(6))
    assert "contract_reminder" not in templates(engine.take_steps())


# --- contract events ----------------------------------------------------------------------------------------


def test_contract_signed_event_moves_to_prelaunch_and_sends_the_welcome_email(playbook: Playbook) -> None:
    engine = in_contract(playbook)
    engine.event(ExternalEvent(name="contract_signed", event_id="env-1:completed", source="docusign"), day(3))
    assert engine.state.stage == "prelaunch"
    assert engine.state.history[-1].trigger == "event:contract_signed"
    steps = engine.take_steps()
    assert steps[0].entry.detail == {"event": "contract_signed", "source": "docusign", "status": "accepted"}
    assert templates(steps) == ["welcome", "prelaunch_kickoff"]
    welcome = next(s.email for s in steps if s.email and s.email.template == "welcome")
    assert welcome.reply_to is not None and welcome.reply_to.email == "am@example.com"


def test_contract_declined_event_closes_the_deal_as_lost(playbook: Playbook) -> None:
    engine = in_contract(playbook)
    engine.event(ExternalEvent(name="contract_declined", event_id="env-1:declined"), day(2))
    assert (engine.state.stage, engine.state.outcome) == ("closed_lost", "lost")


@pytest.mark.parametrize("event_id", ["env-1:completed-redelivery", None])
def test_a_repeated_contract_signed_is_ignored_with_a_journal_entry(playbook: Playbook, event_id: str | None) -> None:
    engine = in_prelaunch(playbook)
    tasks_before = engine.state.model_dump()["tasks"]
    engine.event(ExternalEvent(name="contract_signed", event_id=event_id, source="docusign"), day(1))
    assert engine.state.stage == "prelaunch"
    assert engine.state.model_dump()["tasks"] == tasks_before
    [step] = engine.take_steps()
    assert step.entry.kind == "event"
    assert step.entry.detail == {
        "event": "contract_signed",
        "source": "docusign",
        "status": "ignored",
        "reason": "not expected in stage 'prelaunch'",
    }


def test_a_redelivered_event_with_the_same_event_id_is_dropped_silently(playbook: Playbook) -> None:
    engine = in_prelaunch(playbook)
    before = engine.state.model_dump()
    engine.event(ExternalEvent(name="contract_signed", event_id="env-1:completed", source="docusign"), day(1))
    assert engine.take_steps() == []
    assert engine.state.model_dump() == before


def test_an_unknown_event_is_journaled_and_ignored(playbook: Playbook) -> None:
    engine = in_contract(playbook)
    engine.event(ExternalEvent(name="envelope_opened"), day(1))
    assert engine.state.stage == "contract"
    [step] = engine.take_steps()
    assert step.entry.detail == {"event": "envelope_opened", "status": "ignored", "reason": "unknown event"}


def test_a_signature_arriving_after_expiry_is_ignored_until_the_contract_is_resent(playbook: Playbook) -> None:
    engine = in_contract(playbook)
    engine.tick(day(14))
    engine.take_steps()
    engine.event(ExternalEvent(name="contract_signed", event_id="env-1:completed"), day(15))
    assert engine.state.stage == "contract_expired"
    assert engine.take_steps()[0].entry.detail["reason"] == "not expected in stage 'contract_expired'"
    engine.advance(Advance(to="contract"), day(16))
    engine.event(ExternalEvent(name="contract_signed", event_id="env-2:completed"), day(17))
    assert engine.state.stage == "prelaunch"


# --- the account manager: pre-launch never runs headless ----------------------------------------------------


def signed_without_an_account_manager(playbook: Playbook) -> Engine:
    fields = {key: value for key, value in DEAL.items() if not key.startswith("account_manager")}
    engine = Engine.start(playbook, "D-1", fields, T0, "deal-D-1")
    submit(engine, "targeting", TARGETING)
    submit(engine, "contract_request", CONTRACT_REQUEST)
    engine.take_steps()
    engine.event(ExternalEvent(name="contract_signed", event_id="env-1:completed", source="docusign"), T0)
    return engine


def test_a_signed_deal_without_an_account_manager_waits_for_one_instead_of_starting_pre_launch(
    playbook: Playbook,
) -> None:
    """Seed 000: "Once the contract has been fully executed, the Pre-Launch process will begin with the account's
    assigned Account Manager" and "The Account Manager for the client will send out the Welcome email"."""
    engine = signed_without_an_account_manager(playbook)
    steps = engine.take_steps()
    assert (engine.state.stage, list(engine.state.tasks)) == ("assign_account_manager", ["assign_account_manager"])
    assert templates(steps) == []  # no welcome from nobody
    assert engine.unmet(engine.stage) == ["deal field 'account_manager_email' (Account manager email) is not set"]


def test_an_unassigned_account_manager_is_reminded_to_corporate_then_escalated_to_the_partner_manager(
    playbook: Playbook,
) -> None:
    engine = signed_without_an_account_manager(playbook)
    engine.take_steps()
    engine.tick(day(2))
    emails = [step.email for step in engine.take_steps() if step.email is not None]
    assert [(e.template, [r.role for r in e.to], [r.role for r in e.cc]) for e in emails] == [
        ("task_overdue", ["corporate"], ["rep"]),
        ("task_escalation", ["partner_manager"], ["corporate", "rep"]),
    ]


def test_assigning_the_account_manager_starts_pre_launch_with_their_welcome(playbook: Playbook) -> None:
    engine = signed_without_an_account_manager(playbook)
    engine.take_steps()
    engine.set_fields(SetFields(fields={"account_manager_email": "am@example.com"}), day(1))
    steps = engine.take_steps()
    assert engine.state.stage == "prelaunch"
    welcome = next(step.email for step in steps if step.email is not None and step.email.template == "welcome")
    assert welcome.reply_to is not None and welcome.reply_to.role == "account_manager"
    assert "onsite_appointment" in engine.state.tasks


def test_a_signed_deal_with_its_account_manager_goes_straight_to_pre_launch(playbook: Playbook) -> None:
    engine = in_prelaunch(playbook)
    assert [(h.from_stage, h.to_stage) for h in engine.state.history][-1] == ("contract", "prelaunch")


def test_an_email_whose_addressee_is_unknown_goes_to_its_known_copies_and_names_who_was_missing(
    playbook: Playbook,
) -> None:
    """No escalation is lost because one recipient is unknown: the rep's overdue on-site appointment escalates to the
    account manager with the partner manager in copy; without the account manager's address, the partner manager
    receives it."""
    engine = in_prelaunch(playbook)
    engine.set_fields(SetFields(fields={"account_manager_email": None}), T0)
    engine.tick(day(10))
    steps = engine.take_steps()
    [escalation] = [step for step in steps if step.email is not None and step.email.template == "task_escalation"]
    assert escalation.email is not None
    assert ([r.role for r in escalation.email.to], escalation.email.cc) == (["partner_manager"], [])
    assert escalation.entry.detail["missing_roles"] == ["account_manager"]
    assert escalation.entry.detail["to"] == ["partner_manager"]


def test_a_lifecycle_recorded_before_copies_stood_in_still_skips_that_email(playbook: Playbook) -> None:
    engine = in_prelaunch(playbook)
    engine.applies = lambda rule: rule != PATCH_CC_STANDS_IN
    engine.set_fields(SetFields(fields={"account_manager_email": None}), T0)
    engine.tick(day(10))
    [skipped] = [s.entry for s in engine.take_steps() if s.entry.detail.get("template") == "task_escalation"]
    assert (skipped.detail["status"], skipped.detail["reason"]) == ("skipped", "no address for account_manager")


# --- prelaunch: tasks and the launch gate -------------------------------------------------------------------


def test_prelaunch_opens_its_tasks_with_due_dates(playbook: Playbook) -> None:
    engine = in_prelaunch(playbook)
    assert {task_id: task.due_at for task_id, task in engine.state.tasks.items()} == {
        "onsite_appointment": day(7),
        "services_onboarded": day(21),
        "prelaunch_call": day(21),
        "cleared_for_launch": None,
    }


def test_advance_to_launch_is_rejected_naming_each_missing_task_and_the_launch_date(playbook: Playbook) -> None:
    engine = in_prelaunch(playbook)
    with pytest.raises(Rejected) as caught:
        engine.advance(Advance(to="launch"), day(1))
    message = str(caught.value)
    assert message.startswith("cannot leave 'prelaunch' for 'launch': ")
    assert "deal field 'launch_date' (Scheduled launch date) is not set" in message
    for task in PRELAUNCH_TASKS:
        assert f"task '{task}' not done" in message
    assert "owner: account_manager" in message
    assert engine.state.stage == "prelaunch"


def test_advance_to_launch_still_needs_the_launch_date_once_tasks_are_done(playbook: Playbook) -> None:
    engine = in_prelaunch(playbook)
    for task in PRELAUNCH_TASKS:
        engine.complete_task(CompleteTask(task=task), day(1))
    with pytest.raises(Rejected, match=r"^cannot leave 'prelaunch' for 'launch': deal field 'launch_date'") as caught:
        engine.advance(Advance(to="launch"), day(1))
    assert "task" not in str(caught.value)


def test_advance_to_launch_succeeds_once_tasks_are_done_and_launch_date_is_set(playbook: Playbook) -> None:
    engine = in_prelaunch(playbook)
    for task in PRELAUNCH_TASKS:
        engine.complete_task(CompleteTask(task=task, actor="alex"), day(1))
    engine.set_fields(SetFields(fields={"launch_date": "2025-02-10"}, actor="alex"), day(2))
    assert engine.state.stage == "prelaunch"  # leaving prelaunch is a staff decision
    engine.advance(Advance(to="launch", actor="alex", note="cleared"), day(2))
    assert engine.state.stage == "launch"
    record = engine.state.history[-1]
    assert (record.trigger, record.actor, record.reason) == ("advance", "alex", "cleared")
    assert list(engine.state.tasks) == ["launch_checklist"]


def test_advance_to_a_stage_without_an_advance_transition_is_rejected(playbook: Playbook) -> None:
    engine = in_contract(playbook)
    with pytest.raises(
        Rejected,
        match=r"cannot advance from 'contract' to 'prelaunch' "
        r"\(allowed: none: it moves on by itself, or close it\)",
    ):
        engine.check_advance(Advance(to="prelaunch"))


def test_advance_to_an_unknown_stage_is_rejected_listing_the_stages(playbook: Playbook) -> None:
    engine = in_prelaunch(playbook)
    with pytest.raises(Rejected, match=r"unknown stage 'lanch' \(stages: targeting, contract_request, "):
        engine.check_advance(Advance(to="lanch"))


def test_a_task_whose_requirements_are_open_is_rejected(playbook: Playbook) -> None:
    engine = in_prelaunch(playbook)
    with pytest.raises(
        Rejected,
        match=r"^task 'cleared_for_launch' must wait for: services_onboarded, "
        r"prelaunch_call$",
    ):
        engine.complete_task(CompleteTask(task="cleared_for_launch"), day(1))
    engine.complete_task(CompleteTask(task="services_onboarded"), day(1))
    with pytest.raises(Rejected, match=r"^task 'cleared_for_launch' must wait for: prelaunch_call$"):
        engine.complete_task(CompleteTask(task="cleared_for_launch"), day(1))
    engine.complete_task(CompleteTask(task="prelaunch_call"), day(1))
    engine.complete_task(CompleteTask(task="cleared_for_launch", note="go"), day(2))
    assert engine.state.tasks["cleared_for_launch"].done_at == day(2)


def test_a_task_cannot_be_completed_twice(playbook: Playbook) -> None:
    engine = in_prelaunch(playbook)
    engine.complete_task(CompleteTask(task="prelaunch_call"), day(1))
    with pytest.raises(Rejected, match="task 'prelaunch_call' is already done"):
        engine.complete_task(CompleteTask(task="prelaunch_call"), day(2))


def test_a_task_of_another_stage_is_rejected_naming_its_stage(playbook: Playbook) -> None:
    engine = in_prelaunch(playbook)
    with pytest.raises(Rejected, match="task 'launch_checklist' belongs to stage 'launch'; the deal is in 'prelaunch'"):
        engine.complete_task(CompleteTask(task="launch_checklist"), day(1))


@pytest.mark.parametrize(
    ("tier", "opened"), [("Basic", False), ("Standard", False), ("Premium", True), ("premium", True)]
)
def test_the_premium_setup_task_is_opened_only_for_the_premium_tier(
    playbook: Playbook, tier: str, opened: bool
) -> None:
    engine = in_prelaunch(playbook, tier)
    assert ("premium_setup" in engine.state.tasks) is opened


def test_the_premium_setup_task_does_not_apply_to_other_tiers(playbook: Playbook) -> None:
    engine = in_prelaunch(playbook, "Basic")
    with pytest.raises(Rejected, match="task 'premium_setup' does not apply to this deal"):
        engine.complete_task(CompleteTask(task="premium_setup"), day(1))


def test_a_premium_deal_cannot_launch_before_its_premium_setup(playbook: Playbook) -> None:
    engine = in_prelaunch(playbook, "Premium")
    for task in PRELAUNCH_TASKS:
        engine.complete_task(CompleteTask(task=task), day(1))
    engine.set_fields(SetFields(fields={"launch_date": "2025-02-10"}), day(1))
    with pytest.raises(Rejected, match="task 'premium_setup' not done"):
        engine.advance(Advance(to="launch"), day(1))


def test_an_overdue_task_reminds_its_owner_then_escalates(playbook: Playbook) -> None:
    engine = in_prelaunch(playbook)
    assert engine.next_wakeup() == Wakeup(day(7), "task onsite_appointment due")
    engine.tick(day(7))
    reminder = engine.take_steps()
    assert kinds(reminder) == ["reminder", "email"]
    assert reminder[1].email is not None
    assert (reminder[1].email.template, [r.role for r in reminder[1].email.to]) == ("task_overdue", ["rep"])
    assert engine.next_wakeup() == Wakeup(day(10), "task onsite_appointment escalates")
    engine.tick(day(10))
    escalation = engine.take_steps()
    assert kinds(escalation) == ["escalation", "email"]
    email = escalation[1].email
    assert email is not None
    assert (email.template, [r.role for r in email.to], [r.role for r in email.cc]) == (
        "task_escalation",
        ["account_manager"],
        ["partner_manager"],
    )
    assert email.context["task"]["id"] == "onsite_appointment"


def test_a_task_done_in_time_never_reminds(playbook: Playbook) -> None:
    engine = in_prelaunch(playbook)
    engine.complete_task(CompleteTask(task="onsite_appointment"), day(6))
    engine.take_steps()
    engine.tick(day(11))
    assert engine.take_steps() == []


# --- forms --------------------------------------------------------------------------------------------------


def test_a_form_not_open_in_the_stage_is_rejected_naming_the_open_forms(playbook: Playbook) -> None:
    engine = started(playbook)
    submit(engine, "targeting", TARGETING)
    with pytest.raises(
        Rejected,
        match=r"^form 'closeout' is not open in stage 'contract_request' "
        r"\(open: targeting, contract_request\)$",
    ):
        submit(engine, "closeout", CLOSEOUT)


def test_a_stage_without_forms_says_none_are_open(playbook: Playbook) -> None:
    engine = in_prelaunch(playbook)
    with pytest.raises(Rejected, match=r"form 'site_visit' is not open in stage 'prelaunch' \(open: none\)"):
        visit(engine, day(1), day(1))


def test_an_unknown_form_is_rejected_listing_the_forms(playbook: Playbook) -> None:
    engine = started(playbook)
    with pytest.raises(
        Rejected,
        match=r"unknown form 'nps' \(forms: targeting, contract_request, closeout, "
        r"site_visit\)",
    ):
        submit(engine, "nps", {})


def test_invalid_form_fields_are_rejected_with_field_errors(playbook: Playbook) -> None:
    engine = started(playbook)
    with pytest.raises(Rejected) as caught:
        submit(engine, "targeting", {"signer_email": "sam at acme", "service_tier": "Gold", "budget": "1"})
    assert str(caught.value).startswith("form 'targeting' is invalid: ")
    errors = caught.value.field_errors
    assert set(errors) == {"company", "signer_name", "signer_email", "service_tier", "budget"}
    assert errors["company"] == errors["signer_name"] == "required"
    assert errors["signer_email"] == "'sam at acme' is not an email address"
    assert errors["service_tier"] == "'Gold' is not one of: Basic, Standard, Premium"
    assert errors["budget"].startswith("unknown field (known: city, company, contact_name,")
    assert engine.state.stage == "targeting"
    assert engine.state.forms == {}


def test_a_corrected_targeting_form_replaces_the_values_and_counts_submissions(playbook: Playbook) -> None:
    engine = started(playbook)
    submit(engine, "targeting", TARGETING)
    submit(engine, "targeting", {**TARGETING, "signer_email": "other-signer@example.com"}, day(1))
    record = engine.state.forms["targeting"]
    assert (record.count, record.values["signer_email"], record.submitted_at) == (2, "other-signer@example.com", day(1))
    assert engine.state.stage == "contract_request"


# --- launch -------------------------------------------------------------------------------------------------


def test_closeout_submitted_before_the_checklist_waits_for_the_task_then_moves_to_ongoing(playbook: Playbook) -> None:
    engine = in_launch(playbook)
    submit(engine, "closeout", {**CLOSEOUT, "staff_trained": "no"}, day(1))
    assert engine.state.stage == "launch"
    assert engine.unmet() == [
        "task 'launch_checklist' not done (Launch the account using the SOP and checklist; owner: rep)"
    ]
    engine.complete_task(CompleteTask(task="launch_checklist"), day(2))
    assert engine.state.stage == "ongoing"
    assert engine.state.history[-1].trigger == "form:closeout"
    assert "launch_closeout" in templates(engine.take_steps())


# --- closing ------------------------------------------------------------------------------------------------


def test_close_as_lost_moves_to_closed_lost_and_records_the_outcome(playbook: Playbook) -> None:
    engine = in_contract(playbook)
    engine.close(Close(outcome="lost", reason="chose a competitor", actor="riley"), day(3))
    assert engine.state.stage == "closed_lost"
    assert (engine.state.outcome, engine.state.close_reason) == ("lost", "chose a competitor")
    assert engine.closed
    record = engine.state.history[-1]
    assert (record.from_stage, record.trigger, record.actor) == ("contract", "close", "riley")
    assert engine.state.deadline is None
    assert engine.next_wakeup() is None


def test_close_into_an_outcome_the_playbook_lacks_is_rejected(playbook: Playbook) -> None:
    engine = in_contract(playbook)
    with pytest.raises(Rejected, match="this playbook has no 'lost' stage named 'cancelled'"):
        engine.check_close(Close(outcome="lost", reason="x", stage="cancelled"))


REQUESTS_AFTER_CLOSE: dict[str, Callable[[Engine], object]] = {
    "submit": lambda e: e.submit_form(SubmitForm(form="targeting", fields=TARGETING), day(4)),
    "complete": lambda e: e.complete_task(CompleteTask(task="onsite_appointment"), day(4)),
    "advance": lambda e: e.advance(Advance(to="contract"), day(4)),
    "set_fields": lambda e: e.set_fields(SetFields(fields={"launch_date": "2025-03-01"}), day(4)),
    "close": lambda e: e.close(Close(outcome="cancelled", reason="again"), day(4)),
}


@pytest.mark.parametrize("request_name", list(REQUESTS_AFTER_CLOSE))
def test_a_closed_deal_rejects_further_requests(playbook: Playbook, request_name: str) -> None:
    engine = in_contract(playbook)
    engine.close(Close(outcome="lost", reason="chose a competitor"), day(3))
    engine.take_steps()
    before = engine.state.model_dump()
    with pytest.raises(Rejected, match=r"^deal D-1 is closed \(lost\) in stage 'closed_lost'$"):
        REQUESTS_AFTER_CLOSE[request_name](engine)
    assert engine.state.model_dump() == before
    assert engine.take_steps() == []


def test_a_closed_deal_ignores_events_and_time(playbook: Playbook) -> None:
    engine = in_contract(playbook)
    engine.close(Close(outcome="lost", reason="chose a competitor"), day(3))
    engine.take_steps()
    before = engine.state.model_dump()
    engine.event(ExternalEvent(name="contract_signed", event_id="late"), day(5))
    engine.tick(day(400))
    assert engine.state.model_dump() == before
    assert engine.take_steps() == []


# --- ongoing: the site-visit cadence ------------------------------------------------------------------------


def test_ongoing_schedules_the_first_site_visit_fourteen_days_after_launch(playbook: Playbook) -> None:
    engine = in_ongoing(playbook)
    assert engine.state.cadence is not None
    assert (engine.state.cadence.anchor, engine.state.cadence.next_due) == (T0, day(14))
    assert engine.next_wakeup() == Wakeup(day(11), "site visit: reminder")


def test_site_visit_reminder_is_sent_to_the_rep_three_days_before_the_due_date(playbook: Playbook) -> None:
    engine = in_ongoing(playbook)
    engine.tick(day(11) - timedelta(seconds=1))
    assert engine.take_steps() == []
    engine.tick(day(11))
    steps = engine.take_steps()
    assert kinds(steps) == ["reminder", "email"]
    assert steps[0].entry.at == day(11)
    email = steps[1].email
    assert email is not None
    assert (email.template, [r.role for r in email.to]) == ("visit_due", ["rep"])
    assert email.context["visit"] == {"label": "site visit", "due_at": day(14).isoformat(), "number": 1}


def test_site_visit_due_is_journaled_at_the_due_date_without_an_email(playbook: Playbook) -> None:
    engine = in_ongoing(playbook)
    engine.tick(day(11))
    engine.take_steps()
    assert engine.next_wakeup() == Wakeup(day(14), "site visit due")
    engine.tick(day(14))
    [step] = engine.take_steps()
    assert (step.entry.kind, step.entry.at, step.entry.detail) == (
        "visit_due",
        day(14),
        {"cadence": "site visit", "due_at": day(14).isoformat()},
    )


def test_a_missed_site_visit_escalates_seven_days_after_the_due_date(playbook: Playbook) -> None:
    engine = in_ongoing(playbook)
    engine.tick(day(14))
    engine.take_steps()
    assert engine.next_wakeup() == Wakeup(day(21), "site visit overdue")
    engine.tick(day(21) - timedelta(seconds=1))
    assert engine.take_steps() == []
    engine.tick(day(21))
    steps = engine.take_steps()
    assert kinds(steps) == ["escalation", "email"]
    assert steps[0].entry.detail["reason"] == "missed"
    email = steps[1].email
    assert email is not None
    assert (email.template, [r.role for r in email.to], [r.role for r in email.cc]) == (
        "visit_overdue",
        ["rep"],
        ["account_manager"],
    )


def test_after_a_missed_visit_the_schedule_moves_on_from_the_missed_due_date(playbook: Playbook) -> None:
    engine = in_ongoing(playbook)
    engine.tick(day(21))
    cadence = engine.state.cadence
    assert cadence is not None
    assert (cadence.missed, cadence.base, cadence.next_due) == (1, day(14), day(28))
    assert engine.next_wakeup() == Wakeup(day(25), "site visit: reminder")


def test_a_forgotten_client_keeps_producing_reminders_and_escalations(playbook: Playbook) -> None:
    engine = in_ongoing(playbook)
    engine.tick(day(60))
    steps = engine.take_steps()
    assert [s.entry.at for s in steps if s.entry.kind == "escalation"] == [day(21), day(35), day(49)]
    assert [s.entry.at for s in steps if s.entry.kind == "visit_due"] == [day(14), day(28), day(42), day(56)]


def test_a_logged_site_visit_resets_next_due_from_the_visit_date(playbook: Playbook) -> None:
    engine = in_ongoing(playbook)
    engine.tick(day(11))  # reminder sent
    engine.take_steps()
    visit(engine, on=day(12), logged_at=day(13))
    cadence = engine.state.cadence
    assert cadence is not None
    assert (cadence.logged, cadence.last_logged_at, cadence.next_due) == (1, day(12), day(26))
    assert not cadence.reminded
    [form_entry] = engine.take_steps()
    assert form_entry.entry.detail == {
        "form": "site_visit",
        "count": 1,
        "by": "riley",
        "values": {"visited_on": "2025-02-12", "steps_cleared": True},
        "next_due": day(26).isoformat(),
        "logged_at": day(12).isoformat(),
        "touchpoint": "site visit",
    }
    assert engine.next_wakeup() == Wakeup(day(23), "site visit: reminder")


def test_a_late_site_visit_pushes_later_visits_back_and_cancels_the_escalation(playbook: Playbook) -> None:
    engine = in_ongoing(playbook)
    engine.tick(day(14))  # reminder and visit_due
    engine.take_steps()
    visit(engine, on=day(17), logged_at=day(18))
    assert engine.state.cadence is not None
    assert engine.state.cadence.next_due == day(31)
    engine.take_steps()
    engine.tick(day(27))
    assert "escalation" not in kinds(engine.take_steps())
    assert engine.state.cadence.missed == 0


def test_a_site_visit_logged_at_the_visit_uses_the_submission_time(playbook: Playbook) -> None:
    engine = in_ongoing(playbook)
    visit(engine, on=day(13), logged_at=day(13) + timedelta(hours=5))
    assert engine.state.cadence is not None
    assert engine.state.cadence.next_due == day(27) + timedelta(hours=5)


def test_a_site_visit_with_needs_emails_corporate(playbook: Playbook) -> None:
    engine = in_ongoing(playbook)
    visit(engine, on=day(13), logged_at=day(13), needs="More fall mats")
    assert templates(engine.take_steps()) == ["site_visit_needs"]
    visit(engine, on=day(26), logged_at=day(26))
    assert templates(engine.take_steps()) == []


def test_a_site_visit_dated_in_the_future_is_rejected(playbook: Playbook) -> None:
    engine = in_ongoing(playbook)
    before = engine.state.model_dump()
    with pytest.raises(Rejected) as caught:
        visit(engine, on=day(14), logged_at=day(13))
    assert str(caught.value) == "form 'site_visit' is invalid: visited_on: cannot be in the future"
    assert caught.value.field_errors == {"visited_on": "cannot be in the future"}
    assert engine.state.model_dump() == before


def test_a_site_visit_dated_today_is_accepted(playbook: Playbook) -> None:
    engine = in_ongoing(playbook)
    visit(engine, on=day(13), logged_at=day(13) + timedelta(hours=14))
    assert engine.state.cadence is not None and engine.state.cadence.logged == 1


def test_logging_an_older_visit_late_does_not_move_the_schedule_back(playbook: Playbook) -> None:
    engine = in_ongoing(playbook)
    visit(engine, on=day(20), logged_at=day(20))  # next visit due day 34
    visit(engine, on=day(5), logged_at=day(21))  # a forgotten earlier visit, logged afterwards
    assert engine.state.cadence is not None
    assert engine.state.cadence.next_due == day(34)
    engine.take_steps()
    engine.tick(day(28))
    assert "escalation" not in kinds(engine.take_steps())


# --- the visit schedule counts from the launch -------------------------------------------------------------


def closed_out(playbook: Playbook, launched: datetime, filed: datetime) -> Engine:
    engine = in_launch(playbook)
    engine.complete_task(CompleteTask(task="launch_checklist"), T0)
    submit(engine, "closeout", {**CLOSEOUT, "launched_on": launched.date().isoformat()}, filed)
    engine.take_steps()
    return engine


def test_the_first_visit_is_due_fourteen_days_after_the_launch_not_after_the_closeout(playbook: Playbook) -> None:
    """Seed 000: "Onboarding Stage (First 60 Days): Site visit 1x every 2 weeks" counts from the launch: launched on
    day 10, closeout filed on day 20, the first visit is due on day 24 (not 34)."""
    engine = closed_out(playbook, launched=day(10), filed=day(20))
    cadence = engine.state.cadence
    assert cadence is not None
    assert (cadence.anchor, cadence.next_due) == (day(10), day(24))


def test_visit_dates_already_past_when_the_closeout_is_filed_are_not_missed_visits(playbook: Playbook) -> None:
    engine = closed_out(playbook, launched=day(10), filed=day(40))  # days 24 and 38 passed before the closeout
    cadence = engine.state.cadence
    assert cadence is not None
    assert (cadence.base, cadence.next_due, cadence.missed) == (day(38), day(52), 0)
    engine.tick(day(40))
    assert [step.entry.kind for step in engine.take_steps()] == []


def test_a_closeout_filed_after_the_first_sixty_days_starts_on_the_monthly_schedule(playbook: Playbook) -> None:
    engine = closed_out(playbook, launched=day(0), filed=day(75))
    cadence = engine.state.cadence
    assert cadence is not None
    # Days 14 to 70 passed two weeks apart (day 70 is two weeks after day 56, inside the first 60 days); from day 70
    # on, visits are a calendar month apart.
    assert (cadence.base, cadence.next_due) == (day(70), duration("1mo").after(day(70)))


def test_a_lifecycle_recorded_before_past_dates_were_skipped_still_catches_up_on_them(playbook: Playbook) -> None:
    engine = in_launch(playbook)
    engine.applies = lambda rule: rule != PATCH_PAST_VISITS_SKIPPED
    engine.complete_task(CompleteTask(task="launch_checklist"), T0)
    submit(engine, "closeout", {**CLOSEOUT, "launched_on": day(10).date().isoformat()}, day(40))
    cadence = engine.state.cadence
    assert cadence is not None
    assert cadence.next_due == day(24)


# --- check_* only read --------------------------------------------------------------------------------------

CHECKS: dict[str, tuple[Callable[[Playbook], Engine], Callable[[Engine], object]]] = {
    "form not open": (in_contract, lambda e: e.check_submit(SubmitForm(form="closeout"), day(1))),
    "invalid form fields": (
        started,
        lambda e: e.check_submit(SubmitForm(form="targeting", fields={"service_tier": "Gold"}), day(1)),
    ),
    "blocked task": (in_prelaunch, lambda e: e.check_task(CompleteTask(task="cleared_for_launch"))),
    "unknown task": (in_prelaunch, lambda e: e.check_task(CompleteTask(task="dance"))),
    "advance with unmet gate": (in_prelaunch, lambda e: e.check_advance(Advance(to="launch"))),
    "invalid deal fields": (in_prelaunch, lambda e: e.check_set_fields(SetFields(fields={"launch_date": "soon"}))),
    "clearing a required deal field": (in_prelaunch, lambda e: e.check_set_fields(SetFields(fields={"rep_email": ""}))),
    "close into a missing stage": (
        in_prelaunch,
        lambda e: e.check_close(Close(outcome="lost", reason="x", stage="nope")),
    ),
    "future site visit": (
        in_ongoing,
        lambda e: e.check_submit(
            SubmitForm(form="site_visit", fields={"visited_on": "2025-12-31", "steps_cleared": "yes"}), day(1)
        ),
    ),
}


@pytest.mark.parametrize("name", list(CHECKS))
def test_a_rejecting_check_never_changes_the_state(playbook: Playbook, name: str) -> None:
    setup, check = CHECKS[name]
    engine = setup(playbook)
    before = engine.state.model_dump()
    with pytest.raises(Rejected):
        check(engine)
    assert engine.state.model_dump() == before
    assert engine.steps == []


def test_a_passing_check_never_changes_the_state_either(playbook: Playbook) -> None:
    engine = in_ongoing(playbook)
    before = engine.state.model_dump()
    checked = engine.check_submit(
        SubmitForm(form="site_visit", fields={"visited_on": "2025-02-10", "steps_cleared": "Yes"}), day(11)
    )
    assert checked.values == {"visited_on": "2025-02-10", "steps_cleared": True}
    engine.check_set_fields(SetFields(fields={"launch_date": "2025-02-01"}))
    engine.check_close(Close(outcome="cancelled", reason="moved away"))
    assert engine.state.model_dump() == before
    assert engine.steps == []


def test_attachments_are_chosen_by_conditions_on_the_deal() -> None:
    from sopflow.playbook_checks import parse_playbook

    rosters = parse_playbook(
        {
            "id": "rosters",
            "version": 1,
            "roles": {"admin": {"email": "deal.admin_email"}},
            "deal": {
                "admin_email": {"type": "email", "required": True},
                "tier": {"type": "choice", "options": ["Basic", "Standard", "Premium"], "required": True},
                "credentialing": {"type": "bool"},
            },
            "stages": [
                {
                    "id": "welcome",
                    "on_enter": [
                        {
                            "email": {
                                "template": "welcome",
                                "to": ["admin"],
                                "attach": [
                                    {"file": "Account Configuration Roster.xlsx"},
                                    {
                                        "file": "Payor Roster.xlsx",
                                        "when": {
                                            "all": [
                                                {"field": "deal.tier", "equals": "Basic"},
                                                {"field": "deal.credentialing", "equals": True},
                                            ]
                                        },
                                    },
                                    {
                                        "file": "Credentialing Information Roster.xlsx",
                                        "when": {
                                            "all": [
                                                {"field": "deal.tier", "in": ["Standard", "Premium"]},
                                                {"field": "deal.credentialing", "equals": True},
                                            ]
                                        },
                                    },
                                ],
                            }
                        }
                    ],
                }
            ],
        }
    )

    def attachments(**deal: Any) -> list[str]:
        engine = Engine.start(rosters, "D-1", {"admin_email": "admin@example.com", **deal}, T0, "deal-D-1")
        (email_step,) = [s for s in engine.take_steps() if s.email is not None]
        assert email_step.email is not None
        return email_step.email.attachments

    assert attachments(tier="Basic") == ["Account Configuration Roster.xlsx"]
    assert attachments(tier="basic", credentialing="yes") == ["Account Configuration Roster.xlsx", "Payor Roster.xlsx"]
    assert attachments(tier="Premium", credentialing=True) == [
        "Account Configuration Roster.xlsx",
        "Credentialing Information Roster.xlsx",
    ]


def test_a_claiming_form_names_the_account_it_claims_normalised_so_near_duplicates_collide(playbook: Playbook) -> None:
    engine = started(playbook)
    checked = engine.check_submit(
        SubmitForm(form="targeting", fields={**TARGETING, "company": "ACME Clinic, Inc."}), T0
    )
    assert checked.claim is not None
    assert (checked.claim.account_key, checked.claim.deal_id, checked.claim.playbook) == (
        "acme clinic inc",
        "D-1",
        "safe_balance",
    )
    submit(engine, "targeting", TARGETING)
    assert engine.check_submit(SubmitForm(form="contract_request", fields=CONTRACT_REQUEST), T0).claim is None


def test_a_refused_claim_names_the_deal_holding_the_account_and_how_to_reach_the_partner_manager(
    playbook: Playbook,
) -> None:
    """Seed 000: "If the account is unavailable or currently claimed ... contact <the partner manager> to discuss the
    opportunity": the refusal gives the address the playbook's settings hold."""
    engine = started(playbook)
    checked = engine.check_submit(SubmitForm(form="targeting", fields=TARGETING), T0)
    assert checked.claim is not None
    refusal = engine.claim_refused("targeting", checked.claim, ClaimResult(granted=False, holder_deal_id="D-9"))
    assert str(refusal) == (
        "account 'acme clinic' is already claimed by deal D-9; contact the partner manager (partners@example.com) to "
        "discuss the opportunity"
    )


def test_a_refused_claim_without_a_contact_role_names_only_the_holder(playbook: Playbook) -> None:
    targeting = playbook.forms["targeting"].model_copy(update={"claim_contact": None})
    book = playbook.model_copy(update={"forms": {**playbook.forms, "targeting": targeting}})
    engine = started(book)
    checked = engine.check_submit(SubmitForm(form="targeting", fields=TARGETING), T0)
    assert checked.claim is not None
    refusal = engine.claim_refused("targeting", checked.claim, ClaimResult(granted=False, holder_deal_id="D-9"))
    assert str(refusal) == "account 'acme clinic' is already claimed by deal D-9"


def test_a_checked_submission_is_checked_again_when_the_lifecycle_moved_on_before_it_was_applied(
    playbook: Playbook,
) -> None:
    engine = started(playbook)
    submit(engine, "targeting", TARGETING)
    late = SubmitForm(form="contract_request", fields=CONTRACT_REQUEST)
    checked = engine.check_submit(late, T0)
    engine.close(Close(outcome="cancelled", reason="budget"), T0)  # while the workflow awaited something
    with pytest.raises(Rejected, match="is closed"):
        engine.submit_form(late, T0, checked)


def test_a_lifecycle_holds_the_claims_of_the_submissions_it_accepted_only(playbook: Playbook) -> None:
    engine = started(playbook)
    assert not engine.holds_claim("acme clinic")
    submit(engine, "targeting", TARGETING)
    assert engine.holds_claim("acme clinic") and not engine.holds_claim("beta clinic")


# --- a request's answer (UpdateResult) ----------------------------------------------------------------------------


def test_a_request_answers_where_the_deal_moved_from_and_to_and_the_entries_it_wrote(playbook: Playbook) -> None:
    engine = started(playbook)
    submit(engine, "targeting", TARGETING)
    answer = engine.update_result("targeting", 0)
    assert (answer.deal_id, answer.stage, answer.moved_from) == ("D-1", "contract_request", "targeting")
    assert answer.stage_title == engine.status(T0).stage_title
    assert answer.changes == ["form", "stage", "email"]
    assert answer.open_forms == engine.status(T0).open_forms


def test_a_request_that_leaves_the_stage_answers_without_a_move_and_only_its_own_entries(playbook: Playbook) -> None:
    engine = in_prelaunch(playbook)
    queued = len(engine.steps)
    engine.complete_task(CompleteTask(task="onsite_appointment", actor="alex"), T0)
    answer = engine.update_result("prelaunch", queued)
    assert answer.moved_from is None and answer.stage == "prelaunch"
    assert answer.changes == ["task"]
    assert "onsite_appointment" not in answer.open_task_ids and "services_onboarded" in answer.open_task_ids


def test_a_request_answers_what_the_gate_still_needs_and_nothing_once_closed(playbook: Playbook) -> None:
    engine = in_prelaunch(playbook)
    assert engine.update_result("prelaunch", 0).unmet_gate == engine.status(T0).unmet_gate != []
    engine.close(Close(outcome="lost", reason="went elsewhere", actor="alex"), T0)
    closed = engine.update_result("prelaunch", 0)
    assert closed.outcome == "lost" and closed.unmet_gate == []


def test_a_request_answer_is_a_fraction_of_the_full_status(playbook: Playbook) -> None:
    """Every answer is written into the lifecycle's history: it carries no fields, tasks' details or history."""
    engine = in_prelaunch(playbook)
    answer = engine.update_result("prelaunch", 0).model_dump_json()
    assert len(answer) * 3 < len(engine.status(T0).model_dump_json())


def test_the_answer_reads_the_full_status_a_worker_from_before_answered_with(playbook: Playbook) -> None:
    """Clients are deployed before workers: while old workers still answer updates with the whole status, the new
    client keeps what it needs from it."""
    engine = in_prelaunch(playbook)
    status = engine.status(T0)
    answer = UpdateResult.model_validate_json(status.model_dump_json())
    assert (answer.stage, answer.playbook_version, answer.unmet_gate) == (
        status.stage,
        status.playbook_version,
        status.unmet_gate,
    )
    assert answer.moved_from is None and answer.changes == [] and answer.open_task_ids == []
