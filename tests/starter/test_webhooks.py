"""The webhook intake against the real dev server: signed HubSpot deals start real lifecycles exactly once, a signed
DocuSign completion moves a real Safe Balance deal to pre-launch, forms become updates, and fuzzed requests never
get a 5xx nor break a workflow."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import select
from temporalio.api.enums.v1 import EventType
from temporalio.service import RPCError, RPCStatusCode

from sopflow.config import PROJECT_ROOT, Settings
from sopflow.constants import SA_PLAYBOOK, SA_STAGE, TASK_QUEUE
from sopflow.db import Database, InboundEvent
from sopflow.intake_config import IntakeConfigError, load_intake_config, parse_intake_config
from sopflow.mailsink import MailSink, free_port
from sopflow.models import Close
from sopflow.playbook_checks import load_playbook
from sopflow.signatures import docusign_signature, form_token, hubspot_v1_signature, hubspot_v3_signature
from sopflow.telemetry import WEBHOOKS, prometheus_runtime
from starter.cli.deals import visibility_query
from starter.intake import context
from starter.intake.dependencies import get_settings, intake_state
from starter.webhooks import DOCS_ASSETS_URL, create_app
from tests.conftest import CONTRACT_REQUEST, TARGETING, TEMPLATES, make_worker
from tests.prometheus import Sample, scrape_until, value
from tests.starter.conftest import (
    DOCUSIGN_KEYS,
    FORM_SECRET,
    HUBSPOT_SECRET,
    PUBLIC,
    Intake,
    applied_updates,
    change,
    creation,
    eventually,
    http_to,
    intake_yaml,
    launched,
    make_settings,
    served,
)
from workflows.lifecycle import ClientLifecycle


def envelope(event: str, envelope_id: str, deal_id: str | None) -> dict[str, Any]:
    custom = [{"fieldId": "1", "name": "deal_id", "value": deal_id, "show": "true"}] if deal_id else []
    return {
        "event": event,
        "apiVersion": "v2.1",
        "uri": f"/restapi/v2.1/accounts/1/envelopes/{envelope_id}",
        "retryCount": 0,
        "configurationId": 10,
        "generatedDateTime": "2026-05-01T10:00:00.000Z",
        "data": {
            "accountId": "1",
            "userId": "2",
            "envelopeId": envelope_id,
            "envelopeSummary": {
                "status": event.removeprefix("envelope-"),
                "emailSubject": "Please sign",
                "customFields": {"textCustomFields": custom, "listCustomFields": []},
            },
        },
    }


# --- intake mapping ----------------------------------------------------------------------------------------------


def test_the_shipped_mapping_loads_and_names_existing_playbooks():
    config = load_intake_config(PROJECT_ROOT / "playbooks" / "intake" / "mapping.yaml")
    for name in config.playbooks():
        load_playbook(PROJECT_ROOT / "playbooks" / f"{name}.yaml", TEMPLATES)
    assert config.playbook_for(None) == config.playbook_for("no-such-pipeline") == "safe_balance"
    assert config.event_for("dealstage", "closedwon") == "deal_won"
    assert config.event_for("dealstage", "appointmentscheduled") is None
    assert config.hubspot.properties["launch_date"].convert("1765929600000") == "2025-12-17"
    assert config.hubspot.properties["launch_date"].convert("2026-01-05") == "2026-01-05"
    assert config.docusign.events["envelope-completed"] == "contract_signed"


def test_a_broken_mapping_names_each_problem():
    with pytest.raises(IntakeConfigError) as refused:
        parse_intake_config(
            {
                "default_playbook": "safe_balance",
                "pipelines": {123: "x y"},
                "hubspot": {"properties": {"dealstage": "stage"}, "events": {"dealstage": {"closedwon": "Won!"}}},
            }
        )
    text = str(refused.value)
    assert "pipelines" in text and "hubspot.events" in text


# --- metrics -------------------------------------------------------------------------------------------------------


async def test_webhook_and_form_answers_are_counted_by_source_and_status_and_probes_are_not(offline: Intake):
    port = free_port()
    runtime = prometheus_runtime(f"127.0.0.1:{port}")  # referenced until the end: it serves the endpoint
    app = create_app(offline.settings, offline.client, offline.db, metric_meter=runtime.metric_meter)
    async with served(offline, app) as metered:
        assert (await metered.http.post("/webhooks/hubspot", json=[creation(offline.portal, 1)])).status_code == 401
        assert (await metered.http.post("/webhooks/hubspot", json=[])).status_code == 401
        assert (await metered.http.post("/webhooks/docusign", json={})).status_code == 401
        assert (await metered.http.get("/forms/D-1/site_visit?token=wrong")).status_code == 401
        assert (await metered.http.get("/healthz")).status_code == 200
        assert (await metered.http.get("/docs")).status_code == 200

    def counted(samples: list[Sample]) -> bool:
        return value(samples, WEBHOOKS, source="form_page") is not None

    samples = await scrape_until(port, counted)
    assert value(samples, WEBHOOKS, source="hubspot", status="401") == 2
    assert value(samples, WEBHOOKS, source="docusign", status="401") == 1
    assert value(samples, WEBHOOKS, source="form_page", status="401") == 1
    assert {labels["source"] for name, labels, _ in samples if name == WEBHOOKS} == {"hubspot", "docusign", "form_page"}


# --- refusals before anything reaches Temporal ------------------------------------------------------------------------


async def test_bad_missing_stale_or_future_hubspot_signatures_are_401(offline: Intake):
    event = [creation(offline.portal, 1)]
    now = int(time.time() * 1000)
    answers = {
        "missing": await offline.http.post("/webhooks/hubspot", json=event),
        "wrong secret": await offline.hubspot(event, secret="not-the-secret"),
        "stale": await offline.hubspot(event, timestamp_ms=now - 5 * 60 * 1000 - 5000),
        "future": await offline.hubspot(event, timestamp_ms=now + 5 * 60 * 1000 + 5000),
        "other url": await offline.hubspot(event, signed_url="https://hooks.example.com/webhooks/hubspot"),
        "bad timestamp": await offline.hubspot(event, headers={"X-HubSpot-Request-Timestamp": "yesterday"}),
    }
    content = json.dumps(event).encode()
    timestamp = str(now)
    signature = hubspot_v3_signature(HUBSPOT_SECRET, "POST", f"{PUBLIC}/webhooks/hubspot", content, timestamp)
    answers["tampered"] = await offline.http.post(
        "/webhooks/hubspot",
        content=content.replace(b"deal.creation", b"deal.deletion"),
        headers={"X-HubSpot-Signature-v3": signature, "X-HubSpot-Request-Timestamp": timestamp},
    )
    assert {name: r.status_code for name, r in answers.items()} == dict.fromkeys(answers, 401)
    assert offline.rows() == []
    for answer in answers.values():
        assert HUBSPOT_SECRET not in answer.text


async def test_without_a_public_url_the_signed_uri_is_the_one_the_request_arrived_at(offline: Intake, tmp_path: Path):
    config = make_settings(tmp_path, offline.settings.database_url, offline.settings.intake_config)
    offline.app.dependency_overrides[get_settings] = lambda: config.model_copy(update={"public_intake_url": None})
    content = b"[]"
    timestamp = str(int(time.time() * 1000))
    for path in ("/webhooks/hubspot", "/webhooks/hubspot?portal=1&x=%3A"):
        signature = hubspot_v3_signature(HUBSPOT_SECRET, "POST", f"http://intake{path}", content, timestamp)
        headers = {"X-HubSpot-Signature-v3": signature, "X-HubSpot-Request-Timestamp": timestamp}
        answer = await offline.http.post(path, content=content, headers=headers)
        assert answer.status_code == 200, (path, answer.text)
        assert answer.json() == {"results": []}


async def test_legacy_signatures_only_when_enabled(offline: Intake, tmp_path: Path):
    content = b"[]"
    headers = {
        "X-HubSpot-Signature": hubspot_v1_signature(HUBSPOT_SECRET, content),
        "X-HubSpot-Signature-Version": "v1",
    }
    assert (await offline.http.post("/webhooks/hubspot", content=content, headers=headers)).status_code == 401
    legacy = offline.settings.model_copy(update={"hubspot_accept_legacy_signatures": True})
    offline.app.dependency_overrides[get_settings] = lambda: legacy
    assert (await offline.http.post("/webhooks/hubspot", content=content, headers=headers)).status_code == 200
    wrong = {**headers, "X-HubSpot-Signature": hubspot_v1_signature("other", content)}
    assert (await offline.http.post("/webhooks/hubspot", content=content, headers=wrong)).status_code == 401


async def test_unparseable_oversized_and_non_array_bodies(offline: Intake):
    assert (await offline.hubspot(None, body=b"[{not json")).status_code == 400
    assert (await offline.hubspot(None, body=b'{"an": "object"}')).status_code == 400
    assert (await offline.hubspot(None, body=b"[1e999]")).status_code == 400
    assert (await offline.hubspot(None, body=b"\xff\xfe")).status_code == 400
    assert (await offline.hubspot(None, body=b"[" * 10_000 + b"]" * 10_000)).status_code == 400
    too_big = b"[" + b" " * (64 * 1024) + b"]"
    assert (await offline.hubspot(None, body=too_big)).status_code == 413
    # Unusable events in a signed batch are reported one by one, never retried by HubSpot forever.
    answer = await offline.hubspot(
        [42, {"subscriptionType": "contact.creation", "portalId": 1, "objectId": 2, "occurredAt": 3}, {"portalId": "x"}]
    )
    assert answer.status_code == 200
    assert [r["outcome"] for r in answer.json()["results"]] == ["invalid", "ignored", "invalid"]


async def test_docusign_refuses_unsigned_wrongly_signed_and_malformed(offline: Intake):
    message = envelope("envelope-completed", str(uuid.uuid4()), "D-1")
    assert (await offline.http.post("/webhooks/docusign", json=message)).status_code == 401
    assert (await offline.docusign(message, keys=("unknown-key",))).status_code == 401
    content = json.dumps(message).encode()
    tampered = await offline.http.post(
        "/webhooks/docusign",
        content=content.replace(b"D-1", b"D-2"),
        headers={"X-DocuSign-Signature-1": docusign_signature(DOCUSIGN_KEYS[0], content)},
    )
    assert tampered.status_code == 401
    assert (await offline.docusign({"event": "envelope-completed"})).status_code == 400
    assert (await offline.docusign(["not", "an", "object"])).status_code == 400
    ignored = await offline.docusign(envelope("recipient-delivered", str(uuid.uuid4()), "D-1"))
    assert ignored.status_code == 200 and ignored.json()["outcome"] == "ignored"
    unmapped = await offline.docusign(envelope("envelope-completed", "env-unmapped-" + uuid.uuid4().hex, None))
    assert unmapped.status_code == 200 and unmapped.json()["outcome"] == "unmapped"


async def test_forms_need_the_token_of_that_deal_and_form(offline: Intake):
    deal = offline.deal(1)
    good = form_token(FORM_SECRET, deal, "targeting")
    assert (await offline.http.post(f"/forms/{deal}/targeting", json=TARGETING)).status_code == 401
    other_form = form_token(FORM_SECRET, deal, "closeout")
    assert (await offline.http.post(f"/forms/{deal}/targeting?token={other_form}", json={})).status_code == 401
    other_deal = form_token(FORM_SECRET, offline.deal(2), "targeting")
    assert (await offline.http.post(f"/forms/{deal}/targeting?token={other_deal}", json={})).status_code == 401
    unsupported = await offline.http.post(
        f"/forms/{deal}/targeting?token={good}", content=b"<xml/>", headers={"Content-Type": "text/xml"}
    )
    assert unsupported.status_code == 415
    array = await offline.http.post(f"/forms/{deal}/targeting?token={good}", json=[1, 2])
    assert array.status_code == 400
    big = await offline.http.post(f"/forms/{deal}/targeting?token={good}", json={"notes": "x" * 70_000})
    assert big.status_code == 413
    huge = await offline.http.post(
        f"/forms/{deal}/contract_request?token=" + form_token(FORM_SECRET, deal, "contract_request"),
        json={"monthly_fee": "1e999999999"},
    )
    assert huge.status_code == 422
    # The deal has no lifecycle: 404, but only once the token proved the caller may ask.
    missing = await offline.http.post(f"/forms/{deal}/targeting?token={good}", json=TARGETING)
    assert missing.status_code == 404


async def test_openapi_documents_every_endpoint(offline: Intake):
    spec = (await offline.http.get("/openapi.json")).json()
    assert {"/webhooks/hubspot", "/webhooks/docusign", "/forms/{deal_id}/{form}", "/healthz", "/readyz"} <= set(
        spec["paths"]
    )
    assert (await offline.http.get("/docs")).status_code == 200


# Every place a docs page names something to load: attributes, and the spec URL Swagger UI's script is given.
_LOADED = re.compile(r"""(?:src|href|spec-url)="([^"]*)"|\burl: '([^']*)'""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_api_docs_load_every_asset_from_the_intake_itself(offline: Intake, page: str):
    """Offline (no CDN reachable, as on many operators' networks) the docs still draw: every script, style, icon and
    the spec come from the intake, and each of them answers."""
    answer = await offline.http.get(page)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    assert "://" not in answer.text  # no other host, not even a font
    urls = {a or b for a, b in _LOADED.findall(answer.text)}
    assert f"{DOCS_ASSETS_URL}/favicon.png" in urls and "/openapi.json" in urls
    assert any(url.endswith(".js") for url in urls)
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = await offline.http.get(url)
        assert asset.status_code == 200 and asset.content, url


