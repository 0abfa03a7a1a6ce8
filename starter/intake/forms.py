"""`POST /forms/{deal_id}/{form}`: a web form (JSON or form-encoded) becomes the lifecycle's `submit_form` update.

Authenticated by a token scoped to the deal and the form (`sopflow.signatures.form_token`), passed as `?token=`
(so a plain HTML form's action URL carries it) or as the `X-Sopflow-Form-Token` header. The token is checked before
anything else, so an unauthenticated caller learns nothing, not even whether the deal exists.

The playbook validates the fields inside the workflow's update validator; its refusal comes back as 422 with one
message per field when it is about fields, or 409 when the lifecycle refuses the form as such (not open in this
stage, account already claimed, lifecycle closed).
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Header, Query, Request
from pydantic import BaseModel

from sopflow.models import LifecycleStatus, SubmitForm, valid_deal_id
from sopflow.signatures import verify_form_token
from starter.intake.context import (
    Intake,
    IntakeError,
    LifecycleClosed,
    LifecycleMissing,
    UpdateRejected,
    huge_number,
    parse_json,
    read_body,
    settings,
    temporal,
    workflow_id,
)
from workflows.lifecycle import ClientLifecycle

log = logging.getLogger("sopflow.intake")
router = APIRouter(tags=["forms"])

ACTOR = "webform"
# A form is a few dozen short fields; the body goes into workflow history, where large payloads cost every replay.
FORM_MAX_BYTES = 64 * 1024
MAX_FIELDS = 200
_FORM = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class FormAnswer(BaseModel):
    deal_id: str
    form: str
    stage: str
    stage_title: str
    open_forms: list[str] = []
    waiting_on: list[str] = []


@router.post(
    "/forms/{deal_id}/{form}",
    response_model=FormAnswer,
    summary="Submit a web form for a deal",
    responses={
        400: {"description": "unparseable body"},
        401: {"description": "missing or wrong form token"},
        404: {"description": "no lifecycle for that deal"},
        409: {"description": "the lifecycle refuses the form (not open in this stage, closed, claimed)"},
        413: {"description": "body too large"},
        415: {"description": "neither JSON nor form-encoded"},
        422: {"description": "invalid fields: `fields` maps each field to its message"},
        503: {"description": "Temporal is unavailable: retry"},
    },
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {"schema": {"type": "object", "additionalProperties": True}},
                "application/x-www-form-urlencoded": {"schema": {"type": "object", "additionalProperties": True}},
            },
        }
    },
)
async def submit_form(
    request: Request,
    deal_id: str,
    form: str,
    token: Annotated[str | None, Query(description="hex HMAC-SHA256(form secret, '<deal_id>:<form>')")] = None,
    x_sopflow_form_token: Annotated[str | None, Header(alias="X-Sopflow-Form-Token")] = None,
) -> FormAnswer:
    """Check the token, parse the fields, and let the lifecycle validate and apply them."""
    config = settings(request)
    body = await read_body(request, min(config.max_body_bytes, FORM_MAX_BYTES))
    secret = config.form_secret.get_secret_value() if config.form_secret else ""
    if not secret:
        raise IntakeError(401, "web forms are not enabled here (no form secret configured)")
    if not verify_form_token(secret, deal_id, form, x_sopflow_form_token or token):
        raise IntakeError(401, "missing or wrong form token")
    if not valid_deal_id(deal_id) or not _FORM.match(form):
        raise IntakeError(404, "no such deal or form")
    fields = _fields(request.headers.get("content-type"), body)
    if huge_number(fields):
        raise IntakeError(422, f"form '{form}' is invalid", fields={"*": "a number out of range"})

    intake = await Intake.of(request)
    client = await intake.client()
    handle = client.get_workflow_handle(workflow_id(deal_id))
    try:
        status: LifecycleStatus = await temporal(
            handle.execute_update(ClientLifecycle.submit_form, SubmitForm(form=form, fields=fields, actor=ACTOR)),
            "submit_form update",
        )
    except LifecycleMissing:
        raise IntakeError(404, f"deal {deal_id} has no lifecycle") from None
    except LifecycleClosed as exc:
        raise IntakeError(409, str(exc)) from None
    except UpdateRejected as exc:
        if exc.field_errors:
            raise IntakeError(422, exc.message, fields=exc.field_errors) from None
        raise IntakeError(409, exc.message) from None
    log.info("form %s for deal %s accepted: stage %s", form, deal_id, status.stage)
    return FormAnswer(
        deal_id=deal_id,
        form=form,
        stage=status.stage,
        stage_title=status.stage_title,
        open_forms=status.open_forms,
        waiting_on=status.unmet_gate,
    )


def _fields(content_type: str | None, body: bytes) -> dict[str, Any]:
    """JSON object or urlencoded pairs (a repeated key, as multi-choice checkboxes send, becomes a list)."""
    media = (content_type or "").split(";")[0].strip().lower()
    if not body.strip() and media in ("", "application/json", "application/x-www-form-urlencoded"):
        return {}
    if media == "application/json" or media.endswith("+json"):
        value = parse_json(body)
        if not isinstance(value, dict):
            raise IntakeError(400, "expected a JSON object of field names to values")
        fields: dict[str, Any] = value
    elif media == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict", max_num_fields=MAX_FIELDS)
        except (UnicodeError, ValueError) as exc:
            raise IntakeError(400, f"body is not valid form data: {exc}") from None
        fields = {}
        for name, text in pairs:
            if name in fields:
                previous = fields[name]
                fields[name] = [*previous, text] if isinstance(previous, list) else [previous, text]
            else:
                fields[name] = text
    else:
        raise IntakeError(415, "send application/json or application/x-www-form-urlencoded")
    if len(fields) > MAX_FIELDS:
        raise IntakeError(400, f"more than {MAX_FIELDS} fields")
    return fields
