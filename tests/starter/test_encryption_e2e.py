"""Encryption end to end on a real Temporal dev server: a lifecycle's personal data never reaches the server's
database or `temporal workflow show` in the clear, the encrypting client still reads it, the codec server lets the
real `temporal` CLI read it, and a rotated key ring keeps reading (and continuing) the old history."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from google.protobuf.message import Message
from sqlalchemy import select
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from sopflow.codec import KEY_ID_METADATA, EncryptionCodec, data_converter, new_key, parse_key_ring
from sopflow.config import Settings
from sopflow.constants import SEARCH_ATTRIBUTES, TASK_QUEUE
from sopflow.db import Database, OutboxEmail
from sopflow.engine import check_deal_fields
from sopflow.mailsink import MailSink, free_port
from sopflow.models import LifecycleStatus, SubmitForm, workflow_id
from sopflow.playbook import Playbook
from starter.binaries import temporal_cli
from starter.codec_server import create_app
from starter.lifecycles import start_lifecycle
from tests.conftest import CONTRACT_REQUEST, make_worker
from workflows.lifecycle import ClientLifecycle

OLD, NEW = new_key(), new_key()
OLD_RING, ROTATED_RING = f"k1:{OLD}", f"k2:{NEW},k1:{OLD}"
TOKEN = "e2e-codec-token"

# Personal data of the deal (contact roles and example.com addresses, never real names).
CONTACT_EMAIL = "client-7f3a@example.com"
CONTACT_NAME = "Regional Rep 7f3a"
SIGNER_EMAIL = "signer-7f3a@example.com"
SIGNER_NAME = "Facility Director 7f3a"
COMPANY = "Lakeview 7f3a Care Center"
SECRETS = [CONTACT_EMAIL, CONTACT_NAME, SIGNER_EMAIL, SIGNER_NAME, COMPANY]
# A lifecycle started by a plain (unencrypting) client: the control that proves the scans below would see a leak.
PLAIN_EMAIL = "plain-9c1d@example.com"


def encrypting(ring: str) -> Settings:
    return Settings(encryption_keys=ring)  # type: ignore[arg-type]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[WorkflowEnvironment, Path]]:
    """A dev server of our own, persisting to a file we can read, its client encrypting with the old ring."""
    db_file = tmp_path / "temporal.db"
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        dev_server_database_filename=str(db_file),
        data_converter=data_converter(encrypting(OLD_RING)),
        search_attributes=SEARCH_ATTRIBUTES,
    )
    try:
        yield env, db_file
    finally:
        await env.shutdown()


@asynccontextmanager
async def running_worker(client: Client, db: Database, sink: MailSink) -> AsyncIterator[None]:
    async with make_worker(client, db, sink, task_queue=TASK_QUEUE):
        yield


@asynccontextmanager
async def codec_server_on(port: int) -> AsyncIterator[None]:
    """The codec server with the rotated ring, served over real HTTP for the `temporal` CLI."""
    web = create_app(EncryptionCodec(parse_key_ring(ROTATED_RING)), token=TOKEN, ui_origins=[], namespace="default")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    server = uvicorn.Server(uvicorn.Config(web, log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), "the codec server stopped while starting"
            await asyncio.sleep(0.02)
        yield
    finally:
        server.should_exit = True
        await task
        sock.close()


async def temporal_show(address: str, wf_id: str, *extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
    proc = await asyncio.create_subprocess_exec(
        temporal_cli(),
        "workflow",
        "show",
        "--workflow-id",
        wf_id,
        "--address",
        address,
        "--namespace",
        "default",
        "--output",
        "json",
        "--disable-config-file",
        "--disable-config-env",
        *extra,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, stderr.decode()
    return stdout.decode()


def readable(shown: str) -> str:
    """What `temporal workflow show -o json` reveals: its text, plus every base64 value (payload data, metadata)
    decoded, since anyone reading the output can decode those."""
    parts = [shown]

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str):
            with contextlib.suppress(binascii.Error, ValueError):
                parts.append(base64.b64decode(value, validate=True).decode("utf-8", errors="replace"))

    walk(json.loads(shown))
    return "\n".join(parts)


async def until_emailed(db: Database, deal_id: str, template: str) -> None:
    """The step's email went out (through an activity whose input, a history payload, names the recipients)."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        with db.session() as session:
            rows = session.scalars(
                select(OutboxEmail).where(OutboxEmail.deal_id == deal_id, OutboxEmail.template == template)
            ).all()
        if any(row.status == "sent" for row in rows):
            return
        assert asyncio.get_running_loop().time() < deadline, f"no {template} email sent for {deal_id}"
        await asyncio.sleep(0.1)


