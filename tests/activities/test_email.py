"""Email that users can trust, against a real (misbehaving) aiosmtpd server and real SQLite.

Each lifecycle test rehearses a deal through the real workflow and activities on the time-skipping server, with a
sink that drops connections, defers messages or refuses recipients the way real mail servers do.
"""

from __future__ import annotations

import email.policy
import html
import logging
import re
import shutil
import sys
from collections import Counter
from collections.abc import Callable
from email import message_from_bytes
from email.headerregistry import Address
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.email import (
    MAX_DISPLAY_NAME,
    EmailActivities,
    SmtpConfig,
    Unbuildable,
    build_message,
    display_name,
    message_id_for,
)
from sopflow.db import Database, OutboxEmail
from sopflow.errors import MESSAGE_UNBUILDABLE
from sopflow.mailsink import MailSink
from sopflow.models import EmailRequest, Recipient
from sopflow.playbook import Playbook
from sopflow.samples import email_uses, sample_context
from sopflow.signatures import verify_form_token
from sopflow.templates import Rendered, TemplateRenderer
from tests.activities.conftest import Metrics
from tests.conftest import TARGETING, TEMPLATES, body, launched_steps, run, sales_steps


def outbox(db: Database) -> list[OutboxEmail]:
    with db.session() as session:
        return list(session.scalars(select(OutboxEmail).order_by(OutboxEmail.id)))


def templates_sent(sink: MailSink) -> Counter[str]:
    return Counter(str(m["X-Sopflow-Template"]) for m in sink.messages)


async def test_email_arrives_exactly_once_when_the_server_drops_connections_and_defers_messages(
    ts_env, safe_balance, db
):
    with MailSink(drop_connections=3, defer_messages=2) as sink:
        result = await run(ts_env, safe_balance, sales_steps(signed_on=None), until="2d", sink=sink, db=db)

    assert sink.injected == {"dropped": 3, "deferred": 2}
    assert templates_sent(sink) == {"safe_balance/account_claimed": 1, "safe_balance/contract_sent": 1}
    assert sink.duplicates == 0
    rows = outbox(db)
    assert [(r.template, r.status) for r in rows] == [("account_claimed", "sent"), ("contract_sent", "sent")]
    assert rows[0].attempts == 6  # 3 dropped connections, 2 deferrals, then delivered
    assert all(e["status"] == "sent" for e in result.of_kind("email"))


class CrashAfterSending(EmailActivities):
    """The worker dies after the server's 250 but before the outbox says `sent`, once for every step."""

    crashed: set[str] = set()

    def _finish(self, key: str, status: str, error: str | None, rendered: Rendered | None = None) -> None:
        if status == "sent" and key not in self.crashed:
            self.crashed.add(key)
            raise RuntimeError("simulated crash before the outbox commit")
        super()._finish(key, status, error, rendered)


async def test_a_crash_between_sending_and_the_outbox_commit_resends_with_the_same_message_id(
    ts_env, safe_balance, db, smtp_sink
):
    CrashAfterSending.crashed = set()
    result = await run(
        ts_env, safe_balance, launched_steps(), until="60d", sink=smtp_sink, db=db, email_activities=CrashAfterSending
    )

    sent_steps = [e for e in result.of_kind("email") if e["status"] == "sent"]
    assert len(sent_steps) >= 10
    assert len(CrashAfterSending.crashed) == len(sent_steps)
    # Every step reached the server twice; the sink kept one message per distinct Message-ID.
    assert smtp_sink.duplicates == len(sent_steps)
    message_ids = [str(m["Message-ID"]) for m in smtp_sink.messages]
    assert len(message_ids) == len(set(message_ids)) == len(sent_steps)
    assert {e["message_id"] for e in sent_steps} == set(message_ids)
    assert all(row.status == "sent" and row.attempts == 2 for row in outbox(db))


