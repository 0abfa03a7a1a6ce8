"""Health Prime sales pipeline (seed 002) through the real workflow, activities, SMTP sink and SQLite, time-skipping."""

from __future__ import annotations

from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus

from sopflow.config import PROJECT_ROOT
from sopflow.playbook import Playbook
from sopflow.playbook_checks import load_playbook
from sopflow.samples import render_check
from sopflow.templates import TemplateRenderer
from tests.conftest import body, checked_in_scenario, mail, run, sent, stage_path

PLAYBOOK_FILE = PROJECT_ROOT / "playbooks" / "health_prime_sales.yaml"
TEMPLATES = PROJECT_ROOT / "templates"
SCENARIOS = PROJECT_ROOT / "playbooks" / "scenarios"

DEAL = {
    "pipeline": "New Business",
    "sales_rep_email": "rep@example.com",
    "sales_rep_name": "Sales Rep",
    "sales_rep_id": "owner-201",
    "contact_lifecycle": "Target",
    "company_name": "Example Clinic",
}
SQL_DONE = {"enterprise_deal_status": "yes", "hp_products": ["RCM"]}
ENGAGED_DONE = {
    "scope_of_services": "RCM",
    "number_of_providers": 5,
    "annual_practice_collections": "1000000",
    "next_steps": "Proposal call",
}


def missing(name: str, label: str) -> str:
    return f"deal field '{name}' ({label}) is not set"


SQL_MISSING = [
    missing("enterprise_deal_status", "Enterprise Deal Status"),
    missing("hp_products", "HP Product"),
]
ENGAGED_MISSING = [
    missing("scope_of_services", "Likely scope of services"),
    missing("number_of_providers", "Number of Providers"),
    missing("annual_practice_collections", "Annual Practice Collections"),
    missing("next_steps", "Next steps"),
]
# With SQL and Engaged done (and Deal Owner, HP Product, collections, providers, company name already known), these
# are exactly the Proposal properties still missing: the SOP's list and the S&OP deal and company properties.
PROPOSAL_MISSING = [
    missing("deal_meeting_required", "Deal Meeting Required"),
    "Deal Approval Status is not Approved (deal_approval_status)",
    missing("rate_range", "Rate Range"),
    missing("pricing_model", "Pricing Model"),
    "Verbal Commit Status is not Yes (verbal_commit_status)",
    "Contract Status is not 'Proposal sent' (contract_status)",
    missing("data_confidence", "Level of Confidence in Client Data"),
    "S&OP Required Information is not populated (sop_snippet_added: type #S&OP in the deal notes)",
    missing("term_months", "Term (Months)"),
    missing("deal_amount", "Deal Amount"),
    missing("arr_at_signing", "Annual Recurring Revenue (ARR) at Signing"),
    missing("non_recurring_revenue", "Non-Recurring Revenue"),
    missing("target_go_live_date", "Projected/Target Go Live Date"),
    missing("legacy_pm", "Legacy PM"),
    missing("legacy_ehr", "Legacy EHR"),
    missing("tax_id_count", "How many Tax ID's will be used by this practice?"),
    missing("annual_practice_charges", "Annual Practice Charges"),
    missing("annual_visits", "Annual Visits"),
    missing("backlog_details", "Backlog Details"),
    missing("user_license_restrictions", "Are there any user license restrictions?"),
    missing("contract_provisions", "Any specific contract provisions or handling?"),
    missing("business_unit", "Business Unit"),
    missing("provider_specialty", "Provider Specialty"),
    missing("number_of_locations", "Number of locations"),
    missing("current_pm", "Current PM"),
    missing("current_ehr", "Current EHR"),
    missing("current_rcm_processing", "Current RCM Processing"),
    missing("rcm_rate", "RCM Rate"),
    missing("minimum", "Minimum"),
    missing("support_global_note", "Support Global Note"),
    missing("division", "Division"),
]
WON_MISSING = [
    missing("quoted_rcm_rate", "Quoted RCM Rate"),
    "Contract Status is not 'Proposal signed' (contract_status)",
    "Onboarding Questionnaire is not Uploaded (onboarding_questionnaire)",
    missing("nda_status", "NDA Status"),
    missing("baa_status", "BAA Status"),
]


@pytest.fixture(scope="module")
def hps() -> Playbook:
    return load_playbook(PLAYBOOK_FILE, TEMPLATES)


def listed(rejection: dict[str, Any], to: str) -> list[str]:
    """The items a rejected advance names, in order."""
    reason = rejection["reason"]
    prefix = f"for '{to}': "
    assert prefix in reason, reason
    return reason.split(prefix, 1)[1].split("; ")


UNSIGNED_BACK_OUT = (
    "cannot close as cancelled into 'backed_out': only a deal whose contract is signed backs out (Contract Status is "
    "not 'Proposal signed'); close an unsigned deal as lost with its Deal Lost Reason Category and Details"
)


