"""How activities classify database failures for Temporal's retries.

A lost connection (a database restart, a network blip, a pool whose connections all broke at once) is temporary:
the exception goes up as it is and Temporal retries the attempt with backoff, by which time `pool_pre_ping` has a
working connection again. A statement the database refuses (a constraint or a value it cannot store) fails the same
way on every attempt: it becomes a non-retryable `RecordRefused`, so it is reported once instead of retried forever.
Races between two attempts never get here: writes that can meet another attempt use `insert_new` (ON CONFLICT).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from temporalio.exceptions import ApplicationError

from sopflow.errors import RECORD_REFUSED

# Refusals of the values themselves. Not ProgrammingError: a table missing until `sopflow db upgrade` runs is an
# operator's fix, after which a retry succeeds.
_REFUSALS = (IntegrityError, DataError)


@contextmanager
def classified(what: str) -> Iterator[None]:
    """Raise a refused statement as a non-retryable RecordRefused naming `what` and the database's error class
    (never its message: it quotes the values, which may be a person's name or address)."""
    try:
        yield
    except _REFUSALS as exc:
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            raise  # a statement cut off by a lost connection: temporary
        kind = type(exc.orig).__name__ if isinstance(exc, DBAPIError) and exc.orig is not None else type(exc).__name__
        raise ApplicationError(
            f"{what}: the database refused it ({kind})", type=RECORD_REFUSED, non_retryable=True
        ) from None
