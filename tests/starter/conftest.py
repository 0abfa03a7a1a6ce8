"""Shared by the starter tests: the `sopflow` executable driven as a user would, and the webhook intake app (signed
senders, form posts), both against the session's dev server with a real worker."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import uvicorn
import yaml
from fastapi import FastAPI
from sqlalchemy import select
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.testing import WorkflowEnvironment

from sopflow.config import PROJECT_ROOT, Settings
from sopflow.constants import TASK_QUEUE
from sopflow.db import Database, DealRow, InboundEvent
from sopflow.mailsink import MailSink, free_port
from sopflow.models import Advance, CompleteTask, ExternalEvent, LifecycleStatus, SetFields, SubmitForm
from sopflow.playbook_checks import load_playbook
from sopflow.signatures import docusign_signature, form_token, hubspot_v3_signature
from sopflow.staff import Limits, Person, Staff, save_staff, token_hash
from starter.intake.dependencies import get_settings
from starter.lifecycles import start_lifecycle
from starter.webhooks import create_app
from tests.conftest import CONTRACT_REQUEST, PRELAUNCH_TASKS, TARGETING, make_worker, until
from workflows.lifecycle import ClientLifecycle

SOPFLOW = str(Path(sys.executable).parent / "sopflow")


class Cli:
    def __init__(self, address: str) -> None:
        self.env = {**os.environ, "TEMPORAL_ADDRESS": address, "TEMPORAL_NAMESPACE": "default", "COLUMNS": "200"}
        self.cwd: Path | None = None

    async def __call__(self, *args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            SOPFLOW, *args, env=self.env, cwd=self.cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
        return proc.returncode or 0, stdout.decode(), stderr.decode()

    async def start_deal(self, deal: str, *fields: str, playbook: str = "safe_balance") -> str:
        """`sopflow deal start` with `key=value` fields."""
        pairs = [arg for field in fields for arg in ("-f", field)]
        return await self.ok("deal", "start", "--deal-id", deal, "--playbook", playbook, *pairs)

    async def ok(self, *args: str) -> str:
        code, stdout, stderr = await self(*args)
        assert code == 0, f"sopflow {' '.join(args)} failed: {stderr}"
        return stdout


# Where the links in emails point, for the CLI commands that render them.
LINKS_URL = "https://sop.example.com"


def offline_cli(tmp_path: Path) -> Cli:
    """The CLI for commands that never reach Temporal; its home (records, logs) is the test's own folder."""
    cli = Cli(f"127.0.0.1:{free_port()}")
    cli.env.update({"SOPFLOW_HOME": str(tmp_path / "home"), "SOPFLOW_PUBLIC_URL": LINKS_URL})
    return cli


@pytest.fixture
async def lifecycle_worker(dev_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Database]:
    """A worker on the real task queue of the session's dev server (where the CLI and the intake start lifecycles),
    its records in a fresh SQLite file, its mail in a sink; yields the records database."""
    db = Database(f"sqlite:///{tmp_path / 'records.db'}")
    db.create_schema()
    with MailSink() as sink:
        async with make_worker(dev_env.client, db, sink, task_queue=TASK_QUEUE):
            yield db
    db.dispose()


@pytest.fixture
def cli(dev_env: WorkflowEnvironment, lifecycle_worker: Database) -> Cli:
    """The CLI pointed at the session's dev server, with a worker running."""
    return Cli(dev_env.client.service_client.config.target_host)


