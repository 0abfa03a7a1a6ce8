"""`POST /webhooks/hubspot`: deal creation starts a lifecycle; property changes set fields or raise events.

HubSpot posts a JSON array of up to 100 events, signed as a whole (X-HubSpot-Signature-v3). Each event is handled
on its own and gets its own outcome in the answer: one event we cannot use must not make HubSpot retry the other
99 forever. The whole batch is answered 503 only when Temporal (or our records database) is unavailable; the events
already handled are then recorded, so the retried batch finds them as duplicates.

A HubSpot creation event carries ids only. A deal whose playbook requires fields (safe_balance requires rep_email)
therefore starts at once only if `playbooks/intake/mapping.yaml` gives defaults for them; otherwise its creation is
recorded as `needs_fields`, listed in the answer and logged, and each later property change for a mapped property
is kept (outcome `pending`) until the fields are complete, when the lifecycle starts with all of them. Nothing is
dropped silently: `inbound_events` shows every waiting deal and what it lacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from temporalio.client import WorkflowHandle
from temporalio.common import (
    WorkflowIDConflictPolicy,
)

from sopflow.constants import SA_PLAYBOOK
from sopflow.engine import check_deal_fields
from sopflow.errors import Rejected
from sopflow.intake_config import IntakeConfig
from sopflow.models import ExternalEvent, LifecycleStatus, SetFields, valid_deal_id, workflow_id
from sopflow.playbook import Playbook
from sopflow.signatures import hubspot_timestamp_fresh, verify_hubspot_legacy, verify_hubspot_v3
from starter.intake import records
from starter.intake.context import (
    IntakeError,
    LifecycleClosed,
    LifecycleMissing,
    Unavailable,
    UpdateRejected,
    huge_number,
    now_ms,
    parse_json,
    read_body,
    temporal,
)
from starter.intake.dependencies import Intake, IntakeDep, SettingsDep
from starter.lifecycles import send, start_lifecycle
from workflows.lifecycle import ClientLifecycle

log = logging.getLogger("sopflow.intake")
router = APIRouter(tags=["webhooks"])

SOURCE = "hubspot"
ACTOR = "hubspot"
DEALS_OBJECT_TYPE = "0-3"  # HubSpot's objectTypeId for deals in the generic object.* subscriptions
# Deals of one batch are handled concurrently, each deal's events in order: 100 events must not take 100 round trips.
CONCURRENT_DEALS = 8
# Property rows that hold a value a start may still use, or that newer deliveries must not be overtaken by.
_APPLIED = {"pending", "started", "fields_set"}

Outcome = Literal[
    "started",
    "needs_fields",
    "pending",
    "fields_set",
    "signaled",
    "rejected",
    "stale",
    "closed",
    "no_lifecycle",
    "duplicate",
    "ignored",
    "invalid",
]


class HubSpotEvent(BaseModel):
    """The part of a HubSpot webhook event we use; HubSpot adds fields over time, so others are ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    subscription_type: str = Field(alias="subscriptionType", min_length=1, max_length=100)
    portal_id: str = Field(alias="portalId", pattern=r"^[0-9]{1,20}$")
    object_id: str = Field(alias="objectId", pattern=r"^[0-9]{1,20}$")
    occurred_at: int = Field(alias="occurredAt", ge=0, lt=10**15, strict=True)
    object_type_id: str | None = Field(default=None, alias="objectTypeId", max_length=50)
    property_name: str | None = Field(default=None, alias="propertyName", min_length=1, max_length=200)
    property_value: str | None = Field(default=None, alias="propertyValue", max_length=65536)
    # Not in HubSpot's own creation events; other senders (a workflow webhook, a backfill script) may include them.
    properties: dict[str, str | int | float | bool | None] | None = None

    @field_validator("portal_id", "object_id", mode="before")
    @classmethod
    def _id_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("property_value", mode="before")
    @classmethod
    def _value_as_text(cls, value: Any) -> Any:
        # HubSpot sends property values as strings; a number or bool from another sender means the same.
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value) if isinstance(value, int | float) else value

    @property
    def deal_id(self) -> str:
        return f"{self.portal_id}-{self.object_id}"

    @property
    def kind(self) -> Literal["creation", "change"] | None:
        kind = self.subscription_type
        generic_deal = self.object_type_id == DEALS_OBJECT_TYPE
        if kind == "deal.creation" or (kind == "object.creation" and generic_deal):
            return "creation"
        if kind == "deal.propertyChange" or (kind == "object.propertyChange" and generic_deal):
            return "change" if self.property_name else None
        return None

    def dedupe_key(self) -> str:
        """Our own key: HubSpot's eventId repeats across subscriptions and portals, and `deal.creation` and
        `object.creation` for the same deal are one creation. The value is hashed to keep the key short."""
        base = f"{SOURCE}:{self.portal_id}:{self.object_id}:{self.kind}:{self.occurred_at}"
        if self.kind != "change":
            return base
        digest = hashlib.sha256(f"{self.property_name}\0{self.property_value}".encode()).hexdigest()[:24]
        return f"{base}:{digest}"


