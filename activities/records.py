"""Records activities: the timeline (journal), its projection into queryable tables, and account claims.

Every write is idempotent under retries, and safe when a retry overlaps an attempt still running elsewhere: a batch
is applied in one transaction; each entry is inserted with ON CONFLICT DO NOTHING on (workflow id, sequence number),
and only the transaction that inserted it writes what is derived from it. The engine state a local record carries
moves its row forward only (by the state's `seq`), and a pinned playbook is inserted once per content hash. Failures
are classified by `activities.errors.classified`.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from temporalio import activity

from activities.errors import classified
from sopflow.db import (
    AccountClaim,
    Database,
    DealContact,
    DealRow,
    FormSubmission,
    JournalRow,
    LifecycleStateRow,
    PinnedPlaybook,
    StageTransition,
    TaskRow,
    VisitRow,
    fitted,
    forward_upsert,
    insert_missing,
    insert_new,
    upsert,
)
from sopflow.models import ClaimRequest, ClaimResult, DealSnapshot, JournalBatch, JournalEntry, LifecycleState
from sopflow.playbook import Playbook
from sopflow.timeline import EscalationDetail, FormDetail, StageDetail, TaskDetail, VisitDueDetail, detail_of


def _moment(value: str | None) -> datetime | None:
    """A stored ISO moment (`sopflow.timeline.IsoMoment`) as a datetime, for a timestamp column."""
    return datetime.fromisoformat(value) if value is not None else None


def _deal_key(batch: JournalBatch) -> dict[str, Any]:
    """The columns every projected row shares, so the reports can join a row to its deal and its workflow."""
    return {"workflow_id": batch.workflow_id, "deal_id": batch.deal_id}


def _stage_transition(batch: JournalBatch, entry: JournalEntry, detail: StageDetail) -> StageTransition:
    """A stage move as a row of its own: time-in-stage and the audit trail read consecutive transitions."""
    return StageTransition(
        **_deal_key(batch),
        playbook=batch.playbook,
        seq=entry.seq,
        from_stage=detail.from_,
        to_stage=detail.to,
        at=entry.at,
        actor=detail.by,
        trigger=detail.trigger,
        reason=detail.reason,
    )


def _project_form(session: Session, batch: JournalBatch, entry: JournalEntry, detail: FormDetail) -> None:
    """A submitted form, and the visit it logs when it records a touchpoint: the visits report counts those."""
    key = _deal_key(batch)
    session.add(
        FormSubmission(
            **key,
            seq=entry.seq,
            form=detail.form,
            stage=entry.stage,
            fields=detail.values or {},
            actor=detail.by,
            at=entry.at,
        )
    )
    if detail.touchpoint is not None:
        session.add(
            VisitRow(
                **key,
                seq=entry.seq,
                label=detail.touchpoint,
                status="logged",
                logged_at=_moment(detail.logged_at),
                at=entry.at,
            )
        )


def _opened_task(batch: JournalBatch, entry: JournalEntry, detail: TaskDetail) -> TaskRow:
    """A task as it opens: later entries close it or move its due date in place, so one row tells its whole story."""
    return TaskRow(
        **_deal_key(batch),
        opened_seq=entry.seq,
        task=detail.task,
        title=detail.title or "",
        stage=entry.stage,
        owner=detail.owner or "",
        opened_at=entry.at,
        due_at=_moment(detail.due_at),
    )


def _project_task_update(session: Session, batch: JournalBatch, entry: JournalEntry, detail: TaskDetail) -> None:
    """Close or reschedule the newest open task of that name: a task can open again after it is done."""
    session.flush()  # a task opened earlier in this same batch must be findable
    task = session.scalars(
        select(TaskRow)
        .where(TaskRow.workflow_id == batch.workflow_id, TaskRow.task == detail.task, TaskRow.done_at.is_(None))
        .order_by(TaskRow.opened_seq.desc())
    ).first()
    if task is not None and detail.status == "done":
        task.done_at, task.done_by = entry.at, detail.by
    elif task is not None:
        task.due_at = _moment(detail.due_at)


def _cadence_visit(batch: JournalBatch, entry: JournalEntry, label: str, due_at: str | None) -> VisitRow:
    """A cadence visit falling due, or one missed (its escalation), so the visits report sees overdue and upcoming."""
    return VisitRow(
        **_deal_key(batch),
        seq=entry.seq,
        label=label,
        status="due" if entry.kind == "visit_due" else "missed",
        due_at=_moment(due_at),
        at=entry.at,
    )


class RecordActivities:
    def __init__(self, db: Database) -> None:
        self.db = db

    @activity.defn
    async def record_journal(self, batch: JournalBatch) -> int:
        return await asyncio.to_thread(self._record_journal, batch)

    def _record_journal(self, batch: JournalBatch) -> int:
        """The batch's entries in one statement; only those this call inserted are projected."""
        with classified("the timeline batch"), self.db.session() as session:
            rows = [
                {
                    "workflow_id": batch.workflow_id,
                    "deal_id": batch.deal_id,
                    "playbook": batch.playbook,
                    "seq": entry.seq,
                    "at": entry.at,
                    "kind": entry.kind,
                    "stage": entry.stage,
                    "detail": entry.detail,
                }
                for entry in batch.entries
            ]
            added = insert_missing(session, JournalRow, rows, ["workflow_id", "seq"], JournalRow.seq)
            for entry in batch.entries:
                if entry.seq in added:
                    self._project(session, batch, entry)
            if batch.snapshot is not None and batch.entries:
                self._snapshot(session, batch, batch.snapshot, max(entry.seq for entry in batch.entries))
            if batch.pinned is not None and batch.playbook_hash is not None:
                self._pin(session, batch.pinned, batch.playbook_hash)
            if batch.state is not None:
                self._state(session, batch, batch.state)
            session.commit()
            return len(added)

    def _project(self, session: Session, batch: JournalBatch, entry: JournalEntry) -> None:
        """Derive the queryable rows an entry stands for (transitions, forms, tasks, visits). Other kinds, and kinds
        a newer version writes (`UnknownDetail`), derive none: the journal row keeps them whole."""
        detail = detail_of(entry)
        if isinstance(detail, StageDetail):
            session.add(_stage_transition(batch, entry, detail))
        elif isinstance(detail, FormDetail):
            _project_form(session, batch, entry, detail)
        elif isinstance(detail, TaskDetail) and detail.status == "opened":
            session.add(_opened_task(batch, entry, detail))
        elif isinstance(detail, TaskDetail) and detail.status in ("done", "rescheduled"):
            _project_task_update(session, batch, entry, detail)
        elif isinstance(detail, VisitDueDetail | EscalationDetail) and detail.cadence is not None:
            session.add(_cadence_visit(batch, entry, detail.cadence, detail.due_at))  # due, or missed

    def _snapshot(self, session: Session, batch: JournalBatch, snap: DealSnapshot, seq: int) -> None:
        """The deal's row as of `seq`, never moved backwards: one upsert whose update applies only over an older row
        (PostgreSQL locks the row while it compares and writes, so two batches of one deal in flight at once cannot
        interleave), then the contacts in one more."""
        now = datetime.now(UTC)
        state = {
            "playbook_version": snap.playbook_version,
            "stage": snap.stage,
            "stage_title": snap.stage_title,
            "stage_entered_at": snap.stage_entered_at,
            "owner": snap.owner,
            "outcome": snap.outcome,
            "next_due": snap.next_due,
            "next_visit_due": snap.next_visit_due,
            "visit_label": snap.visit_label,
            "deadline_label": snap.deadline_label,
            "deadline_due": snap.deadline_due,
            "meeting_label": snap.meeting_label,
            "meeting_at": snap.meeting_at,
            "timezone": snap.timezone,
            "company": snap.company,
            "started_at": snap.started_at,
            "updated_at": now,
        }
        key = {"workflow_id": batch.workflow_id, "deal_id": batch.deal_id, "playbook": batch.playbook}
        newer = upsert(
            session,
            DealRow,
            {**key, **state, "last_seq": seq},
            ["workflow_id"],
            refresh=[*state, "last_seq"],
            where=DealRow.last_seq <= seq,
        )
        if session.scalars(newer).first() is None:
            return  # an older batch retried late: the row already shows newer state
        if snap.contacts:
            contacts: list[dict[str, Any]] = [
                {**_deal_key(batch), "role": c.role, "email": c.email, "name": c.name, "updated_at": now}
                for c in snap.contacts
            ]
            session.execute(
                upsert(session, DealContact, contacts, ["workflow_id", "role"], refresh=["email", "name", "updated_at"])
            )

    def _pin(self, session: Session, playbook: Playbook, content_hash: str) -> None:
        """The run's pinned playbook, once per content hash: a run's first local record carries it, so each of
        10,000 clients of one version offers it again and all but the first find it stored (ON CONFLICT DO NOTHING,
        which also settles two attempts at once)."""
        row = {
            "playbook": playbook.id,
            "version": playbook.version,
            "content_hash": content_hash,
            "content": playbook.model_dump_json(),
            "stored_at": datetime.now(UTC),
        }
        insert_new(session, PinnedPlaybook, row, ["content_hash"])

    def _state(self, session: Session, batch: JournalBatch, state: LifecycleState) -> None:
        """The lifecycle's engine state, never moved backwards: one upsert that changes only a row holding an older
        or the same state (`seq`), so a local attempt that outlived its timeout and writes after its retry, or an
        older batch retried late, leaves the newer state in place. (One statement built once: it runs with every
        local record, `forward_upsert`.)"""
        row = {
            "workflow_id": batch.workflow_id,
            "deal_id": batch.deal_id,
            "playbook": batch.playbook,
            "playbook_version": batch.playbook_version,
            "playbook_hash": batch.playbook_hash,
            "seq": state.seq,
            "as_of": batch.as_of,
            "state": state.model_dump_json(),
            "updated_at": datetime.now(UTC),
        }
        statement = forward_upsert(session.get_bind().dialect.name, LifecycleStateRow, "workflow_id", "seq")
        session.connection().execute(statement, fitted(LifecycleStateRow, row))

    @activity.defn
    async def claim_account(self, req: ClaimRequest) -> ClaimResult:
        return await asyncio.to_thread(self._claim, req)

    def _claim(self, req: ClaimRequest) -> ClaimResult:
        """First deal to claim the account holds it; two deals claiming at once meet in the unique key."""
        with classified("the account claim"), self.db.session() as session:
            claim = {
                "playbook": req.playbook,
                "account_key": req.account_key,
                "deal_id": req.deal_id,
                "claimed_at": req.at,
            }
            insert_new(session, AccountClaim, claim, ["playbook", "account_key"])
            session.commit()
            holder = session.scalars(
                select(AccountClaim.deal_id).where(
                    AccountClaim.playbook == req.playbook, AccountClaim.account_key == req.account_key
                )
            ).one()
            if holder == req.deal_id:
                return ClaimResult(granted=True)
            return ClaimResult(granted=False, holder_deal_id=holder)

    @activity.defn
    async def release_claim(self, req: ClaimRequest) -> int:
        """Give back one claim the deal just took for a submission the lifecycle then refused."""
        return await asyncio.to_thread(self._release, req.deal_id, req.playbook, req.account_key)

    @activity.defn
    async def release_claims(self, deal_id: str) -> int:
        return await asyncio.to_thread(self._release, deal_id)

    def _release(self, deal_id: str, playbook: str | None = None, key: str | None = None) -> int:
        """The deal's claims, or only its claim on `key` in `playbook`."""
        which = [AccountClaim.deal_id == deal_id]
        if key is not None:
            which += [AccountClaim.playbook == playbook, AccountClaim.account_key == key]
        with classified("releasing account claims"), self.db.session() as session:
            result = session.execute(delete(AccountClaim).where(*which))
            session.commit()
            return int(getattr(result, "rowcount", 0) or 0)
