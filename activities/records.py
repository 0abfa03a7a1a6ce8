"""Records activities: the timeline (journal), its projection into queryable tables, and account claims.

Every write is idempotent under retries: a batch is applied in one transaction, and entries whose (workflow id,
sequence number) is already in the journal are skipped together with everything derived from them.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from temporalio import activity

from sopflow.db import (
    AccountClaim,
    Database,
    DealContact,
    DealRow,
    FormSubmission,
    JournalRow,
    StageTransition,
    TaskRow,
    VisitRow,
)
from sopflow.models import ClaimRequest, ClaimResult, DealSnapshot, JournalBatch, JournalEntry


def _moment(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


class RecordActivities:
    def __init__(self, db: Database) -> None:
        self.db = db

    @activity.defn
    async def record_journal(self, batch: JournalBatch) -> int:
        return await asyncio.to_thread(self._record_journal, batch)

    def _record_journal(self, batch: JournalBatch) -> int:
        with self.db.session() as session:
            seqs = [entry.seq for entry in batch.entries]
            known = set(
                session.scalars(
                    select(JournalRow.seq).where(JournalRow.workflow_id == batch.workflow_id, JournalRow.seq.in_(seqs))
                )
            )
            added = [entry for entry in batch.entries if entry.seq not in known]
            for entry in added:
                session.add(
                    JournalRow(
                        workflow_id=batch.workflow_id,
                        deal_id=batch.deal_id,
                        playbook=batch.playbook,
                        seq=entry.seq,
                        at=entry.at,
                        kind=entry.kind,
                        stage=entry.stage,
                        detail=entry.detail,
                    )
                )
                self._project(session, batch, entry)
            if batch.snapshot is not None and seqs:
                self._snapshot(session, batch, batch.snapshot, max(seqs))
            session.commit()
            return len(added)

    def _project(self, session: Session, batch: JournalBatch, entry: JournalEntry) -> None:
        """Derive the queryable rows an entry stands for (transitions, forms, tasks, visits)."""
        detail, key = entry.detail, {"workflow_id": batch.workflow_id, "deal_id": batch.deal_id}
        if entry.kind == "stage":
            session.add(
                StageTransition(
                    **key,
                    playbook=batch.playbook,
                    seq=entry.seq,
                    from_stage=detail.get("from"),
                    to_stage=detail["to"],
                    at=entry.at,
                    actor=detail.get("by"),
                    trigger=detail.get("trigger", ""),
                    reason=detail.get("reason"),
                )
            )
        elif entry.kind == "form":
            session.add(
                FormSubmission(
                    **key,
                    seq=entry.seq,
                    form=detail["form"],
                    stage=entry.stage,
                    fields=detail.get("values", {}),
                    actor=detail.get("by"),
                    at=entry.at,
                )
            )
            if "touchpoint" in detail:
                session.add(
                    VisitRow(
                        **key,
                        seq=entry.seq,
                        label=detail["touchpoint"],
                        status="logged",
                        logged_at=_moment(detail.get("logged_at")),
                        at=entry.at,
                    )
                )
        elif entry.kind == "task" and detail.get("status") == "opened":
            session.add(
                TaskRow(
                    **key,
                    opened_seq=entry.seq,
                    task=detail["task"],
                    title=detail.get("title", ""),
                    stage=entry.stage,
                    owner=detail.get("owner", ""),
                    opened_at=entry.at,
                    due_at=_moment(detail.get("due_at")),
                )
            )
        elif entry.kind == "task" and detail.get("status") in ("done", "rescheduled"):
            session.flush()  # a task opened earlier in this same batch must be findable
            task = session.scalars(
                select(TaskRow)
                .where(
                    TaskRow.workflow_id == batch.workflow_id, TaskRow.task == detail["task"], TaskRow.done_at.is_(None)
                )
                .order_by(TaskRow.opened_seq.desc())
            ).first()
            if task is not None and detail["status"] == "done":
                task.done_at, task.done_by = entry.at, detail.get("by")
            elif task is not None:
                task.due_at = _moment(detail.get("due_at"))
        elif entry.kind == "visit_due" or (entry.kind == "escalation" and "cadence" in detail):
            session.add(
                VisitRow(
                    **key,
                    seq=entry.seq,
                    label=detail["cadence"],
                    status="due" if entry.kind == "visit_due" else "missed",
                    due_at=_moment(detail.get("due_at")),
                    at=entry.at,
                )
            )

    def _snapshot(self, session: Session, batch: JournalBatch, snap: DealSnapshot, seq: int) -> None:
        row = session.scalar(select(DealRow).where(DealRow.workflow_id == batch.workflow_id))
        if row is None:
            row = DealRow(workflow_id=batch.workflow_id, deal_id=batch.deal_id, playbook=batch.playbook, last_seq=-1)
            session.add(row)
        if seq < row.last_seq:
            return  # an older batch retried late: the row already shows newer state
        row.playbook_version, row.stage, row.stage_title = snap.playbook_version, snap.stage, snap.stage_title
        row.stage_entered_at, row.owner, row.outcome = snap.stage_entered_at, snap.owner, snap.outcome
        row.next_due, row.next_visit_due, row.visit_label = snap.next_due, snap.next_visit_due, snap.visit_label
        row.started_at, row.updated_at, row.last_seq = snap.started_at, datetime.now(UTC), seq
        for contact in snap.contacts:
            existing = session.scalar(
                select(DealContact).where(
                    DealContact.workflow_id == batch.workflow_id, DealContact.role == contact.role
                )
            )
            if existing is None:
                existing = DealContact(workflow_id=batch.workflow_id, deal_id=batch.deal_id, role=contact.role)
                session.add(existing)
            existing.email, existing.name, existing.updated_at = contact.email, contact.name, datetime.now(UTC)

    @activity.defn
    async def claim_account(self, req: ClaimRequest) -> ClaimResult:
        return await asyncio.to_thread(self._claim, req)

    def _claim(self, req: ClaimRequest) -> ClaimResult:
        with self.db.session() as session:
            holder = session.scalar(
                select(AccountClaim).where(
                    AccountClaim.playbook == req.playbook, AccountClaim.account_key == req.account_key
                )
            )
            if holder is None:
                session.add(
                    AccountClaim(
                        playbook=req.playbook, account_key=req.account_key, deal_id=req.deal_id, claimed_at=req.at
                    )
                )
                try:
                    session.commit()
                except IntegrityError:  # another deal claimed it between our read and write
                    session.rollback()
                    return self._claim(req)
                return ClaimResult(granted=True)
            if holder.deal_id == req.deal_id:
                return ClaimResult(granted=True)
            return ClaimResult(granted=False, holder_deal_id=holder.deal_id)

    @activity.defn
    async def release_claims(self, deal_id: str) -> int:
        return await asyncio.to_thread(self._release, deal_id)

    def _release(self, deal_id: str) -> int:
        with self.db.session() as session:
            result = session.execute(delete(AccountClaim).where(AccountClaim.deal_id == deal_id))
            session.commit()
            return int(getattr(result, "rowcount", 0) or 0)
