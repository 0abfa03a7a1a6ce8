"""`sopflow playbook migrate`: a newer playbook version reaches running clients only by this explicit command."""

from __future__ import annotations

import uuid
from pathlib import Path

import yaml

from sopflow.config import PROJECT_ROOT
from tests.starter.conftest import Cli


def write_v4(tmp_path: Path) -> Path:
    data = yaml.safe_load((PROJECT_ROOT / "playbooks" / "safe_balance.yaml").read_text())
    data["version"] = 4  # the shipped one is v3
    stage = next(s for s in data["stages"] if s["id"] == "targeting")
    stage.setdefault("tasks", []).append({"id": "check_references", "title": "Check two references", "owner": "rep"})
    path = tmp_path / "safe_balance.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


async def test_migrate_moves_the_named_deal_to_the_new_version_and_refuses_a_wrong_version(cli: Cli, tmp_path: Path):
    deal = f"MIG-{uuid.uuid4().hex[:8]}"
    await cli.start_deal(deal, "rep_email=rep@example.com", "account_manager_email=am@example.com")
    v4 = str(write_v4(tmp_path))

    dry = await cli.ok("playbook", "migrate", v4, "--to-version", "4", "--deal", deal, "--dry-run")
    assert f"{deal}: would migrate" in dry
    code, _, stderr = await cli("playbook", "migrate", v4, "--to-version", "5", "--deal", deal)
    assert code == 1 and stderr.strip().endswith("is v4 on disk, not v5: edit the file's version or the option")

    moved = await cli.ok("playbook", "migrate", v4, "--to-version", "4", "--deal", deal)
    assert f"✓ {deal}: v4, stage targeting" in moved
    status = await cli.ok("deal", "status", deal)
    assert "v4" in status and "check_references" in status

    code, stdout, _ = await cli("playbook", "migrate", v4, "--to-version", "4", "--deal", deal)  # again: not newer
    assert code == 1 and f"✗ {deal}: refused: v4 is not newer than the v4 this deal runs" in stdout
