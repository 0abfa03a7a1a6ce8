"""The `sopflow` CLI against a real dev server: search attributes, visibility filters, one-line rejections."""

from __future__ import annotations

import json
import re
import uuid
from importlib.metadata import version
from pathlib import Path

import pytest
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy
from temporalio.testing import WorkflowEnvironment

from sopflow.constants import SA_NEXT_DUE, SA_OWNER, SA_PLAYBOOK, SA_STAGE, TASK_QUEUE
from sopflow.db import Database
from sopflow.mailsink import MailSink, free_port
from sopflow.playbook import Playbook
from starter.cli.deals import query_literal, visibility_query
from starter.lifecycles import start_lifecycle
from tests.conftest import DEAL, TARGETING, make_worker
from tests.starter.conftest import Cli, applied_updates, eventually, offline_cli


def targeting_args(n: str) -> list[str]:
    """The shared targeting form as `-f key=value` arguments, for an account of its own (`n`: claims are unique)."""
    fields = {**TARGETING, "company": f"{TARGETING['company']} {n}"}
    return [arg for key, value in fields.items() for arg in ("-f", f"{key}={value}")]


async def test_list_filters_by_stage_and_playbook_through_search_attributes(cli: Cli, dev_env: WorkflowEnvironment):
    run_id = uuid.uuid4().hex[:8]
    deals = [f"T{run_id}-{n}" for n in range(3)]
    for deal in deals:
        await cli.start_deal(deal, "rep_email=rep@example.com", "rep_id=owner-42")
    fields = targeting_args(run_id)
    await cli.ok("form", "submit", deals[0], "targeting", *fields)

    async def listed(stage: str) -> list[str]:
        rows = json.loads(await cli.ok("deal", "list", "--stage", stage, "--playbook", "safe_balance", "-o", "json"))
        return sorted(row["deal_id"] for row in rows if row["deal_id"].startswith(f"T{run_id}"))

    async def check_stages() -> None:
        assert await listed("contract_request") == deals[:1]
        assert await listed("targeting") == deals[1:]

    await eventually(check_stages)

    description = await dev_env.client.get_workflow_handle(f"deal-{deals[0]}").describe()
    attrs = description.typed_search_attributes
    assert attrs.get(SA_STAGE) == "contract_request"
    assert attrs.get(SA_PLAYBOOK) == "safe_balance"
    assert attrs.get(SA_OWNER) == "rep:owner-42"
    assert attrs.get(SA_NEXT_DUE) is None  # nothing is scheduled while a contract request is awaited
    assert "@" not in description.id and all("@" not in str(v.value) for v in attrs)


async def test_list_filter_values_with_quotes_and_backslashes_stay_one_literal_and_cannot_be_injected(
    cli: Cli, dev_env: WorkflowEnvironment
):
    # Lifecycles nobody runs (their task queue has no worker), whose owner ids are awkward for a query language.
    tag = uuid.uuid4().hex[:8]
    quoted = f"Q{tag}-quote"
    owners = {
        quoted: f"rep:o'brien-{tag}",
        f"Q{tag}-backslash": f"rep:dom\\user-{tag}",
        f"Q{tag}-double": f'rep:say "hi" {tag}',
        f"Q{tag}-trailing": f"rep:{tag}\\",
        f"Q{tag}-mixed": f"rep:\\'\" OR 'x'='x {tag}",
    }
    handles = []
    for deal, owner in owners.items():
        pairs = [SearchAttributePair(SA_OWNER, owner), SearchAttributePair(SA_PLAYBOOK, tag)]
        attributes = TypedSearchAttributes(pairs)
        handles.append(
            await dev_env.client.start_workflow(
                "ClientLifecycle", id=f"deal-{deal}", task_queue=f"nobody-{tag}", search_attributes=attributes
            )
        )
    try:

        async def listed(*filters: str) -> list[str]:
            code, stdout, stderr = await cli("deal", "list", *filters, "-o", "json")
            assert code == 0, stderr
            return sorted(row["deal_id"] for row in json.loads(stdout))

        async def all_indexed() -> None:
            assert await listed("--playbook", tag) == sorted(owners)

        await eventually(all_indexed)
        # Every value is one literal: the query is valid whatever the value holds, and never matches another deal.
        # (The dev server's SQLite visibility re-escapes a literal before comparing, so there a value with a
        # backslash or a double quote matches nothing at all; Elasticsearch and MySQL visibility match it exactly.)
        for deal, owner in owners.items():
            assert set(await listed("--owner", owner)) <= {deal}, owner
        assert await listed("--owner", owners[quoted]) == [quoted]
        # A value that would close the literal and add a clause is only ever a value: it matches nothing.
        assert await listed("--playbook", f"{tag}' OR WorkflowType = 'ClientLifecycle") == []
        assert await listed("--playbook", f"{tag}\\' OR WorkflowType = 'ClientLifecycle") == []
        assert await listed("--playbook", f'{tag}" OR WorkflowType = "ClientLifecycle') == []
    finally:
        for handle in handles:
            await handle.terminate("test done")