def test_playbook_validates_and_every_template_renders(hps):
    assert render_check(hps, TemplateRenderer(TEMPLATES)) == []
    assert [s.id for s in hps.stages if not s.terminal] == ["sql", "engaged", "proposal", "partner_of_choice"]
    assert {s.id: s.terminal for s in hps.stages if s.terminal} == {
        "closed_won": "won",
        "closed_lost": "lost",
        "backed_out": "cancelled",
    }
    assert hps.deal["pipeline"].options == ["New Business", "Expansion", "Upsell"]
    assert hps.deal["contact_lifecycle"].options == [
        "Target",
        "Marketing Qualified Lead",
        "Sales Qualified Lead",
        "Customer",
        "Exclude from Marketing",
        "Additional Sales Contact",
        "Recycled",
    ]
    assert set(hps.roles) == {"sales_rep", "sdr", "sales_vp", "onboarding_team", "marketing"}
    assert all(value.endswith("@example.com") for key, value in hps.settings.items() if key.endswith("_email"))


async def test_advancing_out_of_each_stage_names_exactly_the_missing_properties(ts_env, hps):
    steps = [
        {"at": "1d", "advance": "engaged"},
        {"at": "2d", "set": SQL_DONE},
        {"at": "2d", "advance": "engaged"},
        {"at": "3d", "advance": "proposal"},
        {"at": "4d", "set": ENGAGED_DONE},
        {"at": "4d", "advance": "proposal"},
        {"at": "5d", "advance": "partner_of_choice"},
    ]
    result = await run(ts_env, hps, steps, until="6d", deal_id="HP-T1", deal=DEAL)

    sql, engaged, proposal = result.of_kind("rejected")
    assert listed(sql, "engaged") == SQL_MISSING
    assert listed(engaged, "proposal") == ENGAGED_MISSING
    assert listed(proposal, "partner_of_choice") == PROPOSAL_MISSING
    assert stage_path(result) == ["sql", "engaged", "proposal"]
    assert result.status.stage == "proposal"
    # A new-business deal in SQL makes its contact a Sales Qualified Lead.
    assert result.status.fields["contact_lifecycle"] == "Sales Qualified Lead"


async def test_won_path_rejects_an_incomplete_close_then_wins_by_itself_and_hands_off(ts_env, hps):
    deal, steps, until = checked_in_scenario("health_prime_sales_won")
    result = await run(ts_env, hps, steps, until=until, deal_id="HP-1", deal=deal)

    assert stage_path(result) == ["sql", "engaged", "proposal", "partner_of_choice", "closed_won"]
    sql, won = result.of_kind("rejected")
    assert listed(sql, "engaged") == SQL_MISSING
    assert listed(won, "closed_won") == [
        "Contract Status is not 'Proposal signed' (contract_status)",
        "Onboarding Questionnaire is not Uploaded (onboarding_questionnaire)",
    ]
    won_entry = result.of_kind("stage")[-1]
    assert won_entry["trigger"] == "condition" and float(won_entry["day"]) == pytest.approx(49.0, abs=0.01)
    assert result.status.outcome == "won"
    assert result.status.fields["contact_lifecycle"] == "Customer"
    assert result.status.fields["client_status"] == "Signed"

    (ticket,) = sent(result)["implementation_ticket"]
    assert ticket["status"] == "sent" and ticket["to"] == ["onboarding_team"]
    (message,) = mail(result, "implementation_ticket")
    assert "onboarding@example.com" in message["To"] and "rep@example.com" in message["Cc"]
    text = body(message, "plain")
    for expected in (
        "Example Family Practice",
        "RCM, Credentialing",
        "Sep 01, 2026",
        "5%",
        "Percentage of collections",
    ):
        assert expected in text
    (closeout,) = mail(result, "won_closeout")
    assert "Example Family Practice_Calculator" in body(closeout, "plain")

    # The hand-off: one implementation lifecycle, started with the won deal's data, owned by the onboarding team.
    (handoff,) = result.of_kind("linked")
    assert handoff["status"] == "started" and handoff["deal_id"] == "HP-1.health_prime_implementation"
    assert result.status.linked == {"health_prime_implementation": "HP-1.health_prime_implementation"}
    implementation = result.linked["HP-1.health_prime_implementation"]
    assert implementation.playbook == "health_prime_implementation"
    assert implementation.history[0].to_stage == "kickoff"
    assert implementation.fields["company_name"] == "Example Family Practice"
    assert implementation.fields["hp_products"] == ["RCM", "Credentialing"]
    assert implementation.fields["target_go_live_date"] == "2026-09-01"
    (kickoff,) = mail(result, "kickoff_assigned")
    assert "onboarding@example.com" in kickoff["To"] and "Sep 01, 2026" in body(kickoff, "plain")