async def test_a_mailbox_that_does_not_exist_fails_the_email_and_opens_a_task_for_the_owner(ts_env, safe_balance, db):
    rep_only = {"rep_email": "rep@example.com", "rep_id": "owner-17"}  # no account manager to copy
    with MailSink(reject_recipients={"rep@example.com"}) as sink:
        result = await run(ts_env, safe_balance, sales_steps("3d"), until="4d", deal=rep_only, sink=sink, db=db)

    claimed = next(r for r in outbox(db) if r.template == "account_claimed")
    assert claimed.status == "failed" and "550" in (claimed.error or "") and "rep@example.com" in (claimed.error or "")
    escalation = next(e for e in result.of_kind("escalation") if e.get("template") == "account_claimed")
    assert escalation["roles"] == ["rep"] and escalation["owner"] == "rep" and "550" in escalation["reason"]
    # The workflow kept going: the contract went out and was signed (and waits for an account manager).
    assert result.status.stage == "assign_account_manager"
    assert "safe_balance/account_claimed" not in templates_sent(sink)


async def test_a_refused_cc_still_delivers_to_the_others_and_tells_the_owner(ts_env, safe_balance, db):
    bouncing_signer = {**TARGETING, "signer_email": "gone@example.com"}
    steps = [{**sales_steps(None)[0], "fields": bouncing_signer}, sales_steps(None)[1]]
    with MailSink(reject_recipients={"gone@example.com"}) as sink:
        result = await run(ts_env, safe_balance, steps, until="2d", sink=sink, db=db)

    contract = next(r for r in outbox(db) if r.template == "contract_sent")
    assert contract.status == "partial" and contract.error == "gone@example.com"
    delivered = next(m for m in sink.messages if m["X-Sopflow-Template"] == "safe_balance/contract_sent")
    assert "rep@example.com" in str(delivered["Cc"])
    escalation = next(e for e in result.of_kind("escalation") if e.get("template") == "contract_sent")
    assert escalation["roles"] == ["signer"] and escalation["owner"] == "rep"
    notice = next(m for m in sink.messages if m["X-Sopflow-Template"] == "_system/email_undeliverable")
    assert str(notice["To"]) == "rep@example.com" and escalation["task"] in body(notice, "plain")
    assert escalation["task"] in {t.id for t in result.status.open_tasks}


async def test_correcting_a_bounced_address_and_closing_the_task_sends_the_email_again(ts_env, safe_balance, db):
    bouncing_signer = {**TARGETING, "signer_email": "gone@example.com"}
    first, request = sales_steps(None)
    fix: list[dict[str, Any]] = [
        {"at": "2d", "form": "targeting", "fields": TARGETING},  # the right signer email
        {"at": "2d", "task": "fix_email_contract_sent"},
    ]
    with MailSink(reject_recipients={"gone@example.com"}) as sink:
        steps: list[dict[str, Any]] = [{**first, "fields": bouncing_signer}, request, *fix]
        result = await run(ts_env, safe_balance, steps, until="3d", sink=sink, db=db)

    contracts = [m for m in sink.messages if m["X-Sopflow-Template"] == "safe_balance/contract_sent"]
    assert [str(m["To"]) for m in contracts] == [
        "Client Signer <gone@example.com>",  # refused for that address, delivered to the copied rep
        "Client Signer <signer@example.com>",
    ]
    assert "Cc" not in contracts[1]  # the rep already had it
    assert result.status.stage == "contract" and not result.status.open_tasks


async def test_a_missing_template_variable_fails_naming_it_and_sends_nothing(
    ts_env, safe_balance, db, smtp_sink, tmp_path: Path
):
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES, templates)
    body = templates / "safe_balance" / "account_claimed" / "body.txt"
    body.write_text(body.read_text() + "\nTerritory: {{ deal.territory_code }}\n")

    result = await run(
        ts_env, safe_balance, sales_steps(None), until="2d", sink=smtp_sink, db=db, templates_dir=templates
    )

    failed = next(e for e in result.of_kind("email") if e["template"] == "account_claimed")
    assert failed["status"] == "failed"
    assert "territory_code" in failed["error"] and "safe_balance/account_claimed (body.txt)" in failed["error"]
    assert "safe_balance/account_claimed" not in templates_sent(smtp_sink)
    row = next(r for r in outbox(db) if r.template == "account_claimed")
    assert row.status == "failed" and "territory_code" in (row.error or "")
    assert result.status.stage == "contract"  # nothing else was held up


