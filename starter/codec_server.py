"""The codec server: lets the Temporal Web UI and `temporal workflow show` display encrypted payloads.

Temporal stores only ciphertext (`sopflow.codec`); the UI and the CLI send it here, in Temporal's codec-server
format (`{"payloads": [{"metadata": {k: base64}, "data": base64}]}`, i.e. proto3 JSON of `Payloads`), and show
what comes back. Anyone who can call `/decode` reads every client's personal data, so:

- every request needs `Authorization: Bearer <SOPFLOW_CODEC_TOKEN>` (the CLI: `--codec-auth`);
- browsers may call it from the UI's origin only (`SOPFLOW_UI_URL`, CORS), so another site open in the same
  browser cannot read the answers;
- a request naming another namespace (`X-Namespace`, sent by the UI and the CLI) is refused: the keys here are
  this namespace's.

The Temporal UI cannot send a static token (only its signed-in user's access token), so there is a second mode,
`trust_ui_origin`: no token, and a request is served when its Origin header is the UI's. An Origin header is only
a browser's promise; any other client can send it. So the mode never runs beside a token (it would make the token
worthless: `create_app` and `app_from_settings` refuse the combination), and it is only as safe as the network path
to the port: `sopflow dev` uses it, without a token only, on 127.0.0.1 (anything that could forge the origin there
already runs on the machine that holds the keys); `SOPFLOW_CODEC_TRUST_UI_ORIGIN=true` without
`SOPFLOW_CODEC_TOKEN` does the same for a codec port that only trusted hosts reach.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from fastapi import FastAPI, HTTPException, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.converter import PayloadCodec

from sopflow.codec import EncryptionCodec, PayloadDecryptionError

if TYPE_CHECKING:
    from sopflow.config import Settings

log = logging.getLogger("sopflow.codec_server")

# Temporal refuses payloads above 2 MB by default, and the UI sends one event's payloads at a time.
MAX_BODY_BYTES = 8 * 1024 * 1024
ALLOWED_HEADERS = ["Authorization", "Content-Type", "X-Namespace"]


class CodecServerError(RuntimeError):
    """A configuration that cannot serve, worded for the terminal."""


def create_app(
    codec: PayloadCodec,
    *,
    token: str | None,
    ui_origins: Sequence[str],
    namespace: str | None = None,
    trust_ui_origin: bool = False,
) -> FastAPI:
    """A codec server for one namespace: every request needs `token`, or (no token, `trust_ui_origin`) the UI's
    origin. With neither, every request is refused; with both, nothing is served: `CodecServerError`."""
    if token is not None and trust_ui_origin:
        raise CodecServerError(
            "trusting the UI's origin cannot be combined with a codec token: any client can send that Origin "
            "header, so the token would protect nothing"
        )
    gate = _Gate(
        token=token,
        origins=[origin.rstrip("/") for origin in ui_origins],
        namespace=namespace,
        trust_ui_origin=trust_ui_origin,
    )
    app = FastAPI(title="sopflow codec server", docs_url=None, redoc_url=None, openapi_url=None)
    _allow_ui_origins(app, gate.origins)
    _add_routes(app, codec, gate)
    return app


@dataclass(frozen=True)
class _Gate:
    """Who may call, fixed when the app is built, so every route applies the same token, origin and namespace rules."""

    token: str | None
    origins: list[str]
    namespace: str | None
    trust_ui_origin: bool

    def authorize(self, request: Request) -> None:
        """Refuse (401/403) before reading the body: a caller that may not decode must learn nothing from it."""
        origin = request.headers.get("origin")
        if self.trust_ui_origin and origin is not None and origin.rstrip("/") in self.origins:
            pass
        elif self.token is None or not _token_matches(request.headers.get("authorization"), self.token):
            raise HTTPException(401, "missing or wrong Authorization token", {"WWW-Authenticate": "Bearer"})
        asked = request.headers.get("x-namespace")
        if self.namespace is not None and asked and asked != self.namespace:
            raise HTTPException(403, f"this codec server serves namespace {self.namespace!r}, not {asked!r}")


def _allow_ui_origins(app: FastAPI, origins: list[str]) -> None:
    """CORS for the UI's origin only, so another site open in the same browser cannot read decoded payloads."""
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_methods=["POST"],
        allow_headers=ALLOWED_HEADERS,
        allow_credentials=True,  # the UI may send its user's access token (TEMPORAL_CODEC_PASS_ACCESS_TOKEN)
        max_age=600,
    )


