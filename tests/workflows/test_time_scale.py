"""Compressed lifecycles (`time_scale`): the same playbook on a real dev server, its days passing in real seconds.

Demos and the fault-injection runs depend on this: a 14-day contract expiry must happen, in order and with its
reminders, within seconds, without changing a line of the playbook.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime

import pytest
from sqlalchemy import select

from sopflow.db import Database, JournalRow
from sopflow.mailsink import MailSink
from sopflow.models import LifecycleInput, SubmitForm
from sopflow.playbook import Playbook
from tests.conftest import CONTRACT_REQUEST, DEAL, TARGETING, make_worker
from workflows.lifecycle import ClientLifecycle

WEEK_PER_SECOND = 7 * 86400


def journal(db: Database, deal_id: str) -> list[JournalRow]:
    with db.session() as session:
        return list(session.scalars(select(JournalRow).where(JournalRow.deal_id == deal_id).order_by(JournalRow.seq)))


def days(rows: list[JournalRow], start: datetime) -> list[tuple[str, float]]:
    return [(row.kind, round((row.at - start).total_seconds() / 86400, 1)) for row in rows]


async def test_a_compressed_contract_expires_after_fourteen_playbook_days_with_its_reminders(
    dev_env, safe_balance_utc: Playbook, smtp_sink: MailSink, db: Database
):
    """On the UTC rules: the send window would hold a reminder by whatever hour the test happens to run at."""
    deal_id = f"TS-{uuid.uuid4().hex[:8]}"
    worker = make_worker(dev_env.client, db, smtp_sink)
    inp = LifecycleInput(deal_id=deal_id, playbook=safe_balance_utc, fields=DEAL, time_scale=WEEK_PER_SECOND)
    async with worker:
        started = time.monotonic()
        handle = await dev_env.client.start_workflow(
            ClientLifecycle.run, inp, id=f"deal-{deal_id}", task_queue=worker.task_queue
        )
        await handle.execute_update(ClientLifecycle.submit_form, SubmitForm(form="targeting", fields=TARGETING))
        await handle.execute_update(
            ClientLifecycle.submit_form, SubmitForm(form="contract_request", fields=CONTRACT_REQUEST)
        )
        deadline = time.monotonic() + 30
        while not any(row.detail.get("to") == "contract_expired" for row in journal(db, deal_id)):
            assert time.monotonic() < deadline, "the compressed contract never expired"
            await asyncio.sleep(0.2)
        elapsed = time.monotonic() - started

    rows = journal(db, deal_id)
    entered = next(r.at for r in rows if r.kind == "stage" and r.detail.get("to") == "contract")
    reminders = [d for kind, d in days(rows, entered) if kind == "reminder"]
    (expiry,) = [
        d
        for (kind, d), row in zip(days(rows, entered), rows, strict=True)
        if row.detail.get("to") == "contract_expired"
    ]
    # A real second is a playbook week: a few real milliseconds of processing are a few playbook hours.
    assert reminders == pytest.approx([7.0, 12.0], abs=0.3)
    assert expiry == pytest.approx(14.0, abs=0.3)
    assert elapsed < 15  # two playbook weeks in about two real seconds, plus start-up