def test_query_literals_escape_backslashes_before_quotes_and_the_query_names_only_identifiers():
    assert query_literal("plain") == "'plain'"
    assert query_literal("o'brien") == "'o\\'brien'"
    assert query_literal("a\\b") == "'a\\\\b'"
    assert query_literal("end\\") == "'end\\\\'"
    assert query_literal('say "hi"') == "'say \\\"hi\\\"'"
    assert visibility_query({"WorkflowType": "ClientLifecycle", "SopStage": "it's"}) == (
        "WorkflowType = 'ClientLifecycle' AND SopStage = 'it\\'s'"
    )
    for name in ("Sop Stage", "x = 'y' OR SopStage", ""):
        with pytest.raises(ValueError, match="attribute name"):
            visibility_query({name: "v"})


async def test_contract_stage_publishes_next_due_and_ui_details(cli: Cli, dev_env: WorkflowEnvironment):
    deal = f"T{uuid.uuid4().hex[:8]}"
    await cli.start_deal(deal, "rep_email=rep@example.com")
    await cli.ok("form", "submit", deal, "targeting", *targeting_args(deal))
    await cli.ok(
        "form",
        "submit",
        deal,
        "contract_request",
        "-f",
        "agreement=Safe Balance",
        "-f",
        "term_months=24",
        "-f",
        "client_agreed_on=2026-01-05",
    )
    handle = dev_env.client.get_workflow_handle(f"deal-{deal}")

    async def check() -> None:
        description = await handle.describe()
        next_due = description.typed_search_attributes.get(SA_NEXT_DUE)
        assert next_due is not None
        assert 13.9 < (next_due - description.start_time).total_seconds() / 86400 < 14.1
        summary = await description.static_summary()
        assert summary and deal in summary
        metadata = await handle.query("__temporal_workflow_metadata")
        assert "contract expires due" in metadata.current_details

    await eventually(check)
    status = json.loads(await cli.ok("deal", "status", deal, "-o", "json"))
    assert status["stage"] == "contract" and status["due"][0]["label"] == "contract expires"


async def test_rejected_advance_prints_one_line_naming_what_is_missing_and_exits_1(cli: Cli):
    deal = f"T{uuid.uuid4().hex[:8]}"
    await cli.start_deal(deal, "rep_email=rep@example.com")
    code, stdout, stderr = await cli("deal", "advance", deal, "launch")
    assert code == 1 and stdout == ""
    assert stderr.strip().splitlines() == [
        "error: cannot advance from 'targeting' to 'launch' (allowed: none: it moves on by itself, or close it)"
    ]

    code, _, stderr = await cli("form", "submit", deal, "targeting", "-f", "company=X", "-f", "signer_email=nope")
    assert code == 1 and len(stderr.strip().splitlines()) == 1
    assert "signer_email: 'nope' is not an email address" in stderr and "signer_name: required" in stderr

    code, _, stderr = await cli(
        "deal", "start", "--deal-id", deal, "--playbook", "safe_balance", "-f", "rep_email=rep@example.com"
    )
    assert code == 1 and "already has a lifecycle" in stderr

    code, _, stderr = await cli("deal", "event", deal, "contract_sgned")
    assert code == 1 and "unknown event 'contract_sgned'" in stderr


