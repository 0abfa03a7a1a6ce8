"""Webhook signatures against HubSpot's published vectors; stale, future and tampered requests refused."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from sopflow.signatures import (
    HUBSPOT_MAX_SKEW_MS,
    docusign_signature,
    form_token,
    hubspot_timestamp_fresh,
    hubspot_v1_signature,
    hubspot_v2_signature,
    hubspot_v3_signature,
    hubspot_v3_uri,
    verify_docusign,
    verify_form_token,
    verify_hubspot_legacy,
    verify_hubspot_v3,
)

# HubSpot's published examples (shared notes: /work/shared/notes/temporal-on-these-machines.md).
SECRET = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy"
URI = "https://www.example.com/webhook_uri"
BODY = b"{'example_field':'example_value'}"
V1 = "69fc6631a867edd4f9e9e627fc5c1148e3fbdd8b21837b6d2b8901c1fa57f750"
V2_POST = "4fe4e3a7d3cf09db53be39d0a58130e2aaba074ec123a9e355b876a689a1c383"
V3_POST = "HPW73RUtKmcYoEDADG0s6MmGFWUzWJKAW07r8RDgcQw="
V3_TIMESTAMP = "15000000"
# From HubSpot's v1/v2 pages: a CRM event batch (v1) and a GET without a body (v2).
V1_BATCH = (
    b'[{"eventId":1,"subscriptionId":12345,"portalId":62515,"occurredAt":1564113600000,'
    b'"subscriptionType":"contact.creation","attemptNumber":0,"objectId":123,"changeSource":"CRM",'
    b'"changeFlag":"NEW","appId":54321}]'
)
V1_BATCH_SIGNATURE = "232db2615f3d666fe21a8ec971ac7b5402d33b9a925784df3ca654d05f4817de"
V2_GET = "eee2dddcc73c94d699f5e395f4b9d454a069a6855fbfa152e91e88823087200e"

NOW = int(V3_TIMESTAMP)  # "now" at the vector's own timestamp, so the vector is fresh


def test_hubspot_published_vectors():
    assert hubspot_v1_signature(SECRET, BODY) == V1
    assert hubspot_v2_signature(SECRET, "POST", URI, BODY) == V2_POST
    assert hubspot_v3_signature(SECRET, "POST", URI, BODY, V3_TIMESTAMP) == V3_POST
    assert hubspot_v1_signature(SECRET, V1_BATCH) == V1_BATCH_SIGNATURE
    assert hubspot_v2_signature(SECRET, "GET", URI, b"") == V2_GET


def test_v3_vector_verifies_and_any_change_is_refused():
    assert verify_hubspot_v3(SECRET, "POST", URI, BODY, V3_TIMESTAMP, V3_POST, NOW)
    assert not verify_hubspot_v3(SECRET, "POST", URI, BODY + b" ", V3_TIMESTAMP, V3_POST, NOW)  # tampered body
    assert not verify_hubspot_v3(SECRET, "POST", URI + "?x=1", BODY, V3_TIMESTAMP, V3_POST, NOW)  # other URI
    assert not verify_hubspot_v3(SECRET, "PUT", URI, BODY, V3_TIMESTAMP, V3_POST, NOW)  # other method
    assert not verify_hubspot_v3(SECRET.replace("y", "z"), "POST", URI, BODY, V3_TIMESTAMP, V3_POST, NOW)
    # The timestamp is signed: shifting it (to look fresh) breaks the signature.
    assert not verify_hubspot_v3(SECRET, "POST", URI, BODY, "15000001", V3_POST, NOW)
    assert not verify_hubspot_v3(SECRET, "POST", URI, BODY, V3_TIMESTAMP, None, NOW)
    assert not verify_hubspot_v3(SECRET, "POST", URI, BODY, None, V3_POST, NOW)
    assert not verify_hubspot_v3("", "POST", URI, BODY, V3_TIMESTAMP, V3_POST, NOW)


@pytest.mark.parametrize("offset_ms", [HUBSPOT_MAX_SKEW_MS + 1, -(HUBSPOT_MAX_SKEW_MS + 1), 10**9, -(10**9)])
def test_v3_stale_and_future_timestamps_are_refused_even_when_correctly_signed(offset_ms: int):
    assert not verify_hubspot_v3(SECRET, "POST", URI, BODY, V3_TIMESTAMP, V3_POST, NOW + offset_ms)


@pytest.mark.parametrize("offset_ms", [0, HUBSPOT_MAX_SKEW_MS, -HUBSPOT_MAX_SKEW_MS, 1234])
def test_v3_timestamps_within_five_minutes_either_way_are_accepted(offset_ms: int):
    assert verify_hubspot_v3(SECRET, "POST", URI, BODY, V3_TIMESTAMP, V3_POST, NOW + offset_ms)


ARABIC_INDIC_DIGITS = "\u0661\u0665" + "\u0660" * 6  # isdigit() is true for these: not a timestamp all the same


@pytest.mark.parametrize("timestamp", ["", "abc", "-15000000", "1.5e7", ARABIC_INDIC_DIGITS, "9" * 40, " "])
def test_malformed_timestamps_are_not_fresh(timestamp: str):
    assert not hubspot_timestamp_fresh(timestamp, NOW)


def test_v3_uri_decodes_exactly_hubspots_list():
    raw = "https://x.example.com/hook%3Aa%2fb%3F%40%21%24%27%28%29%2A%2C%3B?q=%20%25%3a"
    assert hubspot_v3_uri(raw) == "https://x.example.com/hook:a/b?@!$'()*,;?q=%20%25:"
    signed = hubspot_v3_signature(SECRET, "POST", raw, BODY, V3_TIMESTAMP)
    assert signed == hubspot_v3_signature(SECRET, "POST", hubspot_v3_uri(raw), BODY, V3_TIMESTAMP)


def test_v3_matches_an_independent_computation():
    uri = "https://hooks.example.com/webhooks/hubspot"
    body = '[{"objectId":1,"note":"café"}]'.encode()
    expected = base64.b64encode(
        hmac.new(b"s3cret", b"POST" + uri.encode() + body + b"1700000000000", hashlib.sha256).digest()
    ).decode()
    assert hubspot_v3_signature("s3cret", "POST", uri, body, "1700000000000") == expected


def test_legacy_signatures_by_version_header():
    assert verify_hubspot_legacy(SECRET, "v1", "POST", URI, BODY, V1)
    assert verify_hubspot_legacy(SECRET, None, "POST", URI, BODY, V1.upper())  # no version header means v1
    assert verify_hubspot_legacy(SECRET, "v2", "POST", URI, BODY, V2_POST)
    assert not verify_hubspot_legacy(SECRET, "v2", "POST", URI, BODY, V1)
    assert not verify_hubspot_legacy(SECRET, "v1", "POST", URI, BODY + b"x", V1)
    assert not verify_hubspot_legacy(SECRET, "v9", "POST", URI, BODY, V1)
    assert not verify_hubspot_legacy(SECRET, "v1", "POST", URI, BODY, None)


@pytest.mark.parametrize("garbage", ["é" * 44, "\x00", "🙂", "not base64 at all", "=" * 200])
def test_non_ascii_or_garbage_signature_headers_fail_without_raising(garbage: str):
    assert not verify_hubspot_v3(SECRET, "POST", URI, BODY, V3_TIMESTAMP, garbage, NOW)
    assert not verify_hubspot_legacy(SECRET, "v1", "POST", URI, BODY, garbage)
    assert not verify_docusign(["key"], BODY, [garbage])
    assert not verify_form_token("secret", "D-1", "targeting", garbage)


def test_docusign_any_key_may_match_any_header():
    body = b'{"event":"envelope-completed"}'
    old, new = "old-key", "new-key"
    # Connect sends one header per active key; we may know only one of them (mid-rotation on either side).
    headers = [docusign_signature(old, body), docusign_signature(new, body)]
    assert verify_docusign([new], body, headers)
    assert verify_docusign([old, "unrelated"], body, headers[:1])
    assert verify_docusign(["unrelated", new], body, ["junk", headers[1]])
    assert not verify_docusign(["unrelated"], body, headers)
    assert not verify_docusign([new], body + b" ", headers)  # tampered body
    assert not verify_docusign([], body, headers)
    assert not verify_docusign([new], body, [])
    assert docusign_signature("k", b"x") == base64.b64encode(hmac.new(b"k", b"x", hashlib.sha256).digest()).decode()


def test_form_tokens_are_scoped_to_deal_and_form():
    token = form_token("secret", "D-1", "targeting")
    assert token == hmac.new(b"secret", b"D-1:targeting", hashlib.sha256).hexdigest()
    assert verify_form_token("secret", "D-1", "targeting", token)
    assert verify_form_token("secret", "D-1", "targeting", token.upper())
    assert not verify_form_token("secret", "D-2", "targeting", token)
    assert not verify_form_token("secret", "D-1", "closeout", token)
    assert not verify_form_token("other", "D-1", "targeting", token)
    assert not verify_form_token("", "D-1", "targeting", token)
    assert not verify_form_token("secret", "D-1", "targeting", None)
