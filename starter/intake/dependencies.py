"""How a request reaches the intake's long-lived pieces: FastAPI dependencies over the `IntakeState` that
`starter.webhooks.create_app` puts in `app.state`.

One app, one set of pieces: the settings it was created with, one Temporal client and one records database for all
its requests, and the meter its answers are counted in. A route declares what it needs (`SettingsDep`,
`TemporalDep`, `IntakeDep`); a test passes its own pieces to `create_app`, or swaps one for a single test with
`app.dependency_overrides[get_settings] = …` (the Temporal and database sources take their settings from
`get_settings`, so an override reaches them too).

The Temporal client and the records database are handed out as *sources*, awaited when the request gets that far,
not as values: FastAPI resolves dependencies before the route runs, and a request refused on its signature or
token must get its 401 without the intake connecting to anything (while Temporal or the database is down it would
otherwise get a 503, and an unauthenticated caller could make the intake connect or migrate). Each piece is obtained
once per app and kept in its state, connected (or opened and migrated) on first use, so the intake starts, and says
so, while Temporal is down.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from temporalio.client import Client
from temporalio.common import MetricMeter
from temporalio.service import RPCError

from sopflow.config import Settings
from sopflow.connect import connect
from sopflow.db import Database
from sopflow.intake_config import IntakeConfig
from sopflow.playbook import Playbook
from starter.intake.context import CONNECT_TIMEOUT, Unavailable, intake_config, playbook, short

log = logging.getLogger("sopflow.intake")


@dataclass
class IntakeState:
    """The pieces one app shares between its requests (`app.state.intake`).

    `client` and `db` given to `create_app` are the caller's (the dev stack's client, a test's database); left None
    they are made on first use, and a database made here is `owned_db`, closed when the app shuts down.
    """

    settings: Settings
    client: Client | None = None
    db: Database | None = None
    meter: MetricMeter | None = None
    owned_db: Database | None = None
    db_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def intake_state(app: FastAPI) -> IntakeState:
    state: IntakeState = app.state.intake
    return state


def get_settings(request: Request) -> Settings:
    """The app's settings. Never echoed anywhere: they hold secrets."""
    return intake_state(request.app).settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


@dataclass(frozen=True)
class TemporalSource:
    """The app's Temporal client, connected on first use: one connection for all requests, none at start.

    Two first requests racing may both connect; the loser's client is simply dropped, which costs nothing.
    """

    state: IntakeState
    settings: Settings

    async def connect(self) -> Client:
        """The client, or the connection's own error (TimeoutError, ConnectionFailed, RPCError): /readyz words it."""
        client = self.state.client
        if client is None:
            client = await asyncio.wait_for(connect(settings=self.settings), CONNECT_TIMEOUT)
            self.state.client = client
        return client

    async def __call__(self) -> Client:
        """The client, or Unavailable (503), which a sender retries."""
        try:
            return await self.connect()
        except TimeoutError:
            raise Unavailable(f"no answer from Temporal within {CONNECT_TIMEOUT:.0f} s") from None
        except (RuntimeError, RPCError) as exc:  # ConnectionFailed is a RuntimeError
            raise Unavailable(short(exc)) from None


def get_temporal(request: Request, settings: SettingsDep) -> TemporalSource:
    return TemporalSource(intake_state(request.app), settings)


TemporalDep = Annotated[TemporalSource, Depends(get_temporal)]


@dataclass(frozen=True)
class RecordsSource:
    """The records database, opened and migrated on first use: the intake may start before the worker ever ran."""

    state: IntakeState
    settings: Settings

    async def __call__(self) -> Database:
        db = self.state.db
        if db is not None:
            return db
        async with self.state.db_lock:
            db = self.state.db
            if db is None:
                db = Database(self.settings.database_url)
                try:
                    await asyncio.to_thread(db.upgrade)
                except Exception as exc:  # any driver's error: the records store is down or misconfigured
                    db.dispose()
                    log.error("records database unavailable: %s", type(exc).__name__)
                    raise Unavailable("records database unavailable") from None
                self.state.db = self.state.owned_db = db
        return db


def get_records(request: Request, settings: SettingsDep) -> RecordsSource:
    return RecordsSource(intake_state(request.app), settings)


RecordsDep = Annotated[RecordsSource, Depends(get_records)]


@dataclass
class Intake:
    """One request's view of the shared pieces, so the per-sender code takes one argument instead of five."""

    settings: Settings
    db: Database
    temporal: TemporalSource

    @property
    def config(self) -> IntakeConfig:
        return intake_config(self.settings)

    def playbook(self, name: str) -> Playbook:
        return playbook(self.settings, name)

    async def client(self) -> Client:
        return await self.temporal()


@dataclass(frozen=True)
class IntakeSource:
    """An `Intake` once the request is authenticated: opening it opens the records database (503 if that fails)."""

    settings: Settings
    records: RecordsSource
    temporal: TemporalSource

    async def __call__(self) -> Intake:
        return Intake(self.settings, await self.records(), self.temporal)


def get_intake(settings: SettingsDep, records: RecordsDep, temporal: TemporalDep) -> IntakeSource:
    return IntakeSource(settings, records, temporal)


IntakeDep = Annotated[IntakeSource, Depends(get_intake)]
