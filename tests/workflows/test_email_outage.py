"""An SMTP outage delays only the emails: timers fire, stages move and the timeline is recorded meanwhile, and when
the server is back every held email goes out once, in order.

The timelines are Safe Balance's with two reminders moved close to the moment they precede (a contract reminder 12 h
before expiry, a site-visit reminder 6 h before the visit is due), so one outage of a few hours holds an email across
the expiry and across the visit's due date, well inside the day an email is retried for.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import yaml
from sqlalchemy import select
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from sopflow.db import Database, JournalRow, OutboxEmail, StageTransition, VisitRow
from sopflow.mailsink import MailSink
from sopflow.models import Advance, CompleteTask, ExternalEvent, LifecycleInput, SetFields, SubmitForm, workflow_id
from sopflow.playbook import Playbook
from sopflow.playbook_checks import parse_playbook
from tests.conftest import CONTRACT_REQUEST, DEAL, PLAYBOOKS, PRELAUNCH_TASKS, TARGETING, TEMPLATES, make_worker, until
from workflows.lifecycle import ClientLifecycle


def safe_balance_with_late_reminders() -> Playbook:
    """Reminders a few hours before the moments they announce, on UTC rules (no send window), so each falls inside
    the outage the test makes."""
    data = yaml.safe_load((PLAYBOOKS / "safe_balance.yaml").read_text())
    for key in ("timezone", "timezone_field", "calendar"):
        data.pop(key)
    for stage in data["stages"]:
        if stage["id"] == "contract":
            stage["deadline"]["remind"][1]["before"] = "12h"
        if stage.get("cadence"):
            stage["cadence"]["remind"]["before"] = "6h"
    return parse_playbook(data, "safe_balance (late reminders)", TEMPLATES)


async def start(env: WorkflowEnvironment, task_queue: str, playbook: Playbook) -> WorkflowHandle[Any, Any]:
    deal_id = f"OUT-{uuid.uuid4().hex[:8]}"
    return await env.client.start_workflow(
        ClientLifecycle.run,
        LifecycleInput(deal_id=deal_id, playbook=playbook, fields=DEAL),
        id=workflow_id(deal_id),
        task_queue=task_queue,
    )


async def contract_sent(handle: WorkflowHandle[Any, Any]) -> None:
    await handle.execute_update(ClientLifecycle.submit_form, SubmitForm(form="targeting", fields=TARGETING))
    await handle.execute_update(
        ClientLifecycle.submit_form, SubmitForm(form="contract_request", fields=CONTRACT_REQUEST)
    )


async def launched(env: WorkflowEnvironment, handle: WorkflowHandle[Any, Any]) -> None:
    """Signed, pre-launch done, launched and closed out now: the first site visit is due in 14 days (the visits count
    from the launch date)."""
    await contract_sent(handle)
    await handle.signal(ClientLifecycle.event, ExternalEvent(name="contract_signed", event_id="envelope-1/completed"))
    for task in PRELAUNCH_TASKS:
        await handle.execute_update(ClientLifecycle.complete_task, CompleteTask(task=task))
    await handle.execute_update(ClientLifecycle.set_fields, SetFields(fields={"launch_date": "2030-01-01"}))
    await handle.execute_update(ClientLifecycle.advance, Advance(to="launch"))
    await handle.execute_update(ClientLifecycle.complete_task, CompleteTask(task="launch_checklist"))
    today = (await env.get_current_time()).date().isoformat()
    closeout = {"launched_on": today, "staff_trained": "yes", "all_running": "yes"}
    await handle.execute_update(ClientLifecycle.submit_form, SubmitForm(form="closeout", fields=closeout))


def outbox(db: Database, handle: WorkflowHandle[Any, Any]) -> list[tuple[str, str]]:
    with db.session() as session:
        rows = session.scalars(select(OutboxEmail).where(OutboxEmail.workflow_id == handle.id).order_by(OutboxEmail.id))
        return [(row.template, row.status) for row in rows]


def journal(db: Database, handle: WorkflowHandle[Any, Any], kind: str) -> list[dict[str, Any]]:
    with db.session() as session:
        rows = session.scalars(
            select(JournalRow)
            .where(JournalRow.workflow_id == handle.id, JournalRow.kind == kind)
            .order_by(JournalRow.seq)
        )
        return [row.detail for row in rows]


async def test_the_contract_expires_on_time_while_smtp_is_down_and_the_held_emails_follow_in_order(ts_env, db):
    sink = MailSink().start()
    worker = make_worker(ts_env.client, db, sink)
    async with worker:
        handle = await start(ts_env, worker.task_queue, safe_balance_with_late_reminders())
        await contract_sent(handle)
        await ts_env.sleep(timedelta(days=13, hours=6))  # the 7-day reminder went out; expiry at day 14
        sink.stop()
        await ts_env.sleep(timedelta(days=1))  # the 12-hour reminder (day 13.5) is held; the contract expires

        assert (await handle.query(ClientLifecycle.status)).stage == "contract_expired"
        with db.session() as session:
            moves = session.scalars(select(StageTransition.to_stage).where(StageTransition.workflow_id == handle.id))
            assert "contract_expired" in list(moves)
        assert outbox(db, handle)[-1] == ("contract_reminder", "pending")
        assert [e["template"] for e in journal(db, handle, "email")].count("contract_reminder") == 1

        back = MailSink(port=sink.port).start()
        try:
            await ts_env.sleep(timedelta(hours=12))
        finally:
            back.stop()
    held = [str(m["X-Sopflow-Template"]).rsplit("/", 1)[-1] for m in back.messages]
    assert held == ["contract_reminder", "contract_expired"]  # in order, once each
    assert back.duplicates == 0
    assert [status for _, status in outbox(db, handle)] == ["sent"] * len(outbox(db, handle))
    emails = journal(db, handle, "email")
    assert [e["template"] for e in emails].count("contract_reminder") == 2
    assert all(e["status"] == "sent" for e in emails)


async def test_a_site_visit_falls_due_on_time_while_its_reminder_is_held_by_an_smtp_outage(ts_env, db):
    sink = MailSink().start()
    worker = make_worker(ts_env.client, db, sink)
    async with worker:
        handle = await start(ts_env, worker.task_queue, safe_balance_with_late_reminders())
        await launched(ts_env, handle)
        await ts_env.sleep(timedelta(days=13, hours=12))  # the visit is due at day 14, its reminder at 13.75
        sink.stop()
        await ts_env.sleep(timedelta(hours=15))

        assert journal(db, handle, "visit_due"), "the visit fell due while the reminder was held"
        with db.session() as session:
            assert session.scalars(
                select(VisitRow.status).where(VisitRow.workflow_id == handle.id, VisitRow.status == "due")
            ).all()
        assert outbox(db, handle)[-1] == ("visit_due", "pending")

        back = MailSink(port=sink.port).start()
        try:
            await ts_env.sleep(timedelta(hours=12))
        finally:
            back.stop()
    assert [str(m["X-Sopflow-Template"]).rsplit("/", 1)[-1] for m in back.messages] == ["visit_due"]
    assert outbox(db, handle)[-1] == ("visit_due", "sent")
    assert journal(db, handle, "email")[-1]["template"] == "visit_due"


async def test_a_signature_after_expiry_is_late_even_when_the_worker_had_not_processed_the_expiry_yet(dev_env, db):
    """With no worker polling, the expiry timer fires on the server and the signature arrives after it, so the next
    workflow task carries both (and a signal is handled before a timer in a task). Timers that fell due before a
    request fire first, so the outcome is the same as on a worker that kept up: the signature is late.

    On the dev server with a compressed clock (the time-skipping server does not move time while a task waits for a
    worker); the test waits for the timer to fire, never for wall time."""
    data = yaml.safe_load((PLAYBOOKS / "safe_balance.yaml").read_text())
    contract = next(stage for stage in data["stages"] if stage["id"] == "contract")
    contract["deadline"]["remind"] = []  # the expiry is the only timer the lifecycle arms
    playbook = parse_playbook(data, "safe_balance (no reminders)", TEMPLATES)
    deal_id = f"LATE-{uuid.uuid4().hex[:8]}"
    with MailSink() as sink:
        async with make_worker(dev_env.client, db, sink) as worker:
            handle = await dev_env.client.start_workflow(
                ClientLifecycle.run,
                LifecycleInput(deal_id=deal_id, playbook=playbook, fields=DEAL, time_scale=86400),
                id=workflow_id(deal_id),
                task_queue=worker.task_queue,
            )
            await contract_sent(handle)
            await until(lambda: after_the_contract(handle, EventType.EVENT_TYPE_TIMER_STARTED), "expiry armed")
        await until(
            lambda: after_the_contract(handle, EventType.EVENT_TYPE_TIMER_FIRED), "the expiry timer fired"
        )  # 14 playbook days: 14 s
        await handle.signal(ClientLifecycle.event, ExternalEvent(name="contract_signed", event_id="envelope-1/late"))
        async with make_worker(dev_env.client, db, sink, task_queue=worker.task_queue):
            await until(lambda: events_recorded(db, handle), "the signature was handled")
            status = await handle.query(ClientLifecycle.status)
        await handle.terminate("test over")
    assert status.stage == "contract_expired"
    (event,) = journal(db, handle, "event")
    assert event["status"] == "ignored" and "not expected" in event["reason"]


async def after_the_contract(handle: WorkflowHandle[Any, Any], kind: EventType.ValueType) -> bool:
    """Whether an event of this kind follows the contract request (the last update) in the history."""
    events = (await handle.fetch_history()).events
    updated = max(
        i for i, e in enumerate(events) if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED
    )
    return any(e.event_type == kind for e in events[updated:])


async def events_recorded(db: Database, handle: WorkflowHandle[Any, Any]) -> bool:
    return bool(journal(db, handle, "event"))
