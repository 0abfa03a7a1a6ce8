"""The codec server: Temporal's /encode and /decode JSON contract, a token on every request, CORS for the UI only."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from temporalio.api.common.v1 import Payload

from sopflow.codec import ENCODING, KEY_ID_METADATA, EncryptionCodec, new_key, parse_key_ring
from sopflow.config import Settings
from sopflow.mailsink import free_port
from starter.codec_server import CodecServerError, app_from_settings, create_app, origin_of
from tests.starter.conftest import SOPFLOW

TOKEN = "codec-token-for-tests"
UI = "http://localhost:8080"
KEYS = f"k2:{new_key()},k1:{new_key()}"
AUTH = {"Authorization": f"Bearer {TOKEN}", "X-Namespace": "default"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def wire(payload: Payload) -> dict[str, object]:
    """A payload as the UI and the CLI send it: proto3 JSON, every bytes value base64."""
    return {"metadata": {k: b64(v) for k, v in payload.metadata.items()}, "data": b64(payload.data)}


def unwire(data: dict[str, object]) -> Payload:
    metadata = data.get("metadata") or {}
    assert isinstance(metadata, dict)
    return Payload(
        metadata={k: base64.b64decode(v) for k, v in metadata.items()},
        data=base64.b64decode(str(data.get("data", ""))),
    )


PLAIN = Payload(metadata={"encoding": b"json/plain"}, data=b'{"contact":"client-7f3a@example.com"}')


def app() -> FastAPI:
    """The production app, configured as `sopflow codec-server` configures it."""
    settings = Settings(encryption_keys=KEYS, codec_token=TOKEN, ui_url=f"{UI}/namespaces/default")  # type: ignore[arg-type]
    return app_from_settings(settings, "default")


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app()), base_url="http://codec") as client:
        yield client


async def test_encode_then_decode_round_trips_in_the_temporal_json_format(http: httpx.AsyncClient):
    encoded = await http.post("/encode", json={"payloads": [wire(PLAIN)]}, headers=AUTH)
    assert encoded.status_code == 200
    [sealed] = encoded.json()["payloads"]
    assert base64.b64decode(sealed["metadata"]["encoding"]) == ENCODING
    assert base64.b64decode(sealed["metadata"][KEY_ID_METADATA]) == b"k2"
    assert b"client-7f3a" not in base64.b64decode(sealed["data"])

    decoded = await http.post("/decode", json={"payloads": [sealed]}, headers=AUTH)
    assert decoded.status_code == 200
    assert [unwire(p) for p in decoded.json()["payloads"]] == [PLAIN]


async def test_decode_reads_what_the_worker_encrypted(http: httpx.AsyncClient):
    [sealed] = await EncryptionCodec(parse_key_ring(KEYS)).encode([PLAIN])
    answer = await http.post("/decode", json={"payloads": [wire(sealed)]}, headers=AUTH)
    assert [unwire(p) for p in answer.json()["payloads"]] == [PLAIN]


async def test_an_empty_batch_answers_an_empty_list(http: httpx.AsyncClient):
    answer = await http.post("/decode", json={"payloads": []}, headers=AUTH)
    assert answer.status_code == 200 and answer.json() == {"payloads": []}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic " + TOKEN[:4]}])
async def test_without_the_right_token_both_endpoints_answer_401(http: httpx.AsyncClient, headers: dict[str, str]):
    for path in ("/encode", "/decode"):
        answer = await http.post(path, json={"payloads": [wire(PLAIN)]}, headers={**headers, "Origin": UI})
        assert answer.status_code == 401  # the UI's origin alone is not enough unless trusted explicitly
        answer = await http.post(path, json={"payloads": [wire(PLAIN)]}, headers=headers)
        assert answer.status_code == 401
        assert "client-7f3a" not in answer.text


async def test_a_request_for_another_namespace_is_refused(http: httpx.AsyncClient):
    answer = await http.post("/decode", json={"payloads": []}, headers={**AUTH, "X-Namespace": "other"})
    assert answer.status_code == 403 and "default" in answer.json()["detail"]


async def test_a_payload_of_an_unknown_key_is_a_422_naming_the_key_id(http: httpx.AsyncClient):
    [foreign] = await EncryptionCodec(parse_key_ring(f"k0:{new_key()}")).encode([PLAIN])
    answer = await http.post("/decode", json={"payloads": [wire(foreign)]}, headers=AUTH)
    assert answer.status_code == 422 and "'k0'" in answer.json()["detail"]


async def test_a_body_that_is_not_payloads_json_is_a_400(http: httpx.AsyncClient):
    answer = await http.post("/decode", content=b"not json", headers={**AUTH, "Content-Type": "application/json"})
    assert answer.status_code == 400


async def test_the_ui_origin_passes_the_cors_preflight_and_gets_its_answers_marked_readable(http: httpx.AsyncClient):
    preflight = await http.options(
        "/decode",
        headers={
            "Origin": UI,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,x-namespace",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == UI
    allowed = preflight.headers["access-control-allow-headers"].lower()
    assert {"authorization", "content-type", "x-namespace"} <= {h.strip() for h in allowed.split(",")}

    answer = await http.post("/decode", json={"payloads": []}, headers={**AUTH, "Origin": UI})
    assert answer.headers["access-control-allow-origin"] == UI


async def test_another_origin_fails_the_preflight_and_gets_no_cors_grant(http: httpx.AsyncClient):
    evil = "https://evil.example.com"
    preflight = await http.options("/decode", headers={"Origin": evil, "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers
    answer = await http.post("/decode", json={"payloads": []}, headers={**AUTH, "Origin": evil})
    assert "access-control-allow-origin" not in answer.headers


async def test_the_dev_server_trusts_its_own_ui_origin_but_nothing_else_without_a_token():
    codec = EncryptionCodec(parse_key_ring(KEYS))
    web = create_app(codec, token=None, ui_origins=[UI], namespace="default", trust_ui_origin=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url="http://codec") as client:
        ui = await client.post("/decode", json={"payloads": []}, headers={"Origin": UI})
        assert ui.status_code == 200
        other = await client.post("/decode", json={"payloads": []}, headers={"Origin": "https://evil.example.com"})
        assert other.status_code == 401
        bare = await client.post("/decode", json={"payloads": []})
        assert bare.status_code == 401


def test_trusting_the_ui_origin_is_refused_while_a_token_is_configured():
    """Anything that is not a browser can send the UI's Origin: with the mode on, the token would protect nothing."""
    settings = Settings(
        encryption_keys=KEYS,  # type: ignore[arg-type]
        codec_token=TOKEN,  # type: ignore[arg-type]
        ui_url=UI,
        codec_trust_ui_origin=True,
    )
    with pytest.raises(CodecServerError, match=r"SOPFLOW_CODEC_TRUST_UI_ORIGIN.*SOPFLOW_CODEC_TOKEN"):
        app_from_settings(settings, "default")
    with pytest.raises(CodecServerError, match="token"):
        create_app(EncryptionCodec(parse_key_ring(KEYS)), token=TOKEN, ui_origins=[UI], trust_ui_origin=True)


