"""`sopflow deal event`: an event is a signal, which has no answer, so the CLI asks the lifecycle afterwards and says
what became of the event: accepted (it moved the deal), ignored (a repeat, or not awaited in the deal's stage), or
delivered (awaited, but the deal did not move)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from sopflow.models import LifecycleStatus, TransitionRecord
from starter.cli.deal_changes import EventOutcome, event_result
from tests.starter.conftest import Cli


async def in_contract(cli: Cli) -> str:
    """A deal whose contract was sent: the contract stage waits for contract_signed."""
    deal = f"EV{uuid.uuid4().hex[:8]}"
    await cli.start_deal(deal, "rep_email=rep@example.com", "account_manager_email=am@example.com")
    targeting = [f"company=Clinic {deal}", "signer_name=Client Signer", "signer_email=signer@example.com"]
    contract = ["agreement=Safe Balance", "term_months=24", "client_agreed_on=2026-01-05"]
    for form, fields in (("targeting", [*targeting, "service_tier=Premium"]), ("contract_request", contract)):
        await cli.ok("form", "submit", deal, form, *[arg for field in fields for arg in ("-f", field)])
    return deal


async def test_a_repeated_event_says_it_was_already_received_instead_of_sent(cli: Cli):
    deal = await in_contract(cli)

    first = await cli.ok("deal", "event", deal, "contract_signed")
    assert first.strip() == f"✓ event contract_signed accepted: deal {deal} moved from contract to prelaunch"

    again = await cli.ok("deal", "event", deal, "contract_signed")
    assert "sent" not in again
    assert again.startswith("• event contract_signed ignored: already received on ")
    assert again.strip().endswith(f"it moved the deal from contract to prelaunch; deal {deal} stays in prelaunch")

    result = json.loads(await cli.ok("deal", "event", deal, "contract_signed", "-o", "json"))
    assert (result["outcome"], result["stage"], result["deal_id"]) == ("ignored", "prelaunch", deal)


async def test_a_repeated_event_id_is_ignored_and_the_deal_moves_once(cli: Cli):
    deal = await in_contract(cli)
    sent = ("deal", "event", deal, "contract_signed", "--id", "envelope-7/completed", "-o", "json")

    assert json.loads(await cli.ok(*sent))["outcome"] == "accepted"
    assert json.loads(await cli.ok(*sent))["outcome"] == "ignored"
    history = json.loads(await cli.ok("deal", "status", deal, "-o", "json"))["history"]
    assert [record["trigger"] for record in history].count("event:contract_signed") == 1


async def test_an_event_the_stage_does_not_wait_for_is_reported_as_ignored(cli: Cli):
    deal = f"EV{uuid.uuid4().hex[:8]}"
    await cli.start_deal(deal, "rep_email=rep@example.com", "account_manager_email=am@example.com")

    text = await cli.ok("deal", "event", deal, "contract_signed")
    assert text.strip() == (
        f"• event contract_signed ignored: stage 'targeting' does not wait for it; deal {deal} stays in targeting"
    )


def status(stage: str, *moves: tuple[str, str, str], awaits: list[str] | None = None) -> LifecycleStatus:
    at = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
    history = [TransitionRecord(from_stage=None, to_stage="targeting", at=at, trigger="start")]
    history += [TransitionRecord(from_stage=a, to_stage=b, at=at, trigger=trigger) for a, b, trigger in moves]
    return LifecycleStatus(
        deal_id="D-1",
        playbook="safe_balance",
        playbook_version=1,
        stage=stage,
        stage_title=stage,
        stage_entered_at=at,
        history=history,
        awaited_events=awaits,
    )


def test_an_event_awaited_by_the_stage_that_moved_nothing_is_delivered_not_accepted():
    before = after = status("contract", awaits=["contract_signed", "contract_declined", "contract_voided"])
    result = event_result("contract_signed", before, after)
    assert result.outcome == EventOutcome.delivered
    assert result.message == "event contract_signed delivered: deal D-1 stays in contract"


def test_from_a_worker_that_does_not_say_what_the_stage_awaits_an_unmoved_deal_is_only_delivered():
    moved = ("contract", "prelaunch", "event:contract_signed")
    result = event_result("contract_signed", status("prelaunch", moved), status("prelaunch", moved))
    assert result.outcome == EventOutcome.delivered


def test_a_move_the_event_triggered_is_accepted_naming_where_the_deal_came_from():
    before = status("contract", awaits=["contract_signed", "contract_declined", "contract_voided"])
    after = status("closed_lost", ("contract", "closed_lost", "event:contract_declined"), awaits=[])
    result = event_result("contract_declined", before, after)
    assert (result.outcome, result.from_stage) == (EventOutcome.accepted, "contract")
    assert result.message == "event contract_declined accepted: deal D-1 moved from contract to closed_lost"
