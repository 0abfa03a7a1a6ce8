"""SMTP connections kept open between emails: a worker sends every email of every client over a few connections.

A new connection costs a TCP (and with STARTTLS or implicit TLS a TLS) handshake, the greeting, EHLO and a login:
more round trips and CPU than the message itself (`bench/RESULTS.md`). So a connection that delivered a message is
kept for the next one, on the same event loop, while it is younger than SMTP_IDLE_MAX since its last message and
has carried fewer than SMTP_MESSAGES_PER_CONNECTION (relays limit messages per connection). Senders that find no idle
connection open one of their own, so concurrent sends never queue behind each other; at most SMTP_POOL_SIZE
connections stay open afterwards.

Only a connection that completed its transaction goes back: any error, a refusal included, and any cancellation (the
send deadline) closes it, so no half-finished envelope or unread answer is ever handed to the next email.

A kept connection may have been closed by the server meanwhile without us noticing yet. When a reused connection
fails as disconnected, the message is sent once more on a new connection, at once: the same as Temporal's retry of
the attempt would do, without waiting for its backoff. Like that retry, it can repeat a message whose last answer
was lost with the connection, which is why every message carries its step's Message-ID (activities/email.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import aiosmtplib

from sopflow.constants import SMTP_IDLE_MAX, SMTP_MESSAGES_PER_CONNECTION, SMTP_POOL_SIZE


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    mail_from: str
    username: str | None = None
    password: str | None = None
    tls: Literal["none", "starttls", "implicit"] = "none"
    timeout: float = 20.0


@dataclass
class _Connection:
    client: aiosmtplib.SMTP
    loop: asyncio.AbstractEventLoop
    messages: int = 0
    last_used: float = field(default_factory=time.monotonic)


class SmtpPool:
    """Reusable connections to one relay. Not thread-safe: one worker's activities share it on their event loop."""

    def __init__(
        self,
        config: SmtpConfig,
        size: int = SMTP_POOL_SIZE,
        idle_max: float = SMTP_IDLE_MAX.total_seconds(),
        messages_per_connection: int = SMTP_MESSAGES_PER_CONNECTION,
    ) -> None:
        self.config = config
        self.size = size
        self.idle_max = idle_max
        self.messages_per_connection = messages_per_connection
        self._idle: list[_Connection] = []
        self.opened = 0  # connections opened so far: what the tests and the bench read

    async def sendmail(self, sender: str, recipients: Sequence[str], data: bytes) -> dict[str, aiosmtplib.SMTPResponse]:
        """One mail transaction; the recipients the server refused while accepting others. Raises as aiosmtplib
        does (SMTPRecipientsRefused when it accepted none, SMTPResponseException for a refused command, connection
        errors and timeouts)."""
        reused = self._take()
        if reused is not None:
            try:
                return await self._transact(reused, sender, recipients, data)
            except (aiosmtplib.SMTPServerDisconnected, ConnectionError):
                pass  # closed by the server while it sat idle: once more on a new connection
        return await self._transact(await self._open(), sender, recipients, data)

    def close(self) -> None:
        """Hang up every idle connection (the worker is stopping)."""
        for connection in self._idle:
            connection.client.close()
        self._idle.clear()

    async def _transact(
        self, connection: _Connection, sender: str, recipients: Sequence[str], data: bytes
    ) -> dict[str, aiosmtplib.SMTPResponse]:
        try:
            refusals, _ = await connection.client.sendmail(sender, list(recipients), data)
        except BaseException:
            # Hung up with no QUIT: a slow server would hold us past the deadline waiting for its answer to QUIT.
            connection.client.close()
            raise
        connection.messages += 1
        connection.last_used = time.monotonic()
        self._give_back(connection)
        return dict(refusals)

    def _take(self) -> _Connection | None:
        """The most recently used live connection of this event loop; stale ones are closed on the way."""
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if (
                connection.loop is loop
                and connection.client.is_connected
                and now - connection.last_used < self.idle_max
            ):
                return connection
            if not connection.loop.is_closed():
                connection.client.close()
        return None

    def _give_back(self, connection: _Connection) -> None:
        if connection.messages >= self.messages_per_connection or len(self._idle) >= self.size:
            connection.client.close()
        else:
            self._idle.append(connection)

    async def _open(self) -> _Connection:
        config = self.config
        client = aiosmtplib.SMTP(
            hostname=config.host,
            port=config.port,
            username=config.username,
            password=config.password,
            use_tls=config.tls == "implicit",
            start_tls=config.tls == "starttls",
            timeout=config.timeout,
        )
        try:
            await client.connect()
        except BaseException:
            client.close()
            raise
        self.opened += 1
        return _Connection(client, asyncio.get_running_loop())
