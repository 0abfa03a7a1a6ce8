"""Payload encryption: AES-256-GCM with a key ring, rotation, tampering, and the one data converter."""

from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DefaultFailureConverterWithEncodedAttributes
from temporalio.exceptions import ApplicationError

from sopflow.codec import (
    ENCODING,
    KEY_ID_METADATA,
    EncryptionCodec,
    KeyRingError,
    PayloadDecryptionError,
    _type_adapter,
    data_converter,
    new_key,
    parse_key_ring,
    shared_pydantic_data_converter,
)
from sopflow.config import Settings
from sopflow.models import ExternalEvent, LifecycleInput

K1, K2 = new_key(), new_key()
SECRET = "client-7f3a@example.com"


def plain(text: str = SECRET) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=f'"{text}"'.encode())


async def test_a_payload_round_trips_and_its_bytes_hold_neither_the_data_nor_the_key():
    codec = EncryptionCodec(parse_key_ring(f"k1:{K1}"))
    [encrypted] = await codec.encode([plain()])
    assert encrypted.metadata["encoding"] == ENCODING
    assert encrypted.metadata[KEY_ID_METADATA] == b"k1"
    raw = encrypted.SerializeToString()
    assert SECRET.encode() not in raw and b"json/plain" not in raw
    assert base64.b64decode(K1) not in raw
    assert await codec.decode([encrypted]) == [plain()]


async def test_each_encryption_uses_a_fresh_nonce_so_equal_payloads_look_different():
    codec = EncryptionCodec(parse_key_ring(f"k1:{K1}"))
    first, second = await codec.encode([plain(), plain()])
    assert first.data != second.data
    assert first.data[:12] != second.data[:12]


async def test_a_tampered_payload_fails_with_a_clear_error():
    codec = EncryptionCodec(parse_key_ring(f"k1:{K1}"))
    [encrypted] = await codec.encode([plain()])
    flipped = bytearray(encrypted.data)
    flipped[-1] ^= 0x01
    tampered = Payload(metadata=dict(encrypted.metadata), data=bytes(flipped))
    with pytest.raises(PayloadDecryptionError, match="failed authentication"):
        await codec.decode([tampered])


async def test_relabelling_a_payload_with_another_known_key_id_fails():
    codec = EncryptionCodec(parse_key_ring(f"k2:{K2},k1:{K1}"))
    [encrypted] = await codec.encode([plain()])
    relabelled = Payload(metadata={**encrypted.metadata, KEY_ID_METADATA: b"k1"}, data=encrypted.data)
    with pytest.raises(PayloadDecryptionError):
        await codec.decode([relabelled])


async def test_a_payload_of_an_unknown_key_names_the_key_id_it_needs():
    [old] = await EncryptionCodec(parse_key_ring(f"k0:{new_key()}")).encode([plain()])
    with pytest.raises(PayloadDecryptionError, match=r"key id 'k0'.*known: k2, k1"):
        await EncryptionCodec(parse_key_ring(f"k2:{K2},k1:{K1}")).decode([old])


async def test_after_rotation_new_payloads_use_the_new_key_and_old_ones_still_decrypt():
    [old] = await EncryptionCodec(parse_key_ring(f"k1:{K1}")).encode([plain("old")])
    rotated = EncryptionCodec(parse_key_ring(f"k2:{K2},k1:{K1}"))
    [new] = await rotated.encode([plain("new")])
    assert new.metadata[KEY_ID_METADATA] == b"k2"
    assert await rotated.decode([old, new]) == [plain("old"), plain("new")]


async def test_payloads_written_before_encryption_was_switched_on_still_read():
    codec = EncryptionCodec(parse_key_ring(f"k1:{K1}"))
    assert await codec.decode([plain()]) == [plain()]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("k1", "expected <id>:<base64 key>"),
        ("k1:not base64!", "not valid base64"),
        (f"k1:{base64.b64encode(b'short').decode()}", "5 bytes, AES-256 needs 32"),
        (f"k1:{K1},k1:{K2}", "appears twice"),
        (" , ", "holds no key"),
    ],
)
def test_a_malformed_key_ring_is_one_clear_error(raw: str, message: str):
    with pytest.raises(KeyRingError, match=message):
        parse_key_ring(raw)


