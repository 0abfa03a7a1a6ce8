"""`send_email`: render a template and deliver it once per step, whatever retries and crashes happen.

Once-only rests on four things: an outbox row keyed by the step's idempotency key (workflow id + step number,
stable across retries and continue-as-new, never the run id), a status that moves pending -> sent | partial |
failed, a Message-ID derived from the key, and a claim. A step whose row says sent is never sent again.

The claim is a lease on the row: a random token and an expiry, taken by one conditional UPDATE (`status = pending`
and no live lease) right before the SMTP conversation, given back when the attempt fails. Two attempts of one step
really do run at once with several workers: Temporal starts a retry when an attempt outlives its timeout (a slow
relay, a stalled worker), and the first attempt may still be talking to the relay. Only the lease holder sends;
the other raises a retryable `EmailInFlight` that retries when the lease would end. A SIGKILLed holder gives
nothing back: its lease simply expires. The conversation is bounded by EMAIL_SEND_DEADLINE, shorter than the
lease, so a living holder is done before anyone else may claim. Why a lease and not a row lock (`SELECT … FOR
UPDATE` held while sending): a lock pins a pooled connection and an open transaction for a whole SMTP conversation,
on SQLite it would block every other writer, and a database restart releases it while the SMTP conversation goes
on anyway; the lease needs no open transaction and works the same on both databases.

Address headers (From, To, Cc, Reply-To) are written from `email.headerregistry.Address` objects, never formatted
as text, and the SMTP envelope comes from the same objects, never from reading the headers back. A person's name is
data someone typed: it is made one line, loses any encoded-word opener and is quoted by the library, and the
written headers are parsed back and compared before sending, so no name can become another address.

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
import contextlib
import email.policy
import functools
import hashlib
import mimetypes
import re
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.headerregistry import Address, AddressHeader, HeaderRegistry
from email.message import EmailMessage
from email.utils import formatdate
from typing import Literal

import aiosmtplib
from sqlalchemy import or_, select, update
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import classified
from activities.smtp import SmtpConfig, SmtpPool
from sopflow.constants import EMAIL_CLAIM_LEASE, EMAIL_SEND_DEADLINE
from sopflow.db import Database, OutboxEmail, fitted, upsert
from sopflow.errors import EMAIL_IN_FLIGHT, MESSAGE_UNBUILDABLE, RECIPIENT_REFUSED, SMTP_REJECTED, TEMPLATE_ERROR
from sopflow.models import EmailRequest, EmailResult
from sopflow.playbook_checks import AttachmentRefused
from sopflow.telemetry import EMAIL_ATTEMPTS, count
from sopflow.templates import Rendered, RenderError, TemplateRenderer, links_for, one_line


def message_id_for(key: str, mail_from: str) -> str:
    domain = mail_from.rsplit("@", 1)[-1].strip(" >") or "sopflow.invalid"
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:40]}@{domain}>"


# ApplicationError types as the outcome label of the attempts counter.
_OUTCOMES = {
    TEMPLATE_ERROR: "template_error",
    RECIPIENT_REFUSED: "refused",
    SMTP_REJECTED: "smtp_rejected",
    MESSAGE_UNBUILDABLE: "unbuildable",
    EMAIL_IN_FLIGHT: "in_flight",
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
        "send_email attempts by outcome (sent, partial, already_sent, temporary_error, in_flight, refused, "
        "smtp_rejected, template_error, unbuildable)",
        {"playbook": req.playbook, "template": req.template, "outcome": outcome},
    )


class Unbuildable(Exception):
    """Why a message cannot be built, in words that name no person: the reason reaches the outbox, the timeline and
    the worker's log (the SDK logs a failed activity's message). `addresses` and `roles` say which recipients are at
    fault, if any; they travel in the ApplicationError's details, which are not logged."""

    def __init__(self, reason: str, addresses: Sequence[str] = (), roles: Sequence[str] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.addresses = list(addresses)
        self.roles = list(roles)


@contextmanager
def _building(part: str) -> Iterator[None]:
    """Any failure while building `part` makes the message Unbuildable, described by the part and the error's type
    only: the email library's messages can quote the value at fault, a name or an address."""
    try:
        yield
    except Unbuildable:
        raise
    except Exception as exc:
        raise Unbuildable(f"{part} ({type(exc).__name__})") from None


# How messages are written. Header lines may be as long as RFC 5322 allows (998), so a header is never folded:
# folding is where Python 3.11's email library goes wrong (a long quoted name loses its escapes, a comma between
# addresses ends up inside the next name's encoded word). Bodies that are not ASCII are quoted-printable or base64,
# so the bytes are 7-bit and any server takes them, whether or not it announces 8BITMIME.
WIRE_POLICY = email.policy.SMTP.clone(max_line_length=998, cte_type="7bit")
# No one's name is longer; a longer one is cut, so that even several recipients fit one header line.
MAX_DISPLAY_NAME = 100


def display_name(name: str | None) -> str:
    """A person's name as an address header may carry it: one line (no controls, no bidi, see `one_line`), no
    encoded-word opener, at most MAX_DISPLAY_NAME characters. The email library quotes whatever else it holds.

    `=?` is broken up ("= ?") because the library decodes an encoded word (`=?utf-8?b?...?=`) before it quotes, and
    writes what it hides unquoted: a second address in To or Reply-To. Field validation refuses such names, but a
    lifecycle lives for years on data it accepted before, so this never relies on it."""
    return one_line(name or "").replace("=?", "= ?")[:MAX_DISPLAY_NAME].rstrip()


def mailbox(address: str, name: str | None, what: str, role: str | None = None) -> Address:
    """One address for a header and the envelope; Unbuildable, naming `what` ("the To address of role 'signer'"),
    when it is not exactly one plain ASCII address (the SMTP envelope and the 7-bit headers can carry no other)."""
    faulty = ([address], [role]) if role else ([], [])
    if not address.isascii():
        raise Unbuildable(f"{what} is not an ASCII email address", *faulty)
    try:
        parsed = Address(display_name=display_name(name), addr_spec=address)
    except Exception:  # the library raises ValueError, IndexError or a HeaderParseError, with the value in it
        raise Unbuildable(f"{what} is not an email address", *faulty) from None
    if not (parsed.username and parsed.domain):
        raise Unbuildable(f"{what} is not an email address", *faulty)
    return parsed


# A name made of these alone is written unencoded, at most quoted, and parses back the same (a property test checks
# it), so a message whose names are all like this needs no read-back: its headers are written once.
_PLAIN_NAME = re.compile(r"([A-Za-z0-9.'-]+( [A-Za-z0-9.'-]+)*)?")  # words one space apart
# ... as long as no header line comes near the length at which the library folds it.
_UNFOLDED = 900


def plain(headers: dict[str, list[Address]]) -> bool:
    """Whether these headers need no read-back: only plain names, on lines too short to be folded."""
    return all(
        sum(len(a.display_name) + len(a.addr_spec) + 6 for a in addresses) < _UNFOLDED
        and all(_PLAIN_NAME.fullmatch(a.display_name) for a in addresses)
        for addresses in headers.values()
    )


def reads_back(headers: dict[str, list[Address]]) -> bool:
    """Whether the headers, written as they will be sent and parsed the way a mail client parses them, hold exactly
    these addresses with these names."""
    probe = EmailMessage(policy=WIRE_POLICY)
    for header, addresses in headers.items():
        probe[header] = addresses
    parsed = message_from_bytes(probe.as_bytes(), policy=email.policy.default)
    for header, addresses in headers.items():
        written = parsed[header].addresses if header in parsed else ()
        if [(a.display_name, a.addr_spec) for a in written] != [(a.display_name, a.addr_spec) for a in addresses]:
            return False
    return True


@dataclass(frozen=True)
class Outgoing:
    """A message ready for SMTP: its bytes, and the envelope taken from the same Address objects as its headers."""

    data: bytes
    sender: str
    recipients: list[str]


@functools.lru_cache(maxsize=8)
def configured_sender(mail_from: str) -> Address:
    """SOPFLOW_MAIL_FROM as the From address, parsed once per worker (it is the same for every message)."""
    with _building("the From address (SOPFLOW_MAIL_FROM)"):
        configured = HeaderRegistry()("From", mail_from)
        # The parser is lenient (it skips what it cannot read): anything it had to skip is refused too.
        if not isinstance(configured, AddressHeader) or configured.defects or len(configured.addresses) != 1:
            raise Unbuildable("the From address (SOPFLOW_MAIL_FROM) is not one email address")
        (address,) = configured.addresses
        return mailbox(address.addr_spec, address.display_name, "the From address (SOPFLOW_MAIL_FROM)")


def build_message(
    req: EmailRequest,
    rendered: Rendered,
    message_id: str,
    mail_from: str,
    attachments: Sequence[tuple[str, bytes]] = (),
) -> Outgoing:
    """The message for `req`, or Unbuildable naming the part that cannot be built (never its value).

    Deterministic: the same request builds the same bytes on every attempt, or fails the same way."""
    sender = configured_sender(mail_from)
    headers = {
        "From": [sender],
        "To": [mailbox(r.email, r.name, f"the To address of role '{r.role}'", r.role) for r in req.to],
    }
    if req.cc:
        headers["Cc"] = [mailbox(r.email, r.name, f"the Cc address of role '{r.role}'", r.role) for r in req.cc]
    if req.reply_to is not None:
        role = req.reply_to.role
        headers["Reply-To"] = [mailbox(req.reply_to.email, req.reply_to.name, f"the Reply-To of role '{role}'", role)]
    with _building("the address headers"):
        if not plain(headers) and not reads_back(headers):
            # Only a name the library cannot write faithfully gets here: send to the same addresses without names.
            headers = {h: [Address(addr_spec=a.addr_spec) for a in addresses] for h, addresses in headers.items()}
            if not reads_back(headers):
                raise Unbuildable("the address headers do not read back as written")
    message = EmailMessage(policy=WIRE_POLICY)
    with _building("the headers"):
        for header, addresses in headers.items():
            message[header] = addresses
        message["Subject"] = rendered.subject
        message["Message-ID"] = message_id
        message["Date"] = formatdate(req.at.timestamp(), usegmt=True)
        message["X-Sopflow-Key"] = req.key
        message["X-Sopflow-Template"] = f"{req.playbook}/{req.template}"
    with _building("the text body"):
        message.set_content(rendered.text)
    with _building("the HTML body"):
        message.add_alternative(rendered.html, subtype="html")
    for name, content in attachments:
        with _building(f"attachment '{name}'"):
            maintype, _, subtype = (mimetypes.guess_type(name)[0] or "application/octet-stream").partition("/")
            message.add_attachment(content, maintype=maintype, subtype=subtype, filename=name)
    with _building("the message"):
        data = message.as_bytes()
    recipients = [a.addr_spec for a in headers["To"] + headers.get("Cc", [])]
    return Outgoing(data=data, sender=sender.addr_spec, recipients=recipients)


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
        self.connections = SmtpPool(smtp)
        self.public_url = public_url.rstrip("/")
        self.form_secret = form_secret or None

    @activity.defn
    async def send_email(self, req: EmailRequest) -> EmailResult:
        """Deliver the step's email once; every attempt is logged and counted by its outcome (never an address)."""
        try:
            result = await self._send(req)
        except ApplicationError as exc:
            _attempted(req, _OUTCOMES.get(exc.type or "", "error"), exc.type)
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
            return self._earlier(row, message_id)
        # Any form id links (the request names the playbook, not its forms); `playbook validate` checks the ids.
        context = {**req.context, "links": links_for(self.public_url, req.deal_id, self.form_secret)}
        try:
            rendered = self.renderer.render(req.playbook, req.template, context)
        except RenderError as exc:
            reason = f"template {req.playbook}/{req.template} ({exc.part}): {exc.message}"
            await asyncio.to_thread(self._finish, req.key, "failed", reason)
            raise ApplicationError(reason, type=TEMPLATE_ERROR, non_retryable=True) from exc
        try:
            outgoing = await asyncio.to_thread(self._build, req, rendered, message_id)
        except Unbuildable as exc:
            # Deterministic: the same request fails the same way on every attempt, so it is never retried.
            reason = f"email {req.playbook}/{req.template} cannot be built: {exc.reason}"
            await asyncio.to_thread(self._finish, req.key, "failed", reason, rendered)
            raise ApplicationError(
                reason, exc.addresses, exc.roles, type=MESSAGE_UNBUILDABLE, non_retryable=True
            ) from None
        token = uuid.uuid4().hex
        holder = await asyncio.to_thread(self._claim, req.key, token, rendered)
        if holder is not None:
            return self._earlier(holder, message_id)
        try:
            refused_now = sorted(await self._converse(req, outgoing))
            status: Literal["sent", "partial"] = "partial" if refused_now else "sent"
            await asyncio.to_thread(self._finish, req.key, status, ", ".join(refused_now) or None)
        except BaseException as exc:
            # Temporary: the retry may claim at once. (A failed `_finish` after the server's 250 means the retry sends
            # again, with the same Message-ID, whether now or when the lease would have ended.)
            if not (isinstance(exc, ApplicationError) and exc.non_retryable):
                with contextlib.suppress(Exception):  # unreleased, the lease still expires
                    await asyncio.to_thread(self._release, req.key, token)
            raise
        return EmailResult(status=status, subject=rendered.subject, message_id=message_id, refused=refused_now)

    async def _converse(self, req: EmailRequest, outgoing: Outgoing) -> dict[str, aiosmtplib.SMTPResponse]:
        """The SMTP conversation, over by EMAIL_SEND_DEADLINE; the recipients the server refused (when others were
        accepted). Permanent refusals are recorded and raised as non-retryable; the rest is raised as it is."""
        try:
            async with asyncio.timeout(EMAIL_SEND_DEADLINE.total_seconds()):
                return await self.connections.sendmail(outgoing.sender, outgoing.recipients, outgoing.data)
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

    @staticmethod
    def _earlier(row: OutboxEmail, message_id: str) -> EmailResult:
        """What an attempt reports when another attempt of its step got there first: that attempt's result if it
        has sent, else a retryable EmailInFlight timed for when its lease ends."""
        if row.status in ("sent", "partial"):
            earlier = row.error.split(", ") if row.status == "partial" and row.error else []
            return EmailResult(status="already_sent", subject=row.subject, message_id=message_id, refused=earlier)
        now = datetime.now(UTC)
        until = row.claimed_until or now
        until = until if until.tzinfo else until.replace(tzinfo=UTC)  # SQLite gives back naive UTC
        wait = min(max(until - now, timedelta(seconds=1)), EMAIL_CLAIM_LEASE)
        raise ApplicationError(
            f"another attempt is sending this email ({row.status}); retrying when its claim ends",
            type=EMAIL_IN_FLIGHT,
            next_retry_delay=wait + timedelta(seconds=1),
        )

    def _build(self, req: EmailRequest, rendered: Rendered, message_id: str) -> Outgoing:
        """Read the attachments and build the message (in a thread: both block)."""
        attachments: list[tuple[str, bytes]] = []
        for name in req.attachments:
            try:
                path = self.renderer.attachment_path(req.playbook, name)
            except AttachmentRefused as refused:  # outside the attachments folder, or not a file there
                raise Unbuildable(f"attachment {refused}") from None
            with _building(f"attachment '{name}' cannot be read"):
                attachments.append((name, path.read_bytes()))
        return build_message(req, rendered, message_id, self.smtp.mail_from, attachments)

    def _begin(self, req: EmailRequest, message_id: str) -> OutboxEmail:
        """Find or create the step's outbox row and count the attempt, in one statement (`INSERT … ON CONFLICT DO
        UPDATE … RETURNING`: attempts of one step may meet, and either way each counts once)."""
        with classified("the outbox row"), self.db.session() as session:
            row = {
                "key": req.key,
                "workflow_id": req.workflow_id,
                "deal_id": req.deal_id,
                "playbook": req.playbook,
                "template": req.template,
                "to": ", ".join(r.email for r in req.to),
                "cc": ", ".join(r.email for r in req.cc),
                "attachments": ", ".join(req.attachments),
                "message_id": message_id,
                "status": "pending",
                "attempts": 1,
                "scheduled_at": req.at,
            }
            found = session.scalars(
                upsert(session, OutboxEmail, row, ["key"], on_conflict={"attempts": OutboxEmail.attempts + 1})
            )
            begun = found.one()
            session.commit()
            return begun

    def _claim(self, key: str, token: str, rendered: Rendered) -> OutboxEmail | None:
        """Take the step's lease if it is pending and no live lease holds it, storing what is about to be sent: None
        when taken, else the row as it is (sent by an earlier attempt, or claimed by one that may be sending now)."""
        with classified("the outbox claim"), self.db.session() as session:
            now = datetime.now(UTC)
            claimable = or_(OutboxEmail.claimed_until.is_(None), OutboxEmail.claimed_until < now)
            taken = session.execute(
                update(OutboxEmail)
                .where(OutboxEmail.key == key, OutboxEmail.status == "pending", claimable)
                .values(claim_token=token, claimed_until=now + EMAIL_CLAIM_LEASE, **_stored(rendered))
            )
            session.commit()
            if taken.rowcount:  # type: ignore[attr-defined]
                return None
            return session.scalars(select(OutboxEmail).where(OutboxEmail.key == key)).one()

    def _release(self, key: str, token: str) -> None:
        """Give the lease back after a failed attempt, so the retry need not wait for it to expire."""
        with self.db.session() as session:
            session.execute(
                update(OutboxEmail)
                .where(OutboxEmail.key == key, OutboxEmail.claim_token == token)
                .values(claim_token=None, claimed_until=None)
            )
            session.commit()

    def _finish(self, key: str, status: str, error: str | None, rendered: Rendered | None = None) -> None:
        """The step's outcome; `rendered` when the message failed before its claim stored it (it cannot be built)."""
        values: dict[str, object] = {"status": status, "error": error, "claim_token": None, "claimed_until": None}
        if status in ("sent", "partial"):
            values["sent_at"] = datetime.now(UTC)
        if rendered is not None:
            values.update(_stored(rendered))
        with classified("the outbox result"), self.db.session() as session:
            session.execute(update(OutboxEmail).where(OutboxEmail.key == key).values(**fitted(OutboxEmail, values)))
            session.commit()


def _stored(rendered: Rendered) -> dict[str, str]:
    """The outbox columns that show what a step sent (or would have sent)."""
    return {"subject": rendered.subject, "body_text": rendered.text, "body_html": rendered.html}
