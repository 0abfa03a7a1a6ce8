"""Health Prime's sales pipelines driven by HubSpot alone, through the real intake (signed v3 webhook batches), a
real dev server and worker: a deal created in a Health Prime pipeline starts `health_prime_sales` once its pipeline
is known, its properties arrive in any order and twice, each stage is left by itself once HubSpot moved the deal and
its gate is met, the won properties close it won, the lost reasons close it lost, and a value the deal refuses is
answered `rejected` without losing the other properties or the deal."""

from __future__ import annotations

import random
from typing import Any

from temporalio.api.enums.v1 import EventType

from tests.starter.conftest import Intake, change, creation, eventually

T0 = 1_760_000_000_000
NEW_BUSINESS, EXPANSION = "81234561", "81234562"  # the shipped mapping's example pipeline ids
# New Business stage ids the shipped mapping turns into the events the playbook follows.
TO_ENGAGED, TO_PROPOSAL, TO_PARTNER_OF_CHOICE = "81234572", "81234573", "81234574"

OWNER = {"rep_email": "rep@example.com", "rep_name": "Sales Rep", "hubspot_owner_id": "201"}
SQL = {"enterprise_deal_status": "no", "hp_product": "rcm;credentialing"}
ENGAGED = {
    "scope_of_services": "RCM for three locations",
    "number_of_providers": "12",
    "annual_practice_collections": "4800000",
    "hs_next_step": "Financials review call",
}
PROPOSAL = {
    "deal_meeting_required": "no",
    "deal_approval_status": "approved",
    "rate_range": "4.5% - 5.5%",
    "pricing_model": "Percentage of collections",
    "verbal_commit_status": "yes",
    "contract_status": "proposal_sent",
    "level_of_confidence_in_client_data": "high",
    "sop_snippet_added": "true",
    "term_months": "36",
    "amount": "720000",
    "arr_at_signing": "240000",
    "non_recurring_revenue": "15000",
    "target_go_live_date": "1788220800000",  # 2026-09-01, as HubSpot sends a date: epoch ms at UTC midnight
    "legacy_pm": "Example PM 9",
    "legacy_ehr": "Example EHR 4",
    "tax_id_count": "1",
    "annual_practice_charges": "9600000",
    "annual_visits": "42000",
    "backlog_details": "AR over 90 days about 15%",
    "user_license_restrictions": "None",
    "contract_provisions": "60-day termination for convenience",
    # Company facts, copied onto the deal by a HubSpot workflow (see the mapping).
    "company_name": "Example Orthopedic Group",
    "company_business_unit": "RCM",
    "company_provider_specialty": "Family medicine",
    "company_number_of_locations": "3",
    "company_current_pm": "Example PM 9",
    "company_current_ehr": "Example EHR 4",
    "company_current_rcm_processing": "In-house billing team",
    "company_rcm_rate": "5",
    "company_minimum": "15000",
    "company_support_global_note": "Three locations, one TIN",
    "company_division": "East",
}
WON = {
    "quoted_rcm_rate": "5",
    "onboarding_questionnaire": "uploaded",
    "nda_status": "signed",
    "baa_status": "not_required",
    "contract_status": "proposal_signed",
}


class Deal:
    """One HubSpot deal as its portal posts it: every delivery gets the next moment, whatever order it is sent in."""

    def __init__(self, intake: Intake, object_id: int) -> None:
        self.intake, self.object_id, self.id = intake, object_id, intake.deal(object_id)
        self.clock = T0

    def changes(self, properties: dict[str, str]) -> list[dict[str, Any]]:
        events = []
        for prop, value in properties.items():
            self.clock += 10
            events.append(change(self.intake.portal, self.object_id, prop, value, self.clock))
        return events

    async def post(self, events: list[dict[str, Any]]) -> dict[str, str]:
        """Post a signed batch; each event's outcome by property (or kind)."""
        answer = await self.intake.hubspot(events)
        assert answer.status_code == 200, answer.text
        return {
            str(event.get("propertyName", event["subscriptionType"])): result["outcome"]
            for event, result in zip(events, answer.json()["results"], strict=True)
        }

    async def stage(self) -> str:
        return (await self.intake.status(self.id)).stage


