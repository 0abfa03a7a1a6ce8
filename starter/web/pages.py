"""The web board's pages: the board, my work, a deal, its forms, the charts, and the actions on them.

Server-rendered Jinja (`templates/_web/`), no script at all: a card moves because the page is drawn again after an
action, and every action is a plain HTML form post (Post/Redirect/Get, so a reload never posts twice). Lists read the
records store (`sopflow.board`, `sopflow.work_queue`); the deal page asks its workflow (`status` query) because its
gate and open forms must be exact.

Actions are the CLI's updates (`starter.lifecycles.send`) with the signed-in person as the actor, the workflow's
validators deciding, and an idempotency key drawn when the page was rendered (`_submission`): a double click, a
replayed post or a back-button resend is applied once. A refusal (the task already done by someone else, a form not
open in this stage, a field out of format) is shown on the page in the engine's own words, with its 4xx status.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime, tzinfo
from typing import Annotated, Any
from urllib.parse import quote, urlencode

import jinja2
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from temporalio.client import WorkflowExecutionStatus

from sopflow import board, charts, forecast, forecast_source, reports, work_queue, zones
from sopflow.config import PROJECT_ROOT, Settings
from sopflow.db import Database
from sopflow.models import Advance, CompleteTask, LifecycleStatus, SubmitForm, valid_deal_id, workflow_id
from sopflow.playbook import Playbook
from starter.intake import form_pages
from starter.intake.context import (
    IntakeError,
    LifecycleClosed,
    LifecycleMissing,
    Unavailable,
    UpdateRejected,
    playbook,
    read_body,
    temporal,
)
from starter.intake.dependencies import IntakeDep, IntakeSource, SettingsDep
from starter.intake.forms import parse_fields
from starter.intake.idempotency import SUBMISSION_FIELD, form_update_id, new_key, valid_key
from starter.lifecycles import send
from starter.web.auth import CSRF_FIELD, Forbidden, SignInRequired, Viewer, WebAuth
from workflows.lifecycle import ClientLifecycle

router = APIRouter(tags=["web board"], include_in_schema=False)

POST_MAX_BYTES = 64 * 1024
# How far the charts page forecasts: what a week-by-week bar chart shows legibly, and a few seconds for 10,000 clients.
FORECAST_WEEKS = 8
WORK_DUE = {"": "everything open", "overdue": "overdue", "today": "due today", "week": "due this week"}

_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}

# Our own pages; the form's fields come from the intake's markup (`form_fields.html`), so a form looks and behaves
# the same whether it is opened from a mailed link or from the board.
_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader([PROJECT_ROOT / "templates" / "_web", form_pages.PAGES_DIR]),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def web_auth(request: Request) -> WebAuth:
    auth: WebAuth = request.app.state.web_auth
    return auth


AuthDep = Annotated[WebAuth, Depends(web_auth)]


def signed_in(request: Request) -> Viewer:
    viewer: Viewer | None = request.state.viewer
    if viewer is None:
        raise SignInRequired
    return viewer


ViewerDep = Annotated[Viewer, Depends(signed_in)]


class WebError(Exception):
    """A page answering 4xx/5xx: a title, what happened in plain words, and the way back."""

    def __init__(self, status: int, title: str, message: str, back: str | None = None) -> None:
        super().__init__(message)
        self.status, self.title, self.message, self.back = status, title, message, back


# --- rendering --------------------------------------------------------------------------------------------------------


def page(request: Request, template: str, code: int = 200, **context: Any) -> HTMLResponse:
    viewer: Viewer | None = request.state.viewer
    html = _env.get_template(template).render(viewer=viewer, csrf_field=CSRF_FIELD, path=request.url.path, **context)
    return HTMLResponse(html, status_code=code, headers=_PAGE_HEADERS)


def error_page(request: Request, exc: WebError) -> HTMLResponse:
    return page(request, "message.html", exc.status, title=exc.title, message=exc.message, back=exc.back)


def _zone(viewer: Viewer, settings: Settings) -> tzinfo:
    return zones.zone(viewer.zone or settings.timezone)


def _when(moment: datetime | None, zone_name: str | None) -> str:
    if moment is None:
        return "-"
    return zones.show(moment, zones.zone(zone_name or "UTC"), "%a %d %b %Y %H:%M %Z")


def _in_days(days: float | None) -> str:
    if days is None:
        return ""
    whole = round(abs(days))
    if whole == 0:
        return "today"
    return f"{whole} d overdue" if days < 0 else f"in {whole} d"


_env.filters["when"] = _when
_env.filters["in_days"] = _in_days


def _books(settings: Settings) -> list[Playbook]:
    """Every playbook file that loads: stage order, stall thresholds, commands. One that fails is left out (the
    board must not go down for one YAML typo; `sopflow playbook validate` names it)."""
    books = []
    for path in sorted(settings.playbooks_dir.glob("*.yaml")):
        try:
            books.append(playbook(settings, str(path)))
        except IntakeError:
            continue
    return books


async def _records(intake: IntakeSource) -> Database:
    try:
        return (await intake()).db
    except Unavailable:
        raise WebError(503, "Please try again in a minute", "The records store is unavailable.") from None


# --- pages ------------------------------------------------------------------------------------------------------------


@router.get("/")
async def home() -> RedirectResponse:
    return RedirectResponse("/board", status_code=303)


@router.get("/board", response_class=HTMLResponse)
async def board_page(
    request: Request,
    viewer: ViewerDep,
    settings: SettingsDep,
    intake: IntakeDep,
    playbook_id: Annotated[str | None, Query(alias="playbook")] = None,
    owner: Annotated[str | None, Query(max_length=254)] = None,
) -> HTMLResponse:
    """One column per stage of a playbook, a card per open deal, filtered by owner and playbook."""
    db = await _records(intake)
    books = _books(settings)
    thresholds = reports.stall_thresholds(books)

    def read() -> tuple[list[Playbook], Playbook | None, list[board.Column]]:
        with db.session() as session:
            choices = board.playbooks_with_deals(session, books) or books
            chosen = next((b for b in books if b.id == playbook_id), None) if playbook_id else choices[0]
            if chosen is None:
                return choices, None, []
            columns = board.board(
                session, chosen, datetime.now(UTC), thresholds, viewer.person, viewer.email, owner or None
            )
            return choices, chosen, columns

    choices, chosen, columns = await asyncio.to_thread(read)
    if chosen is None:
        raise WebError(404, "No such playbook", f"There is no playbook '{playbook_id}'.", back="/board")
    return page(
        request, "board.html", choices=choices, chosen=chosen, columns=columns, owner=owner or "",
        total=sum(len(c.cards) for c in columns),
    )  # fmt: skip


@router.get("/work", response_class=HTMLResponse)
async def work_page(
    request: Request,
    viewer: ViewerDep,
    settings: SettingsDep,
    intake: IntakeDep,
    due: Annotated[str, Query(max_length=10)] = "",
    everyone: bool = False,
) -> HTMLResponse:
    """My work: the `sopflow tasks` queue for the signed-in person (or everyone's), with Done and form links."""
    db = await _records(intake)
    books = _books(settings)
    zone = _zone(viewer, settings)
    filters = work_queue.Filters(owner=None if everyone else viewer.email, due=due or None)

    def read() -> list[work_queue.WorkItem]:
        with db.session() as session:
            items = work_queue.work_items(session, datetime.now(UTC), zone, filters, books)
            if viewer.person is None or viewer.person.limits is None:
                return items
            mine = work_queue.contact_roles(session, viewer.email)
            owners = board.owners(session, {i.deal_id for i in items})
            return [
                i
                for i in items
                if viewer.person.may_see(owners.get(i.deal_id), mine.get(workflow_id(i.deal_id), set()))
            ]

    try:
        items = await asyncio.to_thread(read)
    except ValueError as exc:
        raise WebError(400, "Unknown filter", str(exc), back="/work") from None
    rows = [(item, _item_action(item)) for item in items]
    return page(
        request, "work.html", rows=rows, due=due, dues=WORK_DUE, everyone=everyone, submission=new_key()
    )  # fmt: skip


def _item_action(item: work_queue.WorkItem) -> tuple[str, str] | None:
    """What settles a queue item on the board: ("task", task id) for a Done button, ("form", form id) for a link."""
    if item.task is not None:
        return ("task", item.task)
    if item.form is not None:
        return ("form", item.form)
    return None


@router.get("/deals/{deal_id}", response_class=HTMLResponse)
async def deal_page(
    request: Request,
    viewer: ViewerDep,
    settings: SettingsDep,
    intake: IntakeDep,
    deal_id: str,
    done: Annotated[str | None, Query(max_length=64)] = None,
    submitted: Annotated[str | None, Query(max_length=64)] = None,
) -> HTMLResponse:
    """The deal: stage and what blocks leaving it, open tasks with Done, forms, timeline, emails, next due, and its
    workflow in the Temporal UI."""
    db, record = await _visible_deal(intake, viewer, deal_id)
    status, namespace = await _status(intake, deal_id)
    book = _book_of(settings, status)

    def read() -> tuple[list[reports.HistoryEntry], list[board.SentEmail]]:
        with db.session() as session:
            return reports.deal_history(session, deal_id)[-100:][::-1], board.emails(session, record.workflow_id)

    timeline, sent = await asyncio.to_thread(read)
    notice = None
    title = _task_title(book, done) if done and book is not None else None
    if title is not None:
        notice = f"Task “{title}” is done."
    elif submitted and book is not None and submitted in book.forms:
        notice = f"{book.forms[submitted].title or submitted} received."
    ui = f"{settings.ui_url.rstrip('/')}/namespaces/{quote(namespace)}/workflows/{quote(record.workflow_id)}"
    forms = [
        (form_id, book.forms[form_id].title or form_id)
        for form_id in status.open_forms
        if book and form_id in book.forms
    ]
    return page(
        request, "deal.html", status=status, record=record, timeline=timeline, sent=sent, forms=forms,
        notice=notice, ui_url=ui, zone=status.timezone, submission=new_key(),
        stage_titles={s.id: s.name for s in book.stages} if book else {},
    )  # fmt: skip


def _task_title(book: Playbook, task: str) -> str | None:
    """A task's title, for the notice after its Done (None for an id the playbook has not: a crafted link shows
    nothing)."""
    for stage in book.stages:
        spec = stage.task(task)
        if spec is not None:
            return spec.title
    return None


def _book_of(settings: Settings, status: LifecycleStatus) -> Playbook | None:
    try:
        return playbook(settings, status.playbook)
    except IntakeError:
        return None


async def _visible_deal(intake: IntakeSource, viewer: Viewer, deal_id: str) -> tuple[Database, board.DealRecord]:
    """The deal's record, or 404 for an id that is no deal, an unknown deal or one the viewer may not see (the same
    answer for all three: a limited person learns nothing of deals outside their limits)."""
    missing = WebError(404, "Deal not found", f"There is no deal '{deal_id[:100]}' on your board.", back="/board")
    if not valid_deal_id(deal_id):
        raise missing
    db = await _records(intake)

    def read() -> board.DealRecord | None:
        with db.session() as session:
            return board.deal_record(session, workflow_id(deal_id))

    record = await asyncio.to_thread(read)
    if record is None or not board.may_see(viewer.person, viewer.email, record):
        raise missing
    return db, record


async def _status(intake: IntakeSource, deal_id: str) -> tuple[LifecycleStatus, str]:
    """The deal's status query and the namespace it runs in (for the Temporal UI link)."""
    try:
        client = await intake.temporal()
        handle = client.get_workflow_handle(workflow_id(deal_id))
        description = await temporal(handle.describe(), "describe")
        if description.status not in (None, WorkflowExecutionStatus.RUNNING):
            raise WebError(
                409, "This deal is closed", f"Deal {deal_id}'s lifecycle has ended: it has no open work.", "/board"
            )
        status: LifecycleStatus = await temporal(handle.query(ClientLifecycle.status), "status query")
    except LifecycleMissing:
        raise WebError(404, "Deal not found", f"Deal {deal_id} has no lifecycle.", back="/board") from None
    except (Unavailable, IntakeError):
        raise WebError(503, "Please try again in a minute", "The workflow service is busy or unavailable.") from None
    return status, client.namespace


# --- actions ----------------------------------------------------------------------------------------------------------


async def _posted(request: Request, viewer: Viewer, auth: WebAuth) -> dict[str, Any]:
    """A browser's form post, its CSRF token checked (403 when missing or forged) and taken out."""
    try:
        body = await read_body(request, POST_MAX_BYTES)
    except IntakeError as exc:
        raise WebError(exc.status, "The form could not be read", exc.message) from None
    content_type = request.headers.get("content-type")
    if (content_type or "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise WebError(415, "The form could not be read", "Send the page's own form.")
    try:
        fields = parse_fields(content_type, body)  # the intake's reading of a form post, marker fields included
    except IntakeError as exc:
        raise WebError(exc.status, "The form could not be read", exc.message) from None
    auth.check_csrf(viewer, fields.pop(CSRF_FIELD, None))
    return fields


def _key(fields: dict[str, Any]) -> str:
    key = fields.pop(SUBMISSION_FIELD, None)
    if not isinstance(key, str) or not valid_key(key):
        raise WebError(400, "The form could not be read", "The page's submission id is missing: reload the page.")
    return key


async def _update(
    intake: IntakeSource,
    deal_id: str,
    request: Advance | CompleteTask | SubmitForm,
    update_id: str,
    refused: str,
) -> None:
    """Send an action's update. A refusal, a closed deal or an unconfirmed change becomes its page (`refused` is the
    refusal's title); a form's field messages are raised as UpdateRejected, for the form to show beside its fields.
    Temporal unreachable before anything was sent is "nothing was changed"; sent but not answered in time is "not
    confirmed yet" (it may still be applied, and the same button again is applied once)."""
    back = f"/deals/{deal_id}"
    try:
        client = await intake.temporal()
    except Unavailable:
        raise WebError(
            503, "Please try again in a minute", "The workflow service is unavailable: nothing was changed.", back
        ) from None
    handle = client.get_workflow_handle(workflow_id(deal_id))
    try:
        await temporal(send(handle, request, update_id), "update")
    except UpdateRejected as exc:
        if exc.field_errors and isinstance(request, SubmitForm):
            raise
        raise WebError(409, refused, exc.message, back) from None
    except LifecycleClosed:
        raise WebError(409, "This deal is closed", f"Deal {deal_id}'s lifecycle has ended.", "/board") from None
    except (Unavailable, IntakeError):
        raise WebError(503, "Not confirmed yet", UNCONFIRMED, back) from None


@router.post("/deals/{deal_id}/tasks/{task}/done")
async def task_done(
    request: Request, viewer: ViewerDep, auth: AuthDep, intake: IntakeDep, deal_id: str, task: str
) -> Response:
    """The task's Done button: `complete_task` as the signed-in person, once per rendered button."""
    fields = await _posted(request, viewer, auth)
    await _visible_deal(intake, viewer, deal_id)
    key = _key(fields)
    back = str(fields.get("back") or "")
    back = back if back in ("work", "deal") else "deal"
    note = fields.get("note")
    done = CompleteTask(task=task[:64], actor=viewer.email, note=note if isinstance(note, str) and note else None)
    await _update(intake, deal_id, done, f"web:task:{task[:64]}:{key}", "The task was not marked done")
    target = "/work" if back == "work" else f"/deals/{deal_id}?{urlencode({'done': task})}"
    return RedirectResponse(target, status_code=303)


UNCONFIRMED = (
    "The workflow service did not confirm the change in time. It may still be applied; pressing the same button "
    "again on the page you came from is safe: it is applied once."
)


@router.post("/deals/{deal_id}/advance")
async def advance(request: Request, viewer: ViewerDep, auth: AuthDep, intake: IntakeDep, deal_id: str) -> Response:
    """The "Move to" button of a stage whose gate is met: `advance`, as the CLI's `deal advance`."""
    fields = await _posted(request, viewer, auth)
    await _visible_deal(intake, viewer, deal_id)
    key = _key(fields)
    to = fields.get("to")
    if not isinstance(to, str) or not to:
        raise WebError(400, "The form could not be read", "Say which stage to move to.", back=f"/deals/{deal_id}")
    await _update(
        intake, deal_id, Advance(to=to[:64], actor=viewer.email), f"web:advance:{key}", "The deal did not move"
    )
    return RedirectResponse(f"/deals/{deal_id}", status_code=303)


@router.get("/deals/{deal_id}/forms/{form}", response_class=HTMLResponse)
async def form_page(
    request: Request, viewer: ViewerDep, settings: SettingsDep, intake: IntakeDep, deal_id: str, form: str
) -> HTMLResponse:
    await _visible_deal(intake, viewer, deal_id)
    view = await _form_view(intake, settings, deal_id, form)
    return _form(request, view, {}, {})


async def _form_view(intake: IntakeSource, settings: Settings, deal_id: str, form: str) -> form_pages.FormView:
    status, _ = await _status(intake, deal_id)
    book = _book_of(settings, status)
    if book is None or form not in book.forms:
        raise WebError(404, "Form not found", f"The deal's playbook has no form '{form[:64]}'.", f"/deals/{deal_id}")
    spec = book.forms[form]
    if form not in status.open_forms:
        raise WebError(
            409,
            "This form cannot be submitted now",
            f"The {spec.title or form} is not open while the deal is in {status.stage_title}.",
            f"/deals/{deal_id}",
        )
    return form_pages.FormView(deal_id, form, spec, book.title or book.id, status.stage_title, status.timezone)


def _form(
    request: Request, view: form_pages.FormView, values: Mapping[str, Any], errors: Mapping[str, str], code: int = 200
) -> HTMLResponse:
    controls = form_pages.view_controls(view, values, errors)
    return page(
        request, "form.html", code, view=view, action=request.url.path, submission=new_key(), controls=controls,
        fields={c.name: c for c in controls}, errors=dict(errors), csrf=request.state.viewer.csrf,
    )  # fmt: skip


@router.post("/deals/{deal_id}/forms/{form}")
async def submit_form(
    request: Request,
    viewer: ViewerDep,
    auth: AuthDep,
    settings: SettingsDep,
    intake: IntakeDep,
    deal_id: str,
    form: str,
) -> Response:
    """A form from the board: `submit_form` as the signed-in person; field messages shown beside the fields."""
    fields = await _posted(request, viewer, auth)
    await _visible_deal(intake, viewer, deal_id)
    key = _key(fields)
    submission = SubmitForm(form=form[:64], fields=fields, actor=viewer.email)
    try:
        await _update(intake, deal_id, submission, form_update_id(deal_id, form[:64], key), "The form was not accepted")
    except UpdateRejected as exc:
        view = await _form_view(intake, settings, deal_id, form)
        return _form(request, view, fields, exc.field_errors, code=422)
    return RedirectResponse(f"/deals/{deal_id}?{urlencode({'submitted': form})}", status_code=303)


# --- charts -----------------------------------------------------------------------------------------------------------


@router.get("/charts", response_class=HTMLResponse)
async def charts_page(request: Request, viewer: ViewerDep, settings: SettingsDep, intake: IntakeDep) -> HTMLResponse:
    """Deals per stage, days in stage (median and p90) and the next 8 weeks' work per owner, drawn as SVG."""
    db = await _records(intake)
    books = _books(settings)
    orders = reports.stage_orders(books)
    zone = _zone(viewer, settings)
    titles = {(b.id, s.id): s.name for b in books for s in b.stages}

    def draw() -> list[tuple[str, str, list[str]]]:
        now = datetime.now(UTC)
        with db.session() as session:
            rows = reports.pipeline(session, now, stage_order=orders)
            times = reports.time_in_stage(session, stage_order=orders)
            items = work_queue.work_items(session, now, zone, None, books)
        sections = []
        for book in (b for b in books if any(r.playbook == b.id for r in rows)):
            funnel = charts.funnel_svg([r for r in rows if r.playbook == book.id])
            mine = [r for r in times if r.playbook == book.id]
            stage_titles = {r.stage: titles.get((book.id, r.stage), r.stage) for r in mine}
            sections.append(
                (book.title or book.id, "Deals per stage", [funnel, charts.stage_time_svg(mine, stage_titles)])
            )
        start = now.astimezone(zone).date()
        workload = charts.weekly_workload(items, start, 8, zone)
        sections.append(("Everyone", "The next 8 weeks' work per owner", [charts.workload_svg(workload, start)]))
        sections.append(_forecast_section(db, now))
        return sections

    sections = await asyncio.to_thread(draw)
    return page(request, "charts.html", sections=sections)


def _forecast_section(db: Database, now: datetime) -> tuple[str, str, list[str]]:
    """The next weeks' forecast of the live book (`sopflow forecast`), both assumptions, from the states the records
    store holds. A client whose stored state is behind its timeline is left out here and counted in the caption: the
    page asks Temporal nothing (`sopflow forecast` asks those clients' workflows)."""
    found = forecast_source.load_seeds(db)
    svgs = []
    for assumption, text in forecast.ASSUMPTIONS.items():
        result, _ = forecast.forecast(found.seeds, now, FORECAST_WEEKS, assumption, "playbook")
        title = f"If {text.split(':')[0]} ({len(found.seeds)} live clients)"
        series = {forecast.CATEGORIES[c]: weeks for c, weeks in result.totals().items()}
        svgs.append(charts.stacked_weeks_svg(series, result.monday, title))
    caption = f"The next {FORECAST_WEEKS} weeks if nothing happens, and if everything is done on time"
    if found.stale:
        caption += (
            f"; {len(found.stale)} clients whose stored state is behind are left out (sopflow forecast asks them)"
        )
    return "Forecast", caption, svgs


# --- sign-in ----------------------------------------------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, auth: AuthDep, next: str = "/board") -> Response:
    if request.state.viewer is not None:
        return RedirectResponse(_local(next), status_code=303)
    return page(request, "login.html", next=_local(next), form_token=auth.login_form_token(), error=None)


@router.post("/login")
async def login(request: Request, auth: AuthDep) -> Response:
    try:
        fields = parse_fields(request.headers.get("content-type"), await read_body(request, 4096))
    except IntakeError as exc:
        raise WebError(exc.status, "The form could not be read", exc.message, "/login") from None
    try:
        auth.check_login_form(fields.get(CSRF_FIELD))
    except Forbidden:
        raise WebError(403, "This page has expired", "Open the sign-in page again and retry.", "/login") from None
    given, wanted = fields.get("token"), fields.get("next")
    next_url = _local(wanted if isinstance(wanted, str) else "/board")
    viewer = auth.sign_in(given) if isinstance(given, str) and given else None
    if viewer is None:
        return page(
            request, "login.html", 401, next=next_url, form_token=auth.login_form_token(),
            error="That access token is not valid. Ask for a new one (sopflow staff token YOUR-EMAIL).",
        )  # fmt: skip
    response = RedirectResponse(next_url, status_code=303)
    auth.set_session(response, viewer)
    return response


@router.post("/logout")
async def logout(request: Request, viewer: ViewerDep, auth: AuthDep) -> Response:
    await _posted(request, viewer, auth)
    response = RedirectResponse("/login", status_code=303)
    auth.end_session(response)
    return response


def _local(target: str) -> str:
    """Only a path on this board: a `next` pointing elsewhere would make the login page an open redirect."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/board"
