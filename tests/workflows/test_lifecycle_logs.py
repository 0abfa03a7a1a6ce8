"""The lifecycle's log lines (`sopflow.telemetry.LifecycleObserver`, `send_email`) as a log shipper sees them."""

from __future__ import annotations

import io

from temporalio.testing import WorkflowEnvironment

from sopflow.logs import configure_logging
from sopflow.playbook import Playbook
from tests.conftest import TARGETING, json_lines, run, sales_steps


async def test_stage_changes_emails_and_rejected_updates_are_logged_with_ids_and_never_addresses(
    ts_env: WorkflowEnvironment, safe_balance: Playbook, restore_logging: None
) -> None:
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    steps = [{"at": "0d", "advance": "contract"}, *sales_steps(signed_on=None)]  # the advance is refused: gate
    await run(ts_env, safe_balance, steps, until="2d", deal_id="L-1")

    lines = json_lines(stream)
    stages = [(line["from_stage"], line["to_stage"]) for line in lines if line["message"].startswith("stage ")]
    assert stages == [("start", "targeting"), ("targeting", "contract_request"), ("contract_request", "contract")]
    stage_line = next(line for line in lines if line.get("to_stage") == "contract_request")
    assert stage_line["deal_id"] == "L-1" and stage_line["workflow_id"] == "deal-L-1"
    assert stage_line["playbook"] == "safe_balance" and stage_line["logger"] == "temporalio.workflow"

    attempts = [line for line in lines if line["logger"] == "temporalio.activity" and line.get("template")]
    assert [(line["template"], line["outcome"]) for line in attempts] == [
        ("account_claimed", "sent"),
        ("contract_sent", "sent"),
    ]
    assert all(line["activity"] == "send_email" and line["attempt"] == 1 for line in attempts)
    email_steps = [line for line in lines if line["logger"] == "temporalio.workflow" and line.get("template")]
    assert [(line["template"], line["outcome"]) for line in email_steps] == [
        ("account_claimed", "sent"),
        ("contract_sent", "sent"),
    ]

    (rejected,) = [line for line in lines if line.get("update")]
    assert rejected["level"] == "WARNING" and rejected["update"] == "advance"
    assert rejected["error_type"] == "Rejected" and rejected["deal_id"] == "L-1"

    output = stream.getvalue()
    for personal in ("@", TARGETING["signer_name"], TARGETING["company"]):
        assert personal not in output