async def test_deal_values_are_escaped_in_html_but_not_in_subjects_or_text(ts_env, safe_balance, smtp_sink):
    hostile = {**TARGETING, "company": "<script>alert(1)</script> Rehab & Care"}
    steps = [{**sales_steps(None)[0], "fields": hostile}]
    await run(ts_env, safe_balance, steps, until="1d", sink=smtp_sink)

    message = next(m for m in smtp_sink.messages if m["X-Sopflow-Template"] == "safe_balance/account_claimed")
    assert str(message["Subject"]) == "Account claimed: <script>alert(1)</script> Rehab & Care"
    html = body(message, "html")
    assert "&lt;script&gt;alert(1)&lt;/script&gt; Rehab &amp; Care" in html and "<script>" not in html
    assert "<script>alert(1)</script> Rehab & Care" in body(message, "plain")  # type: ignore[union-attr]


@pytest.fixture
def attachment_templates(tmp_path: Path) -> Path:
    folder = tmp_path / "demo" / "roster_welcome"
    folder.mkdir(parents=True)
    (folder / "subject.txt").write_text("Welcome, {{ deal.company }}")
    (folder / "body.txt").write_text("Rosters attached.")
    (folder / "body.html").write_text("<p>Rosters attached for {{ deal.company }}.</p>")
    (tmp_path / "demo" / "attachments").mkdir()
    (tmp_path / "demo" / "attachments" / "Payor Roster.xlsx").write_bytes(b"PK\x03\x04 demo roster")
    return tmp_path


async def test_send_email_builds_a_multipart_message_with_attachments_and_a_key_derived_message_id(
    attachment_templates: Path, db: Database, smtp_sink: MailSink
):
    smtp = SmtpConfig(host=smtp_sink.host, port=smtp_sink.port, mail_from="sopflow <sopflow@example.com>")
    activities = EmailActivities(db, TemplateRenderer(attachment_templates), smtp, "http://127.0.0.1:8000")
    request = EmailRequest(
        key="deal-D-5/7/enter-welcome-0",
        workflow_id="deal-D-5",
        deal_id="D-5",
        playbook="demo",
        template="roster_welcome",
        at="2026-01-05T10:00:00Z",  # type: ignore[arg-type]
        to=[Recipient(role="admin", email="admin@example.com", name="Clinic Admin")],
        context={"deal": {"company": "Example Clinic"}},
        attachments=["Payor Roster.xlsx"],
    )

    env = ActivityEnvironment()
    first = await env.run(activities.send_email, request)
    again = await env.run(activities.send_email, request)

    assert first.status == "sent" and again.status == "already_sent"
    assert first.message_id == again.message_id == message_id_for(request.key, smtp.mail_from)
    assert first.message_id.endswith("@example.com>")
    (message,) = smtp_sink.messages
    assert message.get_content_type() == "multipart/mixed"
    assert body(message, "plain").strip() == "Rosters attached."
    (attachment,) = list(message.iter_attachments())
    assert attachment.get_filename() == "Payor Roster.xlsx" and attachment.get_content() == b"PK\x03\x04 demo roster"
    assert str(message["To"]) == "Clinic Admin <admin@example.com>"


