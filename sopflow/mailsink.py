"""A local SMTP server (aiosmtpd) that keeps what it receives: the dev stack's inbox, rehearsals' and tests' sink.

It drops a message whose Message-ID it already holds, as a careful receiving server would, but counts the
duplicate so tests can prove that retries never delivered the same step twice.

It can also misbehave on purpose, the way real mail servers do, so the email path is tested against real SMTP
failures rather than mocks: drop the first N connections, answer 451 to the first N messages, refuse recipients
with 550, answer slowly, hang up after N messages on a connection, or hold every message until the test lets it
through.

It notes when each message's conversation ran (from MAIL FROM to its answer, or to the client hanging up), so a test
can prove that no two conversations for one Message-ID ever ran at the same time (`overlapping`).
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
import threading
import time
from collections.abc import Callable
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

# The sink's own file names: a number, zero-padded so that a directory listing is in arrival order.
_STORED = re.compile(r"^(\d+)\.eml$")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class _Handler:
    def __init__(self, sink: MailSink) -> None:
        self.sink = sink

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]) -> str:
        session.sopflow_started = time.monotonic()
        self.sink.open_conversations.add(id(session))
        session.sopflow_slow = self.sink.slow_conversation()
        await self._answer_slowly(session)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:
        await self._answer_slowly(session)
        if address.lower() in self.sink.reject_recipients:
            return "550 5.1.1 Mailbox does not exist"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.sink.inject("deferred", self.sink.defer_messages) or self.sink.every("deferred", "messages"):
            return "451 4.3.0 Temporary failure, try again later"
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        try:
            await self._answer_slowly(session)
            if self.sink.hold is not None:
                self.sink.holding.set()
                await asyncio.to_thread(self.sink.hold.wait)
        finally:
            # The whole message arrived: it is delivered even if the client hung up before the answer (it then never
            # learns so, and a retry sends it again: the receiving end's duplicate).
            self.sink.receive(message, list(envelope.rcpt_tos))
            self.sink.conversed(str(message.get("Message-ID", "")), session.sopflow_started)
        session.sopflow_messages = getattr(session, "sopflow_messages", 0) + 1
        if self.sink.messages_per_connection and session.sopflow_messages >= self.sink.messages_per_connection:
            # After this answer (written before the next callback runs), as a relay that caps messages per connection.
            asyncio.get_running_loop().call_soon(server.transport.close)
        return "250 Message accepted for delivery"

    async def _answer_slowly(self, session: Any) -> None:
        if getattr(session, "sopflow_slow", False):
            await asyncio.sleep(self.sink.slow_seconds)


class _FlakySMTP(SMTP):
    """Drops a connection right after accepting it while the sink still has drops to make."""

    def __init__(self, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.sink = handler.sink

    def connection_lost(self, error: Exception | None) -> None:
        self.sink.open_conversations.discard(id(self.session))
        super().connection_lost(error)

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        if self.sink.armed:
            self.sink.connections += 1
        if self.sink.armed and (
            self.sink.inject("dropped", self.sink.drop_connections) or self.sink.every("dropped", "connections")
        ):
            transport.abort()


class _Controller(Controller):
    def factory(self) -> SMTP:
        return _FlakySMTP(self.handler, **self.SMTP_kwargs)


class MailSink:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        store_dir: Path | None = None,
        on_message: Callable[[EmailMessage, list[str]], None] | None = None,
        *,
        drop_connections: int = 0,
        defer_messages: int = 0,
        reject_recipients: set[str] | None = None,
        fail_every: int = 0,
        slow_every: int = 0,
        slow_seconds: float = 0.0,
        hold: threading.Event | None = None,
        seed: int | None = None,
        messages_per_connection: int = 0,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.store_dir = store_dir
        self.on_message = on_message
        self.drop_connections = drop_connections
        self.defer_messages = defer_messages
        self.reject_recipients = {address.lower() for address in reject_recipients or set()}
        # Besides the first N drops/deferrals: one connection in `fail_every` dropped and one message in `fail_every`
        # deferred, at random (`seed`), for as
        # long as the sink runs (a flaky relay during a whole chaos run, not just at the start).
        self.fail_every = fail_every
        # One conversation in `slow_every` answers MAIL, RCPT and DATA after `slow_seconds` each: a relay slow
        # enough that a whole conversation outlasts the email activity's timeout while no single answer outlasts the
        # client's command timeout.
        self.slow_every, self.slow_seconds = slow_every, slow_seconds
        self._rng = random.Random(seed)
        # Hang up after this many messages on one connection (0: never), as relays that cap them do.
        self.messages_per_connection = messages_per_connection
        self.connections = 0  # client connections accepted (not the controller's start-up probe)
        # With `hold`, every message's answer waits until the test sets it; `holding` says one is waiting.
        self.hold, self.holding = hold, threading.Event()
        self.seen = {"connections": 0, "messages": 0, "conversations": 0}
        self.injected = {"dropped": 0, "deferred": 0}
        self.slowed = 0
        # Conversations past MAIL FROM whose client has not hung up yet: an email in flight.
        self.open_conversations: set[int] = set()
        # (Message-ID, start, end) of each conversation that carried a whole message, on the monotonic clock.
        self.conversations: list[tuple[str, float, float]] = []
        self.armed = False  # the controller's own start-up probe connection must not be dropped
        self.messages: list[EmailMessage] = []
        self.duplicates = 0
        self._ids: set[str] = set()
        self._last_stored: int | None = None  # number of the last `.eml` in store_dir, read on the first message
        self._lock = threading.Lock()
        self._controller = _Controller(_Handler(self), hostname=host, port=self.port)

    def inject(self, kind: str, limit: int) -> bool:
        """Count one more injected failure of this kind if fewer than `limit` were injected so far."""
        with self._lock:
            if self.injected[kind] >= limit:
                return False
            self.injected[kind] += 1
            return True

    def every(self, kind: str, counter: str) -> bool:
        """Count one more connection/message; inject a failure of `kind` on one in `fail_every`, at random.

        At random rather than every n-th: when one email is the only traffic left, its retries advance the counters
        in step, and fixed strides for three kinds of fault can line up so that it fails attempt after attempt (seen:
        eight in a row, a 256 s backoff) - a pattern of the injector, not of a relay."""
        if not self.fail_every:
            return False
        with self._lock:
            self.seen[counter] += 1
            if self._rng.random() >= 1 / self.fail_every:
                return False
            self.injected[kind] += 1
            return True

    def slow_conversation(self) -> bool:
        """Whether the conversation starting now is one of the slow ones (counted in `slowed`)."""
        if not self.slow_every:
            return False
        with self._lock:
            self.seen["conversations"] += 1
            if self._rng.random() >= 1 / self.slow_every:
                return False
            self.slowed += 1
            return True

    def conversed(self, message_id: str, started: float) -> None:
        with self._lock:
            self.conversations.append((message_id, started, time.monotonic()))

    def overlapping(self) -> list[str]:
        """Message-IDs that two conversations carried at the same time: one email step sent twice concurrently."""
        by_id: dict[str, list[tuple[float, float]]] = {}
        with self._lock:
            for message_id, start, end in self.conversations:
                by_id.setdefault(message_id, []).append((start, end))
        found = []
        for message_id, spans in by_id.items():
            latest_end = float("-inf")
            for start, end in sorted(spans):
                if start < latest_end:
                    found.append(message_id)
                    break
                latest_end = max(latest_end, end)
        return found

    def receive(self, message: EmailMessage, recipients: list[str]) -> None:
        message_id = str(message.get("Message-ID", ""))
        with self._lock:
            if message_id and message_id in self._ids:
                self.duplicates += 1
                return
            self._ids.add(message_id)
            self.messages.append(message)
            if self.store_dir is not None:
                self._store(self.store_dir, message.as_bytes())
        if self.on_message is not None:
            self.on_message(message, recipients)

    def _store(self, folder: Path, data: bytes) -> None:
        """Write the next numbered `.eml`, never over an existing file (called under the lock).

        The folder outlives the sink (`sopflow dev` restarted on the same home keeps `.sopflow/mail/`), so the
        numbering continues after the highest file already there, and the file is created exclusively: a second sink
        writing into the same folder makes this one skip to the next free number instead of overwriting its message.
        """
        folder.mkdir(parents=True, exist_ok=True)
        if self._last_stored is None:
            numbers = (_STORED.match(path.name) for path in folder.iterdir())
            self._last_stored = max((int(match.group(1)) for match in numbers if match), default=0)
        while True:
            self._last_stored += 1
            try:
                with (folder / f"{self._last_stored:05d}.eml").open("xb") as file:
                    file.write(data)
                return
            except FileExistsError:
                continue

    def start(self) -> MailSink:
        self._controller.start()
        self.armed = True
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> MailSink:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
