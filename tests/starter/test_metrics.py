"""Prometheus metrics end to end: a worker with a metrics runtime on a real dev server, scraped over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from sopflow.codec import shared_pydantic_data_converter
from sopflow.db import Database
from sopflow.mailsink import MailSink
from sopflow.models import LifecycleInput, SubmitForm
from sopflow.playbook import Playbook
from sopflow.telemetry import (
    EMAIL_ATTEMPTS,
    EMAILS,
    REJECTED_UPDATES,
    STAGE_TRANSITIONS,
    MetricsError,
    prometheus_runtime,
)
from tests.conftest import DEAL, TARGETING, make_worker
from tests.prometheus import Sample, free_port, scrape, scrape_until, value
from workflows.lifecycle import ClientLifecycle
from workflows.options import start_options

SOPFLOW = str(Path(sys.executable).parent / "sopflow")


async def test_worker_metrics_endpoint_serves_sdk_metrics_and_lifecycle_counters_without_addresses(
    dev_env: WorkflowEnvironment, db: Database, smtp_sink: MailSink, safe_balance: Playbook
) -> None:
    port = free_port()
    runtime = prometheus_runtime(f"127.0.0.1:{port}")
    client = await Client.connect(
        dev_env.client.service_client.config.target_host,
        namespace=dev_env.client.namespace,
        data_converter=shared_pydantic_data_converter,
        runtime=runtime,
    )
    worker = make_worker(client, db, smtp_sink)
    deal_id = f"M-{uuid.uuid4().hex[:8]}"
    async with worker:
        handle = await client.start_workflow(
            ClientLifecycle.run,
            LifecycleInput(deal_id=deal_id, playbook=safe_balance, fields=DEAL, actor="test"),
            task_queue=worker.task_queue,
            **start_options(safe_balance, deal_id),
        )
        with pytest.raises(WorkflowUpdateFailedError):  # not open in targeting: rejected by the validator
            await handle.execute_update(ClientLifecycle.submit_form, SubmitForm(form="closeout", fields={}))
        # Targeting -> contract_request, whose entry sends the account-claimed email.
        status = await handle.execute_update(
            ClientLifecycle.submit_form, SubmitForm(form="targeting", fields=TARGETING)
        )
        assert status.stage == "contract_request"

        def complete(samples: list[Sample]) -> bool:
            return value(samples, EMAILS, playbook="safe_balance", template="account_claimed") is not None

        samples = await scrape_until(port, complete)
        text = await scrape(port)

    assert any(name == "temporal_request" for name, _, _ in samples), "the client's request counter"
    assert any(name.startswith("temporal_workflow_task_") for name, _, _ in samples), "the worker's task metrics"
    email = {"playbook": "safe_balance", "template": "account_claimed", "outcome": "sent"}
    assert value(samples, EMAIL_ATTEMPTS, **email) == 1
    assert value(samples, EMAILS, **email) == 1
    transition = {"playbook": "safe_balance", "from_stage": "targeting", "stage": "contract_request"}
    assert value(samples, STAGE_TRANSITIONS, **transition) == 1
    assert value(samples, STAGE_TRANSITIONS, playbook="safe_balance", from_stage="start", stage="targeting") == 1
    assert value(samples, REJECTED_UPDATES, playbook="safe_balance", update="submit_form") == 1
    # The SDK's own labels come along (which task queue, which workflow type).
    assert value(samples, EMAIL_ATTEMPTS, task_queue=worker.task_queue, activity_type="send_email") == 1
    # Privacy: no address, name or company reaches a label.
    for secret in ("example.com", "@", TARGETING["signer_name"], TARGETING["company"], deal_id):
        assert secret not in text


def test_a_second_metrics_endpoint_on_a_taken_port_fails_in_one_line() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(MetricsError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            prometheus_runtime(f"127.0.0.1:{port}")


async def log_lines_until(
    stream: asyncio.StreamReader, lines: list[dict[str, Any]], done: Callable[[dict[str, Any]], bool]
) -> None:
    """Read JSON log lines into `lines` until one satisfies `done` (or the stream ends): the worker's own account of
    where it is, instead of a guess of how long a loaded machine needs to get there."""
    while raw := await stream.readline():
        if raw.startswith(b"{"):
            lines.append(json.loads(raw))
            if done(lines[-1]):
                return


async def test_sopflow_worker_with_metrics_port_serves_metrics_and_logs_json(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
        "TEMPORAL_NAMESPACE": dev_env.client.namespace,
        "SOPFLOW_HOME": str(tmp_path),
        "SOPFLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'records.db'}",
    }
    env.pop("SOPFLOW_LOG_FORMAT", None)
    proc = await asyncio.create_subprocess_exec(
        SOPFLOW, "worker", "--metrics-port", str(port), env=env, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    lines: list[dict[str, Any]] = []
    # Deadlines only bound a hang (a loaded 2-core machine takes seconds to start a worker); every wait below ends
    # on an event: the worker's log line, a scraped sample, the process's exit.
    try:
        async with asyncio.timeout(120):
            await log_lines_until(proc.stderr, lines, lambda line: line["message"].startswith("worker polling"))
        samples = await scrape_until(port, connected, timeout=120)
        assert value(samples, "temporal_request", operation="GetSystemInfo") == 1
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            async with asyncio.timeout(120):
                await log_lines_until(proc.stderr, lines, lambda line: False)  # to the end of the stream
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"the worker did not exit within 120 s of SIGINT; it logged {lines}") from None
    assert proc.returncode == 0, lines
    started = next(line for line in lines if line["message"] == "worker polling task queue sopflow")
    assert started["level"] == "INFO" and started["logger"] == "sopflow.worker"
    assert started["metrics"] == f"http://127.0.0.1:{port}/metrics"
    assert lines[-1]["message"] == "worker stopped"  # the orderly stop, not an interrupted start


def connected(samples: list[Sample]) -> bool:
    return value(samples, "temporal_request", operation="GetSystemInfo") is not None