async def test_backing_out_an_unsigned_health_prime_deal_is_refused_in_one_line_and_it_closes_lost(cli: Cli):
    deal = f"HP{uuid.uuid4().hex[:8]}"
    fields = ("pipeline=New Business", "sales_rep_email=rep@example.com")
    await cli.start_deal(deal, *fields, playbook="health_prime_sales")

    code, stdout, stderr = await cli(
        "deal", "close", deal, "cancelled", "--reason", "Sales VP", "-f", "back_out_reason=Bad fit"
    )

    assert (code, stdout) == (1, "")
    assert stderr.strip().splitlines() == [
        "error: cannot close as cancelled into 'backed_out': only a deal whose contract is signed backs out "
        "(Contract Status is not 'Proposal signed'); close an unsigned deal as lost with its Deal Lost Reason "
        "Category and Details"
    ]
    lost = ["-f", "lost_reason_category=Not a fit", "-f", "lost_reason_details=Closing the location"]
    closed = json.loads(await cli.ok("deal", "close", deal, "lost", "--reason", "Sales Rep", *lost, "-o", "json"))
    assert (closed["stage"], closed["outcome"]) == ("closed_lost", "lost")
    assert closed["fields"]["client_status"] == "Prospect"


async def test_a_change_to_a_closed_deal_says_it_is_closed_and_to_an_unknown_deal_that_there_is_none(cli: Cli):
    deal = f"T{uuid.uuid4().hex[:8]}"
    await cli.start_deal(deal, "rep_email=rep@example.com")
    await cli.ok("deal", "close", deal, "lost", "--reason", "went with a competitor")
    for command in (
        ("task", "done", deal, "onsite_appointment"),
        ("form", "submit", deal, "targeting", "-f", "company=X"),
        ("deal", "close", deal, "cancelled", "--reason", "again"),
    ):
        code, _, stderr = await cli(*command)
        assert (code, stderr.strip()) == (1, f"error: deal {deal} is closed (lost) in stage 'closed_lost'"), command

    code, _, stderr = await cli("task", "done", "NOSUCH-1", "onsite_appointment")
    assert code == 1 and "no lifecycle found for that deal" in stderr


async def test_each_update_command_sends_a_fresh_key_and_a_repeated_key_is_applied_once(
    cli: Cli, dev_env: WorkflowEnvironment
):
    deal = f"K{uuid.uuid4().hex[:8]}"
    await cli.start_deal(deal, "rep_email=rep@example.com", "rep_id=owner-42")
    for _ in range(2):
        await cli.ok("deal", "set", deal, "-f", "rep_id=owner-43")
    fresh = await applied_updates(dev_env.client, deal, "set_fields")
    assert len(fresh) == 2 and fresh[0] != fresh[1]
    assert all(re.fullmatch(r"cli:set_fields:[0-9a-f]{32}", update_id) for update_id in fresh)

    # The same command twice with one key (a retry after "not confirmed"): applied once, and both runs say how it
    # went; without the key the second targeting form would be refused (the deal has moved on).
    fields = targeting_args(deal)
    submit = ("form", "submit", deal, "targeting", *fields, "--idempotency-key", "retry-0123456789")
    outputs = [await cli.ok(*submit) for _ in range(2)]
    assert all(f"deal {deal} is in contract_request" in output for output in outputs)
    assert await applied_updates(dev_env.client, deal, "submit_form") == ["cli:submit_form:retry-0123456789"]

    code, stdout, stderr = await cli("deal", "advance", deal, "contract", "--idempotency-key", "bad key!")
    assert code == 1 and stdout == "" and len(stderr.strip().splitlines()) == 1
    assert "--idempotency-key" in stderr and "8 to 64 characters" in stderr


async def test_a_list_of_addresses_is_set_with_one_field_separated_by_commas_and_a_bad_one_is_named(cli: Cli):
    """`sopflow deal set D -f users=a@example.com,b@example.com`: radio onboarding's completion email goes to them."""
    deal = f"U{uuid.uuid4().hex[:8]}"
    await cli.start_deal(deal, "sales_rep_email=sales@example.com", playbook="radio_onboarding")
    await cli.ok("deal", "set", deal, "-f", "users=ana@example.com,ben@example.com")
    status = json.loads(await cli.ok("deal", "status", deal, "-o", "json"))
    assert status["fields"]["users"] == ["ana@example.com", "ben@example.com"]

    code, _, stderr = await cli("deal", "set", deal, "-f", "users=ana@example.com,not-an-address")
    assert code == 1 and len(stderr.strip().splitlines()) == 1
    assert "users: 'not-an-address' is not an email address" in stderr