async def test_closed_won_finds_the_implementation_already_started_and_starts_no_second_one(ts_env, hps):
    """A retried hand-off (or one done by hand first) must not start a second onboarding for the same client."""
    impl = load_playbook(PROJECT_ROOT / "playbooks" / "health_prime_implementation.yaml", TEMPLATES)
    fields = {
        "company_name": "Example Clinic",
        "sales_rep_email": "rep@example.com",
        "target_go_live_date": "2027-03-01",
    }
    await run(ts_env, impl, [], until="1h", deal_id="HP-9.health_prime_implementation", deal=fields)
    existing = await ts_env.client.get_workflow_handle("deal-HP-9.health_prime_implementation").describe()

    deal = {**DEAL, **SQL_DONE, **ENGAGED_DONE, **_proposal_done()}
    won = {"quoted_rcm_rate": 5, "nda_status": "Signed", "baa_status": "Signed", "onboarding_questionnaire": "Uploaded"}
    steps: list[dict[str, Any]] = [{"at": "0d", "advance": "engaged"}, {"at": "0d", "advance": "proposal"}]
    steps += [{"at": "0d", "advance": "partner_of_choice"}, {"at": "1d", "set": won}]
    steps += [{"at": "1d", "set": {"contract_status": "Proposal signed"}}]  # Closed Won by itself
    steps += [{"at": "1d", "advance": "closed_won"}]  # the move retried: rejected, the deal is closed
    result = await run(ts_env, hps, steps, until="2d", deal_id="HP-9", deal=deal)

    assert result.status.outcome == "won"
    assert result.of_kind("rejected")[-1]["reason"].startswith("deal HP-9 is closed (won)")
    (handoff,) = result.of_kind("linked")
    assert handoff["status"] == "already started" and handoff["workflow_id"] == existing.id
    assert result.linked == {}
    after = await ts_env.client.get_workflow_handle(existing.id).describe()
    assert after.run_id == existing.run_id and after.status == WorkflowExecutionStatus.TERMINATED


async def test_a_hubspot_stage_move_waits_for_the_gate_and_happens_by_itself_when_the_last_property_arrives(
    ts_env, hps
):
    steps = [
        {"at": "1d", "event": "moved_to_engaged", "event_id": "hubspot-move-1"},
        {"at": "2d", "set": {"enterprise_deal_status": "no"}},
        {"at": "3d", "set": {"hp_products": ["RCM"]}},
        {"at": "4d", "event": "moved_to_partner_of_choice", "event_id": "hubspot-move-2"},  # not Engaged's next
    ]
    result = await run(ts_env, hps, steps, until="5d", deal_id="HP-T5", deal=DEAL)

    assert stage_path(result) == ["sql", "engaged"]
    moved = result.of_kind("stage")[-1]
    assert moved["trigger"] == "event:moved_to_engaged" and float(moved["day"]) == pytest.approx(3.0, abs=0.01)
    events = [(e["event"], e["status"]) for e in result.of_kind("event")]
    assert events == [("moved_to_engaged", "accepted"), ("moved_to_partner_of_choice", "ignored")]


async def test_lost_moves_by_itself_once_both_reasons_are_filled_and_recycles_the_contact(ts_env, hps):
    deal, steps, until = checked_in_scenario("health_prime_sales_lost")
    result = await run(ts_env, hps, steps, until=until, deal_id="HP-2", deal=deal)

    assert stage_path(result) == ["sql", "engaged", "proposal", "closed_lost"]
    lost = result.of_kind("stage")[-1]
    # Not on day 30 (category only): on day 31, when the details complete the pair, although Proposal is unfinished.
    assert lost["trigger"] == "condition" and float(lost["day"]) == pytest.approx(31.0, abs=0.01)
    assert result.status.outcome == "lost"
    assert result.status.fields["contact_lifecycle"] == "Recycled"
    assert [e["to"] for e in sent(result)["deal_lost"]] == [["sales_rep"], ["marketing"]]
    text = body(mail(result, "deal_lost")[0], "plain")
    assert "Timing" in text and "renewing with the current vendor" in text


async def test_lost_from_sql_for_an_existing_client_keeps_the_contact_a_customer(ts_env, hps):
    deal = {**DEAL, "pipeline": "Expansion"}
    steps = [
        {"at": "1d", "set": {"lost_reason_details": "New location postponed"}},
        {"at": "2d", "set": {"lost_reason_category": "Not a fit"}},
    ]
    result = await run(ts_env, hps, steps, until="3d", deal_id="HP-T2", deal=deal)

    assert stage_path(result) == ["sql", "closed_lost"]
    assert float(result.of_kind("stage")[-1]["day"]) == pytest.approx(2.0, abs=0.01)
    assert result.status.fields["contact_lifecycle"] == "Customer"
    # Not recycled: only the rep and the Sales VP hear of it.
    assert [e["to"] for e in sent(result)["deal_lost"]] == [["sales_rep"]]