class EventOutcome(BaseModel):
    index: int = Field(description="position of the event in the posted array")
    deal_id: str | None = None
    outcome: Outcome
    detail: dict[str, Any] = {}


class HubSpotAnswer(BaseModel):
    results: list[EventOutcome]


# --- endpoint ------------------------------------------------------------------------------------------------------


@router.post(
    "/webhooks/hubspot",
    response_model=HubSpotAnswer,
    summary="HubSpot deal webhooks (signature v3)",
    responses={
        400: {"description": "not a JSON array"},
        401: {"description": "missing, invalid or stale signature"},
        413: {"description": "body too large"},
        503: {"description": "Temporal or the records database is unavailable: retry"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "array", "items": {"type": "object"}}}},
        }
    },
)
async def hubspot_webhook(
    request: Request,
    config: SettingsDep,
    open_intake: IntakeDep,
    x_hubspot_signature_v3: Annotated[str | None, Header(alias="X-HubSpot-Signature-v3")] = None,
    x_hubspot_request_timestamp: Annotated[str | None, Header(alias="X-HubSpot-Request-Timestamp")] = None,
    x_hubspot_signature: Annotated[str | None, Header(alias="X-HubSpot-Signature")] = None,
    x_hubspot_signature_version: Annotated[str | None, Header(alias="X-HubSpot-Signature-Version")] = None,
) -> HubSpotAnswer:
    """Verify the signature over the exact bytes, then handle each deal event on its own (see module doc)."""
    body = await read_body(request, config.max_body_bytes)
    secret = config.hubspot_client_secret.get_secret_value() if config.hubspot_client_secret else ""
    if not secret:
        raise IntakeError(401, "HubSpot webhooks are not enabled here (no client secret configured)")
    uri = signed_uri(request, config.public_intake_url)
    if x_hubspot_signature_v3 is not None:
        if x_hubspot_request_timestamp is None or not hubspot_timestamp_fresh(x_hubspot_request_timestamp, now_ms()):
            raise IntakeError(401, "X-HubSpot-Request-Timestamp missing or not within 5 minutes")
        if not verify_hubspot_v3(
            secret, request.method, uri, body, x_hubspot_request_timestamp, x_hubspot_signature_v3, now_ms()
        ):
            raise IntakeError(401, "X-HubSpot-Signature-v3 does not match (check SOPFLOW_PUBLIC_INTAKE_URL)")
    elif config.hubspot_accept_legacy_signatures and x_hubspot_signature is not None:
        if not verify_hubspot_legacy(
            secret, x_hubspot_signature_version, request.method, uri, body, x_hubspot_signature
        ):
            raise IntakeError(401, "X-HubSpot-Signature does not match")
    else:
        raise IntakeError(401, "missing X-HubSpot-Signature-v3")

    events = parse_json(body)
    if not isinstance(events, list):
        raise IntakeError(400, "expected a JSON array of HubSpot events")
    intake = await open_intake()
    intake.config  # noqa: B018 - a broken mapping file is a 503 before anything is done, not halfway through
    return HubSpotAnswer(results=await handle_batch(intake, events))


