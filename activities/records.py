"""Records activities: the timeline (journal) and account claims. Each write is idempotent under retries."""

from __future__ import annotations

import asyncio

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from temporalio import activity

from sopflow.db import AccountClaim, Database, JournalRow
from sopflow.models import ClaimRequest, ClaimResult, JournalBatch


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
            added = 0
            for entry in batch.entries:
                if entry.seq in known:
                    continue
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
                added += 1
            session.commit()
            return added

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
