"""Records store (SQLAlchemy 2): the durable, queryable trail next to Temporal's live process.

Every table an activity writes has a natural unique key, so a retried activity finds its own earlier row instead
of writing a second one. SQLite is the default; PostgreSQL works through `SOPFLOW_DATABASE_URL`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, Text, UniqueConstraint, create_engine, event, text, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, InstrumentedAttribute, Mapped, Mapper, Session, mapped_column, sessionmaker


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class OutboxEmail(Base):
    """One row per email step. `key` is the step's idempotency key; status: pending -> sent | partial | failed
    (partial: delivered, but some recipients were refused).

    `claim_token` / `claimed_until`: the lease of the one attempt allowed to talk SMTP for this step right now (see
    `activities/email.py`); both empty when no attempt holds it."""

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
    claim_token: Mapped[str | None] = mapped_column(String(64), nullable=True)
    claimed_until: Mapped[datetime | None] = mapped_column(nullable=True)


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
    # Where the entry was decided, for a local record's (`JournalBatch.decided_at`): its run and the run's history
    # length. None when a regular activity wrote it (its batch comes from a completed workflow task) or the row
    # predates 0008. See `activities.records.supersedes`.
    run: Mapped[int | None] = mapped_column(nullable=True)
    history_length: Mapped[int | None] = mapped_column(nullable=True)


class AccountClaim(Base):
    __tablename__ = "account_claims"
    __table_args__ = (UniqueConstraint("playbook", "account_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    playbook: Mapped[str] = mapped_column(String(64))
    account_key: Mapped[str] = mapped_column(String(300))
    deal_id: Mapped[str] = mapped_column(String(100), index=True)
    claimed_at: Mapped[datetime]


class DealRow(Base):
    """The latest known state of each lifecycle: what reports group and filter on."""

    __tablename__ = "deals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workflow_id: Mapped[str] = mapped_column(String(200), unique=True)
    deal_id: Mapped[str] = mapped_column(String(100), index=True)
    playbook: Mapped[str] = mapped_column(String(64), index=True)
    playbook_version: Mapped[int]
    stage: Mapped[str] = mapped_column(String(64), index=True)
    stage_title: Mapped[str] = mapped_column(String(200))
    stage_entered_at: Mapped[datetime]
    owner: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    next_due: Mapped[datetime | None] = mapped_column(nullable=True)
    next_visit_due: Mapped[datetime | None] = mapped_column(nullable=True)
    visit_label: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # The stage's running deadline and the next booked meeting, for the work queue (sopflow.work_queue).
    deadline_label: Mapped[str | None] = mapped_column(String(200), nullable=True)
    deadline_due: Mapped[datetime | None] = mapped_column(nullable=True)
    meeting_label: Mapped[str | None] = mapped_column(String(200), nullable=True)
    meeting_at: Mapped[datetime | None] = mapped_column(nullable=True)
    outcome: Mapped[str | None] = mapped_column(String(20), nullable=True)
    started_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # The deal's IANA zone (NULL: UTC, a playbook without one): reports show its times as its people read them.
    timezone: Mapped[str | None] = mapped_column(String(64), nullable=True)
    company: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # The journal sequence the row reflects: a retried or out-of-order batch never moves it backwards.
    last_seq: Mapped[int]


class PinnedPlaybook(Base):
    """Each playbook some lifecycle runs, exactly as pinned in its input, once per content hash
    (`sopflow.playbook.playbook_hash`): 10,000 clients of one version share one row, which `lifecycle_states` names.
    The YAML file may have moved on since; this is what the clients actually run."""

    __tablename__ = "pinned_playbooks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    playbook: Mapped[str] = mapped_column(String(64))
    version: Mapped[int]
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    content: Mapped[str] = mapped_column(Text)  # the playbook's JSON
    stored_at: Mapped[datetime]


class LifecycleStateRow(Base):
    """Each lifecycle's engine state (`LifecycleState` as JSON), from its latest local timeline record, so the
    forecast starts 10,000 clients from one query instead of 10,000 workflow queries (`sopflow.forecast_source`).

    Only local records carry the state (their input never reaches history), so after an update, whose record is a
    regular activity, the row lags behind the journal: a journal entry of the workflow newer than `seq` (the state's
    own) says so.
    `as_of` is the workflow (playbook) time the state was taken at, where a forecast starts. The state holds the
    deal's fields, contacts included, as `deals`/`deal_contacts` do: personal data lives in the records store and
    is never logged."""

    __tablename__ = "lifecycle_states"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workflow_id: Mapped[str] = mapped_column(String(200), unique=True)
    deal_id: Mapped[str] = mapped_column(String(100), index=True)
    playbook: Mapped[str] = mapped_column(String(64), index=True)
    playbook_version: Mapped[int]
    playbook_hash: Mapped[str] = mapped_column(String(64))
    # The state's journal sequence (a journal entry newer than it says the row lags), and where it was decided
    # (`JournalBatch.decided_at`): a retried or out-of-order batch, or one from a workflow task that failed after
    # writing, never replaces a state decided later (run, history length, then seq). A row stored before 0008 has
    # (0, 0).
    seq: Mapped[int]
    run: Mapped[int] = mapped_column(server_default="0")
    history_length: Mapped[int] = mapped_column(server_default="0")
    as_of: Mapped[datetime]
    state: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime]


class DealContact(Base):
    """Who plays each role on a deal (rep, account manager, client signer), as resolved from its data."""

    __tablename__ = "deal_contacts"
    __table_args__ = (UniqueConstraint("workflow_id", "role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workflow_id: Mapped[str] = mapped_column(String(200), index=True)
    deal_id: Mapped[str] = mapped_column(String(100), index=True)
    role: Mapped[str] = mapped_column(String(64))
    email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    updated_at: Mapped[datetime]


class StageTransition(Base):
    __tablename__ = "stage_transitions"
    __table_args__ = (UniqueConstraint("workflow_id", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workflow_id: Mapped[str] = mapped_column(String(200), index=True)
    deal_id: Mapped[str] = mapped_column(String(100), index=True)
    playbook: Mapped[str] = mapped_column(String(64), index=True)
    seq: Mapped[int]
    from_stage: Mapped[str | None] = mapped_column(String(64), nullable=True)
    to_stage: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime]
    actor: Mapped[str | None] = mapped_column(String(200), nullable=True)
    trigger: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class FormSubmission(Base):
    __tablename__ = "form_submissions"
    __table_args__ = (UniqueConstraint("workflow_id", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workflow_id: Mapped[str] = mapped_column(String(200), index=True)
    deal_id: Mapped[str] = mapped_column(String(100), index=True)
    seq: Mapped[int]
    form: Mapped[str] = mapped_column(String(64))
    stage: Mapped[str] = mapped_column(String(64))
    fields: Mapped[dict[str, Any]]
    actor: Mapped[str | None] = mapped_column(String(200), nullable=True)
    at: Mapped[datetime]


class TaskRow(Base):
    """A checklist task per stage visit: opened (seq of opening is the key), due, done and by whom."""

    __tablename__ = "tasks"
    __table_args__ = (UniqueConstraint("workflow_id", "opened_seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workflow_id: Mapped[str] = mapped_column(String(200), index=True)
    deal_id: Mapped[str] = mapped_column(String(100), index=True)
    opened_seq: Mapped[int]
    task: Mapped[str] = mapped_column(String(100))
    title: Mapped[str] = mapped_column(Text, default="")
    stage: Mapped[str] = mapped_column(String(64))
    owner: Mapped[str] = mapped_column(String(64))
    opened_at: Mapped[datetime]
    due_at: Mapped[datetime | None] = mapped_column(nullable=True)
    done_at: Mapped[datetime | None] = mapped_column(nullable=True)
    done_by: Mapped[str | None] = mapped_column(String(200), nullable=True)


class VisitRow(Base):
    """Cadence touchpoints (site visits): logged ones, and due dates that came and went."""

    __tablename__ = "visits"
    __table_args__ = (UniqueConstraint("workflow_id", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workflow_id: Mapped[str] = mapped_column(String(200), index=True)
    deal_id: Mapped[str] = mapped_column(String(100), index=True)
    seq: Mapped[int]
    label: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20))  # logged | due | missed
    due_at: Mapped[datetime | None] = mapped_column(nullable=True)
    logged_at: Mapped[datetime | None] = mapped_column(nullable=True)
    at: Mapped[datetime]


class InboundEvent(Base):
    """Webhook deliveries, keyed by our own de-duplication key: a retried delivery is recognised, never replayed."""

    __tablename__ = "inbound_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(50))
    dedupe_key: Mapped[str] = mapped_column(String(300), unique=True)
    deal_id: Mapped[str | None] = mapped_column(String(100), nullable=True, index=True)
    received_at: Mapped[datetime]
    payload: Mapped[dict[str, Any]]
    outcome: Mapped[str] = mapped_column(String(50))


def fitted(model: type[Base], values: dict[str, Any]) -> dict[str, Any]:
    """`values` with every string cut to its column's length.

    The records store is a projection for lists and filters: the whole value stays in the journal's JSON detail and
    in the workflow's history. PostgreSQL refuses a string longer than its VARCHAR (SQLite never does), and a
    refused write can never succeed on retry, so a long name or actor accepted years ago must not reach it whole."""
    lengths = {c.key: c.type.length for c in model.__table__.columns if isinstance(c.type, String) and c.type.length}
    return {
        name: value[: lengths[name]] if isinstance(value, str) and name in lengths else value
        for name, value in values.items()
    }


@event.listens_for(Base, "before_insert", propagate=True)
@event.listens_for(Base, "before_update", propagate=True)
def _fit_strings(_mapper: Mapper[Any], _connection: Any, target: Base) -> None:
    """Every row the ORM writes is `fitted` too."""
    values = {c.key: getattr(target, c.key) for c in target.__table__.columns if isinstance(c.type, String)}
    for name, value in fitted(type(target), values).items():
        if value is not values[name]:
            setattr(target, name, value)


def _insert(session: Session, model: type[Base]) -> Any:
    """The dialect's INSERT (both have ON CONFLICT), for the database the session is bound to."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(model)


