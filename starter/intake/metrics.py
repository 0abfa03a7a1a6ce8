"""Counting the intake's answers: `sopflow_webhook_requests_total` by source and HTTP status.

A middleware, not a dependency: it sees every answer once, whichever way it was produced (a route's return, an
IntakeError, FastAPI's own validation error, an exception), which nothing inside a route can. Probes, the docs and
their assets are not counted. The meter is the one given to `create_app` (a test's), else the process runtime's
(`sopflow.telemetry.meter`), which records nothing unless `install_metrics` ran.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request
from fastapi.responses import Response

from sopflow import telemetry
from starter.intake.dependencies import intake_state


async def count_answers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Count every webhook and form request by source and HTTP status (a request that raised counts as a 500)."""
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
    meter = intake_state(request.app).meter or telemetry.meter()
    telemetry.count(
        meter,
        telemetry.WEBHOOKS,
        "Webhook and form requests answered by the intake, by source and HTTP status",
        {"source": source, "status": status},
    )