async def test_a_sent_emails_form_link_carries_a_token_the_intake_accepts(
    safe_balance: Playbook, db: Database, smtp_sink: MailSink
):
    """The link a rep clicks in "site visit due" opens that deal's site-visit form with a valid per-form token."""
    secret = "form-secret-for-email-tests"
    smtp = SmtpConfig(host=smtp_sink.host, port=smtp_sink.port, mail_from="sopflow <sopflow@example.com>")
    activities = EmailActivities(
        db, TemplateRenderer(TEMPLATES), smtp, "https://sop.example.com/intake/", form_secret=secret
    )
    use = next(use for use in email_uses(safe_balance) if use.template == "visit_due")
    context = sample_context(safe_balance, use, minimal=False, deal_id="D-77")
    del context["links"]  # the activity adds them
    request = EmailRequest(
        key="deal-D-77/12/visit-due-2",
        workflow_id="deal-D-77",
        deal_id="D-77",
        playbook="safe_balance",
        template="visit_due",
        at="2026-01-05T10:00:00Z",  # type: ignore[arg-type]
        to=[Recipient(role="rep", email="rep@example.com")],
        context=context,
    )

    assert (await ActivityEnvironment().run(activities.send_email, request)).status == "sent"

    (message,) = smtp_sink.messages
    links = re.findall(r'href="([^"]*/forms/[^"]*)"', body(message, "html"))
    assert len(links) == 1
    url = urlsplit(html.unescape(links[0]))
    assert (url.scheme, url.netloc, url.path) == ("https", "sop.example.com", "/intake/forms/D-77/site_visit")
    token = parse_qs(url.query)["token"][0]
    assert verify_form_token(secret, "D-77", "site_visit", token)
    assert not verify_form_token(secret, "D-77", "closeout", token)
    assert html.unescape(links[0]) in body(message, "plain")


# --- messages that cannot be built ---------------------------------------------------------------------------------

INJECTED = "signer@example.com\r\nBcc: eve@evil.example"


def unreadable_attachment(templates: Path) -> None:
    """The playbook names Roster.xlsx, but what is there is not a file."""
    roster = templates / "demo" / "attachments" / "Roster.xlsx"
    roster.unlink()
    roster.mkdir()


def signer_at(address: str) -> dict[str, Any]:
    return {"to": [Recipient(role="signer", email=address, name="Client Signer")]}


NOT_AN_ADDRESS = "the To address of role 'signer' is not an email address"


@pytest.mark.parametrize(
    ("request_changes", "break_templates", "part", "faulty"),
    [
        pytest.param(signer_at(INJECTED), None, NOT_AN_ADDRESS, [[INJECTED], ["signer"]], id="header-injection"),
        pytest.param(signer_at("Client Signer"), None, NOT_AN_ADDRESS, [["Client Signer"], ["signer"]], id="no-at"),
        pytest.param(
            signer_at("signer@example.com, eve@evil.example"),
            None,
            NOT_AN_ADDRESS,
            [["signer@example.com, eve@evil.example"], ["signer"]],
            id="two-addresses-in-one",
        ),
        pytest.param(
            signer_at("zoë@example.com"),
            None,
            "the To address of role 'signer' is not an ASCII email address",
            [["zoë@example.com"], ["signer"]],
            id="not-ascii",
        ),
        pytest.param(
            {"reply_to": Recipient(role="rep", email="rep@example.com>, <eve@evil.example", name="Alex Rep")},
            None,
            "the Reply-To of role 'rep' is not an email address",
            [["rep@example.com>, <eve@evil.example"], ["rep"]],
            id="reply-to",
        ),
        pytest.param(
            {"attachments": ["Roster.xlsx"]},
            unreadable_attachment,
            "attachment 'Roster.xlsx' is not a file in templates/demo/attachments/",
            [[], []],
            id="attachment",
        ),
    ],
)
async def test_a_message_that_cannot_be_built_fails_for_good_at_once_and_the_outbox_says_why(
    mail: EmailActivities,
    email_request: Callable[..., EmailRequest],
    demo_templates: Path,
    db: Database,
    smtp_sink: MailSink,
    metrics: Metrics,
    caplog: pytest.LogCaptureFixture,
    request_changes: dict[str, Any],
    break_templates: Callable[[Path], None] | None,
    part: str,
    faulty: list[list[str]],
) -> None:
    if break_templates is not None:
        break_templates(demo_templates)
    request = email_request(**request_changes)

    with caplog.at_level(logging.INFO), pytest.raises(ApplicationError) as failure:
        await metrics.env.run(mail.send_email, request)

    error = failure.value
    assert error.type == MESSAGE_UNBUILDABLE and error.non_retryable
    assert error.message == f"email demo/welcome cannot be built: {part}"
    assert list(error.details) == faulty  # addresses and roles at fault travel in the details, never in the message
    (row,) = outbox(db)
    assert row.status == "failed" and row.error == error.message and row.attempts == 1
    assert smtp_sink.messages == []
    assert metrics.email_attempts() == {"unbuildable": 1}
    (logged,) = [r for r in caplog.records if getattr(r, "outcome", None) is not None]
    assert logged.outcome == "unbuildable" and logged.error_type == MESSAGE_UNBUILDABLE  # type: ignore[attr-defined]
    for text in [error.message, *(r.getMessage() for r in caplog.records)]:
        assert "example" not in text and "Client Signer" not in text