def insert_new(session: Session, model: type[Base], values: dict[str, Any], unique: list[str]) -> bool:
    """`INSERT … ON CONFLICT (unique) DO NOTHING`: whether this call created the row.

    Two attempts of one activity (a retry that overlaps a first attempt still running on a killed or slow worker)
    meet here. A read-then-insert lets both read "absent" and one fail on the unique key; under PostgreSQL's READ
    COMMITTED the second INSERT instead waits for the first transaction and then does nothing, on SQLite the single
    writer orders them: either way the loser learns it lost without an error, which keeps constraint violations for
    real faults (see `activities/errors.py`)."""
    statement = (
        _insert(session, model)
        .values(**fitted(model, values))
        .on_conflict_do_nothing(index_elements=unique)
        .returning(*model.__table__.primary_key)
    )
    return session.execute(statement).first() is not None  # RETURNING: rowcount is not reliable across drivers


def insert_missing(
    session: Session, model: type[Base], rows: list[dict[str, Any]], unique: list[str], key: InstrumentedAttribute[Any]
) -> set[Any]:
    """`insert_new` for many rows in one statement: the `key` values of the rows this call created."""
    if not rows:
        return set()
    statement = _insert(session, model).values([fitted(model, row) for row in rows])
    return set(session.scalars(statement.on_conflict_do_nothing(index_elements=unique).returning(key)))