def shuffled(events: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Out of order, and every third event delivered twice (the same eventId and body, as a HubSpot retry)."""
    mixed = [*events, *events[::3]]
    random.Random(seed).shuffle(mixed)
    return mixed


async def started(deal: Deal, pipeline: str = NEW_BUSINESS) -> None:
    """Created in a Health Prime pipeline; the pipeline and the owner's properties arrive in one batch."""
    assert (await deal.intake.hubspot([creation(deal.intake.portal, deal.object_id, T0)])).status_code == 200
    outcomes = await deal.post(deal.changes({"pipeline": pipeline, **OWNER}))
    assert outcomes["rep_email"] == "started", outcomes
    assert await deal.stage() == "sql"


async def signal_handled(intake: Intake, deal: str) -> None:
    """The lifecycle has run a workflow task since the last signal reached it (a signal has no answer)."""
    events = (await intake.client.get_workflow_handle(f"deal-{deal}").fetch_history()).events
    signaled = max(i for i, e in enumerate(events) if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)
    completed = EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
    assert any(e.event_type == completed for e in events[signaled:])


async def moved_by_itself(deal: Deal, move: str, properties: dict[str, str], to: str, seed: int) -> None:
    """HubSpot moves the deal first (the gate is not met: the move waits), then the properties arrive shuffled and
    duplicated; the last one meets the gate and the deal follows the move by itself."""
    before = await deal.stage()
    assert (await deal.post(deal.changes({"dealstage": move})))["dealstage"] == "signaled"
    await eventually(lambda: signal_handled(deal.intake, deal.id))
    assert await deal.stage() == before

    events = shuffled(deal.changes(properties), seed)
    answer = await deal.intake.hubspot(events)
    assert answer.status_code == 200, answer.text
    assert applied_once(answer.json()["results"], properties), answer.text
    assert await deal.stage() == to


def applied_once(results: list[dict[str, Any]], properties: dict[str, str]) -> bool:
    """Each property set once, each repeat answered as a duplicate."""
    outcomes = sorted(r["outcome"] for r in results)
    return outcomes == sorted(["fields_set"] * len(properties) + ["duplicate"] * (len(results) - len(properties)))


async def no_failed_workflow_task(intake: Intake, deal: str) -> None:
    history = await intake.client.get_workflow_handle(f"deal-{deal}").fetch_history()
    assert [e for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED] == []


# --- starting ------------------------------------------------------------------------------------------------------


async def test_a_deal_in_a_health_prime_pipeline_starts_once_its_pipeline_and_rep_arrive_in_any_order(shipped: Intake):
    deal = Deal(shipped, 8101)
    created = (await shipped.hubspot([creation(shipped.portal, 8101, T0)])).json()["results"][0]
    assert created["outcome"] == "needs_fields" and "pipeline" in created["detail"]["missing"]
    rep_email, rep_name, owner_id = deal.changes(OWNER)
    # The pipeline was set when the deal was created (the oldest change) but arrives last.
    pipeline = change(shipped.portal, 8101, "pipeline", EXPANSION, T0 + 1)

    again = await shipped.hubspot([rep_email, rep_email])  # the same event twice (a HubSpot retry)
    assert [r["outcome"] for r in again.json()["results"]] == ["pending", "duplicate"]
    assert await deal.post([owner_id, rep_name]) == {"hubspot_owner_id": "pending", "rep_name": "pending"}
    starting = (await shipped.hubspot([pipeline])).json()["results"][0]

    assert starting["outcome"] == "started", starting
    assert (starting["detail"]["playbook"], starting["detail"]["playbook_version"]) == ("health_prime_sales", 3)
    status = await shipped.status(deal.id)
    assert status.stage == "sql" and status.owner == "sales_rep:201"
    assert {name: status.fields.get(name) for name in ("pipeline", "sales_rep_email", "sales_rep_name")} == {
        "pipeline": "Expansion",
        "sales_rep_email": "rep@example.com",
        "sales_rep_name": "Sales Rep",
    }
    assert status.fields["contact_lifecycle"] == "Customer"  # Expansion: an existing client
    # Another playbook's property means nothing to this deal; a company's own events are not a deal's.
    other = await deal.post(deal.changes({"launch_date": "1788220800000"}))
    assert other == {"launch_date": "ignored"}
    company = {**deal.changes({"company_business_unit": "RCM"})[0], "subscriptionType": "company.propertyChange"}
    assert (await shipped.hubspot([company])).json()["results"][0]["outcome"] == "ignored"


# --- moving --------------------------------------------------------------------------------------------------------


async def test_each_stage_follows_hubspots_move_once_its_gate_is_met_and_the_won_properties_close_it_won(
    shipped: Intake,
):
    deal = Deal(shipped, 8102)
    await started(deal)

    await moved_by_itself(deal, TO_ENGAGED, SQL, "engaged", seed=1)
    await moved_by_itself(deal, TO_PROPOSAL, ENGAGED, "proposal", seed=2)
    await moved_by_itself(deal, TO_PARTNER_OF_CHOICE, PROPOSAL, "partner_of_choice", seed=3)
    fields = (await shipped.status(deal.id)).fields
    assert fields["hp_products"] == ["RCM", "Credentialing"] and fields["target_go_live_date"] == "2026-09-01"
    assert (fields["deal_approval_status"], fields["data_confidence"]) == ("Approved", "High")

    # Closed Won needs no move: "moved here automatically ... once all objects are completed".
    answer = await shipped.hubspot(shuffled(deal.changes(WON), seed=4))
    assert applied_once(answer.json()["results"], WON), answer.text  # the last one of them closed it
    status = await shipped.status(deal.id)
    assert (status.stage, status.outcome) == ("closed_won", "won")
    assert status.fields["client_status"] == "Signed"
    assert status.history[-1].trigger == "condition"
    await no_failed_workflow_task(shipped, deal.id)


async def test_a_deal_whose_lost_reasons_are_both_filled_closes_lost_by_itself_and_later_changes_say_closed(
    shipped: Intake,
):
    deal = Deal(shipped, 8103)
    await started(deal)

    details, category = deal.changes(
        {"deal_lost_reason_details": "Renewing with the current vendor", "deal_lost_reason_category": "timing"}
    )
    twice = await shipped.hubspot([details, details])
    assert [r["outcome"] for r in twice.json()["results"]] == ["fields_set", "duplicate"]
    assert await deal.stage() == "sql"  # the details alone do not lose the deal
    assert await deal.post([category]) == {"deal_lost_reason_category": "fields_set"}

    status = await shipped.status(deal.id)
    assert (status.stage, status.outcome) == ("closed_lost", "lost")
    assert status.fields["lost_reason_category"] == "Timing"
    assert status.fields["contact_lifecycle"] == "Recycled"  # New Business, a category recycled
    (late,) = (await shipped.hubspot(deal.changes({"rate_range": "4%"}))).json()["results"]
    # Closed while its last emails go out (the validator refuses), or ended: either way nothing changes.
    assert late["outcome"] == "closed" or f"deal {deal.id} is closed (lost)" in late["detail"]["error"], late


# --- refusals ------------------------------------------------------------------------------------------------------


async def test_a_value_the_deal_refuses_is_answered_rejected_and_loses_neither_the_other_properties_nor_the_deal(
    shipped: Intake,
):
    deal = Deal(shipped, 8104)
    assert (await shipped.hubspot([creation(shipped.portal, 8104, T0)])).status_code == 200
    # Before the start: an option the playbook does not have is kept, then left out of the start and reported.
    kept = {"contract_status": "lost_in_the_mail", "annual_visits": "1e999999999", "rate_range": "4.5% - 5.5%"}
    assert await deal.post(deal.changes(kept)) == dict.fromkeys(kept, "pending")
    starting = (await shipped.hubspot(deal.changes({"pipeline": NEW_BUSINESS, **OWNER}))).json()["results"]
    start = next(r for r in starting if r["outcome"] == "started")
    assert start["detail"]["refused"]["annual_visits"] == "a number out of range"
    assert "is not one of" in start["detail"]["refused"]["contract_status"]
    status = await shipped.status(deal.id)
    assert status.stage == "sql" and status.fields["rate_range"] == "4.5% - 5.5%"
    assert status.fields.get("contract_status") is None
    assert status.fields.get("annual_visits") is None
    outcomes = {r.payload.get("property"): r.outcome for r in shipped.rows(deal.id)}
    assert (outcomes["contract_status"], outcomes["annual_visits"], outcomes["rate_range"]) == (
        "rejected",
        "rejected",
        "pending",  # kept, then started with the deal
    )

    # After the start: each change is its own update; the refused one is reported, the others applied.
    batch = deal.changes({"hp_product": "rcm;teleportation", "enterprise_deal_status": "yes", "tax_id_count": "x"})
    assert await deal.post(batch) == {
        "hp_product": "rejected",
        "enterprise_deal_status": "fields_set",
        "tax_id_count": "rejected",
    }
    status = await shipped.status(deal.id)
    assert status.fields["enterprise_deal_status"] is True and status.fields.get("hp_products") in (None, [])
    assert status.stage == "sql" and status.outcome is None
    await no_failed_workflow_task(shipped, deal.id)
