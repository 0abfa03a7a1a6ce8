"""ClientLifecycle through the real workflow, activities, SMTP sink and SQLite, on the time-skipping server."""

from __future__ import annotations

import itertools
import threading
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowUpdateFailedError, WorkflowUpdateStage
from temporalio.exceptions import ApplicationError

from activities.records import RecordActivities
from sopflow.constants import WORKFLOW_ID_PREFIX
from sopflow.db import AccountClaim
from sopflow.models import (
    Advance,
    ClaimRequest,
    ClaimResult,
    CompleteTask,
    ExternalEvent,
    LifecycleInput,
    LifecycleStatus,
    SubmitForm,
)
from sopflow.playbook_checks import parse_playbook
from starter.rehearse import Rehearsal
from tests.conftest import (
    CONTRACT_REQUEST,
    PRELAUNCH_TASKS,
    TARGETING,
    checked_in_scenario,
    launched_steps,
    mail,
    make_worker,
    quiet_start,
    run,
    sales_steps,
    start_deal,
)
from workflows.lifecycle import ClientLifecycle

MONDAY, WEDNESDAY, FRIDAY = 0, 2, 4


def cause_of(failure: pytest.ExceptionInfo[WorkflowUpdateFailedError]) -> ApplicationError:
    """The workflow's rejection (message and per-field details) behind a failed update."""
    assert isinstance(failure.value.cause, ApplicationError)
    return failure.value.cause


def day_of(entry: dict[str, Any]) -> float:
    return float(entry["day"])


def stage_moves(result: Rehearsal) -> list[tuple[str, float]]:
    return [(e["to"], day_of(e)) for e in result.of_kind("stage")]


def days_between(a: str, b: str) -> float:
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds() / 86400


async def test_unsigned_contract_expires_exactly_14_days_after_sending_with_reminders_before(ts_env, safe_balance):
    """Sent at midnight on a Thursday; the reminders fall at midnight too, so each waits for the send window's 09:00
    opening (both on weekdays); the expiry never waits."""
    result = await run(ts_env, safe_balance, sales_steps(signed_on=None), until="20d", start=quiet_start(WEDNESDAY))

    moves = stage_moves(result)
    assert ("contract", 1.0) in moves
    expiry = next(e for e in result.of_kind("stage") if e["to"] == "contract_expired")
    assert expiry["trigger"] == "deadline" and day_of(expiry) == pytest.approx(15.0, abs=0.01)
    reminders = [day_of(e) for e in result.of_kind("reminder") if e.get("deadline") == "contract expires"]
    assert reminders == pytest.approx([8.375, 13.375], abs=0.05)  # 7 and 2 days before the day-15 expiry, at 09:00
    sent = {(e["template"], e["status"]) for e in result.of_kind("email")}
    assert {("contract_sent", "sent"), ("contract_reminder", "sent"), ("contract_expired", "sent")} <= sent
    assert result.status.stage == "contract_expired"


async def test_contract_signed_on_day_10_moves_to_prelaunch_and_sends_the_welcome_email(ts_env, safe_balance):
    result = await run(ts_env, safe_balance, sales_steps("10d"), until="11d")

    assert ("prelaunch", pytest.approx(10.0, abs=0.01)) in stage_moves(result)
    assert not [e for e in result.of_kind("stage") if e["to"] == "contract_expired"]
    welcome = [m for m in result.emails if m["X-Sopflow-Template"] == "safe_balance/welcome"]
    assert len(welcome) == 1
    assert "signer@example.com" in welcome[0]["To"] and "am@example.com" in welcome[0]["Reply-To"]
    assert {task.id for task in result.status.open_tasks} == set(PRELAUNCH_TASKS)


async def test_repeated_contract_signed_is_harmless(ts_env, safe_balance):
    steps = [
        *sales_steps("10d"),
        {"at": "10d", "event": "contract_signed", "event_id": "envelope-1/completed"},
        {"at": "11d", "event": "contract_signed", "event_id": "envelope-1/completed-again"},
    ]
    result = await run(ts_env, safe_balance, steps, until="12d")

    assert [to for to, _ in stage_moves(result)].count("prelaunch") == 1
    ignored = [e for e in result.of_kind("event") if e["status"] == "ignored"]
    assert len(ignored) == 1 and "not expected in stage 'prelaunch'" in ignored[0]["reason"]
    assert len([m for m in result.emails if m["X-Sopflow-Template"] == "safe_balance/welcome"]) == 1


