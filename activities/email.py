"""`send_email`: render a template and deliver it once per step, whatever retries and crashes happen.

Once-only rests on three things: an outbox row keyed by the step's idempotency key (workflow id + step, never the
run id), a status that moves pending -> sent, and a Message-ID derived from the key. The one window left is a crash
after the SMTP server accepted the message but before the outbox row says `sent`: the retry sends again, with the
same Message-ID, so a receiving server (and the dev sink) can recognise the duplicate.
"""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formataddr, formatdate
from typing import Literal

import aiosmtplib
import jinja2
from sqlalchemy import select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from sopflow.db import Database, OutboxEmail
from sopflow.models import EmailRequest, EmailResult, Recipient
from sopflow.templates import Rendered, TemplateRenderer


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    mail_from: str
    username: str | None = None
    password: str | None = None
    tls: Literal["none", "starttls", "implicit"] = "none"
    timeout: float = 20.0


def message_id_for(key: str, mail_from: str) -> str:
    domain = mail_from.rsplit("@", 1)[-1].strip(" >") or "sopflow.invalid"
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:40]}@{domain}>"


def _address(recipient: Recipient) -> str:
    return formataddr((recipient.name or "", recipient.email))


class EmailActivities:
    def __init__(self, db: Database, renderer: TemplateRenderer, smtp: SmtpConfig, public_url: str) -> None:
        self.db = db
        self.renderer = renderer
        self.smtp = smtp
        self.public_url = public_url.rstrip("/")

    @activity.defn
    async def send_email(self, req: EmailRequest) -> EmailResult:
        message_id = message_id_for(req.key, self.smtp.mail_from)
        existing = await asyncio.to_thread(self._outbox_row, req, message_id)
        if existing.status == "sent":
            return EmailResult(status="already_sent", subject=existing.subject, message_id=message_id)
        context = {**req.context, "links": self._links(req)}
        try:
            rendered = self.renderer.render(req.playbook, req.template, context)
        except jinja2.TemplateError as exc:
            await asyncio.to_thread(self._mark, req.key, "failed", f"template error: {exc}")
            raise ApplicationError(
                f"template {req.playbook}/{req.template}: {exc}", type="TemplateError", non_retryable=True
            ) from exc
        message = self._message(req, rendered, message_id)
        try:
            await aiosmtplib.send(
                message,
                hostname=self.smtp.host,
                port=self.smtp.port,
                username=self.smtp.username,
                password=self.smtp.password,
                use_tls=self.smtp.tls == "implicit",
                start_tls=self.smtp.tls == "starttls",
                timeout=self.smtp.timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            if all(code >= 500 for code in codes):
                await asyncio.to_thread(self._mark, req.key, "failed", str(exc))
                raise ApplicationError(
                    f"recipients refused: {exc}", type="RecipientRefused", non_retryable=True
                ) from exc
            raise
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code >= 500:
                await asyncio.to_thread(self._mark, req.key, "failed", f"{exc.code} {exc.message}")
                raise ApplicationError(
                    f"SMTP {exc.code}: {exc.message}", type="SmtpRejected", non_retryable=True
                ) from exc
            raise
        await asyncio.to_thread(self._mark, req.key, "sent", None, rendered.subject)
        return EmailResult(status="sent", subject=rendered.subject, message_id=message_id)

    def _links(self, req: EmailRequest) -> dict[str, str]:
        base = f"{self.public_url}/forms/{req.deal_id}"
        return {"forms": base, "status": f"{self.public_url}/deals/{req.deal_id}"}

    def _message(self, req: EmailRequest, rendered: Rendered, message_id: str) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.smtp.mail_from
        message["To"] = ", ".join(_address(r) for r in req.to)
        if req.cc:
            message["Cc"] = ", ".join(_address(r) for r in req.cc)
        if req.reply_to is not None:
            message["Reply-To"] = _address(req.reply_to)
        message["Subject"] = rendered.subject
        message["Message-ID"] = message_id
        message["Date"] = formatdate(req.at.timestamp(), usegmt=True)
        message["X-Sopflow-Key"] = req.key
        message["X-Sopflow-Template"] = f"{req.playbook}/{req.template}"
        message.set_content(rendered.text)
        message.add_alternative(rendered.html, subtype="html")
        for name in req.attachments:
            path = self.renderer.attachment_path(req.playbook, name)
            maintype, _, subtype = (mimetypes.guess_type(name)[0] or "application/octet-stream").partition("/")
            message.add_attachment(path.read_bytes(), maintype=maintype, subtype=subtype, filename=name)
        return message

    def _outbox_row(self, req: EmailRequest, message_id: str) -> OutboxEmail:
        with self.db.session() as session:
            row = session.scalar(select(OutboxEmail).where(OutboxEmail.key == req.key))
            if row is None:
                row = OutboxEmail(
                    key=req.key,
                    workflow_id=req.workflow_id,
                    deal_id=req.deal_id,
                    template=req.template,
                    to=", ".join(r.email for r in req.to + req.cc),
                    message_id=message_id,
                    status="pending",
                    scheduled_at=req.at,
                )
                session.add(row)
                session.commit()
            return row

    def _mark(self, key: str, status: str, error: str | None, subject: str | None = None) -> None:
        with self.db.session() as session:
            row = session.scalar(select(OutboxEmail).where(OutboxEmail.key == key))
            if row is None:
                return
            row.status, row.error = status, error
            if subject is not None:
                row.subject = subject
            if status == "sent":
                row.sent_at = datetime.now(UTC)
            session.commit()
