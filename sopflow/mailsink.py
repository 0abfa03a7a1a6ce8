"""A local SMTP server (aiosmtpd) that keeps what it receives: the dev stack's inbox, rehearsals' and tests' sink.

It drops a message whose Message-ID it already holds, as a careful receiving server would, but counts the
duplicate so tests can prove that retries never delivered the same step twice.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class _Handler:
    def __init__(self, sink: MailSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.sink.receive(message, list(envelope.rcpt_tos))
        return "250 Message accepted for delivery"


class MailSink:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        store_dir: Path | None = None,
        on_message: Callable[[EmailMessage, list[str]], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.store_dir = store_dir
        self.on_message = on_message
        self.messages: list[EmailMessage] = []
        self.duplicates = 0
        self._ids: set[str] = set()
        self._lock = threading.Lock()
        self._controller = Controller(_Handler(self), hostname=host, port=self.port)

    def receive(self, message: EmailMessage, recipients: list[str]) -> None:
        message_id = str(message.get("Message-ID", ""))
        with self._lock:
            if message_id and message_id in self._ids:
                self.duplicates += 1
                return
            self._ids.add(message_id)
            self.messages.append(message)
            count = len(self.messages)
        if self.store_dir is not None:
            self.store_dir.mkdir(parents=True, exist_ok=True)
            (self.store_dir / f"{count:05d}.eml").write_bytes(message.as_bytes())
        if self.on_message is not None:
            self.on_message(message, recipients)

    def start(self) -> MailSink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> MailSink:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
