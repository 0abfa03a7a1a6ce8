"""The SMTP connections a worker keeps open between emails (activities/smtp.py), against a real SMTP server."""

from __future__ import annotations

import asyncio
import email.policy
import string
from collections.abc import Callable
from email import message_from_bytes
from email.headerregistry import Address

import aiosmtplib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from temporalio.testing import ActivityEnvironment

from activities.email import EmailActivities, build_message, plain, reads_back
from activities.smtp import SmtpConfig, SmtpPool
from sopflow.mailsink import MailSink
from sopflow.models import EmailRequest, Recipient
from sopflow.templates import Rendered


def message(n: int) -> bytes:
    headers = f"From: a@example.com\r\nTo: b@example.com\r\nMessage-ID: <{n}@example.com>\r\nSubject: {n}\r\n"
    return f"{headers}\r\nhi\r\n".encode()


def pool_for(sink: MailSink, **options: float) -> SmtpPool:
    return SmtpPool(SmtpConfig(host=sink.host, port=sink.port, mail_from="a@example.com"), **options)  # type: ignore[arg-type]


async def test_emails_in_a_row_share_one_connection() -> None:
    with MailSink() as sink:
        pool = pool_for(sink)
        for n in range(5):
            assert await pool.sendmail("a@example.com", ["b@example.com"], message(n)) == {}
        pool.close()
    assert len(sink.messages) == 5
    assert sink.connections == pool.opened == 1


async def test_concurrent_emails_each_get_a_connection_and_at_most_the_pool_size_stays_open() -> None:
    with MailSink() as sink:
        pool = pool_for(sink, size=2)
        await asyncio.gather(*(pool.sendmail("a@example.com", ["b@example.com"], message(n)) for n in range(5)))
        kept = len(pool._idle)
        await pool.sendmail("a@example.com", ["b@example.com"], message(5))
        pool.close()
    assert len(sink.messages) == 6 and sink.duplicates == 0
    assert sink.connections == 5  # the sixth email went over a kept one
    assert kept == 2


async def test_a_connection_the_server_hung_up_is_replaced_and_every_email_arrives_once() -> None:
    """Whether the client noticed the hang-up before the next email or only when writing to it, the email goes out
    on a new connection within the same attempt."""
    with MailSink(messages_per_connection=2) as sink:
        pool = pool_for(sink)
        for n in range(6):
            await pool.sendmail("a@example.com", ["b@example.com"], message(n))
        pool.close()
    assert len(sink.messages) == 6 and sink.duplicates == 0
    assert sink.connections == 3


async def test_connections_are_renewed_after_their_message_cap_or_idle_time() -> None:
    with MailSink() as sink:
        capped = pool_for(sink, messages_per_connection=2)
        for n in range(4):
            await capped.sendmail("a@example.com", ["b@example.com"], message(n))
        idle = pool_for(sink, idle_max=0.0)
        for n in range(4, 6):
            await idle.sendmail("a@example.com", ["b@example.com"], message(n))
    assert (capped.opened, idle.opened) == (2, 2)


async def test_a_refused_message_closes_its_connection_and_the_next_email_opens_another() -> None:
    with MailSink(reject_recipients={"nobody@example.com"}) as sink:
        pool = pool_for(sink)
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
            await pool.sendmail("a@example.com", ["nobody@example.com"], message(0))
        assert pool._idle == []
        await pool.sendmail("a@example.com", ["b@example.com"], message(1))
        pool.close()
    assert pool.opened == 2 and len(sink.messages) == 1


async def test_the_email_activity_sends_every_email_of_a_worker_over_one_connection(
    mail: EmailActivities, smtp_sink: MailSink, email_request: Callable[..., EmailRequest]
) -> None:
    env = ActivityEnvironment()
    for n in range(3):
        await env.run(mail.send_email, email_request(key=f"deal-D-9/{n}/enter-welcome-0"))
    assert len(smtp_sink.messages) == 3
    assert smtp_sink.connections == mail.connections.opened == 1


PLAIN_NAMES = st.text(alphabet=string.ascii_letters + string.digits + " .'-", max_size=100)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(names=st.lists(PLAIN_NAMES, min_size=1, max_size=12))
def test_plain_names_on_short_lines_read_back_as_written_so_they_are_written_once(names: list[str]) -> None:
    headers = {"To": [Address(display_name=n, addr_spec=f"r{i}@example.com") for i, n in enumerate(names)]}
    if plain(headers):
        assert reads_back(headers)


def test_a_name_with_specials_or_a_long_line_is_read_back() -> None:
    def to(*names: str) -> dict[str, list[Address]]:
        return {"To": [Address(display_name=n, addr_spec=f"r{i}@example.com") for i, n in enumerate(names)]}

    assert plain(to("Client Signer", "O'Neil-Smith Jr."))
    assert not plain(to('Casey "C" Signer'))
    assert not plain(to("Zoë"))
    assert not plain(to(*["a" * 100] * 9))


def test_a_plain_named_message_reads_back_with_its_names(
    email_request: Callable[..., EmailRequest],
) -> None:
    request = email_request(to=[Recipient(role="signer", email="signer@example.com", name="Client Signer")])
    outgoing = build_message(request, Rendered("Hi", "Hi", "<p>Hi</p>"), "<k@example.com>", "sopflow@example.com")
    parsed = message_from_bytes(outgoing.data, policy=email.policy.default)
    assert [(a.display_name, a.addr_spec) for a in parsed["To"].addresses] == [("Client Signer", "signer@example.com")]