async def test_launch_is_rejected_until_prelaunch_is_complete_naming_what_is_missing(
    ts_env, safe_balance, db, smtp_sink
):
    async with make_worker(ts_env.client, db, smtp_sink) as worker:
        handle = await start_deal(ts_env, worker, safe_balance, "D-9")
        for form, fields in (("targeting", TARGETING), ("contract_request", CONTRACT_REQUEST)):
            await handle.execute_update(ClientLifecycle.submit_form, SubmitForm(form=form, fields=fields))
        await handle.signal(ClientLifecycle.event, ExternalEvent(name="contract_signed"))
        await ts_env.sleep(timedelta(hours=1))

        with pytest.raises(WorkflowUpdateFailedError) as rejected:
            await handle.execute_update(ClientLifecycle.advance, Advance(to="launch"))
        message = str(rejected.value.cause)
        for missing in [*PRELAUNCH_TASKS, "launch_date"]:
            assert missing in message
        history = await handle.fetch_history()
        accepted = [
            e for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
        ]
        assert len(accepted) == 2  # the two forms; the rejected advance never reached history

        with pytest.raises(WorkflowUpdateFailedError) as blocked:
            await handle.execute_update(ClientLifecycle.complete_task, CompleteTask(task="cleared_for_launch"))
        assert (
            cause_of(blocked).message == "task 'cleared_for_launch' must wait for: services_onboarded, prelaunch_call"
        )
        status: LifecycleStatus = await handle.query(ClientLifecycle.status)
        assert status.stage == "prelaunch"


async def test_site_visits_over_three_years_follow_the_14_day_monthly_and_two_monthly_phases(ts_env, safe_balance):
    result = await run(ts_env, safe_balance, launched_steps(), until=f"{6 + 3 * 365}d")

    # Visits are dates (due at the close of business, 17:00 local): count local calendar days.
    dues = [date.fromisoformat(e["local"][:10]) for e in result.of_kind("visit_due")]
    gaps = [(b - a).days for a, b in itertools.pairwise(dues)]
    ongoing_entry = next(e for e in result.of_kind("stage") if e["to"] == "ongoing")
    offsets = [(due - date.fromisoformat(ongoing_entry["local"][:10])).days for due in dues]
    assert offsets[:5] == pytest.approx([14, 28, 42, 56, 70])
    first_year = [g for g, o in zip(gaps, offsets[1:], strict=False) if 70 < o <= 365]
    later = [g for g, o in zip(gaps, offsets[1:], strict=False) if o > 365 + 62]
    assert first_year and all(28 <= g <= 31 for g in first_year)
    assert later and all(59 <= g <= 62 for g in later)
    assert len(dues) == pytest.approx(5 + 10 + 12, abs=2)


async def test_overdue_site_visit_escalates_after_the_grace_period(ts_env, safe_balance):
    """Launched on day 6 of a Friday start: the visit is due on day 20 (a Thursday) at 17:00, reminded 3 days before
    and escalated 7 days after, each at 17:00 (inside the send window: weekdays)."""
    result = await run(ts_env, safe_balance, launched_steps(), until="30d", start=quiet_start(FRIDAY))

    reminder = next(e for e in result.of_kind("reminder") if e.get("cadence") == "site visit")
    due = next(e for e in result.of_kind("visit_due"))
    escalation = next(e for e in result.of_kind("escalation") if e.get("cadence") == "site visit")
    assert day_of(reminder) == pytest.approx(17 + 17 / 24, abs=0.05)
    assert day_of(due) == pytest.approx(20 + 17 / 24, abs=0.05)
    assert day_of(escalation) == pytest.approx(27 + 17 / 24, abs=0.05)
    overdue = [m for m in result.emails if m["X-Sopflow-Template"] == "safe_balance/visit_overdue"]
    assert len(overdue) == 1 and "am@example.com" in overdue[0]["Cc"]


