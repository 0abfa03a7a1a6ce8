"""`sopflow forecast` as a manager runs it: the real binary. Bad input is one line and exit 1 before anything is
read; the forecast itself reads the records store that rehearsed lifecycles wrote."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from sopflow.db import Database
from sopflow.forecast import CATEGORIES
from sopflow.playbook import Playbook
from tests.conftest import PLAYBOOKS, launched_steps, run, sales_steps
from tests.starter.conftest import Cli, offline_cli


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--weeks", "0"], "--weeks must be between 1 and 520 (got 0)"),
        (["--weeks", "521"], "--weeks must be between 1 and 520 (got 521)"),
        (["--playbook-file", "no_such_playbook.yaml"], "no playbook file no_such_playbook.yaml"),
        (["--chart", "forecast.gif"], "--chart draws SVG or PNG: name the file .svg or .png (got forecast.gif)"),
    ],
    ids=["no-weeks", "over-ten-years", "unknown-file", "not-svg-or-png"],
)
async def test_bad_input_is_one_line_and_exit_1(tmp_path: Path, args: list[str], message: str) -> None:
    cli = offline_cli(tmp_path)
    cli.cwd = tmp_path
    code, stdout, stderr = await cli("forecast", *args)
    assert code == 1
    assert stderr.strip() == f"error: {message}"
    assert stdout == ""


async def test_an_edited_playbook_that_does_not_validate_is_refused_with_the_validators_message(
    tmp_path: Path,
) -> None:
    edited = tmp_path / "safe_balance.yaml"
    text = (PLAYBOOKS / "safe_balance.yaml").read_text()
    edited.write_text(text.replace("every: 14d", "every: fortnightly", 1))
    cli = offline_cli(tmp_path)
    code, _, stderr = await cli("forecast", "--playbook-file", str(edited))
    assert code == 1
    assert len(stderr.strip().splitlines()) == 1
    assert stderr.startswith(f"error: {edited}: ") and "every" in stderr


@pytest.fixture
async def forecast_cli(ts_env: WorkflowEnvironment, safe_balance: Playbook, tmp_path: Path) -> AsyncIterator[Cli]:
    """Two rehearsed Safe Balance clients in a records file: D-1 launched (ongoing, site visits every two weeks) and
    D-2 whose contract went out and is unsigned (it expires 14 days after it was sent). Their last records were
    local (a reminder, a visit due), so the store holds their current states; no Temporal listens for the CLI."""
    url = f"sqlite:///{tmp_path / 'records.db'}"
    db = Database(url)
    db.upgrade()
    for deal_id, steps, until in [("D-1", launched_steps(), "20d"), ("D-2", sales_steps(None), "9d")]:
        # Each deal claims its own account.
        named = [
            {**s, "fields": {**s["fields"], "company": f"Clinic {deal_id}"}} if s.get("form") == "targeting" else s
            for s in steps
        ]
        await run(ts_env, safe_balance, named, until, deal_id=deal_id, db=db)
    db.dispose()
    cli = offline_cli(tmp_path)
    cli.env["SOPFLOW_DATABASE_URL"] = url
    yield cli


def total(rows: list[dict[str, Any]], category: str, forecast: str = "today", assumption: str = "nothing") -> int:
    return sum(r[category] for r in rows if r["forecast"] == forecast and r["assumption"] == assumption)


async def test_the_forecast_reads_the_clients_states_from_the_records_store_and_counts_each_week(
    forecast_cli: Cli, tmp_path: Path
) -> None:
    rows = json.loads(await forecast_cli.ok("forecast", "--weeks", "8", "--by", "playbook", "-o", "json"))
    assert {r["group"] for r in rows} == {"safe_balance"}
    assert len({r["week"] for r in rows}) == 8
    # D-2's contract expires whatever the team does; D-1's visits are missed (escalated) only if nothing happens.
    assert total(rows, "deadlines") == total(rows, "deadlines", assumption="on_time") == 1
    assert total(rows, "visits") > 0 and total(rows, "escalations") > 0
    assert total(rows, "escalations", assumption="on_time") < total(rows, "escalations")

    text = await forecast_cli.ok("forecast", "--weeks", "8", "--chart", str(tmp_path / "week.svg"))
    assert "Forecast for 2 live clients, 8 weeks from Monday" in text
    assert "2 states from the records store" in text
    assert "rep:owner-17" in text and "@" not in text
    assert (tmp_path / "week.svg").read_text().startswith("<svg")
    await forecast_cli.ok("forecast", "--weeks", "8", "--chart", str(tmp_path / "week.png"))
    assert (tmp_path / "week.png").read_bytes().startswith(b"\x89PNG\r\n")

    lines = (await forecast_cli.ok("forecast", "--weeks", "8", "--by", "playbook", "-o", "jsonl")).splitlines()
    assert len(lines) == len(rows) and {tuple(json.loads(line)) for line in lines} == {tuple(r) for r in rows}

    csv_text = await forecast_cli.ok("forecast", "--weeks", "2", "-o", "csv")
    assert csv_text.splitlines()[0] == "forecast,assumption,group,week," + ",".join(CATEGORIES)


async def test_a_what_if_prints_todays_counts_beside_the_edited_playbooks_and_migrates_nothing(
    forecast_cli: Cli, tmp_path: Path
) -> None:
    edited = tmp_path / "safe_balance.yaml"
    edited.write_text((PLAYBOOKS / "safe_balance.yaml").read_text().replace("every: 14d", "every: 21d", 1))
    args = ("forecast", "--weeks", "12", "--by", "playbook", "--playbook-file", str(edited))
    rows = json.loads(await forecast_cli.ok(*args, "-o", "json"))
    assert total(rows, "visits", "what_if", "on_time") < total(rows, "visits", "today", "on_time")
    change = total(rows, "visits", "change", "on_time")
    assert change == total(rows, "visits", "what_if", "on_time") - total(rows, "visits", "today", "on_time") < 0
    text = await forecast_cli.ok(*args)
    assert "today → as if migrated to the edited playbook" in text
    assert "would not migrate" not in text


async def test_a_playbook_with_no_live_clients_is_named_with_the_playbooks_that_exist(forecast_cli: Cli) -> None:
    code, _, stderr = await forecast_cli("forecast", "--playbook", "safe_balanse")
    assert code == 1
    assert stderr.strip().startswith("error: no live clients on playbook 'safe_balanse' (playbooks: safe_balance,")


async def test_a_client_whose_stored_state_is_behind_is_asked_of_its_workflow(
    cli: Cli, lifecycle_worker: Database
) -> None:
    await cli.start_deal("FC-1", "rep_email=rep@example.com")
    # An update's record goes through the server without the state: the store's state is now behind.
    await cli.ok("deal", "set", "FC-1", "-f", "rep_id=owner-43")
    cli.env["SOPFLOW_DATABASE_URL"] = str(lifecycle_worker.engine.url)
    text = await cli.ok("forecast", "--weeks", "4", "--by", "stage")
    assert "1 asked of their workflow" in text
    assert "Forecast for 1 live client" in text