# --- names cannot make addresses -------------------------------------------------------------------------------------

HOSTILE_NAMES = [
    pytest.param("=?utf-8?b?ZXZlQGV2aWwuZXhhbXBsZSw=?=", id="b-encoded-word-hiding-an-address"),
    pytest.param("=?utf-8?q?eve=40evil.example=2C?=", id="q-encoded-word-hiding-an-address"),
    pytest.param('Eve, "Boss" <eve@evil.example>', id="comma-quotes-angle-brackets"),
    pytest.param("eve@evil.example, mallory@evil.example;", id="addresses-as-a-name"),
    pytest.param("Casey\r\nBcc: eve@evil.example", id="line-break-and-a-header"),
    pytest.param("Casey\x0bSigner\x0c(Finance)", id="vertical-tab-form-feed-comment"),
    pytest.param('Zoë 東京 \u202eeve@evil.example\u202c, \\ "', id="non-ascii-bidi-backslash"),
    pytest.param('"' + "x" * 90 + '", <eve@evil.example>' + "y" * 90, id="longer-than-a-line"),
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
async def test_a_name_cannot_add_or_change_an_address_in_to_cc_or_reply_to(
    mail: EmailActivities, email_request: Callable[..., EmailRequest], smtp_sink: MailSink, name: str
) -> None:
    envelopes: list[list[str]] = []
    smtp_sink.on_message = lambda _, recipients: envelopes.append(recipients)
    request = email_request(
        to=[Recipient(role="signer", email="signer@example.com", name=name)],
        cc=[
            Recipient(role="am", email="am@example.com", name=name),
            Recipient(role="ops", email="ops@example.com", name="Ops Team"),
        ],
        reply_to=Recipient(role="rep", email="rep@example.com", name=name),
    )

    assert (await ActivityEnvironment().run(mail.send_email, request)).status == "sent"

    (message,) = smtp_sink.messages  # parsed by the sink with email.policy.default, as a mail client reads it
    written = {h: [(a.display_name, a.addr_spec) for a in message[h].addresses] for h in ("To", "Cc", "Reply-To")}
    shown = display_name(name)
    assert written == {
        "To": [(shown, "signer@example.com")],
        "Cc": [(shown, "am@example.com"), ("Ops Team", "ops@example.com")],
        "Reply-To": [(shown, "rep@example.com")],
    }
    assert [a.addr_spec for a in message["From"].addresses] == ["sopflow@example.com"]
    assert envelopes == [["signer@example.com", "am@example.com", "ops@example.com"]]
    assert "=?" not in shown and not any(c in shown for c in "\r\n\x0b\x0c\u202e")


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("Client Signer", "Client Signer"),
        ("Casey\r\nSigner", "Casey Signer"),
        ("Casey\x0bSigner\x0c", "Casey Signer"),
        ("Zoë\u202e Núñez", "Zoë Núñez"),
        ("=?utf-8?b?ZXZlQGV2aWwuZXhhbXBsZSw=?=", "= ?utf-8?b?ZXZlQGV2aWwuZXhhbXBsZSw= ?="),
        ("==??", "== ??"),
        ("=\x00?utf-8?q?x?=", "= ?utf-8?q?x?="),
        ("a" * 99 + " b", "a" * 99),
        (None, ""),
    ],
)
def test_display_names_are_one_line_without_encoded_words_and_bounded(name: str | None, shown: str) -> None:
    assert display_name(name) == shown
    assert len(display_name("x" * 1000)) == MAX_DISPLAY_NAME


