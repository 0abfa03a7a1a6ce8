"""`sopflow staff` and `sopflow digest preview` as an administrator runs them: the real binary, a staff file and a
records database in the test's own folder, no Temporal (but for `digest schedule`, on the session's dev server)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml
from temporalio.testing import WorkflowEnvironment

from sopflow.constants import DIGEST_SCHEDULE_ID
from sopflow.db import Database
from sopflow.staff import load_staff, token_hash
from tests.conftest import contact_row, deal_row, task_row
from tests.starter.conftest import LINKS_URL, Cli, offline_cli

# Monday 2026-03-16, 07:00 in New York.
MORNING = datetime(2026, 3, 16, 11, tzinfo=UTC)


async def test_staff_are_added_listed_opted_out_and_removed(tmp_path: Path) -> None:
    cli = offline_cli(tmp_path)
    await cli.ok(
        "staff",
        "add",
        "Rep@Example.com",
        "--timezone",
        "America/Chicago",
        "--holidays",
        "US-TX",
        "--morning-hour",
        "8",
        "--role",
        "rep",
        "--owner",
        "rep:owner-17",
    )
    await cli.ok("staff", "add", "am@example.com")
    await cli.ok("staff", "digest", "am@example.com", "off")
    rows = json.loads(await cli.ok("staff", "list", "-o", "json"))
    assert rows == [
        {
            "email": "rep@example.com",
            "timezone": "America/Chicago",
            "holidays": "US-TX",
            "morning_hour": 8,
            "digest": "on",
            "roles": ["rep"],
            "owners": ["rep:owner-17"],
            "tokens": 0,
        },
        {
            "email": "am@example.com",
            "timezone": "UTC",
            "holidays": "",
            "morning_hour": 7,
            "digest": "off",
            "roles": [],
            "owners": [],
            "tokens": 0,
        },
    ]
    await cli.ok("staff", "remove", "am@example.com")
    assert "1 person" in await cli.ok("staff", "list")


async def test_a_token_is_shown_once_and_only_its_hash_is_stored(tmp_path: Path) -> None:
    cli = offline_cli(tmp_path)
    await cli.ok("staff", "add", "rep@example.com")
    code, stdout, stderr = await cli("staff", "token", "rep@example.com")
    assert code == 0 and "shown only once" in stderr
    issued = stdout.strip()
    staff_file = tmp_path / "home" / "staff.yaml"
    assert issued not in staff_file.read_text()
    assert load_staff(staff_file).people[0].tokens == [token_hash(issued)]
    listed = await cli.ok("staff", "list", "-o", "csv")
    assert token_hash(issued) not in listed and listed.splitlines()[1].endswith(",1")
    await cli.ok("staff", "token", "rep@example.com")
    assert "revoked 2 tokens" in await cli.ok("staff", "token", "rep@example.com", "--revoke")
    assert yaml.safe_load(staff_file.read_text())["people"][0].get("tokens", []) == []


async def test_bad_staff_input_is_one_line_and_a_failure(tmp_path: Path) -> None:
    cli = offline_cli(tmp_path)
    await cli.ok("staff", "add", "rep@example.com")
    for args, message in [
        (("staff", "add", "x@example.com", "--timezone", "America/NewYork"), "unknown time zone 'America/NewYork'"),
        (("staff", "add", "not-an-address"), "must be an email address"),
        (("staff", "add", "x@example.com", "--holidays", "XX"), "unknown holiday country 'XX'"),
        (("staff", "add", "REP@example.com"), "already in the staff directory"),
        (("staff", "digest", "nobody@example.com", "off"), "no staff member 'nobody@example.com'"),
        (("staff", "token", "nobody@example.com"), "no staff member"),
        (("staff", "remove", "nobody@example.com"), "no staff member"),
        (("digest", "preview", "rep@example.com", "--date", "16/03/2026"), "--date must be a date"),
    ]:
        code, _, stderr = await cli(*args)
        assert code == 1, args
        assert stderr.count("\n") == 1 and message in stderr, stderr
        assert "Traceback" not in stderr


async def test_the_preview_prints_a_persons_digest_without_sending_it(tmp_path: Path) -> None:
    cli = offline_cli(tmp_path)
    db = Database(f"sqlite:///{tmp_path / 'home' / 'sopflow.db'}")
    (tmp_path / "home").mkdir(exist_ok=True)
    db.upgrade()
    with db.session() as session:
        session.add_all(
            [
                deal_row("D-1", "prelaunch", MORNING, owner="account_manager:am-5"),
                task_row("D-1", "onsite_appointment", "rep", MORNING - timedelta(days=1), MORNING),
                contact_row("D-1", "rep", "rep@example.com", MORNING),
            ]
        )
        session.commit()
    db.dispose()
    await cli.ok("staff", "add", "rep@example.com", "--timezone", "America/New_York")
    await cli.ok("staff", "add", "am@example.com")
    text = await cli.ok("digest", "preview", "rep@example.com", "--date", "2026-03-16")
    assert "Subject: Your day, Monday March 16: 1 item (1 overdue)" in text
    assert "onsite appointment" in text and f"{LINKS_URL}/deals/D-1" in text
    digest = json.loads(await cli.ok("digest", "preview", "rep@example.com", "--date", "2026-03-16", "-o", "json"))
    assert [e["deal_id"] for e in digest["overdue"]] == ["D-1"]
    assert "no digest would be sent" in await cli.ok("digest", "preview", "am@example.com", "--date", "2026-03-16")
    weekend = await cli.ok("digest", "preview", "rep@example.com", "--date", "2026-03-14")
    assert "not one of their working days" in weekend


async def test_digest_schedule_creates_then_updates_the_hourly_schedule(dev_env: WorkflowEnvironment) -> None:
    cli = Cli(dev_env.client.service_client.config.target_host)
    handle = dev_env.client.get_schedule_handle(DIGEST_SCHEDULE_ID)
    try:
        assert f"schedule {DIGEST_SCHEDULE_ID} created" in await cli.ok("digest", "schedule")
        assert f"schedule {DIGEST_SCHEDULE_ID} updated" in await cli.ok("digest", "schedule")
        assert (await handle.describe()).schedule.spec.calendars[0].hour[0].end == 23
    finally:
        await handle.delete()


async def test_digest_schedule_without_a_server_is_one_line(tmp_path: Path) -> None:
    code, _, stderr = await offline_cli(tmp_path)("digest", "schedule")
    assert code == 1 and stderr.count("\n") == 1 and "Traceback" not in stderr
