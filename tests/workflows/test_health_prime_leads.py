"""Health Prime contact lifecycle (seed 002: "Contact Lifecycle Stage", "Logging Communications") through the real
workflow, activities, SMTP sink and SQLite on the time-skipping server; the lead hands its deal to the sales
pipeline and hears back how the deal ended."""

from __future__ import annotations

from typing import Any

import pytest
from temporalio.client import WorkflowHandle
from temporalio.service import RPCError

from sopflow.models import LifecycleInput, LifecycleStatus, SetFields, SubmitForm, workflow_id
from sopflow.playbook import Playbook
from tests.conftest import body, mail, make_worker, run, shipped_playbook, stage_path, until
from workflows.lifecycle import ClientLifecycle

LEAD = {"contact_email": "lead@example.com", "contact_name": "Practice Manager", "lead_source": "Trade show"}
QUALIFIED = {
    "verified_exploring": "yes",
    "pipeline": "New Business",
    "company_name": "Example Clinic",
    "sales_rep_email": "rep@example.com",
    "sales_rep_name": "Sales Rep",
    "sales_rep_id": "owner-201",
}


@pytest.fixture(scope="module")
def leads() -> Playbook:
    return shipped_playbook("health_prime_leads")


async def test_a_target_that_engages_becomes_an_mql_and_the_sdr_team_is_asked_for_immediate_outreach(ts_env, leads):
    """ "When a Target engages with us ... in any meaningful way, it becomes an MQL and moves to the SDR team for
    immediate outreach"."""
    steps = [{"at": "1d", "form": "engagement", "fields": {"engaged_via": "Trade show"}}]
    result = await run(ts_env, leads, steps, until="2d", deal_id="LEAD-1", deal=LEAD)

    assert stage_path(result) == ["target", "mql"]
    assert result.status.fields["lifecycle_stage"] == "Marketing Qualified Lead"
    [outreach] = mail(result, "mql_outreach")
    assert outreach["To"] == "sdr-team@example.com"
    assert "sdr_outreach" in {task.id for task in result.status.open_tasks}


async def test_consent_is_asked_one_on_one_and_given_by_submitting_an_email_address(ts_env, leads):
    """ "To request consent from a prospect, please use the email template titled 'Email Marketing Consent form' ...
    The recipient will only need to submit their email address, thus providing consent." """
    steps = [
        {"at": "1d", "form": "consent_request", "fields": {}},
        {"at": "2d", "form": "marketing_consent", "fields": {"email": "lead@example.com"}},
    ]
    result = await run(ts_env, leads, steps, until="3d", deal_id="LEAD-2", deal=LEAD)

    [request] = mail(result, "marketing_consent_request")
    assert request["To"] == "Practice Manager <lead@example.com>"
    assert "/forms/LEAD-2/marketing_consent" in body(request, "plain")
    fields = result.status.fields
    assert (fields["marketing_consent"], fields["consent_email"]) == (True, "lead@example.com")
    assert result.status.stage == "target"  # consent is not engagement by itself


async def test_a_qualified_lead_becomes_an_sql_whose_deal_starts_in_the_sales_pipeline(ts_env, leads):
    """ "If the prospect is converted to a SQL, then the rep owns the active engagement with the prospect. Prospects
    may remain at the SQL stage for some time without movement, but if so, we'll need to periodically evaluate":
    the deal starts in the sales pipeline, and the rep is asked for an evaluation every 30 days."""
    steps = [
        {"at": "1d", "form": "qualification", "fields": QUALIFIED},
        {"at": "30d", "form": "sql_review", "fields": {"still_exploring": "yes", "next_step": "Budget call"}},
    ]
    result = await run(ts_env, leads, steps, until="70d", deal_id="LEAD-3", deal=LEAD)

    assert stage_path(result) == ["target", "sql"]
    assert result.status.fields["lifecycle_stage"] == "Sales Qualified Lead"
    deal = result.linked["LEAD-3.health_prime_sales"]
    assert (deal.stage, deal.fields["pipeline"], deal.fields["sales_rep_email"]) == (
        "sql",
        "New Business",
        "rep@example.com",
    )
    # Reminders wait for the send window (one before a New Year's Day due moment may be dropped): at least one.
    reviews = mail(result, "sql_review_due")
    assert reviews and all(m["To"] == "Sales Rep <rep@example.com>" for m in reviews)
    # Evaluated on day 30 (due day 31); the next, due on day 60, was not recorded: one overdue notice, day 67.
    assert len(mail(result, "sql_review_overdue")) == 1