# Fragments of hostile names: encoded-word parts, address specials, controls, bidi, non-ASCII, whole addresses.
NAME_PIECES = st.sampled_from(
    [
        *("=?", "?=", "utf-8", "?b?", "?q?", "ZXZlQGV2aWwuZXhhbXBsZSw=", "=40", "=2C"),
        *('"', "\\", "(", ")", "<", ">", "@", ",", ";", ":", ".", "[", "]", " ", "\t", "\r\n", "\x0b", "\x00"),
        *("\x1b", "\u202e", "é", "東", "😀", "eve@evil.example", "Name", "a" * 40),
        *("=?utf-8?b?ZXZlQGV2aWwuZXhhbXBsZSw=?=", "=?utf-8?q?eve=40evil.example=2C?="),
    ]
)
NAMES = st.lists(NAME_PIECES, max_size=30).map("".join)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(to=st.lists(NAMES, min_size=1, max_size=3), cc=st.lists(NAMES, max_size=3), reply_to=NAMES, sender=NAMES)
def test_whatever_the_names_the_headers_hold_exactly_the_intended_addresses(
    to: list[str], cc: list[str], reply_to: str, sender: str
) -> None:
    def people(role: str, names: list[str]) -> list[Recipient]:
        return [Recipient(role=role, email=f"{role}{i}@example.com", name=n) for i, n in enumerate(names)]

    request = EmailRequest(
        key="deal-D-9/3/enter-welcome-0",
        workflow_id="deal-D-9",
        deal_id="D-9",
        playbook="demo",
        template="welcome",
        at="2026-01-05T10:00:00Z",  # type: ignore[arg-type]
        to=people("to", to),
        cc=people("cc", cc),
        reply_to=Recipient(role="rep", email="rep@example.com", name=reply_to),
    )
    mail_from = str(Address(display_name=display_name(sender), addr_spec="sopflow@example.com"))

    outgoing = build_message(request, Rendered("Welcome", "Hi", "<p>Hi</p>"), "<k@example.com>", mail_from)

    parsed = message_from_bytes(outgoing.data, policy=email.policy.default)
    intended = {
        "From": [(sender, "sopflow@example.com")],
        "To": [(n, f"to{i}@example.com") for i, n in enumerate(to)],
        "Cc": [(n, f"cc{i}@example.com") for i, n in enumerate(cc)],
        "Reply-To": [(reply_to, "rep@example.com")],
    }
    for header, people_ in intended.items():
        written = [(a.display_name, a.addr_spec) for a in parsed[header].addresses] if header in parsed else []
        assert [address for _, address in written] == [address for _, address in people_]
        # Names as display_name() makes them, or (only if the library cannot write one faithfully) none at all.
        assert all(shown in (display_name(n), "") for (shown, _), (n, _) in zip(written, people_, strict=True))
    assert outgoing.sender == "sopflow@example.com"
    assert outgoing.recipients == [a for _, a in intended["To"] + intended["Cc"]]
    assert outgoing.data.isascii()


def test_names_the_email_library_cannot_write_faithfully_are_left_out_never_the_addresses() -> None:
    """Seven long names make the To line longer than 998 characters, so the library folds it, and Python 3.11's
    folder puts the comma before the last address inside an encoded word: written with its names, that address
    would vanish. The message goes to the same addresses without names (a fixed library would keep them all)."""
    emoji_and_comma, quoted, parenthesised = "😀" * 50 + ", =?x", '"' + "x" * 95, "(" + "a" * 93
    names = [quoted, parenthesised, quoted, emoji_and_comma, emoji_and_comma, "é, x", parenthesised]
    to = [Recipient(role="client", email=f"r{i}@example.com", name=name) for i, name in enumerate(names)]
    request = EmailRequest(
        key="deal-D-9/3/enter-welcome-0",
        workflow_id="deal-D-9",
        deal_id="D-9",
        playbook="demo",
        template="welcome",
        at="2026-01-05T10:00:00Z",  # type: ignore[arg-type]
        to=to,
    )

    outgoing = build_message(request, Rendered("Welcome", "Hi", "<p>Hi</p>"), "<k@example.com>", "sopflow@example.com")

    written = message_from_bytes(outgoing.data, policy=email.policy.default)["To"].addresses
    assert [a.addr_spec for a in written] == outgoing.recipients == [r.email for r in to]
    assert [a.display_name for a in written] in ([""] * len(to), [display_name(name) for name in names])
    if sys.version_info < (3, 12):
        assert [a.display_name for a in written] == [""] * len(to)


