"""Webhook intake (FastAPI). For now only the probes; the CRM and form endpoints come with their own issue.

The intake must start, and say so, even while Temporal is down: a CRM retries a failed webhook, so a clear 503
from /readyz is more useful than a process that refuses to come up.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from temporalio.client import Client
from temporalio.service import RPCError

from starter.connect import connect

CONNECT_TIMEOUT = 5.0
HEALTH_TIMEOUT = timedelta(seconds=2)

app = FastAPI(title="sopflow intake", version="0.1.0")


def use_client(client: Client | None) -> None:
    """Share an already-connected client (the dev stack's) instead of connecting through envconfig.

    `sopflow dev` may run Temporal on a port TEMPORAL_ADDRESS does not name; its own client is the right one.
    `None` forgets it, so the next request connects afresh.
    """
    app.state.temporal_client = client


async def temporal_client(request: Request) -> Client:
    """The app's single client, connected on first use: one connection for all requests, none at import time.

    Two first requests racing may both connect; the loser's client is simply dropped, which costs nothing.
    """
    client: Client | None = getattr(request.app.state, "temporal_client", None)
    if client is None:
        client = await asyncio.wait_for(connect(), CONNECT_TIMEOUT)
        request.app.state.temporal_client = client
    return client


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers. Never touches Temporal, so an outage there does not get us restarted."""
    return {"status": "ok"}


@app.get("/readyz")
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
