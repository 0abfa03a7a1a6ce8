"""`sopflow playbook validate` render-checks templates; `sopflow mail` reads the outbox a real worker wrote;
`sopflow template preview` renders with samples or with a running deal's live context (real dev server)."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from sopflow.constants import TASK_QUEUE
from sopflow.db import Database
from sopflow.mailsink import MailSink
from tests.conftest import TEMPLATES, make_worker
from tests.starter.conftest import LINKS_URL, Cli, eventually, offline_cli

PUBLIC_URL = LINKS_URL


@pytest.fixture
async def stack(dev_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Cli]:
    """A worker on the dev server's real task queue writing to a records DB the CLI subprocess reads too."""
    url = f"sqlite:///{tmp_path / 'records.db'}"
    db = Database(url)
    db.create_schema()
    with MailSink() as sink:
        async with make_worker(dev_env.client, db, sink, public_url=PUBLIC_URL, task_queue=TASK_QUEUE):
            cli = Cli(dev_env.client.service_client.config.target_host)
            cli.env.update(
                {
                    "SOPFLOW_DATABASE_URL": url,
                    "SOPFLOW_HOME": str(tmp_path / "home"),
                    "SOPFLOW_PUBLIC_URL": PUBLIC_URL,
                }
            )
            yield cli
    db.dispose()


async def claimed_deal(cli: Cli, company: str) -> str:
    """A deal whose targeting form claimed `company`: it is in contract_request and was sent `account_claimed`."""
    deal = f"M{uuid.uuid4().hex[:8]}"
    await cli.start_deal(deal, "rep_email=rep@example.com", "account_manager_email=am@example.com")
    targeting = [f"company={company}", "signer_name=Facility Director", "signer_email=director@example.com"]
    fields = [arg for pair in [*targeting, "service_tier=Premium"] for arg in ("-f", pair)]
    await cli.ok("form", "submit", deal, "targeting", *fields)
    return deal


# --- playbook validate ---------------------------------------------------------------------------------------------


async def test_validate_fails_naming_the_path_of_an_email_whose_template_does_not_render(tmp_path: Path):
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES, templates)
    body = templates / "safe_balance" / "launch_day" / "body.html"
    body.write_text(body.read_text().replace("{% endblock %}", "<p>{{ visit.due_at }}</p>\n{% endblock %}"))
    cli = offline_cli(tmp_path)

    assert (await cli.ok("playbook", "validate", "playbooks/safe_balance.yaml")).startswith("✓")

    cli.env["SOPFLOW_TEMPLATES_DIR"] = str(templates)
    code, stdout, stderr = await cli("playbook", "validate", "playbooks/safe_balance.yaml")
    assert code == 1 and stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        "playbooks/safe_balance.yaml: stages[6].on_enter[0].email: template 'launch_day' (body.html): "
        "'visit' is undefined"
    )


# --- mail list / show ----------------------------------------------------------------------------------------------


async def test_mail_list_and_show_read_the_outbox_the_worker_wrote(stack: Cli, tmp_path: Path):
    company = f"Lakeview Senior Living {uuid.uuid4().hex[:6]}"
    deal = await claimed_deal(stack, company)

    async def sent() -> list[dict]:
        rows = json.loads(await stack.ok("mail", "list", "--deal", deal, "-o", "json"))
        assert [(row["template"], row["status"]) for row in rows] == [("account_claimed", "sent")]
        return rows

    rows = await eventually(sent)
    row = rows[0]
    assert row["deal_id"] == deal and row["subject"] == f"Account claimed: {company}"
    assert row["to"] == "rep@example.com" and row["cc"] == "am@example.com"

    table = await stack.ok("mail", "list", "--deal", deal)
    assert "account_claimed" in table and "sent" in table and company in table
    assert table.splitlines()[-1] == "1 email"  # a real plural: "1 email", "2 emails"
    assert json.loads(await stack.ok("mail", "list", "--deal", deal, "--status", "failed", "-o", "json")) == []
    assert len(json.loads(await stack.ok("mail", "list", "--limit", "1", "-o", "json"))) == 1

    shown = json.loads(await stack.ok("mail", "show", str(row["id"]), "-o", "json"))
    assert shown["key"].startswith(f"deal-{deal}/") and shown["playbook"] == "safe_balance"
    assert shown["attempts"] == 1 and shown["sent_at"] and shown["message_id"].startswith("<")
    assert company in shown["body_text"] and f"{PUBLIC_URL}/forms/{deal}/contract_request" in shown["body_text"]

    html = tmp_path / "claimed.html"
    text = await stack.ok("mail", "show", str(row["id"]), "--html", str(html))
    assert f"Account claimed: {company}" in text and "Hello rep," in text
    assert html.read_text().startswith("<!DOCTYPE html>") and company in html.read_text()


