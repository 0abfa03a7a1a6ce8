"""`POST /forms/{deal_id}/{form}`: a web form (JSON or form-encoded) becomes the lifecycle's `submit_form` update;
`GET` of the same URL is the HTML form a mailed link opens (`starter.intake.form_pages`).

Authenticated by a token scoped to the deal and the form (`sopflow.signatures.form_token`), passed as `?token=`
(so a plain HTML form's action URL carries it) or as the `X-Sopflow-Form-Token` header. The token is checked before
anything else, so an unauthenticated caller learns nothing, not even whether the deal exists.

The playbook validates the fields inside the workflow's update validator; its refusal comes back as 422 with one
message per field when it is about fields, or 409 when the lifecycle refuses the form as such (not open in this
stage, account already claimed, lifecycle closed).

Every post is idempotent by key (`starter.intake.idempotency`): the form page's one-time submission id (hidden field
`_submission`) or the sender's `Idempotency-Key` header becomes the update id, so the same submission sent twice,
even at the same instant, is applied once and both posts get the answer. Without a key each post is new. A post
Temporal does not confirm in time is a 503 that says so: not confirmed yet (it may still be applied), and retrying
the same submission is safe.

A browser (an Accept header preferring text/html) gets pages instead of JSON: the form, a thank-you page naming the
stage the deal is now in, the form again with the per-field messages after a 422, the "not confirmed yet" page with
a button that sends the same submission again after a 503, or an error page with the same status code. The form
is drawn from the deal's playbook as found in `settings.playbooks_dir`, by the id the lifecycle reports (`status`
query); the lifecycle's own pinned copy of the playbook still validates every post, so a form edited since the deal
started shows its new fields and the lifecycle names what it does not accept.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel
from temporalio.client import Client, WorkflowExecutionStatus

from sopflow.config import Settings
from sopflow.models import LifecycleStatus, SubmitForm, UpdateResult, valid_deal_id, workflow_id
from sopflow.signatures import verify_form_token
from starter.intake import form_pages
from starter.intake.context import (
    IntakeError,
    LifecycleClosed,
    LifecycleMissing,
    Unavailable,
    UpdateRejected,
    huge_number,
    parse_json,
    playbook,
    read_body,
    temporal,
)
from starter.intake.dependencies import IntakeDep, IntakeSource, SettingsDep, TemporalDep
from starter.intake.idempotency import (
    KEY_HEADER,
    KEY_RULE,
    SUBMISSION_FIELD,
    form_update_id,
    new_key,
    valid_key,
)
from starter.lifecycles import send
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


_TOKEN_QUERY = Query(description="hex HMAC-SHA256(form secret, '<deal_id>:<form>')")
# Declared for the OpenAPI docs; the value is read (and a repeated header refused) in `_key`.
_KEY_HEADER = Header(
    alias=KEY_HEADER,
    description=f"makes the post idempotent: the same key is applied once and answered alike ({KEY_RULE})",
)


@router.get(
    "/forms/{deal_id}/{form}",
    response_class=HTMLResponse,
    summary="The web form a mailed link opens",
    responses={
        401: {"description": "missing or wrong form token", "content": {"text/html": {}}},
        404: {"description": "no lifecycle for that deal, or no such form", "content": {"text/html": {}}},
        409: {"description": "the lifecycle has ended, or the form is not open now", "content": {"text/html": {}}},
        503: {"description": "Temporal (or the playbook file) is unavailable: retry", "content": {"text/html": {}}},
    },
)
async def form_page(
    config: SettingsDep,
    temporal_source: TemporalDep,
    deal_id: str,
    form: str,
    token: Annotated[str | None, _TOKEN_QUERY] = None,
) -> HTMLResponse:
    """An HTML form for one deal's form, generated from its playbook; it posts back to this URL with the token.

    Checked like a post (token first, then the deal) and refused up front when the post would be refused anyway
    (lifecycle ended, form not open in the deal's stage), so nobody fills in a form that cannot be accepted.
    """
    try:
        _authorize(config, deal_id, form, token)
        view = await _open_form(await temporal_source(), config, deal_id, form)
    except IntakeError as exc:
        return form_pages.error_page(exc)
    return form_pages.form_page(view, token, submission=new_key())


@router.post(
    "/forms/{deal_id}/{form}",
    response_model=FormAnswer,
    summary="Submit a web form for a deal",
    responses={
        200: {"content": {"text/html": {}}, "description": "accepted (a thank-you page when text/html is preferred)"},
        400: {"description": "unparseable body, or a malformed Idempotency-Key header / `_submission` field"},
        401: {"description": "missing or wrong form token"},
        404: {"description": "no lifecycle for that deal"},
        409: {"description": "the lifecycle refuses the form (not open in this stage, closed, claimed)"},
        413: {"description": "body too large"},
        415: {"description": "neither JSON nor form-encoded"},
        422: {"description": "invalid fields: `fields` maps each field to its message (HTML: the form again)"},
        503: {
            "description": "Temporal (or the records database) unavailable or slow: retry. When the update was sent "
            "but not confirmed, the answer says so (`confirmed: false`): it may still be applied, and retrying with "
            "the same Idempotency-Key (or the page's same submission) is safe"
        },
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
    config: SettingsDep,
    open_intake: IntakeDep,
    deal_id: str,
    form: str,
    token: Annotated[str | None, _TOKEN_QUERY] = None,
    x_sopflow_form_token: Annotated[str | None, Header(alias="X-Sopflow-Form-Token")] = None,
    idempotency_key: Annotated[str | None, _KEY_HEADER] = None,
) -> FormAnswer | HTMLResponse:
    """Check the token, parse the fields and the key, and let the lifecycle validate and apply them (once per key).

    Answers JSON, as webhook-style senders expect, unless the request prefers text/html (a browser posting the
    form page): then every outcome is a page, with the same status code.
    """
    del idempotency_key  # read by `_key`, which also refuses the header sent twice
    given = x_sopflow_form_token or token
    html = form_pages.prefers_html(request.headers.get("accept"))
    fields: dict[str, Any] | None = None
    body = b""
    key: str | None = None
    try:
        body = await read_body(request, min(config.max_body_bytes, FORM_MAX_BYTES))
        _authorize(config, deal_id, form, given)
        fields = parse_fields(request.headers.get("content-type"), body)
        key = _key(request, fields)
        answer = await _submit(request, open_intake, deal_id, form, fields, key)
    except IntakeError as exc:
        if not html:
            raise
        if exc.status == 422 and fields is not None:
            return await _form_again(open_intake, deal_id, form, given, fields, exc)
        if exc.extra.get("confirmed") is False:  # the update was sent: say what is true of it (`_unconfirmed`)
            return form_pages.unconfirmed_page(form, given, _resent(request, body, key), safe=key is not None)
        return form_pages.error_page(exc)
    log_fields = {"source": "form", "event": form, "deal_id": deal_id, "stage": answer.stage, "outcome": "accepted"}
    log.info("form %s for deal %s accepted: stage %s", form, deal_id, answer.stage, extra=log_fields)
    if html:
        return form_pages.thanks_page(answer.stage_title)
    return FormAnswer(
        deal_id=deal_id,
        form=form,
        stage=answer.stage,
        stage_title=answer.stage_title,
        open_forms=answer.open_forms,
        waiting_on=answer.unmet_gate,
    )


def _authorize(config: Settings, deal_id: str, form: str, token: str | None) -> None:
    """The token before anything else, so an unauthenticated caller learns nothing, not even whether the deal exists."""
    secret = config.form_secret.get_secret_value() if config.form_secret else ""
    if not secret:
        raise IntakeError(401, "web forms are not enabled here (no form secret configured)")
    if not verify_form_token(secret, deal_id, form, token):
        raise IntakeError(401, "missing or wrong form token")
    if not valid_deal_id(deal_id) or not _FORM.match(form):
        raise IntakeError(404, "no such deal or form")


def _key(request: Request, fields: dict[str, Any]) -> str | None:
    """The submission's idempotency key: the `Idempotency-Key` header or the page's `_submission` field (taken out
    of the fields), checked against `KEY_RULE`; None when the post has neither (each such post is new)."""
    headers = request.headers.getlist(KEY_HEADER)
    if len(headers) > 1:
        raise IntakeError(400, f"send one {KEY_HEADER} header, not {len(headers)} ({KEY_RULE})")
    header = headers[0] if headers else None
    if header is not None and not valid_key(header):
        raise IntakeError(400, f"the {KEY_HEADER} header must be {KEY_RULE}")
    submitted = fields.pop(SUBMISSION_FIELD, None)
    if submitted is not None and not (isinstance(submitted, str) and valid_key(submitted)):
        raise IntakeError(
            400,
            f"the page's submission id ({SUBMISSION_FIELD}) is damaged ({KEY_RULE}): open the form again from its link",
        )
    if header is not None and submitted is not None and header != submitted:
        raise IntakeError(400, f"the {KEY_HEADER} header and the {SUBMISSION_FIELD} field are different keys: send one")
    return header or submitted


def _resent(request: Request, body: bytes, key: str | None) -> list[tuple[str, str]] | None:
    """What a browser posted (form-encoded pairs), to send again from the "not confirmed yet" page: the same
    submission, its key included. None when there is nothing to resend (JSON, or no body read)."""
    media = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if media != "application/x-www-form-urlencoded" or not body:
        return None
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FIELDS)
    except (UnicodeError, ValueError):
        return None
    pairs = [(name, value) for name, value in pairs if name != SUBMISSION_FIELD]
    return [*pairs, (SUBMISSION_FIELD, key)] if key is not None else pairs


async def _submit(
    request: Request, open_intake: IntakeSource, deal_id: str, form: str, fields: dict[str, Any], key: str | None
) -> UpdateResult:
    """The submit_form update, with the key as its update id (Temporal applies an id once per run and answers a
    repeat with the first result). A 503 from the update itself says what is true: not confirmed yet."""
    if huge_number(fields):
        raise IntakeError(422, f"form '{form}' is invalid", fields={"*": "a number out of range"})
    intake = await open_intake()
    client = await intake.client()
    handle = client.get_workflow_handle(workflow_id(deal_id))
    update_id = form_update_id(deal_id, form, key) if key is not None else None
    try:
        answer = await temporal(
            send(handle, SubmitForm(form=form, fields=fields, actor=ACTOR), update_id),
            "submit_form update",
        )
    except Unavailable as exc:
        raise _unconfirmed(exc.message, key, from_header=key is not None and KEY_HEADER in request.headers) from None
    except LifecycleMissing:
        raise IntakeError(404, f"deal {deal_id} has no lifecycle") from None
    except LifecycleClosed as exc:
        raise IntakeError(409, str(exc)) from None
    except UpdateRejected as exc:
        if exc.field_errors:
            raise IntakeError(422, exc.message, fields=exc.field_errors) from None
        raise IntakeError(409, exc.message) from None
    return answer


def _unconfirmed(reason: str, key: str | None, *, from_header: bool) -> IntakeError:
    """The 503 of an update Temporal did not confirm: it was sent and may still be applied (when a worker picks it
    up), so "nothing was saved" would be false; what is true is that a retry with the same key is applied once."""
    if key is None:
        advice = (
            f"it may still be applied, so a retry without an {KEY_HEADER} may apply it twice: send one to retry safely"
        )
        return IntakeError(503, f"not confirmed yet: {reason}; {advice}", confirmed=False)
    if from_header:
        advice = f"it may still be applied; retrying with the same {KEY_HEADER} is safe (it is applied once)"
        return IntakeError(503, f"not confirmed yet: {reason}; {advice}", confirmed=False, idempotency_key=key)
    advice = f"it may still be applied; retrying the same submission ({SUBMISSION_FIELD}) is safe (it is applied once)"
    return IntakeError(503, f"not confirmed yet: {reason}; {advice}", confirmed=False, submission=key)


async def _open_form(client: Client, config: Settings, deal_id: str, form: str) -> form_pages.FormView:
    """The form as the deal's page shows it, or the IntakeError a post of it would get (404, 409, 503).

    `describe` first: it tells a missing or ended lifecycle apart without a worker, where a query of an ended one
    would need a worker to replay it.
    """
    handle = client.get_workflow_handle(workflow_id(deal_id))
    try:
        description = await temporal(handle.describe(), "describe")
        if description.status not in (None, WorkflowExecutionStatus.RUNNING):
            raise LifecycleClosed("ended")
        status: LifecycleStatus = await temporal(handle.query(ClientLifecycle.status), "status query")
    except LifecycleMissing:
        raise IntakeError(404, f"deal {deal_id} has no lifecycle") from None
    except LifecycleClosed:
        raise IntakeError(409, f"deal {deal_id} is closed: its forms can no longer be submitted") from None
    if status.outcome is not None:
        raise IntakeError(409, f"deal {deal_id} is closed: its forms can no longer be submitted")
    pb = playbook(config, status.playbook)
    spec = pb.forms.get(form)
    if spec is None:
        raise IntakeError(404, f"playbook {pb.id} has no form '{form}'")
    if pb.version != status.playbook_version:
        log.info(
            "form page %s for deal %s: playbook %s is at version %s, the deal runs version %s",
            form,
            deal_id,
            pb.id,
            pb.version,
            status.playbook_version,
        )
    if form not in status.open_forms:
        open_now = ", ".join(pb.forms[f].title or f for f in status.open_forms if f in pb.forms) or "none"
        raise IntakeError(
            409, f"the {spec.title or form} is not open while the deal is in {status.stage_title} (open: {open_now})"
        )
    return form_pages.FormView(deal_id, form, spec, pb.title or pb.id, status.stage_title, status.timezone)


async def _form_again(
    open_intake: IntakeSource, deal_id: str, form: str, token: str | None, fields: dict[str, Any], refusal: IntakeError
) -> HTMLResponse:
    """After a 422 from a browser: the form again, as typed, with each message next to its field."""
    errors = refusal.extra.get("fields")
    try:
        view = await _open_form(await open_intake.temporal(), open_intake.settings, deal_id, form)
    except IntakeError:
        return form_pages.error_page(refusal)  # the form cannot be drawn: at least list the messages
    messages = {str(k): str(v) for k, v in errors.items()} if isinstance(errors, dict) else {"*": refusal.message}
    # A fresh submission id: the refused post was not applied, and the corrected one is a submission of its own.
    return form_pages.form_page(view, token, fields, messages, status=422, submission=new_key())


def parse_fields(content_type: str | None, body: bytes) -> dict[str, Any]:
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
        fields = form_pages.browser_fields(fields)
    else:
        raise IntakeError(415, "send application/json or application/x-www-form-urlencoded")
    if len(fields) > MAX_FIELDS:
        raise IntakeError(400, f"more than {MAX_FIELDS} fields")
    return fields
