"""`sopflow report …` and `sopflow deal history` as a user runs them: the real binary on a seeded SQLite records file.

The records come from real rehearsed lifecycles. Rehearsals run on the time-skipping server's clock, which starts
today and only moves forward, while the CLI measures ages against the wall clock; so the seeded records are moved
into the past by a known span ("the deals ran a while ago"), which makes every age the CLI prints predictable.
Reports read only the records database: the CLI is pointed at a Temporal address where nothing listens.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import DateTime
from temporalio.testing import WorkflowEnvironment

from sopflow.db import Database, DealRow, FormSubmission, JournalRow, StageTransition, TaskRow, VisitRow
from sopflow.playbook import Playbook
from tests.conftest import launched_steps, run, sales_steps
from tests.starter.conftest import Cli

DAY = timedelta(days=1)
# How long ago (on the wall clock) the rehearsals' last moment is made to be.
AGO = 10 * DAY


def age_records(db: Database, by: timedelta) -> None:
    """Move every recorded moment `by` into the past, as if the rehearsed lifecycles had run that much earlier."""
    with db.session() as session:
        for model in (DealRow, StageTransition, JournalRow, FormSubmission, TaskRow, VisitRow):
            moments = [c.key for c in model.__table__.columns if isinstance(c.type, DateTime)]
            for row in session.query(model):
                for name in moments:
                    if getattr(row, name) is not None:
                        setattr(row, name, getattr(row, name) - by)
        session.commit()


@pytest.fixture
async def reports_cli(ts_env: WorkflowEnvironment, safe_balance_utc: Playbook, tmp_path: Path) -> AsyncIterator[Cli]:
    """D-1 launched (ongoing from day 6, rehearsed 50 days), then D-2 whose contract expired on day 15 (rehearsed
    20 days), recorded in a migrated SQLite file whose last moment (the end of D-2) is `AGO` before now."""
    url = f"sqlite:///{tmp_path / 'records.db'}"
    db = Database(url)
    db.upgrade()
    # D-1 stops an hour before day 50, so D-2's rehearsal starts (at the next midnight) on day 50 of D-1's clock.
    plan = [("D-1", launched_steps(), "49d23h"), ("D-2", sales_steps(None), "20d")]
    for deal_id, steps, until in plan:
        claimed = [
            {**s, "fields": {**s["fields"], "company": f"Clinic {deal_id}"}} if s.get("form") == "targeting" else s
            for s in steps
        ]
        await run(ts_env, safe_balance_utc, claimed, until, deal_id=deal_id, db=db)
    virtual_now = await ts_env.get_current_time()
    age_records(db, virtual_now - datetime.now(UTC) + AGO)
    db.dispose()
    cli = Cli("127.0.0.1:1")  # nothing listens there: reports must not need Temporal
    cli.env.update(SOPFLOW_DATABASE_URL=url, SOPFLOW_HOME=str(tmp_path / "home"))
    yield cli


async def test_pipeline_as_json_and_csv(reports_cli: Cli):
    rows = json.loads(await reports_cli.ok("report", "pipeline", "-o", "json"))
    # In the playbook's stage order: contract_expired comes before ongoing.
    assert [(r["playbook"], r["stage"], r["count"]) for r in rows] == [
        ("safe_balance", "contract_expired", 1),
        ("safe_balance", "ongoing", 1),
    ]
    ages = {r["stage"]: r["max_days"] for r in rows}
    # D-2 expired 5 days before its rehearsal ended (AGO); D-1 entered ongoing 44 days before its own end, which
    # came 20 days (D-2's rehearsal) earlier.
    assert ages["contract_expired"] == pytest.approx(5 + AGO / DAY, abs=0.05)
    assert ages["ongoing"] == pytest.approx(44 + 20 + AGO / DAY, abs=0.05)
    assert rows[0]["stage_title"] == "Contract expired"

    text = await reports_cli.ok("report", "pipeline", "-o", "csv")
    lines = text.splitlines()
    assert lines[0] == "playbook,stage,stage_title,count,median_days,max_days"
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert [(r["stage"], r["count"]) for r in parsed] == [("contract_expired", "1"), ("ongoing", "1")]
    assert json.loads(await reports_cli.ok("report", "pipeline", "--playbook", "other", "-o", "json")) == []
    assert await reports_cli.ok("report", "pipeline", "--csv") == text  # the spreadsheet spelling of -o csv


async def test_pipeline_as_json_lines_is_one_row_per_line(reports_cli: Cli):
    rows = json.loads(await reports_cli.ok("report", "pipeline", "-o", "json"))
    lines = (await reports_cli.ok("report", "pipeline", "-o", "jsonl")).splitlines()
    assert len(lines) == len(rows) == 2 and [json.loads(line) for line in lines] == rows


async def test_deal_history_prints_the_audit_trail(reports_cli: Cli):
    text = await reports_cli.ok("deal", "history", "D-1")
    expected = [
        "start → targeting (start)",
        "form targeting submitted by rehearsal",
        "targeting → contract_request (form:targeting)",
        "contract_request → contract (form:contract_request)",
        "event contract_signed from rehearsal: accepted",
        "contract → prelaunch (event:contract_signed)",
        "task cleared_for_launch done by rehearsal",
        "prelaunch → launch (advance) by rehearsal",
        "form closeout submitted by rehearsal",
        "launch → ongoing (form:closeout)",
        "site visit due",
    ]
    positions = [text.find(line) for line in expected]
    assert -1 not in positions, [line for line, at in zip(expected, positions, strict=True) if at < 0]
    assert positions == sorted(positions)  # oldest first
    assert "@" not in text

    entries = json.loads(await reports_cli.ok("deal", "history", "D-1", "-o", "json"))
    assert [e["seq"] for e in entries] == sorted(e["seq"] for e in entries)
    assert {"at", "kind", "stage", "summary", "seq"} == set(entries[0])
    code, stdout, stderr = await reports_cli("deal", "history", "D-404")
    assert (code, stdout) == (0, "") and "no records for deal D-404" in stderr


async def test_stalled_with_days(reports_cli: Cli):
    text = await reports_cli.ok("report", "stalled", "--days", "1")
    assert "D-1" in text and "D-2" in text and "ongoing" in text and "contract_expired" in text
    rows = json.loads(await reports_cli.ok("report", "stalled", "--days", "1", "-o", "json"))
    assert [(r["deal_id"], r["owner"], r["threshold_days"]) for r in rows] == [
        ("D-1", "rep:owner-17", 1.0),
        ("D-2", "rep:owner-17", 1.0),
    ]
    # Neither stage has a stall_after in the playbook: nothing is stalled by the playbook's own thresholds.
    assert json.loads(await reports_cli.ok("report", "stalled", "-o", "json")) == []


async def test_visits_and_time_in_stage(reports_cli: Cli):
    # D-1's visits (due every 14 days from day 6) were all missed: the one due on day 48 is overdue (by 2 days when
    # its rehearsal ended, 20 days before D-2's ended AGO).
    rows = json.loads(await reports_cli.ok("report", "visits", "--within", "2w", "-o", "json"))
    assert rows == [{"owner": "rep:owner-17", "overdue": 1, "upcoming": 0}]
    deals = json.loads(await reports_cli.ok("report", "visits", "--by", "deal", "-o", "json"))
    assert [(d["deal_id"], d["status"], d["label"]) for d in deals] == [("D-1", "overdue", "site visit")]
    assert deals[0]["days_until_due"] == pytest.approx(-(2 + 20 + AGO / DAY), abs=0.05)

    stays = list(csv.DictReader(io.StringIO(await reports_cli.ok("report", "time-in-stage", "-o", "csv"))))
    contract = next(r for r in stays if r["stage"] == "contract")
    # Two stays in the contract stage: 2 days (D-1, signed on day 3) and 14 (D-2, expired).
    assert (contract["stays"], float(contract["median_days"]), float(contract["p90_days"])) == (
        "2",
        pytest.approx(2.0, abs=0.01),
        pytest.approx(14.0, abs=0.01),
    )


async def test_unknown_within_fails_in_one_line(reports_cli: Cli):
    code, stdout, stderr = await reports_cli("report", "visits", "--within", "soon")
    assert code == 1 and stdout == ""
    assert stderr.strip().count("\n") == 0
    assert stderr.startswith("error: --within: invalid duration 'soon'")


async def test_the_work_queue_lists_each_persons_items_overdue_first_with_the_command_that_settles_them(
    reports_cli: Cli,
):
    """`sopflow tasks`: D-1's missed site visit (overdue) and D-2's re-send window, which closes 15 days from now."""
    rows = json.loads(await reports_cli.ok("tasks", "-o", "json"))
    assert [(r["deal_id"], r["kind"], r["what"]) for r in rows] == [
        ("D-1", "visit", "site visit"),
        ("D-2", "deadline", "re-send window closes"),
    ]
    visit, window = rows
    assert visit["days_until_due"] < 0 and visit["owner"] == "rep:owner-17"
    assert visit["command"] == "sopflow form submit D-1 site_visit -f visited_on=YYYY-MM-DD"
    assert window["days_until_due"] == pytest.approx(45 - 20 - AGO / DAY, abs=0.05)  # expired day 15, +30 days
    assert window["command"] == "sopflow deal advance D-2 contract"

    assert json.loads(await reports_cli.ok("tasks", "--due", "overdue", "-o", "json")) == [visit]
    assert json.loads(await reports_cli.ok("task", "list", "--owner", "rep@example.com", "-o", "json")) == rows
    assert json.loads(await reports_cli.ok("tasks", "--owner", "account_manager", "-o", "json")) == []
    text = await reports_cli.ok("tasks")
    assert "Work queue" in text and "sopflow deal advance D-2 contract" in text
    code, stdout, stderr = await reports_cli("tasks", "--due", "tomorrow")
    assert (code, stdout) == (1, "")
    assert stderr.strip().splitlines() == [
        "error: --due: unknown due filter 'tomorrow': use today, week, overdue or a date (YYYY-MM-DD)"
    ]