async def test_with_a_token_the_ui_origin_alone_decodes_nothing():
    web = create_app(EncryptionCodec(parse_key_ring(KEYS)), token=TOKEN, ui_origins=[UI], namespace="default")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url="http://codec") as client:
        assert (await client.post("/decode", json={"payloads": []}, headers={"Origin": UI})).status_code == 401
        assert (await client.post("/decode", json={"payloads": []}, headers={**AUTH, "Origin": UI})).status_code == 200


async def test_without_a_token_trusting_the_ui_origin_is_an_explicit_mode_for_that_origin_only():
    settings = Settings(encryption_keys=KEYS, ui_url=UI, codec_trust_ui_origin=True)  # type: ignore[arg-type]
    web = app_from_settings(settings, "default")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url="http://codec") as client:
        assert (await client.post("/decode", json={"payloads": []}, headers={"Origin": UI})).status_code == 200
        assert (await client.post("/decode", json={"payloads": []})).status_code == 401
        evil = {"Origin": "https://evil.example.com"}
        assert (await client.post("/decode", json={"payloads": []}, headers=evil)).status_code == 401


def test_the_production_server_needs_keys_and_a_token():
    with pytest.raises(CodecServerError, match="SOPFLOW_ENCRYPTION_KEYS is not set"):
        app_from_settings(Settings(codec_token=TOKEN), "default")  # type: ignore[arg-type]
    with pytest.raises(CodecServerError, match="SOPFLOW_CODEC_TOKEN is not set"):
        app_from_settings(Settings(encryption_keys=KEYS), "default")  # type: ignore[arg-type]


def test_cors_compares_the_origin_of_the_ui_url():
    assert origin_of("https://ui.example.com/namespaces/default/workflows") == "https://ui.example.com"
    assert origin_of("http://localhost:8080") == "http://localhost:8080"


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        SOPFLOW, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode or 0, stdout.decode(), stderr.decode()


async def test_the_cli_refuses_to_trust_the_ui_origin_while_a_token_is_set_in_one_line():
    env = {
        **os.environ,
        "SOPFLOW_ENCRYPTION_KEYS": KEYS,
        "SOPFLOW_CODEC_TOKEN": TOKEN,
        "SOPFLOW_CODEC_TRUST_UI_ORIGIN": "true",
    }
    code, stdout, stderr = await run_cli("codec-server", "--port", str(free_port()), env=env)
    assert code == 1 and stdout == "" and TOKEN not in stderr
    assert len(stderr.strip().splitlines()) == 1 and "SOPFLOW_CODEC_TRUST_UI_ORIGIN" in stderr


async def test_the_cli_refuses_to_serve_without_a_token_in_one_line():
    env = {**os.environ, "SOPFLOW_ENCRYPTION_KEYS": KEYS}
    env.pop("SOPFLOW_CODEC_TOKEN", None)
    code, stdout, stderr = await run_cli("codec-server", "--port", str(free_port()), env=env)
    assert code == 1 and stdout == ""
    assert len(stderr.strip().splitlines()) == 1 and "SOPFLOW_CODEC_TOKEN is not set" in stderr


async def test_the_cli_serves_decode_over_http():
    port = free_port()
    env = {**os.environ, "SOPFLOW_ENCRYPTION_KEYS": KEYS, "SOPFLOW_CODEC_TOKEN": TOKEN}
    proc = await asyncio.create_subprocess_exec(
        SOPFLOW,
        "codec-server",
        "--port",
        str(port),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        [sealed] = await EncryptionCodec(parse_key_ring(KEYS)).encode([PLAIN])
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            deadline = asyncio.get_running_loop().time() + 30
            while True:
                try:
                    answer = await client.post("/decode", json={"payloads": [wire(sealed)]}, headers=AUTH)
                    break
                except httpx.TransportError:
                    assert proc.returncode is None, "the codec server exited"
                    assert asyncio.get_running_loop().time() < deadline, "the codec server never answered"
                    await asyncio.sleep(0.1)
        assert answer.status_code == 200
        assert [unwire(p) for p in answer.json()["payloads"]] == [PLAIN]
    finally:
        proc.terminate()
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert TOKEN not in stderr.decode() and "client-7f3a" not in stderr.decode()
