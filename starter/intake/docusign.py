"""`POST /webhooks/docusign`: DocuSign Connect (JSON, HMAC-signed) envelope events become lifecycle events.

The envelope names its deal in a text custom field (`docusign.deal_field` in the intake mapping, `deal_id` by
default), set when the contract is sent; nothing in sopflow sends envelopes itself, so that field is the one link
between an envelope and a deal that needs no extra bookkeeping. An envelope without it is not one of ours: it is
recorded as `unmapped` and acknowledged, since Connect would otherwise retry it for days.

The event id handed to the workflow is `docusign:<envelope id>:<status>`, so the lifecycle drops a repeat even when
two copies race past our own de-duplication row.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel

from sopflow.models import ExternalEvent, valid_deal_id, workflow_id
from sopflow.signatures import verify_docusign
from starter.intake import records
from starter.intake.context import (
    IntakeError,
    LifecycleClosed,
    LifecycleMissing,
    parse_json,
    read_body,
    temporal,
)
from starter.intake.dependencies import IntakeDep, SettingsDep
from starter.lifecycles import send

log = logging.getLogger("sopflow.intake")
router = APIRouter(tags=["webhooks"])

SOURCE = "docusign"
_ENVELOPE_ID = re.compile(r"^[A-Za-z0-9-]{1,100}$")
_EVENT = re.compile(r"^[a-z][a-z-]{0,63}$")
# Connect sends one header per active HMAC key; it allows up to 100 keys.
MAX_SIGNATURE_HEADERS = 100


class DocuSignAnswer(BaseModel):
    outcome: Literal["signaled", "duplicate", "ignored", "unmapped", "closed"]
    deal_id: str | None = None
    event: str | None = None
    envelope_id: str | None = None


@router.post(
    "/webhooks/docusign",
    response_model=DocuSignAnswer,
    summary="DocuSign Connect envelope events (HMAC)",
    responses={
        400: {"description": "not a Connect JSON event"},
        401: {"description": "no X-DocuSign-Signature-N header matches a configured key"},
        404: {"description": "the envelope names a deal that has no lifecycle"},
        413: {"description": "body too large"},
        503: {"description": "Temporal or the records database is unavailable: retry"},
    },
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
    },
)
async def docusign_webhook(
    request: Request,
    config: SettingsDep,
    open_intake: IntakeDep,
    x_docusign_signature_1: Annotated[str | None, Header(alias="X-DocuSign-Signature-1")] = None,
) -> DocuSignAnswer:
    """Verify the HMAC over the exact bytes (any key, any header), then signal the envelope's deal."""
    body = await read_body(request, config.max_body_bytes)
    keys = config.docusign_keys()
    if not keys:
        raise IntakeError(401, "DocuSign webhooks are not enabled here (no HMAC key configured)")
    signatures = [
        value
        for n in range(1, MAX_SIGNATURE_HEADERS + 1)
        if (value := request.headers.get(f"x-docusign-signature-{n}")) is not None
    ]
    if not signatures:
        raise IntakeError(401, "missing X-DocuSign-Signature-1")
    if not verify_docusign(keys, body, signatures):
        raise IntakeError(401, "no X-DocuSign-Signature header matches a configured HMAC key")

    message = parse_json(body)
    event, envelope_id, data = _parse(message)
    intake = await open_intake()
    name = intake.config.docusign.events.get(event)
    if name is None:
        return DocuSignAnswer(outcome="ignored", event=event, envelope_id=envelope_id)
    status = event.removeprefix("envelope-")
    key = f"{SOURCE}:{envelope_id}:{status}"
    if await records.find(intake.db, key) is not None:
        return DocuSignAnswer(outcome="duplicate", event=event, envelope_id=envelope_id)

    payload: dict[str, Any] = {"event": event, "envelope_id": envelope_id, "lifecycle_event": name}
    deal_id = _deal_id(data, intake.config.docusign.deal_field)
    if deal_id is None:
        log.warning("docusign %s for envelope %s names no deal: acknowledged, not delivered", event, envelope_id)
        await records.add(intake.db, SOURCE, key, None, payload, "unmapped")
        return DocuSignAnswer(outcome="unmapped", event=event, envelope_id=envelope_id)

    client = await intake.client()
    handle = client.get_workflow_handle(workflow_id(deal_id))
    signal = ExternalEvent(name=name, event_id=key, source=SOURCE, data={"envelope_id": envelope_id})
    outcome: Literal["signaled", "closed"] = "signaled"
    try:
        await temporal(send(handle, signal), "event signal")
    except LifecycleMissing:
        # Not recorded: the deal may be started later (a typo fixed in the CRM), and Connect's retry then lands.
        raise IntakeError(404, f"deal {deal_id} has no lifecycle", envelope_id=envelope_id) from None
    except LifecycleClosed:
        outcome = "closed"
    inserted = await records.add(intake.db, SOURCE, key, deal_id, payload, outcome)
    log_fields = {"source": "docusign", "event": event, "deal_id": deal_id, "outcome": outcome}
    log.info("docusign %s envelope %s deal %s: %s", event, envelope_id, deal_id, outcome, extra=log_fields)
    return DocuSignAnswer(
        outcome=outcome if inserted else "duplicate", deal_id=deal_id, event=event, envelope_id=envelope_id
    )


def _parse(message: Any) -> tuple[str, str, dict[str, Any]]:
    """The event name, the envelope id and the `data` object of a Connect JSON (SIM) message, or a 400."""
    if not isinstance(message, dict):
        raise IntakeError(400, "expected a DocuSign Connect JSON object")
    event = message.get("event")
    data = message.get("data")
    if not isinstance(event, str) or not _EVENT.match(event) or not isinstance(data, dict):
        raise IntakeError(400, "expected a Connect JSON message with `event` and `data` (set Connect to JSON, SIM)")
    summary = _object(data.get("envelopeSummary"))
    envelope_id = data.get("envelopeId") or summary.get("envelopeId")
    if not isinstance(envelope_id, str) or not _ENVELOPE_ID.match(envelope_id):
        raise IntakeError(400, "the Connect message has no valid data.envelopeId")
    return event, envelope_id, data


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _deal_id(data: dict[str, Any], field: str) -> str | None:
    """The deal named by the envelope's text custom field: in the envelope summary, or in `data` itself."""
    for holder in (_object(data.get("envelopeSummary")).get("customFields"), data.get("customFields")):
        fields = _object(holder).get("textCustomFields")
        for item in fields if isinstance(fields, list) else []:
            if isinstance(item, dict) and item.get("name") == field and isinstance(item.get("value"), str):
                value = item["value"].strip()
                return value if valid_deal_id(value) else None
    return None