async def test_an_update_nobody_confirms_in_time_says_so_and_its_retry_with_the_key_applies_once(
    dev_env: WorkflowEnvironment, safe_balance: Playbook, tmp_path: Path
):
    """No worker runs: the CLI waits `--wait` seconds, then says the change is not confirmed (it may still be applied)
    and how to retry it safely; with a worker back, that retry is applied once."""
    cli = Cli(dev_env.client.service_client.config.target_host)
    deal = f"W{uuid.uuid4().hex[:8]}"
    await start_lifecycle(dev_env.client, safe_balance, deal, dict(DEAL), "test", WorkflowIDConflictPolicy.FAIL)
    fields = targeting_args(deal)
    submit = ("form", "submit", deal, "targeting", *fields, "--idempotency-key", "wait-0123456789")

    code, stdout, stderr = await cli(*submit, "--wait", "1")

    assert code == 1 and stdout == "" and len(stderr.strip().splitlines()) == 1, stderr
    assert "not confirmed" in stderr and "--idempotency-key wait-0123456789" in stderr

    db = Database(f"sqlite:///{tmp_path / 'records.db'}")
    db.create_schema()
    with MailSink() as sink:
        async with make_worker(dev_env.client, db, sink, task_queue=TASK_QUEUE):
            assert f"deal {deal} is in contract_request" in await cli.ok(*submit)
            assert await applied_updates(dev_env.client, deal, "submit_form") == ["cli:submit_form:wait-0123456789"]
    db.dispose()


async def test_deal_ids_that_look_like_personal_data_are_refused(cli: Cli):
    code, _, stderr = await cli(
        "deal",
        "start",
        "--deal-id",
        "jane@example.com",
        "--playbook",
        "safe_balance",
        "-f",
        "rep_email=rep@example.com",
    )
    assert code == 1 and "never a name or email" in stderr


async def test_without_a_server_the_cli_says_how_to_start_one():
    cli = Cli(f"127.0.0.1:{free_port()}")
    code, stdout, stderr = await cli("deal", "status", "D-404")
    assert code == 1 and stdout == ""
    assert "make dev" in stderr and len(stderr.strip().splitlines()) == 1


async def test_rehearse_prints_the_timeline_as_json_lines_with_rendered_subjects():
    cli = Cli(f"127.0.0.1:{free_port()}")  # a rehearsal never needs the configured server
    code, stdout, stderr = await cli(
        "rehearse", "safe_balance", "playbooks/scenarios/safe_balance_declined.yaml", "-o", "json"
    )
    assert code == 0, stderr
    timeline = [json.loads(line) for line in stdout.splitlines()]
    assert {"at", "day", "kind"} <= set(timeline[0])
    kinds = [entry["kind"] for entry in timeline]
    assert kinds.count("rejected") == 2 and kinds[-1] == "stage" and timeline[-1]["to"] == "closed_lost"
    contract_email = next(e for e in timeline if e["kind"] == "email" and e["template"] == "contract_sent")
    assert contract_email["subject"].startswith("Please sign") and contract_email["to"] == ["signer"]
    assert [e["day"] for e in timeline] == sorted(e["day"] for e in timeline)


async def test_an_unsafe_mail_configuration_is_refused_in_one_line_without_the_secret():
    cli = Cli(f"127.0.0.1:{free_port()}")
    cli.env.update(SOPFLOW_SMTP_HOST="smtp.example.com", SOPFLOW_SMTP_PASSWORD="hunter2", SOPFLOW_SMTP_TLS="none")
    code, stdout, stderr = await cli("worker")
    assert code == 1 and stdout == ""
    assert stderr.strip().splitlines() == [
        "error: invalid configuration: SOPFLOW_SMTP_USERNAME/PASSWORD are set for smtp.example.com without TLS: "
        "set SOPFLOW_SMTP_TLS=starttls (usually port 587) or implicit (port 465)"
    ]


async def test_version_prints_the_installed_package_version(tmp_path: Path):
    assert await offline_cli(tmp_path).ok("--version") == f"sopflow {version('sopflow')}\n"


async def test_a_mistyped_playbook_or_stage_lists_what_exists_nearest_first(tmp_path: Path):
    cli = offline_cli(tmp_path)
    code, _, stderr = await cli("playbook", "show", "safe_balanse")
    assert code == 1 and stderr.startswith("error: no playbook 'safe_balanse' (playbooks: safe_balance, ")
    code, _, stderr = await cli("deal", "list", "--stage", "ongoin", "--playbook", "safe_balance")
    assert code == 1 and stderr.startswith("error: no stage 'ongoin' in playbook safe_balance (stages: ongoing, ")