def upsert(
    session: Session,
    model: type[Base],
    values: dict[str, Any] | list[dict[str, Any]],
    unique: list[str],
    *,
    refresh: Sequence[str] = (),
    on_conflict: dict[str, Any] | None = None,
    where: Any = None,
) -> Any:
    """`INSERT … ON CONFLICT (unique) DO UPDATE … RETURNING` the rows written, as a statement for `session.scalars`:
    create-or-change in one round trip, atomic on both databases (PostgreSQL locks the row it updates, SQLite has
    one writer). On conflict the `refresh` columns take the new row's values and `on_conflict` sets expressions;
    with `where`, a row it does not hold is left alone (and not returned)."""
    rows = [fitted(model, row) for row in values] if isinstance(values, list) else fitted(model, values)
    statement = _insert(session, model).values(rows)
    changes = {name: statement.excluded[name] for name in refresh} | (on_conflict or {})
    return statement.on_conflict_do_update(index_elements=unique, set_=changes, where=where).returning(model)


@functools.cache
def forward_upsert(dialect: str, model: type[Base], unique: str, order: tuple[str, ...]) -> Any:
    """`INSERT … ON CONFLICT (unique) DO UPDATE SET <every other column> WHERE (<order>) <= the new row's`, for rows
    passed at execution (`connection.execute(statement, fitted(model, row))`): a row that only ever moves forward.

    Built once per dialect and table, unlike `upsert`: building a statement and its cache key costs about half a
    millisecond, ten times what executing it does, and this one runs with every local timeline record."""
    statement = (postgresql if dialect == "postgresql" else sqlite).insert(model)
    changes = {c.key: statement.excluded[c.key] for c in model.__table__.columns if c.key not in ("id", unique)}
    return statement.on_conflict_do_update(
        index_elements=[unique],
        set_=changes,
        where=tuple_(*(getattr(model, c) for c in order)) <= tuple_(*(statement.excluded[c] for c in order)),
    )


# The advisory lock key of `Database.upgrade` ("sopflow" in ASCII): any constant no other application uses.
MIGRATION_LOCK = 0x736F70666C6F77


class Database:
    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # pool_pre_ping: a pooled connection is tested (a cheap round trip) before each checkout, so after a database
        # restart, which breaks every pooled connection at once, the first use reconnects instead of failing. A SQLite
        # file has no server to restart: there it would be a query per transaction for nothing.
        self.engine: Engine = create_engine(url, future=True, pool_pre_ping=not url.startswith("sqlite"))
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def create_schema(self) -> None:
        """Create the current schema directly (fast, for rehearsals and tests) and stamp it as the latest migration,
        so `upgrade` later treats it like a migrated database."""
        from alembic import command

        Base.metadata.create_all(self.engine)
        with self.engine.begin() as connection:
            config = alembic_config(self.engine.url.render_as_string(hide_password=False))
            config.attributes["connection"] = connection
            command.stamp(config, "head")

    def upgrade(self, revision: str = "head") -> None:
        """Bring the database to `revision` with the Alembic migrations (`sopflow db upgrade`).

        On PostgreSQL the migration holds a transaction-scoped advisory lock: workers scaled out at once all upgrade
        at start, and without it two of them would create the same tables and one would fail. (PostgreSQL's DDL is
        transactional, so the second one then finds the tables made and has nothing to do.)"""
        from alembic import command

        with self.engine.begin() as connection:
            if self.engine.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            config = alembic_config(self.engine.url.render_as_string(hide_password=False))
            config.attributes["connection"] = connection
            command.upgrade(config, revision)

    def session(self) -> Session:
        return self.sessions()

    def dispose(self) -> None:
        self.engine.dispose()


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    # WAL lets the worker write while the CLI reads; the busy timeout absorbs the worker's concurrent activities.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