async def test_partner_of_choice_with_nothing_filled_names_every_won_property(ts_env, hps):
    steps = [
        {"at": "1d", "set": SQL_DONE},
        {"at": "1d", "advance": "engaged"},
        {"at": "2d", "set": ENGAGED_DONE},
        {"at": "2d", "advance": "proposal"},
        {"at": "3d", "set": _proposal_done()},
        {"at": "3d", "advance": "partner_of_choice"},
        {"at": "4d", "advance": "closed_won"},
        {"at": "5d", "set": {"contract_status": "Proposal signed"}},
        {"at": "5d", "close": "cancelled", "fields": {"back_out_reason": "Bad fit after signing"}, "reason": "VP"},
    ]
    result = await run(ts_env, hps, steps, until="6d", deal_id="HP-T3", deal=DEAL)

    (rejected,) = result.of_kind("rejected")
    assert listed(rejected, "closed_won") == WON_MISSING
    assert stage_path(result) == ["sql", "engaged", "proposal", "partner_of_choice", "backed_out"]
    assert result.status.outcome == "cancelled"
    assert result.status.fields["client_status"] == "Backed out"
    assert result.status.fields["contact_lifecycle"] == "Marketing Qualified Lead"
    (backed,) = mail(result, "deal_backed_out")
    assert "sales-vp@example.com" in backed["To"] and "onboarding@example.com" in backed["To"]
    assert "Bad fit after signing" in body(backed, "plain")


async def test_an_unsigned_deal_cannot_back_out_and_is_closed_lost_with_its_reasons_instead(ts_env, hps):
    """ "Deals Backed out after a Contract is signed": a deal in SQL has no contract, so its back-out is refused (no
    Client Status "Backed out", nobody told a signed deal backed out); it is lost, with its lost reasons."""
    back_out = {"close": "cancelled", "fields": {"back_out_reason": "Not a fit"}, "reason": "VP"}
    lost = {"lost_reason_category": "Not a fit", "lost_reason_details": "Practice is closing a location"}
    steps = [
        {"at": "1d", **back_out},
        {"at": "2d", "set": {"contract_status": "Proposal sent"}},
        {"at": "2d", **back_out},
        {"at": "3d", "close": "lost", "fields": lost, "reason": "Sales Rep"},
    ]
    result = await run(ts_env, hps, steps, until="4d", deal_id="HP-T4", deal=DEAL)

    assert [r["reason"] for r in result.of_kind("rejected")] == [UNSIGNED_BACK_OUT, UNSIGNED_BACK_OUT]
    assert stage_path(result) == ["sql", "closed_lost"]
    assert result.status.outcome == "lost"
    assert result.status.fields["client_status"] == "Prospect"
    assert result.status.fields["lost_reason_category"] == "Not a fit"
    assert "deal_backed_out" not in sent(result) and mail(result, "deal_backed_out") == []
    assert [e["to"] for e in sent(result)["deal_lost"]] == [["sales_rep"]]


async def test_a_deal_backed_out_at_partner_of_choice_closes_with_its_reason_and_tells_implementation(ts_env, hps):
    deal, steps, until = checked_in_scenario("health_prime_sales_backed_out")
    result = await run(ts_env, hps, steps, until=until, deal_id="HP-3", deal=deal)

    assert stage_path(result) == ["sql", "engaged", "proposal", "partner_of_choice", "backed_out"]
    *_, early_win, unsigned_back_out = result.of_kind("rejected")
    assert listed(early_win, "closed_won") == [
        "Contract Status is not 'Proposal signed' (contract_status)",
        "Onboarding Questionnaire is not Uploaded (onboarding_questionnaire)",
    ]
    assert unsigned_back_out["reason"] == UNSIGNED_BACK_OUT
    assert float(result.of_kind("stage")[-1]["day"]) == pytest.approx(40.0, abs=0.01)
    assert result.status.outcome == "cancelled" and result.status.close_reason == "Sales VP"
    assert result.status.fields["client_status"] == "Backed out"
    assert result.status.fields["contact_lifecycle"] == "Marketing Qualified Lead"
    assert not result.of_kind("linked")  # no implementation for a deal that was never won
    (backed,) = mail(result, "deal_backed_out")
    assert "Board chose to keep billing in-house" in body(backed, "plain")


def _proposal_done() -> dict[str, Any]:
    _, steps, _ = checked_in_scenario("health_prime_sales_won")
    return next(s["set"] for s in steps if "set" in s and "deal_approval_status" in s["set"])