def signed_uri(request: Request, public_base: str | None) -> str:
    """The URI HubSpot signed: the public base (a proxy's) + the path and query exactly as they arrived."""
    scope = request.scope
    raw_path = scope.get("raw_path") or request.url.path.encode()
    # Some servers (and httpx's test transport) include the query in raw_path; the ASGI spec does not.
    path = raw_path.decode("latin-1").partition("?")[0]
    query = scope.get("query_string", b"").decode("latin-1")
    if public_base:
        root = public_base.rstrip("/")
    else:
        root = f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"
    return root + path + (f"?{query}" if query else "")


async def handle_batch(intake: Intake, items: list[Any]) -> list[EventOutcome]:
    """Group by deal (order kept within a deal), run deals concurrently, report in the posted order."""
    results: list[EventOutcome | None] = [None] * len(items)
    by_deal: dict[str, list[tuple[int, HubSpotEvent]]] = defaultdict(list)
    for index, item in enumerate(items):
        try:
            event = HubSpotEvent.model_validate(item)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'event'}: {e['msg']}" for e in exc.errors()[:5])
            results[index] = EventOutcome(index=index, outcome="invalid", detail={"error": problems})
            continue
        if event.kind is None:
            results[index] = EventOutcome(
                index=index, deal_id=None, outcome="ignored", detail={"reason": "not a deal creation or change"}
            )
            continue
        by_deal[event.deal_id].append((index, event))

    gate = asyncio.Semaphore(CONCURRENT_DEALS)

    async def run_deal(events: list[tuple[int, HubSpotEvent]]) -> None:
        async with gate:
            for index, event in events:
                results[index] = await handle_event(intake, index, event)

    outcomes = await asyncio.gather(*(run_deal(events) for events in by_deal.values()), return_exceptions=True)
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    if failures:
        done = sum(1 for r in results if r is not None)
        log.warning("hubspot batch: %d of %d events handled before a failure", done, len(items))
        raise failures[0]
    return [r for r in results if r is not None]


async def handle_event(intake: Intake, index: int, event: HubSpotEvent) -> EventOutcome:
    deal_id = event.deal_id
    if not valid_deal_id(deal_id):
        return EventOutcome(index=index, deal_id=None, outcome="invalid", detail={"error": "deal id too long"})
    key = event.dedupe_key()
    outcome: Outcome
    detail: dict[str, Any] = {}
    if await records.find(intake.db, key) is not None:
        outcome = "duplicate"
    elif event.kind == "creation":
        outcome, detail = await _creation(intake, event, key)
    else:
        outcome, detail = await _change(intake, event, key)
    log_fields = {"source": "hubspot", "event": event.kind, "deal_id": deal_id, "outcome": outcome}
    log.info("hubspot %s deal %s: %s", event.kind, deal_id, outcome, extra=log_fields)
    return EventOutcome(index=index, deal_id=deal_id, outcome=outcome, detail=detail)


# --- creation ------------------------------------------------------------------------------------------------------


async def _creation(intake: Intake, event: HubSpotEvent, key: str) -> tuple[Outcome, dict[str, Any]]:
    deal_id = event.deal_id
    payload: dict[str, Any] = {
        "kind": "creation",
        "subscription": event.subscription_type,
        "occurred_at": event.occurred_at,
        "properties": event.properties or {},
    }
    rows = await records.for_deal(intake.db, SOURCE, deal_id)
    plan = _plan(intake, payload, rows)
    if not plan.errors:
        try:
            await _start(intake, deal_id, plan.playbook, plan.values)
        except LifecycleClosed as exc:
            return await _record(intake, key, deal_id, payload, "closed", {"reason": str(exc)})
        return await _record(intake, key, deal_id, payload, "started", _started(deal_id, plan))

    if not await records.add(intake.db, SOURCE, key, deal_id, {**payload, "missing": plan.errors}, "needs_fields"):
        return "duplicate", {}
    # Store, then look again: a property change recorded meanwhile saw no creation row and left the start to us.
    planned = await _start_if_complete(intake, deal_id, mine=key)
    if planned.outcome == "started":
        return planned.outcome, planned.detail
    log.warning("hubspot deal %s waits for fields: %s", deal_id, ", ".join(sorted(plan.errors)))
    return "needs_fields", planned.detail


@dataclass
class Planned:
    """What an attempt to start from the recorded rows came to; `values` are the fields a start carried."""

    outcome: Outcome
    detail: dict[str, Any]
    values: dict[str, Any] = field(default_factory=dict)