@pytest.mark.parametrize(
    ("mail_from", "reason"),
    [
        ("sopflow", "the From address (SOPFLOW_MAIL_FROM) is not one email address"),
        ("a@example.com, b@example.com", "the From address (SOPFLOW_MAIL_FROM) is not one email address"),
        (
            "sopflow <sopflow@example.com>\r\nBcc: eve@evil.example",
            "the From address (SOPFLOW_MAIL_FROM) is not one email address",
        ),
    ],
)
def test_a_from_address_that_is_not_one_address_makes_every_message_unbuildable(mail_from: str, reason: str) -> None:
    request = EmailRequest(
        key="deal-D-9/3/enter-welcome-0",
        workflow_id="deal-D-9",
        deal_id="D-9",
        playbook="demo",
        template="welcome",
        at="2026-01-05T10:00:00Z",  # type: ignore[arg-type]
        to=[Recipient(role="signer", email="signer@example.com")],
    )
    with pytest.raises(Unbuildable) as failure:
        build_message(request, Rendered("Welcome", "Hi", "<p>Hi</p>"), "<k@example.com>", mail_from)
    assert failure.value.reason == reason and failure.value.addresses == []


# --- attachments come from the playbook's attachments folder only ---------------------------------------------------


@pytest.mark.parametrize("file", ["../../../secret.txt", "{tmp}/secret.txt", "Brochure.pdf"])
async def test_an_attachment_outside_its_folder_is_never_mailed_even_when_a_running_playbook_names_it(
    mail: EmailActivities,
    email_request: Callable[..., EmailRequest],
    demo_templates: Path,
    db: Database,
    smtp_sink: MailSink,
    file: str,
) -> None:
    """A lifecycle started before validation refused such paths still names them: the worker refuses them too."""
    (demo_templates.parent / "secret.txt").write_text("not for clients")
    (demo_templates / "demo" / "attachments" / "Brochure.pdf").symlink_to(demo_templates.parent / "secret.txt")
    file = file.format(tmp=demo_templates.parent)

    with pytest.raises(ApplicationError) as failure:
        await ActivityEnvironment().run(mail.send_email, email_request(attachments=["Roster.xlsx", file]))

    reason = f"email demo/welcome cannot be built: attachment {file!r} is outside templates/demo/attachments/"
    assert failure.value.type == MESSAGE_UNBUILDABLE and failure.value.non_retryable
    assert failure.value.message == reason
    assert smtp_sink.messages == []
    (row,) = outbox(db)
    assert row.status == "failed" and row.error == reason


class AttachmentsReplacedAfterTheCheck(TemplateRenderer):
    """A deploy swaps the attachments folder between the path check and the read."""

    def attachment_path(self, playbook: str, name: str) -> Path:
        path = super().attachment_path(playbook, name)
        path.unlink()
        return path


async def test_an_attachment_that_cannot_be_read_fails_the_email_for_good(
    email_request: Callable[..., EmailRequest], demo_templates: Path, db: Database, smtp_sink: MailSink
) -> None:
    smtp = SmtpConfig(host=smtp_sink.host, port=smtp_sink.port, mail_from="sopflow@example.com")
    mail = EmailActivities(db, AttachmentsReplacedAfterTheCheck(demo_templates), smtp, "http://127.0.0.1:8000")

    with pytest.raises(ApplicationError) as failure:
        await ActivityEnvironment().run(mail.send_email, email_request(attachments=["Roster.xlsx"]))

    assert failure.value.type == MESSAGE_UNBUILDABLE and failure.value.non_retryable
    reason = "email demo/welcome cannot be built: attachment 'Roster.xlsx' cannot be read (FileNotFoundError)"
    assert failure.value.message == reason
    assert smtp_sink.messages == [] and [r.status for r in outbox(db)] == ["failed"]