def _add_routes(app: FastAPI, codec: PayloadCodec, gate: _Gate) -> None:
    """The routes Temporal's UI and CLI call (`/encode`, `/decode`), each behind `gate`, and an open health check."""

    @app.post("/encode")
    async def encode(request: Request) -> JSONResponse:
        gate.authorize(request)
        return _answer(await codec.encode(await _payloads_of(request)))

    @app.post("/decode")
    async def decode(request: Request) -> JSONResponse:
        gate.authorize(request)
        try:
            return _answer(await codec.decode(await _payloads_of(request)))
        except PayloadDecryptionError as exc:
            raise HTTPException(422, str(exc)) from None

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}


async def _payloads_of(request: Request) -> list[Payload]:
    """The request's payloads, refusing (413/400) bodies too large or not in Temporal's codec-server JSON."""
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise HTTPException(413, f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        message = json_format.Parse(body or b"{}", Payloads(), ignore_unknown_fields=True)
    except (json_format.ParseError, UnicodeDecodeError) as exc:
        raise HTTPException(400, f'expected {{"payloads": [...]}} in proto3 JSON: {exc}') from None
    return list(message.payloads)


def _token_matches(header: str | None, token: str) -> bool:
    """`Bearer <token>` (what `temporal --codec-auth` and the UI send) or the bare token; constant-time compare."""
    if not header:
        return False
    scheme, _, value = header.strip().partition(" ")
    given = value.strip() if scheme.lower() == "bearer" and value else header.strip()
    return hmac.compare_digest(given.encode(), token.encode())


def _answer(payloads: Sequence[Payload]) -> JSONResponse:
    # Built by hand around MessageToDict: an empty list must still come back as {"payloads": []}.
    body: dict[str, Any] = {"payloads": [json_format.MessageToDict(payload) for payload in payloads]}
    return JSONResponse(body)


def app_from_settings(settings: Settings, namespace: str) -> FastAPI:
    """The production codec server: SOPFLOW_ENCRYPTION_KEYS, and either SOPFLOW_CODEC_TOKEN (every request carries
    it) or, explicitly and without a token, SOPFLOW_CODEC_TRUST_UI_ORIGIN=true (a port only trusted hosts reach)."""
    ring = settings.encryption_key_ring()
    if ring is None:
        raise CodecServerError("SOPFLOW_ENCRYPTION_KEYS is not set: without keys there is nothing to decode")
    token = settings.codec_token.get_secret_value().strip() if settings.codec_token is not None else ""
    if token and settings.codec_trust_ui_origin:
        raise CodecServerError(
            "SOPFLOW_CODEC_TRUST_UI_ORIGIN=true cannot be combined with SOPFLOW_CODEC_TOKEN: any client can send the "
            "UI's Origin header, so the token would protect nothing. Unset SOPFLOW_CODEC_TRUST_UI_ORIGIN (the UI then "
            "shows ciphertext; use `temporal --codec-auth`), or unset the token on a port only trusted hosts reach"
        )
    if not token and not settings.codec_trust_ui_origin:
        raise CodecServerError(
            "SOPFLOW_CODEC_TOKEN is not set: the codec server decrypts for anyone who reaches it, so it needs a "
            "token (make one with `openssl rand -hex 32`)"
        )
    if not token:
        log.warning(
            "codec server without a token: it decodes for any request carrying the UI's Origin (%s); only trusted "
            "hosts may reach its port",
            origin_of(settings.ui_url),
        )
    return create_app(
        EncryptionCodec(ring),
        token=token or None,
        ui_origins=[origin_of(settings.ui_url)],
        namespace=namespace,
        trust_ui_origin=settings.codec_trust_ui_origin,
    )


def origin_of(url: str) -> str:
    """`https://ui.example.com/namespaces/x` -> `https://ui.example.com`: CORS compares origins, not URLs."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else url.rstrip("/")
