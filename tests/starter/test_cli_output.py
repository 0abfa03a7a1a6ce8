"""`-o text|json|jsonl|csv` on the commands that print data, and the `temporal` CLI's connection flags
(`--address`, `--namespace`) over the environment."""

from __future__ import annotations

import csv
import io
import json
import uuid
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from sopflow.mailsink import free_port
from tests.starter.conftest import Cli, eventually, offline_cli


async def test_deal_list_as_jsonl_and_csv_has_one_deal_per_line(cli: Cli):
    owner = f"rep:owner-{uuid.uuid4().hex[:8]}"
    deals = sorted(f"OUT{uuid.uuid4().hex[:8]}" for _ in range(2))
    for deal in deals:
        await cli.start_deal(deal, "rep_email=rep@example.com", f"rep_id={owner.removeprefix('rep:')}")

    async def both_listed() -> list[dict]:
        rows = json.loads(await cli.ok("deal", "list", "--owner", owner, "-o", "json"))
        assert sorted(row["deal_id"] for row in rows) == deals
        return rows

    rows = await eventually(both_listed)
    lines = (await cli.ok("deal", "list", "--owner", owner, "-o", "jsonl")).splitlines()
    assert [json.loads(line) for line in lines] == rows

    text = await cli.ok("deal", "list", "--owner", owner, "-o", "csv")
    assert text.splitlines()[0] == "deal_id,playbook,stage,owner,next_due,status,started"
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert [(r["deal_id"], r["stage"], r["owner"], r["status"]) for r in parsed] == [
        (row["deal_id"], "targeting", owner, "running") for row in rows
    ]
    assert len(text.splitlines()) == 3

    table = await cli.ok("deal", "list", "--owner", owner)
    assert table.splitlines()[-1] == "2 lifecycles"


async def test_a_deal_status_is_one_json_line_or_a_one_row_csv_table(cli: Cli):
    deal = f"OUT{uuid.uuid4().hex[:8]}"
    await cli.start_deal(deal, "rep_email=rep@example.com", "account_manager_email=am@example.com")
    whole = json.loads(await cli.ok("deal", "status", deal, "-o", "json"))

    line = await cli.ok("deal", "status", deal, "-o", "jsonl")
    assert len(line.splitlines()) == 1 and json.loads(line) == whole

    [row] = list(csv.DictReader(io.StringIO(await cli.ok("deal", "status", deal, "-o", "csv"))))
    assert (row["deal_id"], row["stage"], row["playbook_version"]) == (deal, "targeting", "3")
    assert row["open_forms"] == ";".join(whole["open_forms"]) and row["outcome"] == ""


async def test_playbook_show_as_csv_is_one_row_per_stage_and_jsonl_is_the_playbook_on_one_line(tmp_path: Path):
    cli = offline_cli(tmp_path)
    playbook = json.loads(await cli.ok("playbook", "show", "safe_balance", "-o", "json"))

    rows = list(csv.DictReader(io.StringIO(await cli.ok("playbook", "show", "safe_balance", "-o", "csv"))))
    assert [row["stage"] for row in rows] == [stage["id"] for stage in playbook["stages"]]
    contract = next(row for row in rows if row["stage"] == "contract")
    assert set(contract["leads_to"].split(";")) >= {"prelaunch", "closed_lost", "contract_expired"}

    line = await cli.ok("playbook", "show", "safe_balance", "-o", "jsonl")
    assert len(line.splitlines()) == 1 and json.loads(line) == playbook


async def test_address_and_namespace_flags_override_the_environment(cli: Cli, dev_env: WorkflowEnvironment):
    deal = f"ADR{uuid.uuid4().hex[:8]}"
    await cli.start_deal(deal, "rep_email=rep@example.com", "account_manager_email=am@example.com")
    server = dev_env.client.service_client.config.target_host
    nowhere = f"127.0.0.1:{free_port()}"

    misdirected = Cli(nowhere)  # TEMPORAL_ADDRESS points where nothing listens
    status = json.loads(await misdirected.ok("deal", "status", deal, "--address", server, "-o", "json"))
    assert status["deal_id"] == deal

    code, stdout, stderr = await cli("deal", "status", deal, "--address", nowhere)
    assert code == 1 and stdout == "" and f"cannot reach Temporal at {nowhere}" in stderr

    code, _, stderr = await cli("deal", "status", deal, "-n", f"nowhere-{uuid.uuid4().hex[:6]}")
    assert code == 1 and len(stderr.strip().splitlines()) == 1 and "check --namespace" in stderr
