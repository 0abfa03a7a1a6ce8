"""Records store (SQLAlchemy 2): the durable, queryable trail next to Temporal's live process.

Every table an activity writes has a natural unique key, so a retried activity finds its own earlier row instead
of writing a second one. SQLite is the default; PostgreSQL works through `SOPFLOW_DATABASE_URL`.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, Text, UniqueConstraint, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class OutboxEmail(Base):
    """One row per email step. `key` is the step's idempotency key; status: pending -> sent | partial | failed
    (partial: delivered, but some recipients were refused)."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(300), unique=True)
    workflow_id: Mapped[str] = mapped_column(String(200), index=True)
    deal_id: Mapped[str] = mapped_column(String(100), index=True)
    playbook: Mapped[str] = mapped_column(String(64))
    template: Mapped[str] = mapped_column(String(100))
    to: Mapped[str] = mapped_column(Text)
    cc: Mapped[str] = mapped_column(Text, default="")
    subject: Mapped[str] = mapped_column(Text, default="")
    body_text: Mapped[str] = mapped_column(Text, default="")
    body_html: Mapped[str] = mapped_column(Text, default="")
    attachments: Mapped[str] = mapped_column(Text, default="")
    message_id: Mapped[str] = mapped_column(String(300))
    status: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    scheduled_at: Mapped[datetime]
    sent_at: Mapped[datetime | None] = mapped_column(nullable=True)


class JournalRow(Base):
    """The client's timeline: stage moves, tasks, reminders, escalations, emails, forms, events."""

    __tablename__ = "journal"
    __table_args__ = (UniqueConstraint("workflow_id", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workflow_id: Mapped[str] = mapped_column(String(200), index=True)
    deal_id: Mapped[str] = mapped_column(String(100), index=True)
    playbook: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int]
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(32))
    stage: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]]


class AccountClaim(Base):
    __tablename__ = "account_claims"
    __table_args__ = (UniqueConstraint("playbook", "account_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    playbook: Mapped[str] = mapped_column(String(64))
    account_key: Mapped[str] = mapped_column(String(300))
    deal_id: Mapped[str] = mapped_column(String(100), index=True)
    claimed_at: Mapped[datetime]


class Database:
    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(url, future=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def create_schema(self) -> None:
        Base.metadata.create_all(self.engine)

    def session(self) -> Session:
        return self.sessions()

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    # WAL lets the worker write while the CLI reads; the busy timeout absorbs the worker's concurrent activities.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