async def test_the_intake_starts_and_says_it_is_not_ready_while_temporal_is_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A CRM retries a webhook on 503: say "not ready" clearly instead of failing to come up. Liveness never asks
    Temporal, so an outage there does not get the intake restarted."""
    monkeypatch.setenv("TEMPORAL_ADDRESS", f"127.0.0.1:{free_port()}")
    async with http_to(create_app(Settings(home=tmp_path / "home"))) as http:
        health = await http.get("/healthz")
        readiness = await http.get("/readyz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert readiness.status_code == 503
    assert readiness.json()["status"] == "unavailable"
    assert "cannot reach Temporal" in readiness.json()["reason"]


async def test_readiness_is_reported_with_the_apps_own_client(offline: Intake):
    readiness = await offline.http.get("/readyz")
    assert readiness.status_code == 200 and readiness.json() == {"status": "ready"}


async def test_an_app_without_a_database_opens_and_migrates_its_own_and_closes_it_when_it_stops(
    offline: Intake, tmp_path: Path
):
    """`sopflow intake` is given no database: the first request that needs one opens SOPFLOW_DATABASE_URL and
    migrates it (the intake may start before any worker did), and the app closes what it opened."""
    url = f"sqlite:///{tmp_path / 'own.db'}"
    app = create_app(offline.settings.model_copy(update={"database_url": url}), offline.client)
    envelope_id = "env-own-" + uuid.uuid4().hex
    async with app.router.lifespan_context(app), served(offline, app) as own:
        answer = await own.docusign(envelope("envelope-completed", envelope_id, None))
        assert answer.status_code == 200 and answer.json()["outcome"] == "unmapped"
        state = intake_state(app)
        assert state.db is not None and state.owned_db is state.db
    assert intake_state(app).db is None and intake_state(app).owned_db is None
    assert offline.rows() == []  # the test's database was not the app's
    stored = Database(url)
    with stored.session() as session:
        assert list(session.scalars(select(InboundEvent.dedupe_key))) == [f"docusign:{envelope_id}:completed"]
    stored.dispose()


async def test_temporal_unreachable_is_503_and_nothing_is_recorded(offline: Intake, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TEMPORAL_ADDRESS", f"127.0.0.1:{free_port()}")
    async with served(offline, create_app(offline.settings, client=None, db=offline.db)) as unreachable:
        answer = await unreachable.hubspot([creation(offline.portal, 1)])
        assert answer.status_code == 503 and answer.headers["Retry-After"]
        assert offline.rows() == []
        form = await unreachable.form(offline.deal(1), "targeting", TARGETING)
        assert form.status_code == 503


# --- real lifecycles --------------------------------------------------------------------------------------------------


async def test_signed_deal_creation_starts_one_real_lifecycle_however_often_it_is_sent(live: Intake):
    deal = live.deal(101)
    event = creation(live.portal, 101)
    first = await live.hubspot([event])
    assert first.status_code == 200, first.text
    assert first.json()["results"] == [
        {
            "index": 0,
            "deal_id": deal,
            "outcome": "started",
            "detail": {"workflow_id": f"deal-{deal}", "playbook": "safe_balance", "playbook_version": 3},
        }
    ]
    status = await live.status(deal)
    assert status.stage == "targeting" and status.fields["rep_email"] == "rep@example.com"
    handle = live.client.get_workflow_handle(f"deal-{deal}")
    run_id = (await handle.describe()).run_id

    # HubSpot retries with a new attempt number (and, across subscriptions, another eventId): still one deal.
    repeats = [await live.hubspot([{**event, "attemptNumber": n, "eventId": n}]) for n in range(1, 5)]
    assert [r.json()["results"][0]["outcome"] for r in repeats] == ["duplicate"] * 4
    generic = {**event, "subscriptionType": "object.creation", "objectTypeId": "0-3"}
    assert (await live.hubspot([generic])).json()["results"][0]["outcome"] == "duplicate"
    description = await handle.describe()
    assert description.run_id == run_id
    assert description.typed_search_attributes.get(SA_PLAYBOOK) == "safe_balance"
    assert description.typed_search_attributes.get(SA_STAGE) == "targeting"
    assert [r.outcome for r in live.rows(deal)] == ["started"]


async def test_the_same_creation_sent_five_times_at_once_yields_one_lifecycle(live: Intake):
    deal = live.deal(202)
    event = creation(live.portal, 202)
    answers = await asyncio.gather(*(live.hubspot([{**event, "attemptNumber": n}]) for n in range(5)))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    outcomes = sorted(a.json()["results"][0]["outcome"] for a in answers)
    assert outcomes == ["duplicate"] * 4 + ["started"]
    assert len(live.rows(deal)) == 1

    async def one_run() -> None:
        count = await live.client.count_workflows(visibility_query({"WorkflowId": f"deal-{deal}"}))
        assert count.count == 1

    await eventually(one_run)
    assert (await live.status(deal)).stage == "targeting"


async def test_a_deal_missing_required_fields_is_reported_then_started_by_its_property_changes(
    live: Intake, tmp_path: Path
):
    without_defaults = make_settings(tmp_path, live.settings.database_url, intake_yaml(tmp_path, defaults={}))
    live.app.dependency_overrides[get_settings] = lambda: without_defaults
    deal = live.deal(303)
    t0 = 1_760_000_000_000
    waiting = await live.hubspot([creation(live.portal, 303, t0)])
    result = waiting.json()["results"][0]
    assert waiting.status_code == 200
    assert result["outcome"] == "needs_fields" and result["detail"]["missing"] == {"rep_email": "required"}
    with pytest.raises(RPCError) as missing:
        await live.client.get_workflow_handle(f"deal-{deal}").describe()
    assert missing.value.status == RPCStatusCode.NOT_FOUND

    # Changes arrive out of order and in one batch with an unmapped property; the lifecycle starts with all.
    batch = [
        change(live.portal, 303, "hubspot_owner_id", "owner-9", t0 + 20),
        change(live.portal, 303, "notes_last_contacted", "whatever", t0 + 21),
        change(live.portal, 303, "rep_email", "rep303@example.com", t0 + 30),
    ]
    started = await live.hubspot(batch)
    assert [r["outcome"] for r in started.json()["results"]] == ["pending", "ignored", "started"]
    status = await live.status(deal)
    assert status.fields["rep_email"] == "rep303@example.com" and status.fields["rep_id"] == "owner-9"
    assert status.owner == "rep:owner-9"

    # Later changes update the running lifecycle; an older one delivered late does not overwrite a newer one.
    newer = await live.hubspot([change(live.portal, 303, "launch_date", "1767225600000", t0 + 50)])
    assert newer.json()["results"][0]["outcome"] == "fields_set"
    older = await live.hubspot([change(live.portal, 303, "launch_date", "1767312000000", t0 + 40)])
    assert older.json()["results"][0]["outcome"] == "stale"
    bad = await live.hubspot([change(live.portal, 303, "rep_email", "not-an-email", t0 + 60)])
    assert bad.json()["results"][0]["outcome"] == "rejected"
    assert "rep_email" in bad.json()["results"][0]["detail"]["fields"]
    status = await live.status(deal)
    assert status.fields["launch_date"] == "2026-01-01" and status.fields["rep_email"] == "rep303@example.com"
    won = await live.hubspot([change(live.portal, 303, "dealstage", "closedwon", t0 + 70)])
    assert won.json()["results"][0]["outcome"] == "signaled"
    creation_row = next(r for r in live.rows(deal) if r.payload["kind"] == "creation")
    assert creation_row.outcome == "started"


async def test_docusign_completion_moves_a_real_safe_balance_deal_from_contract_to_prelaunch(live: Intake):
    deal = live.deal(404)
    assert (await live.hubspot([creation(live.portal, 404)])).json()["results"][0]["outcome"] == "started"

    invalid = await live.form(deal, "targeting", {**TARGETING, "signer_email": "nobody", "service_tier": "Gold"})
    assert invalid.status_code == 422
    assert set(invalid.json()["fields"]) == {"signer_email", "service_tier"}
    not_open = await live.form(deal, "closeout", {"launched_on": "2026-01-01"})
    assert not_open.status_code == 409 and "not open" in not_open.json()["error"]

    targeting = await live.form(deal, "targeting", {**TARGETING, "company": f"Clinic {deal}"})
    assert targeting.status_code == 200, targeting.text
    assert targeting.json()["stage"] == "contract_request"
    contract = await live.form(deal, "contract_request", CONTRACT_REQUEST, encoded=True)
    assert contract.status_code == 200, contract.text
    assert contract.json()["stage"] == "contract"

    envelope_id = str(uuid.uuid4())
    # Connect signs with every active key; we know only the new one (a key rotation in progress).
    signed = await live.docusign(
        envelope("envelope-completed", envelope_id, deal), keys=("retired-key", DOCUSIGN_KEYS[1])
    )
    assert signed.status_code == 200, signed.text
    assert signed.json() == {
        "outcome": "signaled",
        "deal_id": deal,
        "event": "envelope-completed",
        "envelope_id": envelope_id,
    }

    async def in_prelaunch() -> None:
        assert (await live.status(deal)).stage == "prelaunch"

    await eventually(in_prelaunch)
    again = await live.docusign(envelope("envelope-completed", envelope_id, deal))
    assert again.json()["outcome"] == "duplicate"
    unknown = await live.docusign(envelope("envelope-completed", str(uuid.uuid4()), live.deal(999)))
    assert unknown.status_code == 404
    assert (await live.status(deal)).stage == "prelaunch"


async def test_a_closed_lifecycle_is_never_restarted_and_refuses_changes_without_5xx(live: Intake):
    deal = live.deal(606)
    t0 = 1_760_000_000_000
    assert (await live.hubspot([creation(live.portal, 606, t0)])).json()["results"][0]["outcome"] == "started"
    handle = live.client.get_workflow_handle(f"deal-{deal}")
    await handle.execute_update(ClientLifecycle.close, Close(outcome="lost", reason="went elsewhere"))
    await handle.result()

    # A creation event for the same deal (HubSpot restored it) must not start a second lifecycle.
    again = await live.hubspot([creation(live.portal, 606, t0 + 1000)])
    assert again.json()["results"][0]["outcome"] == "closed"
    later = await live.hubspot([change(live.portal, 606, "rep_email", "new@example.com", t0 + 2000)])
    assert later.json()["results"][0]["outcome"] == "closed"
    form = await live.form(deal, "targeting", TARGETING)
    assert form.status_code == 409
    signed = await live.docusign(envelope("envelope-completed", str(uuid.uuid4()), deal))
    assert signed.status_code == 200 and signed.json()["outcome"] == "closed"
    count = await live.client.count_workflows(visibility_query({"WorkflowId": f"deal-{deal}"}))
    assert count.count == 1


async def test_a_lifecycle_without_a_worker_answers_503_not_a_hang(offline: Intake, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(context, "TEMPORAL_TIMEOUT", 1.0)
    deal = offline.deal(505)
    assert (await offline.hubspot([creation(offline.portal, 505)])).json()["results"][0]["outcome"] == "started"
    handle = offline.client.get_workflow_handle(f"deal-{deal}")
    try:
        answer = await offline.form(deal, "targeting", TARGETING)
        assert answer.status_code == 503
    finally:
        await handle.terminate("test: no worker")


async def test_posts_with_the_same_idempotency_key_apply_once_even_at_the_same_time(live: Intake):
    deal = await launched(live, 707)
    visit = {"visited_on": "2026-01-20", "steps_cleared": "yes", "needs": "More brochures"}
    key = {"Idempotency-Key": "3f0c9a52-6a1e-4d8e-9b61-0d2f4c7e8a19"}
    before = await applied_updates(live.client, deal, "submit_form")

    answers = await asyncio.gather(*(live.form(deal, "site_visit", visit, headers=key) for _ in range(3)))

    assert [answer.status_code for answer in answers] == [200, 200, 200], [answer.text for answer in answers]
    assert {answer.json()["stage"] for answer in answers} == {"ongoing"}
    applied = (await applied_updates(live.client, deal, "submit_form"))[len(before) :]
    assert applied == [f"form:{deal}:site_visit:{key['Idempotency-Key']}"]
    # Another key is another visit; no key at all derives nothing: each such post is a visit of its own.
    other = await live.form(deal, "site_visit", visit, headers={"Idempotency-Key": "another-visit-0001"})
    assert other.status_code == 200
    for _ in range(2):
        assert (await live.form(deal, "site_visit", visit)).status_code == 200
    assert len(await applied_updates(live.client, deal, "submit_form")) == len(before) + 4


@pytest.mark.parametrize(
    "headers",
    [
        [("Idempotency-Key", "short")],
        [("Idempotency-Key", "k" * 65)],
        [("Idempotency-Key", "")],
        [("Idempotency-Key", "with space-1234")],
        [("Idempotency-Key", "form:1:targeting:x")],
        [("Idempotency-Key", "ключ-ключ-ключ".encode())],  # raw UTF-8 bytes: a header is not text to HTTP
        [("Idempotency-Key", "first-key-0001"), ("Idempotency-Key", "second-key-0002")],
    ],
    ids=["short", "long", "empty", "space", "colons", "non-ascii", "twice"],
)
async def test_a_malformed_idempotency_key_is_a_400_naming_the_rule(
    offline: Intake, headers: list[tuple[str, str | bytes]]
):
    deal = offline.deal(708)  # no lifecycle: the key is refused before anything is asked of Temporal
    token = form_token(FORM_SECRET, deal, "targeting")
    raw = [(name.encode(), value if isinstance(value, bytes) else value.encode()) for name, value in headers]
    sent = httpx.Headers([(b"X-Sopflow-Form-Token", token.encode()), (b"Content-Type", b"application/json"), *raw])
    answer = await offline.http.post(f"/forms/{deal}/targeting", content=json.dumps(TARGETING).encode(), headers=sent)
    assert answer.status_code == 400, answer.text
    assert "Idempotency-Key" in answer.json()["error"] and "8 to 64 characters" in answer.json()["error"]
    # The token is still checked first: a caller without it learns nothing, not even about the key.
    unsigned = httpx.Headers([(b"Content-Type", b"application/json"), *raw])
    refused = await offline.http.post(f"/forms/{deal}/targeting", json={}, headers=unsigned)
    assert refused.status_code == 401


async def test_a_header_key_and_a_different_submission_id_are_a_400(offline: Intake):
    deal = offline.deal(709)
    body = {**TARGETING, "_submission": "b" * 32}
    answer = await offline.form(deal, "targeting", body, encoded=True, headers={"Idempotency-Key": "a" * 32})
    assert answer.status_code == 400 and "different" in answer.json()["error"]


async def test_a_post_not_confirmed_in_time_is_a_503_that_says_so_and_its_keyed_retry_applies_once(
    offline: Intake, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(context, "TEMPORAL_TIMEOUT", 1.0)
    deal = offline.deal(710)
    assert (await offline.hubspot([creation(offline.portal, 710)])).json()["results"][0]["outcome"] == "started"
    key = {"Idempotency-Key": "retry-me-0123456789"}

    pending = await offline.form(deal, "targeting", TARGETING, headers=key)

    assert pending.status_code == 503 and pending.headers["Retry-After"]
    answer = pending.json()
    assert answer["confirmed"] is False and answer["idempotency_key"] == key["Idempotency-Key"]
    assert "not confirmed yet" in answer["error"] and "same Idempotency-Key is safe" in answer["error"]
    assert "Nothing was saved" not in pending.text
    # Without a key the answer says what a blind retry risks (another deal: this one gets the keyed retry below).
    unkeyed_deal = offline.deal(711)
    assert (await offline.hubspot([creation(offline.portal, 711)])).json()["results"][0]["outcome"] == "started"
    unkeyed = await offline.form(unkeyed_deal, "targeting", TARGETING)
    assert unkeyed.status_code == 503 and unkeyed.json()["confirmed"] is False
    assert "without an Idempotency-Key" in unkeyed.json()["error"]
    await offline.client.get_workflow_handle(f"deal-{unkeyed_deal}").terminate("test: never meant to run")

    with MailSink() as sink:
        async with make_worker(offline.client, offline.db, sink, task_queue=TASK_QUEUE):
            monkeypatch.setattr(context, "TEMPORAL_TIMEOUT", 30.0)
            retried = await offline.form(deal, "targeting", TARGETING, headers=key)
            assert retried.status_code == 200, retried.text
            assert retried.json()["stage"] == "contract_request"
            again = await offline.form(deal, "targeting", TARGETING, headers=key)
            assert again.status_code == 200 and again.json()["stage"] == "contract_request"
            applied = await applied_updates(offline.client, deal, "submit_form")
            assert applied == [f"form:{deal}:targeting:{key['Idempotency-Key']}"]


# --- fuzzing -------------------------------------------------------------------------------------------------------

PRINTABLE = st.characters(min_codepoint=32, max_codepoint=126)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
FORMS = ["targeting", "contract_request", "closeout", "site_visit", "nope", "Bad-Form"]
HEADER_NAMES = [
    "X-HubSpot-Signature-v3",
    "X-HubSpot-Request-Timestamp",
    "X-HubSpot-Signature",
    "X-DocuSign-Signature-1",
    "X-DocuSign-Signature-2",
    "X-Sopflow-Form-Token",
    "Idempotency-Key",
    "Content-Type",
    "X-Anything",
]


@dataclass
class Fuzzed:
    method: str
    path: str
    headers: dict[str, str]
    content: bytes


def signed_hubspot(events: Any) -> Fuzzed:
    body = json.dumps(events).encode()
    stamp = str(int(time.time() * 1000))
    signature = hubspot_v3_signature(HUBSPOT_SECRET, "POST", f"{PUBLIC}/webhooks/hubspot", body, stamp)
    headers = {"X-HubSpot-Signature-v3": signature, "X-HubSpot-Request-Timestamp": stamp}
    return Fuzzed("POST", "/webhooks/hubspot", headers, body)


def signed_docusign(message: Any) -> Fuzzed:
    body = json.dumps(message).encode()
    return Fuzzed(
        "POST", "/webhooks/docusign", {"X-DocuSign-Signature-1": docusign_signature(DOCUSIGN_KEYS[0], body)}, body
    )


@st.composite
def requests(draw: st.DrawFn, portal: int, deal: str) -> Fuzzed:
    """Random requests at every endpoint; about half are correctly signed, so the fuzz gets past the door."""
    headers = draw(st.dictionaries(st.sampled_from(HEADER_NAMES), st.text(PRINTABLE, max_size=60), max_size=3))
    target = draw(st.sampled_from(["hubspot"] * 3 + ["docusign"] * 2 + ["form"] * 3 + ["random"]))
    signed = draw(st.integers(0, 4)) < 4  # hypothesis favours small draws: 0 means signed
    if target == "hubspot":
        event = st.fixed_dictionaries(
            {
                "subscriptionType": st.sampled_from(
                    ["deal.creation", "deal.propertyChange", "object.creation", "object.propertyChange", "x"]
                ),
                "portalId": st.just(portal) | json_values,
                "objectId": st.integers(0, 5) | json_values,
                "occurredAt": st.integers(0, 2**50) | json_values,
            },
            optional={
                "propertyName": st.sampled_from(["rep_email", "dealstage", "pipeline", "launch_date", "nope"]),
                "propertyValue": st.sampled_from(["closedwon", "rep@example.com", "1767225600000", "1e999999"])
                | json_values,
                "objectTypeId": st.sampled_from(["0-3", "0-1"]),
                "properties": json_values,
            },
        )
        events = st.lists(event, min_size=1, max_size=4).map(lambda e: json.dumps(e).encode())
        body = draw(st.one_of(events, events, events, st.binary(max_size=200)))
        if signed:
            stamp = str(int(time.time() * 1000))
            url = f"{PUBLIC}/webhooks/hubspot"
            headers["X-HubSpot-Request-Timestamp"] = stamp
            headers["X-HubSpot-Signature-v3"] = hubspot_v3_signature(HUBSPOT_SECRET, "POST", url, body, stamp)
        return Fuzzed("POST", "/webhooks/hubspot", headers, body)
    if target == "docusign":
        message = st.fixed_dictionaries(
            {
                "event": st.sampled_from(["envelope-completed", "envelope-declined", "envelope-voided", "x"]),
                "data": st.fixed_dictionaries(
                    {
                        "envelopeId": st.uuids().map(str) | json_values,
                        "envelopeSummary": st.fixed_dictionaries(
                            {
                                "customFields": st.fixed_dictionaries(
                                    {
                                        "textCustomFields": st.lists(
                                            st.fixed_dictionaries(
                                                {"name": st.just("deal_id"), "value": st.just(deal) | json_values}
                                            ),
                                            max_size=2,
                                        )
                                    }
                                )
                            }
                        )
                        | json_values,
                    }
                )
                | json_values,
            }
        )
        messages = message.map(lambda m: json.dumps(m).encode())
        body = draw(st.one_of(messages, messages, messages, st.binary(max_size=200)))
        if signed:
            headers["X-DocuSign-Signature-1"] = docusign_signature(DOCUSIGN_KEYS[0], body)
        return Fuzzed("POST", "/webhooks/docusign", headers, body)
    if target == "form":
        form = draw(st.sampled_from(FORMS))
        other = st.text(PRINTABLE.filter(lambda c: c not in "/?#%\\"), min_size=1, max_size=20)
        form_deal = deal if draw(st.integers(0, 3)) < 3 else draw(other)
        fields = draw(
            st.dictionaries(
                st.sampled_from(["company", "signer_email", "term_months", "monthly_fee", "visited_on", "x"])
                | st.text(max_size=8),
                json_values,
                max_size=5,
            )
        )
        if draw(st.booleans()):
            headers["Content-Type"] = "application/json"
            body = draw(st.just(json.dumps(fields).encode()) | st.binary(max_size=100))
        else:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            flat = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
            body = urlencode(flat).encode()
        token = form_token(FORM_SECRET, form_deal, form) if signed else draw(st.text(PRINTABLE, max_size=64))
        return Fuzzed("POST", f"/forms/{form_deal}/{form}?{urlencode({'token': token})}", headers, body)
    path = "/" + draw(st.text(PRINTABLE.filter(lambda c: c not in "?#%\\"), max_size=30))
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]))
    return Fuzzed(method, path, headers, draw(st.binary(max_size=100)))


# The worker's and SDK's own threads use `random` (retry jitter) while hypothesis draws; it notices and warns.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
async def test_fuzzed_requests_never_get_a_5xx_nor_break_a_lifecycle(live: Intake):
    deal = live.deal(1)
    assert (await live.hubspot([creation(live.portal, 1)])).json()["results"][0]["outcome"] == "started"
    loop = asyncio.get_running_loop()
    seen: list[tuple[str, str, int]] = []

    def send(request: Fuzzed) -> httpx.Response:
        call = live.http.request(request.method, request.path, headers=request.headers, content=request.content)
        return asyncio.run_coroutine_threadsafe(call, loop).result(timeout=60)

    @hypothesis_settings(
        max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck), derandomize=False
    )
    @given(requests(live.portal, deal))
    @example(signed_hubspot([creation(live.portal, 2), change(live.portal, 2, "rep_email", "1e999999999", 1)]))
    @example(signed_docusign(envelope("envelope-declined", str(uuid.uuid4()), deal)))
    @example(
        Fuzzed(
            "POST",
            f"/forms/{deal}/targeting?token={form_token(FORM_SECRET, deal, 'targeting')}",
            {"Content-Type": "application/json"},
            json.dumps({"company": ["x"], "notes": 1e300}).encode(),
        )
    )
    def fuzz(request: Fuzzed) -> None:
        answer = send(request)
        seen.append((request.method, request.path, answer.status_code))
        assert answer.status_code < 500, (request, answer.text)

    await asyncio.to_thread(fuzz)
    assert len(seen) >= 30

    # Every lifecycle the fuzz touched still answers, and none of them ever failed a workflow task.
    deals = {deal} | {row.deal_id for row in live.rows() if row.outcome == "started" and row.deal_id}
    for touched in sorted(d for d in deals if d):
        await live.status(touched)
        history = await live.client.get_workflow_handle(f"deal-{touched}").fetch_history()
        failed = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED]
        assert failed == [], touched
