"""Webhook intake (FastAPI): HubSpot deal events, DocuSign Connect envelope events, web forms, and the probes.

`create_app(settings, client, db)` builds one intake; `sopflow intake` (uvicorn) and `sopflow dev` each serve the app
they create, and a test creates its own. The endpoints live in `starter.intake.*` and reach the app's pieces only
through FastAPI dependencies (`starter.intake.dependencies`), so nothing is configured through module globals and two
apps in one process (the dev stack's and a test's) never share a client, a database or settings.

The intake must start, and say so, even while Temporal is down: a CRM retries a failed webhook, so a clear 503
from /readyz (and from a webhook that cannot be delivered yet) is more useful than a process that refuses to come
up. Answers are 4xx for requests that will never succeed and 503 for those worth retrying; a bad request is never
a 500. Secrets are never logged, and neither are bodies or signature headers.

`/docs` (Swagger UI) and `/redoc` load their scripts and styles from this server (`fastapi-offline` ships them),
not from a CDN: the intake often runs where its operators' browsers cannot reach one, and the docs page should
not tell a third party who reads it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from temporalio.client import Client
from temporalio.common import MetricMeter

from sopflow.config import Settings
from sopflow.db import Database
from starter import web
from starter.intake import docusign, forms, hubspot, probes
from starter.intake.context import IntakeError
from starter.intake.dependencies import IntakeState, intake_state
from starter.intake.metrics import count_answers

__all__ = ["DOCS_ASSETS_URL", "create_app"]

# Where the Swagger UI / ReDoc scripts, styles and favicon are served from (fastapi-offline's static files).
DOCS_ASSETS_URL = "/static-offline-docs"


def create_app(
    settings: Settings,
    client: Client | None = None,
    db: Database | None = None,
    *,
    metric_meter: MetricMeter | None = None,
) -> FastAPI:
    """An intake serving with these settings.

    `client`: an already-connected Temporal client to share (`sopflow dev` runs Temporal on a port TEMPORAL_ADDRESS
    may not name, so its own client is the right one); None connects through envconfig on first use. `db`: an
    already-migrated records database, left open when the app stops; None opens `settings.database_url` (and
    migrates it) on first use, and closes it when the app stops. `metric_meter`: where answers are counted (a
    test's); None counts into the process runtime's meter.
    """
    app = FastAPIOffline(
        title="sopflow intake",
        version="0.2.0",
        description="Webhook intake: HubSpot deal events start and update client lifecycles, DocuSign envelope "
        "events reach them as lifecycle events, web forms become form submissions.",
        lifespan=_lifespan,
        static_url=DOCS_ASSETS_URL,
    )
    app.state.intake = IntakeState(settings=settings, client=client, db=db, meter=metric_meter)
    app.middleware("http")(count_answers)
    app.include_router(hubspot.router)
    app.include_router(docusign.router)
    app.include_router(forms.router)
    app.include_router(probes.router)
    app.exception_handler(IntakeError)(_intake_error)
    web.install(app, settings)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    # Only a database the app opened itself (no `db` given to create_app) is the app's to close.
    state = intake_state(app)
    owned, state.owned_db = state.owned_db, None
    if owned is not None:
        owned.dispose()
        if state.db is owned:
            state.db = None


async def _intake_error(_request: Request, exc: IntakeError) -> JSONResponse:
    return exc.response()
