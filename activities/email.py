"""`send_email`: render a template and deliver it once per step, whatever retries and crashes happen.

Once-only rests on three things: an outbox row keyed by the step's idempotency key (workflow id + step number,
stable across retries and continue-as-new, never the run id), a status that moves pending -> sent | partial |
failed, and a Message-ID derived from the key. A step whose row says sent is never sent again.

What stays at-least-once: a crash (or a failed database commit) after the SMTP server answered 250 but before the
row says `sent`. The retry sends the message again, with the same Message-ID, so the receiving server, a mail
client's threading, and the dev sink recognise and drop the duplicate.

Failures are classified so that nothing gets stuck: connection errors, timeouts and 4xx answers raise and are
retried with backoff by Temporal; a template error, a message that cannot be built (an address that is no address,
an attachment that cannot be read) or a 5xx refusal is permanent, recorded in the outbox and raised as
non-retryable, and the workflow turns an undeliverable address into a task for the stage owner.
"""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formataddr, formatdate
from typing import Literal

import aiosmtplib
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from sopflow.db import Database, OutboxEmail
from sopflow.models import EmailRequest, EmailResult, Recipient
from sopflow.telemetry import EMAIL_ATTEMPTS, count
from sopflow.templates import Rendered, RenderError, TemplateRenderer, links_for


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


# The types of the non-retryable ApplicationErrors send_email raises (the workflow tells them apart by type).
TEMPLATE_ERROR = "TemplateError"
RECIPIENT_REFUSED = "RecipientRefused"
SMTP_REJECTED = "SmtpRejected"
# The message cannot be built from the request: an address that is no address, a header the email library refuses,
# an attachment that cannot be read. Retrying cannot help, and like a refused address a person must fix the data,
# so the details carry the recipient addresses at fault, as RecipientRefused's do (possibly none).
MESSAGE_UNBUILDABLE = "MessageUnbuildable"
# Non-retryable failures by ApplicationError type, as the outcome label of the attempts counter.
_PERMANENT = {
    TEMPLATE_ERROR: "template_error",
    RECIPIENT_REFUSED: "refused",
    SMTP_REJECTED: "smtp_rejected",
    MESSAGE_UNBUILDABLE: "unbuildable",
}


def _attempted(req: EmailRequest, outcome: str, error_type: str | None = None) -> None:
    """One log line and one count per attempt: deal, playbook, template, outcome (the activity logger adds the
    workflow id and attempt). Recipients are left out on purpose: addresses are personal data."""
    fields = {"deal_id": req.deal_id, "playbook": req.playbook, "template": req.template, "outcome": outcome}
    if outcome in ("sent", "partial", "already_sent"):
        activity.logger.info("email %s %s", req.template, outcome, extra=fields)
    else:
        activity.logger.warning("email %s %s", req.template, outcome, extra={**fields, "error_type": error_type})
    count(
        activity.metric_meter(),
        EMAIL_ATTEMPTS,
        "send_email attempts by outcome (sent, partial, already_sent, temporary_error, refused, smtp_rejected, "
        "template_error, unbuildable)",
        {"playbook": req.playbook, "template": req.template, "outcome": outcome},
    )


def _address(recipient: Recipient) -> str:
    return formataddr((recipient.name or "", recipient.email))