async def _start_if_complete(intake: Intake, deal_id: str, mine: str) -> Planned:
    """Start the deal from its recorded creation and property rows if they now satisfy the playbook.

    `mine` is the row this delivery just wrote: if Temporal is unavailable it is removed again, so the retried
    delivery redoes the work instead of finding a "duplicate" that never happened.
    """
    try:
        rows = await records.for_deal(intake.db, SOURCE, deal_id)
        creation = next((r for r in rows if r.payload.get("kind") == "creation"), None)
        if creation is None:
            return Planned("pending", {"waiting_for": "the deal's creation event"})
        plan = _plan(intake, creation.payload, rows)
        if plan.errors:
            return Planned("needs_fields", {"playbook": plan.playbook.id, "missing": plan.errors})
        try:
            await _start(intake, deal_id, plan.playbook, plan.values)
        except LifecycleClosed as exc:
            await records.set_outcome(intake.db, mine, "closed")
            return Planned("closed", {"reason": str(exc)})
    except Unavailable:
        await records.remove(intake.db, mine)
        raise
    if creation.outcome == "needs_fields":
        await records.set_outcome(intake.db, creation.key, "started", {**creation.payload, "missing": {}})
    await records.set_outcome(intake.db, mine, "started")
    # A value the playbook refused did not start with the deal: its delivery says so, as if refused by the lifecycle.
    for name, error in plan.refused.items():
        row = next((r for r in rows if r.key == plan.sources.get(name)), None)
        if row is not None:
            refusal = {"error": f"invalid deal fields: {name}: {error}", "fields": {name: error}}
            await records.set_outcome(intake.db, row.key, "rejected", {**row.payload, "detail": refusal})
            if row.key == mine:
                return Planned("rejected", {**refusal, **_started(deal_id, plan)}, plan.values)
    return Planned("started", _started(deal_id, plan), plan.values)


@dataclass
class Plan:
    """What a start would use now: the playbook, its checked deal fields, the errors that block the start (a
    required field missing or refused), the values refused and left out (optional fields: one bad value never
    holds a deal back), and which delivery supplied each field (a row key)."""

    playbook: Playbook
    values: dict[str, Any]
    errors: dict[str, str]
    refused: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)


def _plan(intake: Intake, creation: dict[str, Any], rows: list[records.Record]) -> Plan:
    """The playbook and deal fields a start would use now: defaults, the creation's properties, then the kept
    property changes oldest first (so the newest value wins), through the property map of the playbook the
    pipeline chooses."""
    hubspot = intake.config.hubspot
    kept = [r for r in rows if r.payload.get("kind") == "property" and r.outcome in _APPLIED]
    changes = [
        (str(r.payload.get("property")), r.payload.get("value"), r.key)
        for r in sorted(kept, key=lambda r: int(r.payload.get("occurred_at") or 0))
    ]
    delivered = [(str(prop), value, "") for prop, value in (creation.get("properties") or {}).items()] + changes

    pipeline = next(
        (str(v) for prop, v, _ in reversed(delivered) if prop == hubspot.pipeline_property and v is not None), None
    )
    pb = intake.playbook(intake.config.playbook_for(pipeline))
    properties = hubspot.properties_for(pb.id)
    fields: dict[str, Any] = dict(hubspot.defaults)
    sources: dict[str, str] = {}
    for prop, value, source in delivered:
        mapping = properties.get(prop)
        if mapping is not None:
            fields[mapping.field], sources[mapping.field] = mapping.convert(value), source

    # The mapping serves every playbook; a field this playbook does not define is not an error for a start.
    known = {name: value for name, value in fields.items() if name in pb.deal}
    if pipeline is None and hubspot.wait_for_pipeline:
        return Plan(pb, {}, {hubspot.pipeline_property: "required: the pipeline chooses the deal's playbook"})
    # A bad optional value is left out (refused), never a reason not to start; a bad required one blocks the start.
    refused = {name: "a number out of range" for name, value in known.items() if huge_number(value)}
    if any(pb.deal[name].required for name in refused):  # never handed to a validator, even to be refused
        return Plan(pb, {}, refused)
    errors: dict[str, str] = {}
    for _ in range(2):  # the validator names every bad value at once: one pass finds all the optional ones
        candidate = {name: value for name, value in known.items() if name not in refused}
        try:
            return Plan(pb, check_deal_fields(pb, candidate), {}, refused, sources)
        except Rejected as exc:
            errors = exc.field_errors or {"fields": str(exc)}
        optional = {name: error for name, error in errors.items() if name in candidate and not pb.deal[name].required}
        if not optional:
            break
        refused |= optional
    return Plan(pb, {}, {**errors, **refused})