async def test_mail_show_of_an_unknown_id_is_one_line_and_exit_1(stack: Cli):
    code, stdout, stderr = await stack("mail", "show", "987654321")
    assert code == 1 and stdout == ""
    assert stderr.strip().splitlines() == ["error: no email with id 987654321 in the outbox (see `sopflow mail list`)"]


async def test_mail_list_on_a_fresh_machine_is_empty_not_an_error(tmp_path: Path):
    cli = offline_cli(tmp_path)
    cli.env["SOPFLOW_DATABASE_URL"] = f"sqlite:///{tmp_path / 'fresh' / 'records.db'}"
    assert json.loads(await cli.ok("mail", "list", "-o", "json")) == []


# --- template preview ----------------------------------------------------------------------------------------------


async def test_template_preview_renders_samples_without_a_deal(tmp_path: Path):
    cli = offline_cli(tmp_path)
    html = tmp_path / "welcome.html"
    stdout = await cli.ok("template", "preview", "safe_balance", "welcome", "--html", str(html))
    assert stdout.startswith("Subject: Welcome to Safe Balance")
    assert "Hello " in stdout and "{{" not in stdout
    assert "<html" in html.read_text()

    # A reminder's extras (the visit) come from the samples of the site that sends it.
    preview = json.loads(await cli.ok("template", "preview", "safe_balance", "visit_due", "-o", "json"))
    assert preview["subject"].startswith("Site visit due by ") and preview["context"] == "sample"
    assert f"{PUBLIC_URL}/forms/" in preview["text"]

    code, stdout, stderr = await cli("template", "preview", "safe_balance", "welcom")
    assert code == 1 and stdout == ""
    assert len(stderr.strip().splitlines()) == 1 and "'welcom'" in stderr and "welcome" in stderr


async def test_template_preview_with_a_deal_uses_its_live_context(stack: Cli):
    company = f"Lakeview Senior Living {uuid.uuid4().hex[:6]}"
    deal = await claimed_deal(stack, company)

    stdout = await stack.ok("template", "preview", "safe_balance", "welcome", "--deal", deal)
    assert stdout.splitlines()[0] == f"Subject: Welcome to Safe Balance, {company}"
    assert "Hello Facility Director," in stdout

    claimed = json.loads(
        await stack.ok("template", "preview", "safe_balance", "account_claimed", "--deal", deal, "-o", "json")
    )
    assert claimed["context"] == "deal" and f"{PUBLIC_URL}/forms/{deal}/contract_request" in claimed["text"]

    # The deal has no overdue task: the template's `task` comes from the samples, the rest is live.
    overdue = await stack.ok("template", "preview", "safe_balance", "task_overdue", "--deal", deal)
    assert overdue.splitlines()[0].startswith("Subject: Overdue task: ") and f"({company})" in overdue.splitlines()[0]

    code, stdout, stderr = await stack("template", "preview", "safe_balance", "welcome", "--deal", "NOPE-404")
    assert code == 1 and stdout == "" and len(stderr.strip().splitlines()) == 1 and "no lifecycle" in stderr