async def test_a_logged_visit_resets_the_next_due_date(ts_env, safe_balance):
    visit = {"at": "16d", "form": "site_visit", "fields": {"visited_on": "$today", "steps_cleared": "yes"}}
    result = await run(ts_env, safe_balance, [*launched_steps(), visit], until="36d")

    logged = next(e for e in result.of_kind("form") if e["form"] == "site_visit")
    assert days_between(logged["at"], logged["next_due"]) == pytest.approx(14 + 17 / 24, abs=0.05)  # a date: 17:00
    dues = [day_of(e) for e in result.of_kind("visit_due")]
    assert dues[0] == pytest.approx(30 + 17 / 24, abs=0.05)  # 16 + 14, not the scheduled day 20
    assert not result.of_kind("escalation")  # the day-20 slot was met by the visit; day 30 escalates on 37


async def test_continue_as_new_keeps_state_across_years(ts_env, safe_balance):
    result = await run(ts_env, safe_balance, launched_steps(), until="800d")

    runs = result.of_kind("continued_as_new")
    assert [e["run"] for e in runs] == [2, 3]
    status = result.status
    assert status.run == 3 and status.stage == "ongoing"
    assert set(status.forms_submitted) == {"targeting", "contract_request", "closeout"}
    assert [r.to_stage for r in status.history] == [
        "targeting",
        "contract_request",
        "contract",
        "prelaunch",
        "launch",
        "ongoing",
    ]
    seqs = [e for e in result.timeline if e["kind"] != "rejected"]
    assert len(seqs) == len({(e["at"], e["kind"], str(e)) for e in seqs})
    assert result.duplicates == 0


async def test_a_claimed_account_cannot_be_claimed_by_another_deal(ts_env, safe_balance, db, smtp_sink):
    async with make_worker(ts_env.client, db, smtp_sink) as worker:
        handles = [await start_deal(ts_env, worker, safe_balance, deal_id) for deal_id in ("D-10", "D-11")]
        await handles[0].execute_update(ClientLifecycle.submit_form, SubmitForm(form="targeting", fields=TARGETING))
        same_account = {**TARGETING, "company": "sunrise care center."}
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handles[1].execute_update(
                ClientLifecycle.submit_form, SubmitForm(form="targeting", fields=same_account)
            )
        assert "already claimed by deal D-10; contact the partner manager (partners@example.com)" in (
            cause_of(refused).message
        )
        status: LifecycleStatus = await handles[1].query(ClientLifecycle.status)
        assert status.stage == "targeting" and "targeting" not in status.forms_submitted


class HeldClaims(RecordActivities):
    """Account claims wait at a gate the test opens, so two submissions of one deal overlap in the workflow."""

    gate = threading.Event()

    def _claim(self, req: ClaimRequest) -> ClaimResult:
        HeldClaims.gate.wait(timeout=60)
        return super()._claim(req)


# The claiming form is open only while prospecting; logging the first call moves the deal on.
CLAIMING = parse_playbook(
    {
        "id": "claiming",
        "version": 1,
        "forms": {
            "account": {"claims": "company", "fields": {"company": {"type": "text", "required": True}}},
            "first_call": {"fields": {"notes": {"type": "text"}}},
        },
        "stages": [
            {
                "id": "prospecting",
                "forms": ["account", "first_call"],
                "transitions": [{"to": "engaged", "form": "first_call"}],
            },
            {"id": "engaged", "transitions": [{"to": "lost", "advance": True}]},
            {"id": "lost", "terminal": "lost"},
        ],
    }
)


async def test_a_form_refused_after_its_account_claim_was_granted_gives_the_claim_back(ts_env, db, smtp_sink):
    HeldClaims.gate.clear()
    async with make_worker(ts_env.client, db, smtp_sink, record_activities=HeldClaims) as worker:
        handle = await ts_env.client.start_workflow(
            ClientLifecycle.run,
            LifecycleInput(deal_id="D-13", playbook=CLAIMING, fields={}),
            id=f"{WORKFLOW_ID_PREFIX}D-13",
            task_queue=worker.task_queue,
        )
        # Accepted while the form is open; its claim waits while the first call moves the deal on, closing the form.
        claiming = SubmitForm(form="account", fields={"company": "Alpha Clinic"})
        pending = await handle.start_update(
            ClientLifecycle.submit_form, claiming, wait_for_stage=WorkflowUpdateStage.ACCEPTED
        )
        await handle.execute_update(ClientLifecycle.submit_form, SubmitForm(form="first_call"))
        HeldClaims.gate.set()
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await pending.result()
        status: LifecycleStatus = await handle.query(ClientLifecycle.status)

    assert "is not open in stage 'engaged'" in cause_of(refused).message
    assert status.outcome is None  # the lifecycle runs on; its end would release every claim anyway
    with db.session() as session:
        assert session.scalars(select(AccountClaim).where(AccountClaim.deal_id == "D-13")).all() == []


