"""What every intake endpoint shares: its answers, the body limit, strict JSON, the mapping and playbooks, and how a
Temporal call's failure becomes an answer. The app's long-lived pieces (settings, client, database) are reached
through `starter.intake.dependencies`.

Answer codes are part of the contract with senders that retry: 4xx means "this request will never succeed, stop",
503 means "try again later". So every input problem is a 4xx raised as `IntakeError`, and only an unreachable or
silent Temporal, or an intake that is misconfigured (a bad mapping file, an invalid playbook), is a 503, because
those get fixed and the retried delivery then succeeds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse
from temporalio.client import (
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from sopflow.config import Settings
from sopflow.intake_config import IntakeConfig, IntakeConfigError, load_intake_config
from sopflow.playbook import Playbook, PlaybookError
from sopflow.playbook_checks import load_playbook

log = logging.getLogger("sopflow.intake")
T = TypeVar("T")

CONNECT_TIMEOUT = 5.0
HEALTH_TIMEOUT = timedelta(seconds=2)
# A sender waits for our answer (HubSpot gives up after a few seconds): a Temporal call that takes longer means an
# overloaded server or no worker polling, and a 503 makes the sender retry instead of both sides hanging.
TEMPORAL_TIMEOUT = 10.0
RETRY_AFTER_SECONDS = "30"

# Transient by nature: the same call later may well succeed.
_TRANSIENT = {
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.DEADLINE_EXCEEDED,
    RPCStatusCode.RESOURCE_EXHAUSTED,
    RPCStatusCode.ABORTED,
    RPCStatusCode.CANCELLED,
    RPCStatusCode.INTERNAL,
    RPCStatusCode.UNKNOWN,
}
# Digits before or after the decimal point that a number in a form or CRM field may plausibly have.
MAX_DIGITS = 100_000


class IntakeError(Exception):
    """An answer other than 2xx, with a message meant for whoever reads the sender's delivery log."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra

    def response(self) -> JSONResponse:
        headers = {"Retry-After": RETRY_AFTER_SECONDS} if self.status == 503 else None
        return JSONResponse({"error": self.message, **self.extra}, status_code=self.status, headers=headers)


class Unavailable(IntakeError):
    """Temporal (or the intake's own configuration) cannot serve this now: 503, so the sender retries."""

    def __init__(self, message: str) -> None:
        super().__init__(503, message)


class LifecycleMissing(Exception):
    """No workflow with that id: the deal has no lifecycle (yet)."""


class LifecycleClosed(Exception):
    """The deal's lifecycle has ended (or ended before and may not be restarted): nothing can change it any more."""


class UpdateRejected(Exception):
    """The workflow refused an update; `field_errors` is set when the refusal is about particular fields."""

    def __init__(self, message: str, field_errors: dict[str, str]) -> None:
        super().__init__(message)
        self.message = message
        self.field_errors = field_errors


# --- bodies --------------------------------------------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body (signatures are over the exact bytes), refused with 413 past `limit` without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise IntakeError(400, "invalid Content-Length header")
        if int(declared) > limit:
            raise IntakeError(413, f"body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise IntakeError(413, f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text[:20]} is out of range")
    return number


def parse_json(body: bytes) -> Any:
    """Strict JSON: UTF-8, finite numbers only, no lone surrogates, bounded nesting; anything else is a 400.

    NaN, 1e999 and lone surrogates parse in Python but cannot travel on: the data converter would turn the numbers
    into null and choke on a surrogate, so they are refused here, where the sender can be told.
    """
    try:
        text = body.decode("utf-8")
        value = json.loads(text, parse_constant=_no_constants, parse_float=_finite_float)
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (UnicodeError, ValueError, RecursionError) as exc:
        raise IntakeError(400, f"body is not valid JSON: {short(exc)}") from None
    return value


def huge_number(value: Any) -> bool:
    """Whether a value, anywhere inside it, is text for a number of absurd magnitude (1e999999999).

    The playbook's money fields format amounts with all their digits: such a value would build a string of a
    billion digits inside the workflow's update validator, stalling the worker. Checked the way the money field
    reads its input (commas, `$` and surrounding blanks ignored), and refused here as an invalid field.
    """
    if isinstance(value, str):
        try:
            amount = Decimal(value.replace(",", "").replace("$", "").strip())
        except (InvalidOperation, ValueError):
            return False
        return amount.is_finite() and abs(amount.adjusted()) > MAX_DIGITS
    if isinstance(value, list):
        return any(huge_number(item) for item in value)
    if isinstance(value, dict):
        return any(huge_number(item) for item in value.values())
    return False