def test_invalid_keys_in_the_environment_fail_settings_without_echoing_the_key(monkeypatch):
    short = base64.b64encode(b"sixteen byte key").decode()
    monkeypatch.setenv("SOPFLOW_ENCRYPTION_KEYS", f"k1:{short}")
    with pytest.raises(ValidationError) as refused:
        Settings()
    assert "entry 1 (k1): the key is 16 bytes" in str(refused.value)
    assert short not in str(refused.value)


def test_the_key_ring_never_shows_its_keys():
    ring = parse_key_ring(f"k2:{K2},k1:{K1}")
    assert ring.current_id == "k2"
    assert K2 not in repr(ring) and K1 not in repr(ring)
    assert "k2" in repr(ring)


def test_without_keys_the_converter_is_the_plain_pydantic_one():
    assert data_converter(Settings(encryption_keys=None)) is shared_pydantic_data_converter


def test_the_shared_converter_writes_and_reads_what_the_sdks_pydantic_converter_does():
    """Histories written with the SDK's converter must read the same, and new payloads be the same bytes."""
    values = [ExternalEvent(name="site_visit_logged", event_id="e1"), None, {"a": [1, 2]}, "text", b"raw"]
    ours = shared_pydantic_data_converter.payload_converter.to_payloads(values)
    assert ours == pydantic_data_converter.payload_converter.to_payloads(values)
    hints: list[type] = [ExternalEvent, type(None), dict, str, bytes]
    assert shared_pydantic_data_converter.payload_converter.from_payloads(ours, hints) == values
    assert shared_pydantic_data_converter.payload_converter.from_payloads(ours) == (
        pydantic_data_converter.payload_converter.from_payloads(ours)
    )


def test_the_workflows_of_a_worker_share_one_type_adapter_per_type():
    """The SDK makes a payload converter per workflow: the adapters (compiled validators, ~190 KB for a lifecycle's
    input) must not be made again for each."""
    payload = shared_pydantic_data_converter.payload_converter.to_payloads([ExternalEvent(name="x", event_id="e1")])
    first, second = (shared_pydantic_data_converter._new_payload_converter() for _ in range(2))
    assert first is not second
    before = _type_adapter.cache_info().currsize
    first.from_payloads(payload, [ExternalEvent])
    second.from_payloads(payload, [ExternalEvent])
    assert _type_adapter.cache_info().currsize <= before + 1
    assert _type_adapter(ExternalEvent) is _type_adapter(ExternalEvent)


async def test_with_keys_the_converter_encrypts_pydantic_values_and_failures():
    converter = data_converter(Settings(encryption_keys=f"k1:{K1}"))  # type: ignore[arg-type]
    assert isinstance(converter.payload_codec, EncryptionCodec)
    assert converter.failure_converter_class is DefaultFailureConverterWithEncodedAttributes
    assert converter.payload_converter_class is shared_pydantic_data_converter.payload_converter_class

    value = {"deal": "D-1", "contact": SECRET}
    [payload] = await converter.encode([value])
    assert SECRET.encode() not in payload.SerializeToString()
    assert await converter.decode([payload], [dict]) == [value]

    failure = Failure()
    await converter.encode_failure(ApplicationError(f"bounced: {SECRET}"), failure)
    assert SECRET not in failure.message and SECRET.encode() not in failure.SerializeToString()
    assert SECRET in str(await converter.decode_failure(failure))


async def test_pydantic_models_survive_the_encrypting_converter(safe_balance):
    converter = data_converter(Settings(encryption_keys=f"k1:{K1}"))  # type: ignore[arg-type]
    inp = LifecycleInput(deal_id="D-1", playbook=safe_balance, fields={"rep_email": SECRET})
    [payload] = await converter.encode([inp])
    assert SECRET.encode() not in payload.SerializeToString()
    [back] = await converter.decode([payload], [LifecycleInput])
    assert back == inp