async def _start(intake: Intake, deal_id: str, pb: Playbook, values: dict[str, Any]) -> WorkflowHandle[Any, Any]:
    """Start like `sopflow deal start`, but idempotently: an existing run is reused, a closed one never restarted."""
    client = await intake.client()
    return await temporal(
        start_lifecycle(
            client, pb, deal_id, values, ACTOR, WorkflowIDConflictPolicy.USE_EXISTING, intake.settings.time_scale
        ),
        "start",
    )


def _started(deal_id: str, plan: Plan) -> dict[str, Any]:
    pb = plan.playbook
    detail = {"workflow_id": workflow_id(deal_id), "playbook": pb.id, "playbook_version": pb.version}
    return {**detail, "refused": plan.refused} if plan.refused else detail


async def _record(
    intake: Intake, key: str, deal_id: str, payload: dict[str, Any], outcome: Outcome, detail: dict[str, Any]
) -> tuple[Outcome, dict[str, Any]]:
    """Record a done action; a twin delivery that recorded first makes this one the duplicate."""
    if not await records.add(intake.db, SOURCE, key, deal_id, {**payload, "detail": detail}, outcome):
        return "duplicate", {}
    return outcome, detail


# --- property changes ----------------------------------------------------------------------------------------------


async def _change(intake: Intake, event: HubSpotEvent, key: str) -> tuple[Outcome, dict[str, Any]]:
    config: IntakeConfig = intake.config
    prop = event.property_name or ""
    value = event.property_value
    deal_id = event.deal_id
    payload: dict[str, Any] = {
        "kind": "property",
        "subscription": event.subscription_type,
        "occurred_at": event.occurred_at,
        "property": prop,
        "value": value,
    }
    name = config.event_for(prop, value)
    if name is not None:
        return await _signal(intake, event, key, name, payload)
    if not config.hubspot.maps(prop) and prop != config.hubspot.pipeline_property:
        return "ignored", {"reason": f"property {prop!r} is not mapped"}

    rows = await records.for_deal(intake.db, SOURCE, deal_id)
    newer = [
        r
        for r in rows
        if r.payload.get("kind") == "property"
        and r.payload.get("property") == prop
        and r.outcome in _APPLIED
        and int(r.payload.get("occurred_at") or 0) > event.occurred_at
    ]
    if newer:  # HubSpot does not deliver in order: an older value must not overwrite a newer one
        return await _record(intake, key, deal_id, payload, "stale", {"reason": "a newer value was applied"})

    if config.hubspot.playbooks:  # the property map depends on the playbook the deal runs
        playbook = await _running_playbook(intake, deal_id)
        if playbook is None:
            return await _keep(intake, key, deal_id, payload)
        mapping = config.hubspot.properties_for(playbook).get(prop)
        if mapping is None and prop != config.hubspot.pipeline_property:
            reason = f"property {prop!r} is not mapped for playbook {playbook}"
            return await _record(intake, key, deal_id, payload, "ignored", {"reason": reason})
    else:
        mapping = config.hubspot.properties.get(prop)
    if mapping is None:  # the pipeline only matters until the lifecycle starts
        creation = next((r for r in rows if r.payload.get("kind") == "creation"), None)
        if config.hubspot.playbooks or (creation is not None and creation.outcome != "needs_fields"):
            return await _record(intake, key, deal_id, payload, "ignored", {"reason": "lifecycle already started"})
        return await _keep(intake, key, deal_id, payload)

    payload["field"] = mapping.field
    converted = mapping.convert(value)
    if huge_number(converted):
        detail = {"error": "a number out of range", "fields": {mapping.field: "a number out of range"}}
        return await _record(intake, key, deal_id, payload, "rejected", detail)
    try:
        await _set_fields(intake, deal_id, {mapping.field: converted}, update_id=key)
    except LifecycleMissing:
        return await _keep(intake, key, deal_id, payload)
    except LifecycleClosed as exc:
        return await _record(intake, key, deal_id, payload, "closed", {"reason": str(exc)})
    except UpdateRejected as exc:
        detail = {"error": exc.message, "fields": exc.field_errors}
        return await _record(intake, key, deal_id, payload, "rejected", detail)
    return await _record(intake, key, deal_id, payload, "fields_set", {"fields": [mapping.field]})


