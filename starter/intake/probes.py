"""`GET /healthz` and `GET /readyz`: what an orchestrator asks before it sends traffic or restarts the intake.

They are kept apart on purpose. Liveness never touches Temporal, so an outage there does not get the intake
restarted in a loop; readiness says whether an accepted webhook can reach a workflow now, and why not, so a CRM's
retried delivery (and whoever reads the probe) sees a clear 503 instead of a process that refused to come up.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from temporalio.service import RPCError

from starter.intake.context import CONNECT_TIMEOUT, HEALTH_TIMEOUT
from starter.intake.dependencies import TemporalDep

router = APIRouter(tags=["probes"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers. Never touches Temporal, so an outage there does not get us restarted."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(temporal: TemporalDep) -> JSONResponse:
    """Readiness: Temporal is reachable, so an accepted webhook can actually start or signal a workflow."""
    try:
        client = await temporal.connect()
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
