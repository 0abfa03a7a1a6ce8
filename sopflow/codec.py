"""Payload encryption: what a lifecycle carries (contacts' names and emails, form answers) is stored by Temporal, in
its database and in every history export, so it is encrypted before it leaves the process.

AES-256-GCM with a key ring from `SOPFLOW_ENCRYPTION_KEYS` (`k2:<base64 32 bytes>,k1:<base64>`): the first key
encrypts, every key decrypts, so keys rotate without a stop. Each payload records the id of its key (never the key)
in its metadata, so history written years ago still names the key it needs. Workflow ids, search attributes and
the static summary are not payloads: they stay readable, which is why they hold ids only.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import TypeAdapter
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import PydanticJSONPlainPayloadConverter
from temporalio.converter import (
    CompositePayloadConverter,
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    DefaultPayloadConverter,
    JSONPlainPayloadConverter,
    PayloadCodec,
)

if TYPE_CHECKING:
    from sopflow.config import Settings

ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
NONCE_BYTES = 12
KEY_BYTES = 32
_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class KeyRingError(ValueError):
    """A malformed SOPFLOW_ENCRYPTION_KEYS. The message names the entry by position and id, never its key bytes."""


class PayloadDecryptionError(ValueError):
    """A payload that cannot be decrypted: its key is not in the ring, or its bytes were changed."""


@dataclass(frozen=True)
class KeyRing:
    """Keys by id, in the order given: the first one is current (encrypts), all of them decrypt."""

    keys: tuple[tuple[str, bytes], ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise KeyRingError("SOPFLOW_ENCRYPTION_KEYS holds no key")

    @property
    def current_id(self) -> str:
        return self.keys[0][0]

    @property
    def ids(self) -> list[str]:
        return [key_id for key_id, _ in self.keys]

    def key(self, key_id: str) -> bytes | None:
        return dict(self.keys).get(key_id)

    def __repr__(self) -> str:  # a ring in a log line or a traceback must not print key bytes
        return f"KeyRing(ids={self.ids})"


def parse_key_ring(raw: str) -> KeyRing:
    """Parse `id:<base64 of 32 bytes>` entries separated by commas; the first entry is the current key."""
    keys: list[tuple[str, bytes]] = []
    for position, entry in enumerate((part.strip() for part in raw.split(",")), start=1):
        if not entry:
            continue
        key_id, sep, encoded = entry.partition(":")
        key_id = key_id.strip()
        where = f"SOPFLOW_ENCRYPTION_KEYS entry {position}"
        if not sep or not _KEY_ID.match(key_id):
            raise KeyRingError(f"{where}: expected <id>:<base64 key>, the id made of letters, digits, . _ -")
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise KeyRingError(f"{where} ({key_id}): the key is not valid base64") from None
        if len(key) != KEY_BYTES:
            raise KeyRingError(
                f"{where} ({key_id}): the key is {len(key)} bytes, AES-256 needs {KEY_BYTES} "
                "(make one with `openssl rand -base64 32`)"
            )
        if any(key_id == known for known, _ in keys):
            raise KeyRingError(f"{where}: key id {key_id} appears twice")
        keys.append((key_id, key))
    return KeyRing(tuple(keys))


def new_key() -> str:
    """A fresh key, base64, as it goes into SOPFLOW_ENCRYPTION_KEYS."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


class EncryptionCodec(PayloadCodec):
    """Encrypts every payload with the ring's current key and a random 96-bit nonce; decrypts with the key its
    metadata names. The key id is also the GCM associated data, so relabelling a payload with another id fails."""

    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring
        self._ciphers = {key_id: AESGCM(key) for key_id, key in ring.keys}

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(payload) for payload in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        key_id = self.ring.current_id
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[key_id].encrypt(nonce, payload.SerializeToString(), key_id.encode())
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID_METADATA: key_id.encode()},
            data=nonce + sealed,
        )

    def decrypt(self, payload: Payload) -> Payload:
        """Payloads that are not encrypted pass through: history written before encryption was switched on (and
        payloads another codec left alone) still reads."""
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode(errors="replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise PayloadDecryptionError(
                f"payload encrypted with key id {key_id!r}, which is not in SOPFLOW_ENCRYPTION_KEYS "
                f"(known: {', '.join(self.ring.ids)}): add that key back to the ring, after the current one"
            )
        data = payload.data
        try:
            plain = cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], key_id.encode())
        except InvalidTag:
            raise PayloadDecryptionError(
                f"payload encrypted with key id {key_id!r} failed authentication: it was altered, or the ring "
                "holds a different key under that id"
            ) from None
        decoded = Payload()
        decoded.ParseFromString(plain)
        return decoded


@functools.lru_cache(maxsize=1024)
def _type_adapter(hint: Any) -> TypeAdapter[Any]:
    return TypeAdapter(hint)


class SharedAdaptersJSONConverter(PydanticJSONPlainPayloadConverter):
    """The SDK's pydantic JSON converter, with one type adapter per type for the whole process.

    The SDK makes a payload converter for every workflow instance, and the pydantic one caches its type adapters
    per converter: every cached lifecycle kept its own `TypeAdapter(LifecycleInput)`, whose compiled validator
    (the playbook's whole schema, outside Python's heap) is ~190 KB. An adapter holds no state of its own
    and validates from any thread, so one per type serves every workflow. Same JSON, same decoded values.
    """

    def from_payload(self, payload: Payload, type_hint: type | None = None) -> Any:
        hint = type_hint if type_hint is not None else Any
        try:
            hash(hint)
        except TypeError:  # an unhashable hint is not cached, as the SDK's converter does
            return TypeAdapter(hint).validate_json(payload.data)
        return _type_adapter(hint).validate_json(payload.data)


class SharedAdaptersPayloadConverter(CompositePayloadConverter):
    """`temporalio.contrib.pydantic.PydanticPayloadConverter` with `SharedAdaptersJSONConverter` for JSON."""

    def __init__(self) -> None:
        json_converter = SharedAdaptersJSONConverter()
        super().__init__(
            *(
                json_converter if isinstance(c, JSONPlainPayloadConverter) else c
                for c in DefaultPayloadConverter.default_encoding_payload_converters
            )
        )


shared_pydantic_data_converter = DataConverter(payload_converter_class=SharedAdaptersPayloadConverter)


def data_converter(settings: Settings) -> DataConverter:
    """The one converter every client and worker uses: the pydantic converter (its type adapters shared by all
    workflows of a worker), encrypting when keys are set.

    Failures (messages, stack traces) are encrypted too: they quote inputs as often as not.
    """
    ring = settings.encryption_key_ring()
    if ring is None:
        return shared_pydantic_data_converter
    return dataclasses.replace(
        shared_pydantic_data_converter,
        payload_codec=EncryptionCodec(ring),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )
