"""Webhook intake (FastAPI): HubSpot deal events, DocuSign Connect envelope events, web forms, and the probes.

Run by `sopflow intake` (uvicorn) and inside `sopflow dev`. The endpoints live in `starter.intake.*`; this module
assembles the app and keeps the hooks the dev stack and tests use (`use_client`, `use_settings`, `use_database`).

The intake must start, and say so, even while Temporal is down: a CRM retries a failed webhook, so a clear 503
from /readyz (and from a webhook that cannot be delivered yet) is more useful than a process that refuses to come
up. Answers are 4xx for requests that will never succeed and 503 for those worth retrying; a bad request is never
a 500. Secrets are never logged, and neither are bodies or signature headers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from temporalio.client import Client
from temporalio.common import MetricMeter
from temporalio.service import RPCError

from sopflow import telemetry
from sopflow.config import Settings
from sopflow.db import Database
from starter.intake import docusign, forms, hubspot
from starter.intake.context import CONNECT_TIMEOUT, HEALTH_TIMEOUT, IntakeError, temporal_client

__all__ = ["app", "temporal_client", "use_client", "use_database", "use_metric_meter", "use_settings"]


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    # Only a database the app opened itself (first request, no `use_database`) is the app's to close.
    owned: Database | None = getattr(app.state, "owned_database", None)
    if owned is not None:
        owned.dispose()
        app.state.owned_database = None
        if getattr(app.state, "database", None) is owned:
            app.state.database = None


app = FastAPI(
    title="sopflow intake",
    version="0.2.0",
    description="Webhook intake: HubSpot deal events start and update client lifecycles, DocuSign envelope events "
    "reach them as lifecycle events, web forms become form submissions.",
    lifespan=_lifespan,
)


@app.middleware("http")
async def _count_webhooks(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Count every webhook and form request by source and HTTP status (`sopflow_webhook_requests_total`).

    Counted here, around the routes, so every answer is counted once whichever way it was produced (a route's
    return, an IntakeError, a validation error); probes and docs are not counted.
    """
    source = _source(request)
    if source is None:
        return await call_next(request)
    try:
        response = await call_next(request)
    except Exception:
        _count(request, source, 500)
        raise
    _count(request, source, response.status_code)
    return response


def _source(request: Request) -> str | None:
    parts = request.url.path.strip("/").split("/")
    if parts[0] == "webhooks" and len(parts) > 1 and parts[1] in ("hubspot", "docusign"):
        return parts[1]
    if parts[0] == "forms":
        return "form_page" if request.method == "GET" else "form"
    return None


def _count(request: Request, source: str, status: int) -> None:
    meter: MetricMeter = getattr(request.app.state, "metric_meter", None) or telemetry.meter()
    telemetry.count(
        meter,
        telemetry.WEBHOOKS,
        "Webhook and form requests answered by the intake, by source and HTTP status",
        {"source": source, "status": status},
    )


app.include_router(hubspot.router)
app.include_router(docusign.router)
app.include_router(forms.router)


@app.exception_handler(IntakeError)
async def _intake_error(_request: Request, exc: IntakeError) -> JSONResponse:
    return exc.response()


def use_client(client: Client | None) -> None:
    """Share an already-connected client (the dev stack's) instead of connecting through envconfig.

    `sopflow dev` may run Temporal on a port TEMPORAL_ADDRESS does not name; its own client is the right one.
    `None` forgets it, so the next request connects afresh.
    """
    app.state.temporal_client = client


def use_settings(settings: Settings | None) -> None:
    """Use these settings instead of reading SOPFLOW_* on first use (tests); `None` reads them again."""
    app.state.settings = settings


def use_metric_meter(meter: MetricMeter | None) -> None:
    """Count into this meter (tests); `None`: the process runtime's (`sopflow.telemetry.meter`)."""
    app.state.metric_meter = meter


def use_database(db: Database | None) -> None:
    """Use this (already migrated) records database; `None` opens SOPFLOW_DATABASE_URL on first use again."""
    app.state.database = db


@app.get("/healthz", tags=["probes"])
async def healthz() -> dict[str, str]:
    """Liveness: the process answers. Never touches Temporal, so an outage there does not get us restarted."""
    return {"status": "ok"}


@app.get("/readyz", tags=["probes"])
async def readyz(request: Request) -> JSONResponse:
    """Readiness: Temporal is reachable, so an accepted webhook can actually start or signal a workflow."""
    try:
        client = await temporal_client(request)
        serving = await client.service_client.check_health(timeout=HEALTH_TIMEOUT)
    except TimeoutError:
        return _unavailable(f"no answer from Temporal within {CONNECT_TIMEOUT:.0f} s")
    except (RuntimeError, RPCError) as exc:  # ConnectionFailed is a RuntimeError
        return _unavailable(str(exc))
    if not serving:
        return _unavailable("Temporal reports its workflow service as not serving")
    return JSONResponse({"status": "ready"})


def _unavailable(reason: str) -> JSONResponse:
    return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