async def test_invalid_form_is_rejected_field_by_field_without_touching_history(ts_env, safe_balance, db, smtp_sink):
    async with make_worker(ts_env.client, db, smtp_sink) as worker:
        handle = await start_deal(ts_env, worker, safe_balance, "D-12")
        before = len((await handle.fetch_history()).events)
        with pytest.raises(WorkflowUpdateFailedError) as rejected:
            await handle.execute_update(
                ClientLifecycle.submit_form,
                SubmitForm(
                    form="targeting", fields={**TARGETING, "signer_email": "not-an-email", "service_tier": "Gold"}
                ),
            )
        assert cause_of(rejected).details == (
            {
                "signer_email": "'not-an-email' is not an email address",
                "service_tier": "'Gold' is not one of: Basic, Standard, Premium",
            },
        )
        after = [
            e
            for e in (await handle.fetch_history()).events
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
        ]
        assert not after and before > 0


async def test_the_launch_checklist_is_due_on_the_launch_date_not_days_after_clearance(ts_env, safe_balance):
    """ "Launch the account using the SOP and checklist" on the launch day: cleared on day 5 for a launch on day 14,
    the checklist is not overdue before the launch date's close (17:00 local)."""
    steps = [
        *sales_steps("3d"),
        *({"at": "4d", "task": task} for task in PRELAUNCH_TASKS),
        {"at": "4d", "set": {"launch_date": "$today+10d"}},
        {"at": "5d", "advance": "launch"},
    ]
    result = await run(ts_env, safe_balance, steps, until="16d", start=quiet_start(MONDAY))

    (opened,) = [e for e in result.of_kind("task") if e["task"] == "launch_checklist" and e["status"] == "opened"]
    assert day_of(opened) == pytest.approx(5.0, abs=0.01)
    (overdue,) = [day_of(e) for e in result.of_kind("reminder") if e.get("task") == "launch_checklist"]
    assert overdue == pytest.approx(14 + 17 / 24, abs=0.05)


async def test_a_deal_signed_without_an_account_manager_starts_pre_launch_when_one_is_assigned(ts_env, safe_balance):
    """Seed 000: "Once the contract has been fully executed, the Pre-Launch process will begin with the account's
    assigned Account Manager" and "The Account Manager for the client will send out the Welcome email": signed on
    day 3 without one, the deal waits (corporate reminded, the partner manager told) until one is set on day 6."""
    deal, steps, until = checked_in_scenario("safe_balance_no_account_manager")
    result = await run(ts_env, safe_balance, steps, until, deal_id="DEMO-6", deal=deal)

    moves = dict(stage_moves(result))
    assert (moves["assign_account_manager"], moves["prelaunch"]) == (pytest.approx(3.0), pytest.approx(6.0))
    [welcome] = mail(result, "welcome")
    assert welcome["Reply-To"] == "Account Manager <am@example.com>"
    [escalation] = mail(result, "task_escalation")
    assert escalation["To"] == "partners@example.com"
    refused = [e for e in result.of_kind("rejected") if "onsite_appointment" in e["reason"]]
    assert [day_of(e) for e in refused] == [pytest.approx(4.0)]


async def test_site_visits_count_from_the_launch_date_not_from_the_closeout(ts_env, safe_balance):
    """Seed 000: "Onboarding Stage (First 60 Days): Site visit 1x every 2 weeks" from the launch: launched on day 11,
    closeout filed on day 31. The day-25 date passed before the closeout and is not a missed visit; the visit logged
    on day 39 meets the day-39 date, and the next is due on day 53 at the close of business."""
    deal, steps, until = checked_in_scenario("safe_balance_no_account_manager")
    result = await run(ts_env, safe_balance, steps, until, deal_id="DEMO-6", deal=deal)

    assert [day_of(e) for e in result.of_kind("visit_due")] == [pytest.approx(53 + 17 / 24, abs=0.05)]
    assert not [e for e in result.of_kind("escalation") if e.get("cadence")]