class Unbuildable(Exception):
    """Why a message cannot be built, in words that name no person: the reason reaches the outbox, the timeline and
    the worker's log (the SDK logs a failed activity's message). `faulty` lists the recipient addresses at fault,
    if any; it travels in the ApplicationError's details, which are not logged."""

    def __init__(self, reason: str, faulty: Sequence[str] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.faulty = list(faulty)


@contextmanager
def _building(part: str, faulty: Sequence[str] = ()) -> Iterator[None]:
    """Any failure while building `part` makes the message Unbuildable, described by the part and the error's type
    only: the email library's messages can quote the value at fault, a name or an address."""
    try:
        yield
    except Unbuildable:
        raise
    except Exception as exc:
        raise Unbuildable(f"{part} ({type(exc).__name__})", faulty) from None


class EmailActivities:
    def __init__(
        self,
        db: Database,
        renderer: TemplateRenderer,
        smtp: SmtpConfig,
        public_url: str,
        form_secret: str | None = None,
    ) -> None:
        """`form_secret` is the intake's SOPFLOW_FORM_SECRET: with it, `links.forms.<form>` in an email carries the
        per-form token, so the recipient can open and submit the form; without it the links have no token (and the
        intake, which has no secret either, refuses every form)."""
        self.db = db
        self.renderer = renderer
        self.smtp = smtp
        self.public_url = public_url.rstrip("/")
        self.form_secret = form_secret or None

    @activity.defn
    async def send_email(self, req: EmailRequest) -> EmailResult:
        """Deliver the step's email once; every attempt is logged and counted by its outcome (never an address)."""
        try:
            result = await self._send(req)
        except ApplicationError as exc:
            _attempted(req, _PERMANENT.get(exc.type or "", "error"), exc.type)
            raise
        except Exception as exc:  # connection errors, timeouts, 4xx: Temporal retries them
            _attempted(req, "temporary_error", type(exc).__name__)
            raise
        _attempted(req, result.status)
        return result

    async def _send(self, req: EmailRequest) -> EmailResult:
        message_id = message_id_for(req.key, self.smtp.mail_from)
        row = await asyncio.to_thread(self._begin, req, message_id)
        if row.status in ("sent", "partial"):
            earlier = row.error.split(", ") if row.status == "partial" and row.error else []
            return EmailResult(status="already_sent", subject=row.subject, message_id=message_id, refused=earlier)
        # Any form id links (the request names the playbook, not its forms); `playbook validate` checks the ids.
        context = {**req.context, "links": links_for(self.public_url, req.deal_id, self.form_secret)}
        try:
            rendered = self.renderer.render(req.playbook, req.template, context)
        except RenderError as exc:
            reason = f"template {req.playbook}/{req.template} ({exc.part}): {exc.message}"
            await asyncio.to_thread(self._finish, req.key, "failed", reason)
            raise ApplicationError(reason, type=TEMPLATE_ERROR, non_retryable=True) from exc
        await asyncio.to_thread(self._store_rendered, req.key, rendered)
        try:
            message = await asyncio.to_thread(self._message, req, rendered, message_id)
        except Unbuildable as exc:
            # Deterministic: the same request fails the same way on every attempt, so it is never retried.
            reason = f"email {req.playbook}/{req.template} cannot be built: {exc.reason}"
            await asyncio.to_thread(self._finish, req.key, "failed", reason)
            raise ApplicationError(reason, exc.faulty, type=MESSAGE_UNBUILDABLE, non_retryable=True) from None
        try:
            refusals, _ = await aiosmtplib.send(
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
            refused = {r.recipient: r for r in exc.recipients}
            if any(r.code < 500 for r in refused.values()):
                raise  # a temporary refusal: retry the whole message
            reason = "; ".join(f"{address}: {r.code} {r.message}" for address, r in refused.items())
            await asyncio.to_thread(self._finish, req.key, "failed", reason)
            raise ApplicationError(
                f"no recipient accepted the email: {reason}", list(refused), type=RECIPIENT_REFUSED, non_retryable=True
            ) from exc
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code < 500:
                raise
            reason = f"SMTP {exc.code} {exc.message}"
            await asyncio.to_thread(self._finish, req.key, "failed", reason)
            raise ApplicationError(reason, type=SMTP_REJECTED, non_retryable=True) from exc
        refused_now = sorted(refusals)
        status: Literal["sent", "partial"] = "partial" if refused_now else "sent"
        await asyncio.to_thread(self._finish, req.key, status, ", ".join(refused_now) or None)
        return EmailResult(status=status, subject=rendered.subject, message_id=message_id, refused=refused_now)

    def _message(self, req: EmailRequest, rendered: Rendered, message_id: str) -> EmailMessage:
        """The message to send; raise Unbuildable naming the part that cannot be built (never its value)."""
        message = EmailMessage()
        with _building("the From header (SOPFLOW_MAIL_FROM)"):
            message["From"] = self.smtp.mail_from
        with _building("the To header", [r.email for r in req.to]):
            message["To"] = ", ".join(_address(r) for r in req.to)
        if req.cc:
            with _building("the Cc header", [r.email for r in req.cc]):
                message["Cc"] = ", ".join(_address(r) for r in req.cc)
        if req.reply_to is not None:
            with _building("the Reply-To header"):
                message["Reply-To"] = _address(req.reply_to)
        with _building("the headers"):
            message["Subject"] = rendered.subject
            message["Message-ID"] = message_id
            message["Date"] = formatdate(req.at.timestamp(), usegmt=True)
            message["X-Sopflow-Key"] = req.key
            message["X-Sopflow-Template"] = f"{req.playbook}/{req.template}"
        with _building("the text body"):
            message.set_content(rendered.text)
        with _building("the HTML body"):
            message.add_alternative(rendered.html, subtype="html")
        for name in req.attachments:
            with _building(f"attachment '{name}' cannot be read"):
                path = self.renderer.attachment_path(req.playbook, name)
                maintype, _, subtype = (mimetypes.guess_type(name)[0] or "application/octet-stream").partition("/")
                message.add_attachment(path.read_bytes(), maintype=maintype, subtype=subtype, filename=name)
        with _building("the message"):
            message.as_bytes()  # what aiosmtplib will do: a header the library cannot fold fails here, not there
        return message

    def _begin(self, req: EmailRequest, message_id: str) -> OutboxEmail:
        """Find or create the step's outbox row (UNIQUE key) and count the attempt."""
        with self.db.session() as session:
            row = session.scalar(select(OutboxEmail).where(OutboxEmail.key == req.key))
            if row is None:
                row = OutboxEmail(
                    key=req.key,
                    workflow_id=req.workflow_id,
                    deal_id=req.deal_id,
                    playbook=req.playbook,
                    template=req.template,
                    to=", ".join(r.email for r in req.to),
                    cc=", ".join(r.email for r in req.cc),
                    attachments=", ".join(req.attachments),
                    message_id=message_id,
                    status="pending",
                    attempts=0,
                    scheduled_at=req.at,
                )
                session.add(row)
            row.attempts += 1
            try:
                session.commit()
            except IntegrityError:  # a concurrent attempt of the same step created it first
                session.rollback()
                return self._begin(req, message_id)
            return row

    def _store_rendered(self, key: str, rendered: Rendered) -> None:
        with self.db.session() as session:
            row = session.scalar(select(OutboxEmail).where(OutboxEmail.key == key))
            if row is not None:
                row.subject, row.body_text, row.body_html = rendered.subject, rendered.text, rendered.html
                session.commit()

    def _finish(self, key: str, status: str, error: str | None) -> None:
        with self.db.session() as session:
            row = session.scalar(select(OutboxEmail).where(OutboxEmail.key == key))
            if row is None:
                return
            row.status, row.error = status, error
            if status in ("sent", "partial"):
                row.sent_at = datetime.now(UTC)
            session.commit()