async def _running_playbook(intake: Intake, deal_id: str) -> str | None:
    """The playbook the deal's lifecycle runs (its search attribute, set when it starts, so no worker is asked);
    None while it has no lifecycle."""
    client = await intake.client()
    handle = client.get_workflow_handle(workflow_id(deal_id))
    try:
        description = await temporal(handle.describe(), "describe")
    except LifecycleMissing:
        return None
    found = description.typed_search_attributes.get(SA_PLAYBOOK)
    if found is None:  # not published (yet): the lifecycle itself knows
        status: LifecycleStatus = await temporal(handle.query(ClientLifecycle.status), "status query")
        found = status.playbook
    return found


async def _keep(intake: Intake, key: str, deal_id: str, payload: dict[str, Any]) -> tuple[Outcome, dict[str, Any]]:
    """No lifecycle yet: keep the raw value for the start (the playbook, hence the property map, may not be known
    yet), and start now if it was the last one missing."""
    if not await records.add(intake.db, SOURCE, key, deal_id, payload, "pending"):
        return "duplicate", {}
    planned = await _start_if_complete(intake, deal_id, mine=key)
    mapping = intake.config.hubspot.properties_for(planned.detail.get("playbook")).get(payload["property"])
    field_name = mapping.field if mapping is not None else None
    if planned.outcome == "started" and field_name is not None and field_name not in planned.detail.get("refused", {}):
        try:
            await _ensure_field(intake, deal_id, field_name, planned.values, key)
        except Unavailable:
            await records.remove(intake.db, key)
            raise
    outcome: Outcome = "pending" if planned.outcome == "needs_fields" else planned.outcome
    return outcome, planned.detail


async def _ensure_field(intake: Intake, deal_id: str, field_name: str, planned: dict[str, Any], key: str) -> None:
    """The start may have found the lifecycle already started by a concurrent delivery, whose fields lack this
    value: if the running lifecycle's field differs from what our start carried, set it."""
    client = await intake.client()
    handle = client.get_workflow_handle(workflow_id(deal_id))
    status: LifecycleStatus = await temporal(handle.query(ClientLifecycle.status), "status query")
    if field_name not in planned or status.fields.get(field_name) == planned[field_name]:
        return
    with contextlib.suppress(LifecycleMissing, LifecycleClosed, UpdateRejected):
        await _set_fields(intake, deal_id, {field_name: planned[field_name]}, update_id=key)


async def _set_fields(intake: Intake, deal_id: str, values: dict[str, Any], update_id: str) -> None:
    """The set_fields update, with our key as its update id: Temporal runs a retried update once per run."""
    client = await intake.client()
    handle = client.get_workflow_handle(workflow_id(deal_id))
    await temporal(
        send(handle, SetFields(fields=values, actor=ACTOR), update_id),
        "set_fields update",
    )


async def _signal(
    intake: Intake, event: HubSpotEvent, key: str, name: str, payload: dict[str, Any]
) -> tuple[Outcome, dict[str, Any]]:
    """A mapped property value becomes an external event; the key is its event id, so a repeat is dropped."""
    deal_id = event.deal_id
    client = await intake.client()
    handle = client.get_workflow_handle(workflow_id(deal_id))
    data = {"property": payload["property"], "value": payload["value"]}
    try:
        await temporal(
            send(handle, ExternalEvent(name=name, event_id=key, source=SOURCE, data=data)),
            "event signal",
        )
    except LifecycleMissing:
        return await _record(intake, key, deal_id, payload, "no_lifecycle", {"event": name})
    except LifecycleClosed as exc:
        return await _record(intake, key, deal_id, payload, "closed", {"event": name, "reason": str(exc)})
    return await _record(intake, key, deal_id, payload, "signaled", {"event": name})