async def stage_of(handle: WorkflowHandle[Any, Any]) -> str | None:
    """The lifecycle's stage; None while it has not started."""
    try:
        status: LifecycleStatus = await handle.query(ClientLifecycle.status)
    except RPCError:
        return None
    return status.stage


@pytest.mark.parametrize(
    ("category", "stage", "lifecycle_stage"),
    [("Timing", "recycled", "Recycled"), ("Went with competitor", "mql", "Marketing Qualified Lead")],
)
async def test_a_lost_deal_returns_its_contact_to_recycled_only_for_a_recyclable_reason(
    ts_env, leads, db, smtp_sink, category: str, stage: str, lifecycle_stage: str
):
    """ "Recycled: ... the contact was linked to a closed lost deal for a specified lost reason is being recycled for
    prospective new business sales" and "This requires sales follow-up"; any other lost deal leaves the contact to
    marketing ("you would simply alter the Lifecycle stage as no deal is in process yet")."""
    lead_id = f"LEAD-{stage}"
    async with make_worker(ts_env.client, db, smtp_sink) as worker:
        lead = await ts_env.client.start_workflow(
            ClientLifecycle.run,
            LifecycleInput(deal_id=lead_id, playbook=leads, fields=LEAD),
            id=workflow_id(lead_id),
            task_queue=worker.task_queue,
        )
        await lead.execute_update(ClientLifecycle.submit_form, SubmitForm(form="qualification", fields=QUALIFIED))
        deal = ts_env.client.get_workflow_handle(workflow_id(f"{lead_id}.health_prime_sales"))
        await until(lambda: _is(deal, "sql"), "the lead's deal started")
        lost = {"lost_reason_category": category, "lost_reason_details": "Decided on a budget review"}
        await deal.execute_update(ClientLifecycle.set_fields, SetFields(fields=lost))
        await until(lambda: _is(lead, stage), f"the lead moved to {stage}")

        status: LifecycleStatus = await lead.query(ClientLifecycle.status)
        assert status.fields["lifecycle_stage"] == lifecycle_stage
        assert await stage_of(deal) == "closed_lost"
    follow_up = [m for m in smtp_sink.messages if str(m["X-Sopflow-Template"]).endswith("/lead_recycled")]
    assert len(follow_up) == (1 if stage == "recycled" else 0)


async def _is(handle: WorkflowHandle[Any, Any], stage: str) -> bool:
    return await stage_of(handle) == stage


async def test_an_excluded_contact_is_reviewed_quarterly_and_deleted_when_appropriate(ts_env, leads):
    """ "Exclude from Marketing: A junk contact ... These contacts should be reviewed quarterly to determine how and
    why they are being created so corrective actions can be taken, and the contacts can be deleted, if
    appropriate." """
    review = {"how_created": "Imported twice from a trade-show list", "corrective_action": "List fixed"}
    steps = [
        {"at": "1d", "advance": "excluded"},
        {"at": "100d", "form": "exclusion_review", "fields": {**review, "delete": "no"}},
        {"at": "190d", "form": "exclusion_review", "fields": {**review, "delete": "yes"}},
    ]
    result = await run(ts_env, leads, steps, until="200d", deal_id="LEAD-4", deal=LEAD)

    assert stage_path(result) == ["target", "excluded", "deleted"]
    reminders = mail(result, "exclusion_review_due")
    assert len(reminders) == 2 and all(m["To"] == "marketing@example.com" for m in reminders)
    assert result.status.fields["lifecycle_stage"] == "Exclude from Marketing"
