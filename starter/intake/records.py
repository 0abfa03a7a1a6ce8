"""The `inbound_events` table as the intake uses it: one row per delivery we acted on, keyed by our own key.

De-duplication is layered. The row answers a retried delivery quickly ("duplicate", nothing done). Two copies
arriving at the same instant both miss the row, so the Temporal side is idempotent too: a start uses the deal's
workflow id with USE_EXISTING, an update carries the key as its update id, a signal carries it as the event id the
workflow remembers. Whichever copy inserts its row first wins; the other gets the UNIQUE violation and answers
"duplicate". A row is written after the action it records, or removed again when the action could not be done, so
a delivery refused with 503 is never mistaken for a done one when the sender retries it.

Plain synchronous SQLAlchemy, called through `asyncio.to_thread`, like the activities' records.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from sopflow.db import Database, InboundEvent
from starter.intake.context import Unavailable

log = logging.getLogger("sopflow.intake")
T = TypeVar("T")


@dataclass(frozen=True)
class Record:
    key: str
    source: str
    deal_id: str | None
    outcome: str
    payload: dict[str, Any]


def _record(row: InboundEvent) -> Record:
    return Record(row.dedupe_key, row.source, row.deal_id, row.outcome, dict(row.payload or {}))


def _find(db: Database, key: str) -> Record | None:
    with db.session() as session:
        row = session.scalar(select(InboundEvent).where(InboundEvent.dedupe_key == key))
        return _record(row) if row is not None else None


def _add(db: Database, source: str, key: str, deal_id: str | None, payload: dict[str, Any], outcome: str) -> bool:
    row = InboundEvent(
        source=source,
        dedupe_key=key,
        deal_id=deal_id,
        received_at=datetime.now(UTC),
        payload=payload,
        outcome=outcome,
    )
    with db.session() as session:
        session.add(row)
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            return False
    return True


def _set_outcome(db: Database, key: str, outcome: str, payload: dict[str, Any] | None) -> None:
    values: dict[str, Any] = {"outcome": outcome}
    if payload is not None:
        values["payload"] = payload
    with db.session() as session:
        session.execute(update(InboundEvent).where(InboundEvent.dedupe_key == key).values(**values))
        session.commit()


def _remove(db: Database, key: str) -> None:
    with db.session() as session:
        session.execute(delete(InboundEvent).where(InboundEvent.dedupe_key == key))
        session.commit()


def _for_deal(db: Database, source: str, deal_id: str) -> list[Record]:
    with db.session() as session:
        rows = session.scalars(
            select(InboundEvent)
            .where(InboundEvent.source == source, InboundEvent.deal_id == deal_id)
            .order_by(InboundEvent.id)
        )
        return [_record(row) for row in rows]


async def _run(fn: Callable[..., T], *args: Any) -> T:
    """Run a query off the event loop; a database that is down or locked is a 503, so the sender retries."""
    try:
        return await asyncio.to_thread(fn, *args)
    except SQLAlchemyError as exc:
        log.error("records database error: %s", type(exc).__name__)
        raise Unavailable("records database unavailable") from None


async def find(db: Database, key: str) -> Record | None:
    return await _run(_find, db, key)


async def add(db: Database, source: str, key: str, deal_id: str | None, payload: dict[str, Any], outcome: str) -> bool:
    """Insert the row; False when another delivery with the same key got there first."""
    return await _run(_add, db, source, key, deal_id, payload, outcome)


async def set_outcome(db: Database, key: str, outcome: str, payload: dict[str, Any] | None = None) -> None:
    await _run(_set_outcome, db, key, outcome, payload)


async def remove(db: Database, key: str) -> None:
    await _run(_remove, db, key)


async def for_deal(db: Database, source: str, deal_id: str) -> list[Record]:
    """Every row of one sender for one deal, oldest first (a deal has a handful)."""
    return await _run(_for_deal, db, source, deal_id)
