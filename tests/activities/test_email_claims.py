"""One SMTP conversation per email step at a time, on SQLite and on the real PostgreSQL.

With several workers two attempts of one step really run at once: Temporal retries an attempt that outlived its
timeout while it may still be talking to the relay. The outbox row's lease lets one of them talk; these tests make
the overlap happen on purpose, with a sink that holds its answer until the test lets it go.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

import activities.email
from activities.email import EmailActivities
from sopflow.constants import EMAIL_CLAIM_LEASE
from sopflow.db import Database, OutboxEmail
from sopflow.errors import EMAIL_IN_FLIGHT
from sopflow.mailsink import MailSink
from sopflow.models import EmailRequest, EmailResult

Sink = tuple[MailSink, threading.Event]


def attempt(mail: EmailActivities, req: EmailRequest) -> asyncio.Task[EmailResult]:
    """One attempt of the activity, as a worker would run it, in the background."""
    return asyncio.create_task(ActivityEnvironment().run(mail.send_email, req))


def the_row(db: Database) -> OutboxEmail:
    with db.session() as session:
        return session.scalars(select(OutboxEmail)).one()


async def until_held(sink: MailSink) -> None:
    assert await asyncio.to_thread(sink.holding.wait, 60), "the first attempt never reached DATA"


async def test_a_retry_while_the_first_attempt_is_still_talking_to_the_relay_sends_nothing(
    mail_to: Callable[[MailSink], EmailActivities],
    held_sink: Sink,
    email_request: Callable[..., EmailRequest],
    records_db: Database,
):
    sink, gate = held_sink
    mail = mail_to(sink)
    first = attempt(mail, email_request())
    await until_held(sink)

    with pytest.raises(ApplicationError) as overlapping:
        await attempt(mail, email_request())
    gate.set()
    sent = await first
    afterwards = await attempt(mail, email_request())

    assert overlapping.value.type == EMAIL_IN_FLIGHT and not overlapping.value.non_retryable
    assert overlapping.value.next_retry_delay is not None
    assert timedelta(0) < overlapping.value.next_retry_delay <= EMAIL_CLAIM_LEASE + timedelta(seconds=1)
    assert sent.status == "sent" and afterwards.status == "already_sent"
    assert (len(sink.messages), sink.duplicates, sink.overlapping()) == (1, 0, [])
    row = the_row(records_db)
    assert (row.status, row.attempts, row.claim_token, row.claimed_until) == ("sent", 3, None, None)


async def test_the_lease_of_an_attempt_killed_mid_send_expires_and_the_next_attempt_sends(
    mail_to: Callable[[MailSink], EmailActivities],
    smtp_sink: MailSink,
    email_request: Callable[..., EmailRequest],
    records_db: Database,
):
    mail = mail_to(smtp_sink)
    with pytest.raises(ApplicationError) as live_lease:
        await with_a_dead_holder(mail, records_db, email_request(), expires_in=timedelta(minutes=1))
    assert live_lease.value.type == EMAIL_IN_FLIGHT and smtp_sink.messages == []

    result = await with_a_dead_holder(mail, records_db, email_request(), expires_in=timedelta(seconds=-1))

    assert result.status == "sent" and len(smtp_sink.messages) == 1


async def with_a_dead_holder(
    mail: EmailActivities, db: Database, req: EmailRequest, expires_in: timedelta
) -> EmailResult:
    """Attempt the step while a killed attempt's lease, ending `expires_in` from now, sits on its row."""
    mail._begin(req, "<m@example.com>")
    with db.session() as session:
        until = datetime.now(UTC) + expires_in
        session.execute(update(OutboxEmail).values(claim_token="killed-attempt", claimed_until=until))
        session.commit()
    return await attempt(mail, req)


async def test_an_attempt_that_fails_gives_its_claim_back_so_the_retry_need_not_wait(
    mail_to: Callable[[MailSink], EmailActivities],
    email_request: Callable[..., EmailRequest],
    records_db: Database,
):
    with MailSink(drop_connections=1) as sink:
        mail = mail_to(sink)
        with pytest.raises(Exception) as dropped:
            await attempt(mail, email_request())
        assert not isinstance(dropped.value, ApplicationError)  # temporary: Temporal retries it
        assert the_row(records_db).claim_token is None

        result = await attempt(mail, email_request())

    assert result.status == "sent" and len(sink.messages) == 1


async def test_a_conversation_past_its_deadline_hangs_up_and_frees_the_step(
    mail_to: Callable[[MailSink], EmailActivities],
    held_sink: Sink,
    email_request: Callable[..., EmailRequest],
    records_db: Database,
    monkeypatch: pytest.MonkeyPatch,
):
    sink, gate = held_sink
    monkeypatch.setattr(activities.email, "EMAIL_SEND_DEADLINE", timedelta(milliseconds=200))
    mail = mail_to(sink)

    with pytest.raises(TimeoutError):  # the relay never answers: the attempt gives up by its deadline
        await attempt(mail, email_request())
    row = the_row(records_db)

    assert (row.status, row.claim_token) == ("pending", None)
    gate.set()
