"""Webhook signatures: HubSpot (v1, v2, v3), DocuSign Connect HMAC, and sopflow's own per-form tokens.

Pure functions over bytes, so every scheme is tested against its published vectors without a server. Every
comparison goes through `hmac.compare_digest` on bytes: a byte-by-byte `==` leaks, through its timing, how much of a
forged signature was right, and `compare_digest` on `str` raises on non-ASCII input (a header is attacker input).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable

# HubSpot: "Reject the request if the timestamp is older than 5 minutes." We also refuse timestamps more than five
# minutes ahead, so a captured request cannot be replayed later by a sender that forged a future timestamp.
HUBSPOT_MAX_SKEW_MS = 5 * 60 * 1000

# HubSpot's v3 instructions: decode exactly these escapes in the request URI before signing (nothing else, so `%20`
# and `%25` stay as they are). Uppercase and lowercase hex digits are both accepted in URIs.
_HUBSPOT_V3_DECODE = {
    "%3A": ":",
    "%2F": "/",
    "%3F": "?",
    "%40": "@",
    "%21": "!",
    "%24": "$",
    "%27": "'",
    "%28": "(",
    "%29": ")",
    "%2A": "*",
    "%2C": ",",
    "%3B": ";",
}


def _bytes(value: str | bytes) -> bytes:
    # surrogateescape: a header decoded by the server as latin-1 or with odd bytes must compare, not raise.
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def _same(expected: str | bytes, given: str | bytes) -> bool:
    return hmac.compare_digest(_bytes(expected), _bytes(given))


# --- HubSpot -------------------------------------------------------------------------------------------------------


def hubspot_v1_signature(client_secret: str, body: bytes) -> str:
    """v1: hex SHA-256 of client secret + body. No method, URI or timestamp: a captured request replays forever."""
    return hashlib.sha256(_bytes(client_secret) + body).hexdigest()


def hubspot_v2_signature(client_secret: str, method: str, uri: str, body: bytes) -> str:
    """v2: hex SHA-256 of client secret + method + URI + body (still no timestamp)."""
    return hashlib.sha256(_bytes(client_secret) + _bytes(method.upper()) + _bytes(uri) + body).hexdigest()


def hubspot_v3_uri(uri: str) -> str:
    """The URI as HubSpot signs it: the listed percent-escapes decoded, everything else untouched."""
    out: list[str] = []
    i = 0
    while i < len(uri):
        escape = uri[i : i + 3].upper()
        if uri[i] == "%" and escape in _HUBSPOT_V3_DECODE:
            out.append(_HUBSPOT_V3_DECODE[escape])
            i += 3
        else:
            out.append(uri[i])
            i += 1
    return "".join(out)


def hubspot_v3_signature(client_secret: str, method: str, uri: str, body: bytes, timestamp: str) -> str:
    """v3: base64 HMAC-SHA256 (key: client secret) of method + decoded URI + body + the timestamp header's text."""
    message = _bytes(method.upper()) + _bytes(hubspot_v3_uri(uri)) + body + _bytes(timestamp)
    return base64.b64encode(hmac.new(_bytes(client_secret), message, hashlib.sha256).digest()).decode("ascii")


def hubspot_timestamp_fresh(timestamp: str, now_ms: int, max_skew_ms: int = HUBSPOT_MAX_SKEW_MS) -> bool:
    """Whether X-HubSpot-Request-Timestamp (milliseconds since the epoch) is within the window, either way."""
    text = timestamp.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 16:
        return False
    return abs(now_ms - int(text)) <= max_skew_ms


def verify_hubspot_v3(
    client_secret: str,
    method: str,
    uri: str,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    now_ms: int,
    max_skew_ms: int = HUBSPOT_MAX_SKEW_MS,
) -> bool:
    """A v3 signature that matches AND a timestamp within the window; a missing header is a failure."""
    if not client_secret or not signature or timestamp is None:
        return False
    if not hubspot_timestamp_fresh(timestamp, now_ms, max_skew_ms):
        return False
    return _same(hubspot_v3_signature(client_secret, method, uri, body, timestamp), signature.strip())


def verify_hubspot_legacy(
    client_secret: str, version: str | None, method: str, uri: str, body: bytes, signature: str | None
) -> bool:
    """v1 or v2 (`X-HubSpot-Signature-Version`); hex digests compare case-insensitively. Unknown versions fail."""
    if not client_secret or not signature:
        return False
    kind = (version or "v1").strip().lower()
    if kind == "v1":
        expected = hubspot_v1_signature(client_secret, body)
    elif kind == "v2":
        expected = hubspot_v2_signature(client_secret, method, uri, body)
    else:
        return False
    return _same(expected, signature.strip().lower())


# --- DocuSign Connect ----------------------------------------------------------------------------------------------


def docusign_signature(key: str, body: bytes) -> str:
    """Connect's HMAC: base64 HMAC-SHA256 of the raw body, one `X-DocuSign-Signature-N` header per account key."""
    return base64.b64encode(hmac.new(_bytes(key), body, hashlib.sha256).digest()).decode("ascii")


def verify_docusign(keys: Iterable[str], body: bytes, signatures: Iterable[str]) -> bool:
    """True when any configured key produced any of the signature headers.

    Connect sends one header per active key (up to 100), and an admin rotating keys has two active for a while:
    accepting any pair lets either side rotate first. Every pair is compared, so the time taken does not say which.
    """
    expected = [docusign_signature(key, body) for key in keys if key]
    given = [s.strip() for s in signatures if s and s.strip()]
    matched = False
    for mine in expected:
        for theirs in given:
            matched |= _same(mine, theirs)
    return matched


# --- per-form tokens -----------------------------------------------------------------------------------------------


def form_token(secret: str, deal_id: str, form: str) -> str:
    """The token that authorises posting one form for one deal: hex HMAC-SHA256 of `deal_id:form`.

    Scoped to the pair, so a link mailed for one deal's site-visit form cannot be replayed against another deal or
    another form; it carries no expiry, because a site-visit form is posted again every few weeks for years.
    """
    return hmac.new(_bytes(secret), _bytes(f"{deal_id}:{form}"), hashlib.sha256).hexdigest()


def verify_form_token(secret: str, deal_id: str, form: str, token: str | None) -> bool:
    if not secret or not token:
        return False
    return _same(form_token(secret, deal_id, form), token.strip().lower())