async def eventually(check, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    """Visibility is eventually consistent: poll (briefly) until the check passes or the deadline is reached."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await check()
        except AssertionError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


# --- the webhook intake ---------------------------------------------------------------------------------------------

HUBSPOT_SECRET = "hubspot-client-secret-for-tests"
PUBLIC = "https://hooks.example.com/intake"  # what HubSpot calls; the test client talks to the app directly
DOCUSIGN_KEYS = ("docusign-key-old", "docusign-key-new")
FORM_SECRET = "form-secret-for-tests"
DEAL_DEFAULTS = {"rep_email": "rep@example.com", "account_manager_email": "am@example.com"}

# HubSpot's own event ids (not unique, as in real life; our de-duplication key does not use them).
EVENT_IDS = itertools.count(1)


def intake_yaml(tmp_path: Path, defaults: dict[str, Any] | None = None, wait_for_pipeline: bool = False) -> Path:
    """The shipped mapping, with deal defaults so that ids-only creation events can start a Safe Balance deal (so
    not waiting for a pipeline, which HubSpot's creation event never carries, unless `wait_for_pipeline`)."""
    data = yaml.safe_load((PROJECT_ROOT / "playbooks" / "intake" / "mapping.yaml").read_text())
    data["hubspot"]["defaults"] = DEAL_DEFAULTS if defaults is None else defaults
    data["hubspot"]["wait_for_pipeline"] = wait_for_pipeline
    path = tmp_path / f"intake-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@dataclass
class Intake:
    """An intake app (`app`, created for the test) with signed senders talking to it over `http`."""

    app: FastAPI
    http: httpx.AsyncClient
    client: Client
    db: Database
    settings: Settings
    portal: int

    def deal(self, object_id: int) -> str:
        return f"{self.portal}-{object_id}"

    async def hubspot(
        self,
        events: Any,
        *,
        body: bytes | None = None,
        timestamp_ms: int | None = None,
        secret: str = HUBSPOT_SECRET,
        signed_url: str = f"{PUBLIC}/webhooks/hubspot",
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        content = json.dumps(events).encode() if body is None else body
        timestamp = str(int(time.time() * 1000) if timestamp_ms is None else timestamp_ms)
        signature = hubspot_v3_signature(secret, "POST", signed_url, content, timestamp)
        sent = {
            "Content-Type": "application/json",
            "X-HubSpot-Signature-v3": signature,
            "X-HubSpot-Request-Timestamp": timestamp,
            **(headers or {}),
        }
        return await self.http.post("/webhooks/hubspot", content=content, headers=sent)

    async def docusign(self, message: Any, keys: tuple[str, ...] = DOCUSIGN_KEYS[1:]) -> httpx.Response:
        content = json.dumps(message).encode()
        headers = {f"X-DocuSign-Signature-{n}": docusign_signature(k, content) for n, k in enumerate(keys, 1)}
        return await self.http.post("/webhooks/docusign", content=content, headers=headers)

    async def form(
        self,
        deal_id: str,
        form: str,
        fields: dict[str, Any],
        *,
        encoded: bool = False,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        token = form_token(FORM_SECRET, deal_id, form)
        if encoded:
            return await self.http.post(
                f"/forms/{deal_id}/{form}",
                params={"token": token},
                content=urlencode(fields, doseq=True).encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})},
            )
        sent = {"X-Sopflow-Form-Token": token, **(headers or {})}
        return await self.http.post(f"/forms/{deal_id}/{form}", json=fields, headers=sent)

    async def status(self, deal_id: str) -> LifecycleStatus:
        result: LifecycleStatus = await self.client.get_workflow_handle(f"deal-{deal_id}").query(ClientLifecycle.status)
        return result

    def rows(self, deal_id: str | None = None) -> list[InboundEvent]:
        query = select(InboundEvent).order_by(InboundEvent.id)
        if deal_id is not None:
            query = query.where(InboundEvent.deal_id == deal_id)
        with self.db.session() as session:
            return list(session.scalars(query))


def creation(portal: int, object_id: int, occurred_at: int = 1_760_000_000_000, **extra: Any) -> dict[str, Any]:
    return {
        "eventId": next(EVENT_IDS),
        "subscriptionId": 42,
        "portalId": portal,
        "appId": 7,
        "occurredAt": occurred_at,
        "subscriptionType": "deal.creation",
        "attemptNumber": 0,
        "objectId": object_id,
        "changeFlag": "CREATED",
        "changeSource": "CRM",
        **extra,
    }


def change(portal: int, object_id: int, prop: str, value: str, occurred_at: int) -> dict[str, Any]:
    """A `deal.propertyChange` event as HubSpot posts it (every value as text)."""
    return {
        "eventId": next(EVENT_IDS),
        "subscriptionId": 43,
        "portalId": portal,
        "appId": 7,
        "occurredAt": occurred_at,
        "subscriptionType": "deal.propertyChange",
        "attemptNumber": 0,
        "objectId": object_id,
        "propertyName": prop,
        "propertyValue": value,
        "changeSource": "CRM",
    }


@asynccontextmanager
async def http_to(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to `app` in process (no server, no lifespan: the app's pieces are the test's)."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://intake") as http:
        yield http


@asynccontextmanager
async def served(intake: Intake, app: FastAPI) -> AsyncIterator[Intake]:
    """The same senders, talking to another app: one created with other pieces (no client, another meter)."""
    async with http_to(app) as http:
        yield replace(intake, app=app, http=http)


def make_settings(tmp_path: Path, db_url: str, config: Path) -> Settings:
    return Settings(
        home=tmp_path / "home",
        database_url=db_url,
        hubspot_client_secret=HUBSPOT_SECRET,
        public_intake_url=PUBLIC,
        docusign_hmac_keys=",".join(DOCUSIGN_KEYS),
        form_secret=FORM_SECRET,
        max_body_bytes=64 * 1024,
        intake_config=config,
    )


@pytest.fixture
async def offline(tmp_path: Path, dev_env: WorkflowEnvironment) -> AsyncIterator[Intake]:
    """The intake without a worker: for everything refused before a workflow is touched. An app of the test's own,
    with the session's client and a fresh records database."""
    db = Database(f"sqlite:///{tmp_path / 'records.db'}")
    db.create_schema()
    config = make_settings(tmp_path, f"sqlite:///{tmp_path / 'records.db'}", intake_yaml(tmp_path))
    app = create_app(config, dev_env.client, db)
    async with http_to(app) as http:
        yield Intake(app, http, dev_env.client, db, config, random.randint(10**6, 10**9))
    db.dispose()


@pytest.fixture
async def live(offline: Intake) -> AsyncIterator[Intake]:
    """The intake plus a worker on the real task queue (the one the intake starts lifecycles on)."""
    with MailSink() as sink:
        async with make_worker(offline.client, offline.db, sink, task_queue=TASK_QUEUE):
            yield offline


SHIPPED_MAPPING = PROJECT_ROOT / "playbooks" / "intake" / "mapping.yaml"


@pytest.fixture
def shipped(live: Intake, tmp_path: Path) -> Intake:
    """The live intake on the shipped mapping exactly, as a portal running Health Prime's pipelines has it: no deal
    defaults, and a deal starts only once its pipeline is known."""
    settings = make_settings(tmp_path, live.settings.database_url, SHIPPED_MAPPING)
    live.app.dependency_overrides[get_settings] = lambda: settings
    return replace(live, settings=settings)


async def to_launch(intake: Intake, deal: str) -> None:
    """A deal the intake started, from targeting done to launch day: the contract request through the intake, a signed
    contract, then the lifecycle's own updates."""
    handle = intake.client.get_workflow_handle(f"deal-{deal}")
    assert (await intake.form(deal, "contract_request", CONTRACT_REQUEST)).json()["stage"] == "contract"
    await handle.signal(ClientLifecycle.event, ExternalEvent(name="contract_signed", event_id=f"env-{deal}"))

    async def in_prelaunch() -> None:
        assert (await intake.status(deal)).stage == "prelaunch"

    await eventually(in_prelaunch)
    for task in PRELAUNCH_TASKS:
        await handle.execute_update(ClientLifecycle.complete_task, CompleteTask(task=task))
    await handle.execute_update(ClientLifecycle.set_fields, SetFields(fields={"launch_date": "2026-01-05"}))
    await handle.execute_update(ClientLifecycle.advance, Advance(to="launch"))
    await handle.execute_update(ClientLifecycle.complete_task, CompleteTask(task="launch_checklist"))
    assert (await intake.status(deal)).stage == "launch"


async def launched(intake: Intake, object_id: int) -> str:
    """A deal started by HubSpot and brought to ongoing management (site visits, a form sent again and again)
    through the intake's JSON forms."""
    deal = intake.deal(object_id)
    assert (await intake.hubspot([creation(intake.portal, object_id)])).json()["results"][0]["outcome"] == "started"
    assert (await intake.form(deal, "targeting", TARGETING)).status_code == 200
    await to_launch(intake, deal)
    closeout = {"launched_on": "2026-01-06", "staff_trained": "yes", "all_running": "yes"}
    assert (await intake.form(deal, "closeout", closeout)).json()["stage"] == "ongoing"
    return deal


async def applied_updates(client: Client, deal: str, name: str) -> list[str]:
    """The ids of the `name` updates the deal's lifecycle accepted (its history's record of what was applied)."""
    history = await client.get_workflow_handle(f"deal-{deal}").fetch_history()
    return [
        event.workflow_execution_update_accepted_event_attributes.accepted_request.meta.update_id
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
        and event.workflow_execution_update_accepted_event_attributes.accepted_request.input.name == name
    ]


# --- the web board --------------------------------------------------------------------------------------------------

BOARD_TOKEN = "sft_board-token-of-the-cs-lead-0123456789"
LIMITED_TOKEN = "sft_board-token-of-an-account-manager-0123"
PROXY = "10.0.0.5"
# A Safe Balance deal as the board tests start it: the rep and the account manager known, the targeting form done.
BOARD_DEAL = {"rep_email": "rep@example.com", "rep_id": "owner-17", "account_manager_email": "am@example.com"}


@dataclass
class Board:
    """The intake app with the web board, the session's dev server and a worker; `http` talks to it in process
    (from `client_host`), `url` is set once `served_board` serves it over a real socket for a browser."""

    app: FastAPI
    client: Client
    db: Database
    settings: Settings
    url: str = ""

    def http(self, client_host: str = "127.0.0.1", token: str | None = None) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(client_host, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://board", headers={"Accept": "text/html"})

    async def deal(self, deal: str, stage: str = "contract_request", **fields: Any) -> WorkflowHandle[Any, Any]:
        """A Safe Balance deal brought to `stage` (contract_request, or prelaunch with one task left) by updates."""
        book = load_playbook(PROJECT_ROOT / "playbooks" / "safe_balance.yaml")
        handle = await start_lifecycle(
            self.client, book, deal, {**BOARD_DEAL, **fields}, "test", WorkflowIDConflictPolicy.FAIL
        )
        targeting = SubmitForm(form="targeting", fields=targeting_of(deal))
        await handle.execute_update(ClientLifecycle.submit_form, targeting)
        if stage == "prelaunch":
            await handle.execute_update(
                ClientLifecycle.submit_form, SubmitForm(form="contract_request", fields=CONTRACT_REQUEST)
            )
            await handle.signal(ClientLifecycle.event, ExternalEvent(name="contract_signed", event_id=f"env-{deal}"))
            await until_stage(handle, "prelaunch")
            for task in PRELAUNCH_TASKS[:-1]:
                await handle.execute_update(ClientLifecycle.complete_task, CompleteTask(task=task))
            await handle.execute_update(ClientLifecycle.set_fields, SetFields(fields={"launch_date": "2027-01-05"}))
        await self.recorded(deal, stage)
        return handle

    async def recorded(self, deal: str, stage: str) -> None:
        """Wait until the records store (what the board reads) shows the deal in `stage`."""

        async def there() -> None:
            with self.db.session() as session:
                row = session.scalars(select(DealRow).where(DealRow.deal_id == deal)).one_or_none()
            assert row is not None and row.stage == stage, f"deal {deal} is in {row.stage if row else None}"

        await eventually(there, timeout=60)


def targeting_of(deal: str) -> dict[str, Any]:
    """The targeting form with a company of the deal's own (a company is claimed by one deal only)."""
    return {**TARGETING, "company": f"Care Center {deal}"}


async def until_stage(handle: WorkflowHandle[Any, Any], stage: str) -> None:
    async def there() -> None:
        status: LifecycleStatus = await handle.query(ClientLifecycle.status)
        assert status.stage == stage

    await eventually(there, timeout=60)


@pytest.fixture
async def board(dev_env: WorkflowEnvironment, lifecycle_worker: Database, tmp_path: Path) -> Board:
    """The board with two staff: a CS lead who sees every deal, and an account manager limited to their role."""
    staff = Staff(
        people=[
            Person(email="cs@example.com", tokens=[token_hash(BOARD_TOKEN)]),
            Person(
                email="am@example.com", limits=Limits(roles=["account_manager"]), tokens=[token_hash(LIMITED_TOKEN)]
            ),
        ]
    )
    save_staff(tmp_path / "staff.yaml", staff)
    settings = Settings(
        home=tmp_path / "home",
        staff_file=tmp_path / "staff.yaml",
        web_secret="web-secret-for-tests",
        web_trusted_proxies=PROXY,
        form_secret=FORM_SECRET,
    )
    return Board(create_app(settings, dev_env.client, lifecycle_worker), dev_env.client, lifecycle_worker, settings)


@asynccontextmanager
async def served_board(board: Board) -> AsyncIterator[Board]:
    """The board on a real socket of this machine, for a browser."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(board.app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    await until(lambda: server.started, "the board to serve")
    try:
        yield replace(board, url=f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        await task


async def signed_in(http: httpx.AsyncClient, token: str = BOARD_TOKEN) -> httpx.AsyncClient:
    """Sign `http` in through the login page, as a person would (its form token, then the access token)."""
    page = await http.get("/login")
    form_token = re.search(r'name="_csrf" value="([^"]+)"', page.text)
    assert form_token is not None
    answer = await http.post("/login", data={"_csrf": form_token[1], "token": token, "next": "/board"})
    assert answer.status_code == 303, answer.text
    return http


def csrf_of(page: str) -> str:
    found = re.search(r'name="_csrf" value="([^"]+)"', page)
    assert found is not None
    return found[1]


def submission_of(page: str, action: str) -> str:
    """The `_submission` key of the form posting to `action` on `page`."""
    form = page[page.index(f'action="{action}"') :]
    found = re.search(r'name="_submission" value="([^"]+)"', form)
    assert found is not None
    return found[1]


# --- a real browser -------------------------------------------------------------------------------------------------

CHROMIUM = Path(os.environ.get("SOPFLOW_CHROMIUM", "/usr/bin/chromium"))
# Headless Chromium as root on a machine with no network: no sandbox (root), nothing fetched in the background.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Debian's Chromium driven by Playwright (never a downloaded browser). Without it the browser tests skip with
    one line saying how to install it, unless SOPFLOW_REQUIRE_BROWSER=1 (CI) makes that a failure."""
    if not CHROMIUM.exists():
        message = f"no Chromium at {CHROMIUM}: apt-get install chromium (or set SOPFLOW_CHROMIUM)"
        if os.environ.get("SOPFLOW_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            await chromium.close()