def payloads_in(message: Message) -> Iterator[Payload]:
    """Every Payload anywhere in a proto message (history events nest them at many depths)."""
    if isinstance(message, Payload):
        yield message
        return
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if isinstance(value, Message):
            yield from payloads_in(value)
            continue
        entries = value.values() if hasattr(value, "values") else value  # a map, or a repeated field
        for entry in entries:
            if isinstance(entry, Message):
                yield from payloads_in(entry)


async def history_payloads(handle: WorkflowHandle[Any, Any]) -> list[Payload]:
    history = await handle.fetch_history()
    return [payload for event in history.events for payload in payloads_in(event)]


async def test_personal_data_is_stored_encrypted_and_read_back_through_the_codec_and_a_rotated_ring(
    server: tuple[WorkflowEnvironment, Path], db: Database, safe_balance: Playbook
):
    env, db_file = server
    address = env.client.service_client.config.target_host
    deal_id = f"E2E-{uuid.uuid4().hex[:8]}"
    fields = check_deal_fields(
        safe_balance,
        {
            "rep_email": CONTACT_EMAIL,
            "rep_name": CONTACT_NAME,
            "rep_id": "owner-7",
            "account_manager_email": "am@example.com",
        },
    )
    targeting = {
        "company": COMPANY,
        "signer_name": SIGNER_NAME,
        "signer_email": SIGNER_EMAIL,
        "service_tier": "Standard",
    }

    with MailSink() as sink:
        async with running_worker(env.client, db, sink):
            handle = await start_lifecycle(
                env.client, safe_balance, deal_id, fields, "e2e", WorkflowIDConflictPolicy.FAIL
            )
            status = await handle.execute_update(
                ClientLifecycle.submit_form, SubmitForm(form="targeting", fields=targeting)
            )
            assert status.stage == "contract_request"
            await until_emailed(db, deal_id, "account_claimed")

            # The control: a deal started by a client without the codec is stored readable.
            plain = await Client.connect(address, data_converter=pydantic_data_converter)
            control_fields = check_deal_fields(safe_balance, {"rep_email": PLAIN_EMAIL})
            await start_lifecycle(
                plain, safe_balance, f"{deal_id}-plain", control_fields, "e2e", WorkflowIDConflictPolicy.FAIL
            )

            # The encrypting client reads everything.
            full = await handle.query(ClientLifecycle.status)
            assert full.fields["rep_email"] == CONTACT_EMAIL and full.fields["rep_name"] == CONTACT_NAME

        # `temporal workflow show` straight from the server: ciphertext only.
        shown = readable(await temporal_show(address, workflow_id(deal_id)))
        assert "binary/encrypted" in shown
        for secret in SECRETS:
            assert secret not in shown, f"{secret!r} readable in `temporal workflow show`"
        assert PLAIN_EMAIL in readable(await temporal_show(address, workflow_id(f"{deal_id}-plain")))

        # The same command through the codec server (rotated ring, old key kept) reads it.
        port = free_port()
        async with codec_server_on(port):
            decoded = await temporal_show(
                address,
                workflow_id(deal_id),
                "--codec-endpoint",
                f"http://127.0.0.1:{port}",
                "--codec-auth",
                f"Bearer {TOKEN}",
            )
        assert CONTACT_EMAIL in readable(decoded) and SIGNER_EMAIL in readable(decoded)

        # Rotation: a worker and a client whose current key is new, the old one kept, continue the same lifecycle
        # (the new worker replays the old history) and read all of it.
        rotated = await Client.connect(address, data_converter=data_converter(encrypting(ROTATED_RING)))
        rotated_handle = rotated.get_workflow_handle(workflow_id(deal_id))
        async with running_worker(rotated, db, sink):
            status = await rotated_handle.execute_update(
                ClientLifecycle.submit_form, SubmitForm(form="contract_request", fields=CONTRACT_REQUEST)
            )
            assert status.stage == "contract"
            await until_emailed(db, deal_id, "contract_sent")
            full = await rotated_handle.query(ClientLifecycle.status)
            assert isinstance(full, LifecycleStatus)
            assert full.fields["rep_email"] == CONTACT_EMAIL

    raw = await history_payloads(rotated_handle)
    key_ids = {payload.metadata.get(KEY_ID_METADATA) for payload in raw}
    assert {b"k1", b"k2"} <= key_ids, f"expected payloads under both keys, got {key_ids}"
    decoded_payloads = await EncryptionCodec(parse_key_ring(ROTATED_RING)).decode(raw)
    assert any(SIGNER_EMAIL.encode() in payload.data for payload in decoded_payloads)

    # The server's own database file, every byte of it (and its WAL, if any): no personal data in the clear.
    await env.shutdown()
    stored = b"".join(path.read_bytes() for path in db_file.parent.glob(f"{db_file.name}*"))
    assert workflow_id(deal_id).encode() in stored  # we are reading the right file
    assert PLAIN_EMAIL.encode() in stored  # and a plain payload there would be found
    for secret in SECRETS:
        assert secret.encode() not in stored, f"{secret!r} stored in the clear in the Temporal database"
