"""The command tree (issue 13): nouns are groups and verbs act on them, services are top-level; the old spellings
still work for one release but are hidden; help and usage lines name parameters as `DEAL_ID`, `KEY=VALUE`, `TEXT`."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import yaml
from typer.main import get_command
from typer.testing import CliRunner

from sopflow.config import PROJECT_ROOT
from sopflow.models import Close
from starter.cli import app
from starter.cli.deal_changes import CloseOutcome
from tests.starter.conftest import Cli, eventually, offline_cli

NOUNS = ["deal", "form", "task", "playbook", "mail", "template", "db", "report", "staff", "digest"]
SERVICES = ["dev", "worker", "intake", "codec-server", "rehearse"]
OLD_SPELLINGS = ["advance", "set", "close", "event", "status", "list", "migrate"]


def listed_commands(help_text: str) -> dict[str, list[str]]:
    """The commands a rich `--help` lists, per panel (`Commands`, `Services`)."""
    panels: dict[str, list[str]] = {}
    panel = None
    for line in help_text.splitlines():
        if title := re.match(r"╭─ (.+?) ─", line):
            panel = title.group(1)
            panels[panel] = []
        elif panel is not None and (row := re.match(r"│ ([a-z][a-z-]*) ", line)):
            panels[panel].append(row.group(1))
    return panels


def command_paths() -> Iterator[list[str]]:
    """Every command and group of the tree, hidden ones included, as the words that call it."""

    def walk(command: object, path: list[str]) -> Iterator[list[str]]:
        yield path
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, [*path, name])

    yield from walk(get_command(app), [])


async def test_the_help_lists_nouns_and_services_but_no_old_spelling(tmp_path: Path):
    panels = listed_commands(await offline_cli(tmp_path).ok("--help"))

    assert panels["Commands"] == NOUNS
    assert panels["Services"] == SERVICES
    assert panels["Your work"] == ["tasks", "forecast"]
    listed = {name for names in panels.values() for name in names}
    assert not listed & set(OLD_SPELLINGS)
    deal_verbs = listed_commands(await offline_cli(tmp_path).ok("deal", "--help"))["Commands"]
    assert deal_verbs == ["start", "status", "list", "history", "advance", "set", "close", "event"]
    assert "migrate" in listed_commands(await offline_cli(tmp_path).ok("playbook", "--help"))["Commands"]


async def test_old_spellings_still_work_as_before(cli: Cli, tmp_path: Path):
    deal = f"OLD{uuid.uuid4().hex[:8]}"
    await cli.start_deal(deal, "rep_email=rep@example.com", "rep_id=owner-42", "account_manager_email=am@example.com")

    assert f"set rep_id → deal {deal} is in targeting" in await cli.ok("set", deal, "-f", "rep_id=owner-43")
    assert json.loads(await cli.ok("status", deal, "-o", "json"))["fields"]["rep_id"] == "owner-43"

    async def listed() -> None:
        rows = json.loads(await cli.ok("list", "--owner", "rep:owner-43", "-o", "json"))
        assert deal in [row["deal_id"] for row in rows]

    await eventually(listed)
    code, _, stderr = await cli("advance", deal, "launch")
    assert code == 1 and "cannot advance from 'targeting' to 'launch'" in stderr
    assert "ignored" in await cli.ok("event", deal, "contract_signed")

    data = yaml.safe_load((PROJECT_ROOT / "playbooks" / "safe_balance.yaml").read_text())
    v2 = tmp_path / "safe_balance.yaml"
    v2.write_text(yaml.safe_dump({**data, "version": data["version"] + 1}, sort_keys=False))
    dry = await cli.ok("migrate", str(v2), "--to-version", str(data["version"] + 1), "--deal", deal, "--dry-run")
    assert f"{deal}: would migrate" in dry

    code, _, stderr = await cli("close", deal, "--reason", "no outcome")
    assert code == 1 and "lost|cancelled" in stderr
    closed = json.loads(await cli.ok("close", deal, "--cancelled", "--reason", "paused", "-o", "json"))
    assert (closed["outcome"], closed["close_reason"]) == ("cancelled", "paused")


async def test_deal_close_takes_the_outcome_as_an_argument(cli: Cli):
    deal = f"CL{uuid.uuid4().hex[:8]}"
    await cli.start_deal(deal, "rep_email=rep@example.com", "account_manager_email=am@example.com")

    code, stdout, stderr = await cli("deal", "close", deal, "won", "--reason", "signed")
    assert code == 2 and stdout == "" and "'won' is not one of 'lost', 'cancelled'" in stderr

    text = await cli.ok("deal", "close", deal, "lost", "--reason", "went with a competitor")
    assert f"closed as lost → deal {deal} is in closed_lost" in text
    status = json.loads(await cli.ok("deal", "status", deal, "-o", "json"))
    assert (status["outcome"], status["close_reason"]) == ("lost", "went with a competitor")


def test_the_close_outcomes_are_exactly_those_the_engine_accepts():
    assert {outcome.value for outcome in CloseOutcome} == set(get_args(Close.model_fields["outcome"].annotation))


def test_usage_lines_name_arguments_in_capitals_and_help_shows_no_typer_type_names():
    runner = CliRunner()
    for path in command_paths():
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, path
        assert not re.findall(r"<[a-z][a-z\[\]|, ]*>|\{[a-z_]+\}", result.output), (path, result.output)
    usages = {
        "deal status": "sopflow deal status [OPTIONS] DEAL_ID",
        "deal close": "sopflow deal close [OPTIONS] DEAL_ID OUTCOME",
        "deal event": "sopflow deal event [OPTIONS] DEAL_ID EVENT",
        "form submit": "sopflow form submit [OPTIONS] DEAL_ID FORM",
        "task done": "sopflow task done [OPTIONS] DEAL_ID TASK",
        "playbook validate": "sopflow playbook validate [OPTIONS] FILE...",
        "status": "sopflow status [OPTIONS] DEAL_ID",
    }
    for command, usage in usages.items():
        result = runner.invoke(app, [*command.split(), "--help"], prog_name="sopflow", env={"COLUMNS": "200"})
        assert usage in result.output, command
    set_help = runner.invoke(app, ["deal", "set", "--help"], env={"COLUMNS": "200"}).output
    assert re.search(r"--field\s+-f\s+KEY=VALUE", set_help) and re.search(r"--wait\s+SECONDS", set_help)


async def test_a_missing_argument_is_named_as_in_the_usage_line(tmp_path: Path):
    code, stdout, stderr = await offline_cli(tmp_path)("deal", "status")
    assert code == 2 and stdout == ""
    assert "Usage: sopflow deal status [OPTIONS] DEAL_ID" in stderr and "Missing argument 'DEAL_ID'" in stderr