def short(exc: BaseException) -> str:
    """An error's message cut to 200 characters, for an answer or a log line (a driver's message can be long)."""
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "…"


# --- the intake mapping and the playbooks ---------------------------------------------------------------------------


_config_cache: dict[tuple[Path, int, int], IntakeConfig] = {}
_playbook_cache: dict[tuple[Path, int, int], Playbook] = {}


def _stamp(path: Path) -> tuple[Path, int, int]:
    try:
        stat = path.stat()
    except OSError:
        return (path, -1, -1)
    return (path.resolve(), stat.st_mtime_ns, stat.st_size)


def intake_config(config: Settings) -> IntakeConfig:
    """The mapping file, re-read when it changes; a broken file is a 503 (fix it and the retries succeed)."""
    key = _stamp(config.intake_config)
    cached = _config_cache.get(key)
    if cached is None:
        try:
            cached = load_intake_config(config.intake_config)
        except IntakeConfigError as exc:
            log.error("intake mapping is invalid: %s", exc)
            raise Unavailable(f"intake misconfigured: {exc}") from None
        _config_cache.clear()
        _config_cache[key] = cached
    return cached


def playbook(config: Settings, name: str) -> Playbook:
    """A playbook by id, validated (templates included) and cached until its file changes."""
    path = config.playbook_path(name)
    key = _stamp(path)
    cached = _playbook_cache.get(key)
    if cached is None:
        try:
            cached = load_playbook(path, config.templates_dir)
        except PlaybookError as exc:
            first = exc.errors[0] if exc.errors else "invalid"
            log.error("intake playbook %s is invalid: %s", name, first)
            raise Unavailable(f"intake misconfigured: playbook {name}: {first}") from None
        _playbook_cache[key] = cached
    return cached


# --- Temporal calls --------------------------------------------------------------------------------------------------


async def temporal(call: Awaitable[T], what: str) -> T:
    """Await a Temporal call, turning its failures into what the intake answers.

    Transient failures and slowness -> Unavailable (503); no such workflow -> LifecycleMissing; a workflow that
    has completed -> LifecycleClosed; a rejected update -> UpdateRejected; a malformed request -> 400; anything
    an operator must fix (permissions, namespace) -> 503, so the deliveries wait for the fix instead of failing.
    """
    try:
        return await asyncio.wait_for(call, TEMPORAL_TIMEOUT)
    except TimeoutError:
        raise Unavailable(f"Temporal did not answer within {TEMPORAL_TIMEOUT:.0f} s ({what})") from None
    except WorkflowUpdateRPCTimeoutOrCancelledError:
        raise Unavailable(f"Temporal did not finish the {what} in time") from None
    except WorkflowAlreadyStartedError:
        raise LifecycleClosed("this deal's lifecycle has ended and is not started again") from None
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        if isinstance(cause, ApplicationError):
            details = cause.details[0] if cause.details else None
            errors = {str(k): str(v) for k, v in details.items()} if isinstance(details, dict) else {}
            raise UpdateRejected(cause.message, errors) from None
        raise UpdateRejected(str(cause or exc), {}) from None
    except WorkflowQueryFailedError as exc:
        raise Unavailable(f"the lifecycle could not answer ({what}): {short(exc)}") from None
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            if "completed" in exc.message or "closed" in exc.message:
                raise LifecycleClosed("this deal's lifecycle has ended") from None
            raise LifecycleMissing(exc.message) from None
        if exc.status in _TRANSIENT:
            raise Unavailable(f"Temporal unavailable ({what}): {short(exc)}") from None
        if exc.status == RPCStatusCode.INVALID_ARGUMENT:
            raise IntakeError(400, f"Temporal refused the {what}: {short(exc)}") from None
        # Permissions, namespace, precondition: fixed by an operator, after which the sender's retry succeeds.
        log.error("Temporal refused the %s: %s (%s)", what, exc.status.name if exc.status else "?", short(exc))
        raise Unavailable(f"Temporal refused the {what}: {short(exc)}") from None


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch, the unit of HubSpot's timestamps."""
    return int(time.time() * 1000)
