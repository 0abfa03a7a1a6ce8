"""Records activities: the timeline (journal), its projection into queryable tables, and account claims.

Every write is idempotent under retries, and safe when a retry overlaps an attempt still running elsewhere: a batch
is applied in one transaction; each entry is inserted with ON CONFLICT DO NOTHING on (workflow id, sequence number),
and only the transaction that inserted it writes what is derived from it. An entry that differs from the one stored
under its number replaces it, with what is derived from it, when it was decided later in the workflow's history
(`supersedes`): the stored one came from a workflow task that wrote its local record and then failed. The engine state
a local record carries moves its row forward only (by where it was decided), and a pinned playbook is inserted once
per content hash. Failures are classified by `activities.errors.classified`.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, delete, select, tuple_
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
from sopflow.reports import utc
from sopflow.timeline import EscalationDetail, FormDetail, StageDetail, TaskDetail, VisitDueDetail, detail_of


def _moment(value: str | None) -> datetime | None:
    """A stored ISO moment (`sopflow.timeline.IsoMoment`) as a datetime, for a timestamp column."""
    return datetime.fromisoformat(value) if value is not None else None


def _deal_key(batch: JournalBatch) -> dict[str, Any]:
    """The columns every projected row shares, so the reports can join a row to its deal and its workflow."""
    return {"workflow_id": batch.workflow_id, "deal_id": batch.deal_id}


def supersedes(incoming: tuple[int, int] | None, stored: tuple[int, int] | None) -> bool:
    """Whether an entry a batch offers replaces a different one stored under the same (workflow, seq), given where
    each was decided (`JournalBatch.decided_at`: run and history length; None: a regular record).

    The engine writes each number once, with its final content, so two different entries under one number mean one
    came from a workflow task that never completed: a local record writes inside the task, which can still fail
    afterwards (its worker killed, the server restarted, the task timed out), and its next attempt sees more history
    (requests that arrived meanwhile, which the SDK applies first) and may give the number to another entry. Without
    this, the timeline would keep a stage move, task or email that never happened and lose the one that did (seen in
    the PostgreSQL chaos run: a message the sink received that no journal entry named). The entry decided on the longer
    history is the true one:
    - a regular record's comes from a completed task: it replaces whatever is stored;
    - a local record's replaces a local record's decided earlier (an earlier run, or a shorter history);
    - against a regular record's entry a local one never wins: it is an older attempt that wrote late (a worker
      starved past its task's timeout). Rows stored before history lengths were kept count as a regular record's."""
    if incoming is None:
        return True
    return stored is not None and incoming > stored


def _decided(row: JournalRow) -> tuple[int, int] | None:
    return None if row.run is None or row.history_length is None else (row.run, row.history_length)


def _same_entry(row: JournalRow, entry: JournalEntry) -> bool:
    stored = (row.kind, row.stage, row.detail, utc(row.at))
    return stored == (entry.kind, entry.stage, entry.model_dump(mode="json")["detail"], utc(entry.at))


# `RecordActivities._sweep`'s statement, with its values bound at execution.
_SWEEP = (
    delete(JournalRow)
    .where(
        JournalRow.workflow_id == bindparam("workflow_id"),
        JournalRow.seq > bindparam("last"),
        JournalRow.run.is_not(None),
        tuple_(JournalRow.run, JournalRow.history_length) < tuple_(bindparam("run"), bindparam("length")),
    )
    .returning(JournalRow.seq, JournalRow.kind)
)


def _unproject(session: Session, workflow_id: str, seqs: set[int]) -> None:
    """Remove the rows derived from the entries `seqs` (a task row, whose story spans entries, is derived again:
    `RecordActivities._rebuild_tasks`)."""
    if seqs:
        for model in (StageTransition, FormSubmission, VisitRow):
            session.execute(delete(model).where(model.workflow_id == workflow_id, model.seq.in_(seqs)))


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
        """The batch's entries in one statement; only those this call inserted, or replaced (`_replace`), are
        projected. How many it wrote."""
        decided = batch.decided_at
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
                    "run": decided[0] if decided else None,
                    "history_length": decided[1] if decided else None,
                }
                for entry in batch.entries
            ]
            added = insert_missing(session, JournalRow, rows, ["workflow_id", "seq"], JournalRow.seq)
            stored = [entry for entry in batch.entries if entry.seq not in added]
            replaced, retask = self._replace(session, batch, decided, stored) if stored else (set(), False)
            swept: list[tuple[int, str]] = []
            if decided is not None and batch.state is not None:
                swept = self._sweep(session, batch, decided, batch.state.seq)
                retask = retask or any(kind == "task" for _, kind in swept)
            for entry in batch.entries:
                if entry.seq in added | replaced and not (retask and entry.kind == "task"):
                    self._project(session, batch, entry)
            if retask:
                self._rebuild_tasks(session, batch)
            if batch.snapshot is not None and batch.entries:
                seq = max(entry.seq for entry in batch.entries)
                self._snapshot(session, batch, batch.snapshot, seq, superseding=bool(replaced or swept))
            if batch.pinned is not None and batch.playbook_hash is not None:
                self._pin(session, batch.pinned, batch.playbook_hash)
            if batch.state is not None:
                self._state(session, batch, batch.state)
            session.commit()
            return len(added) + len(replaced)

    def _replace(
        self, session: Session, batch: JournalBatch, decided: tuple[int, int] | None, offered: list[JournalEntry]
    ) -> tuple[set[int], bool]:
        """Replace the stored entries among `offered` that differ from it and that it supersedes (`supersedes`),
        removing the rows derived from each: the numbers replaced, and whether a task entry was among the old or the
        new ones (a task row tells a story over several entries, so the workflow's task rows are then derived
        again, `_rebuild_tasks`). The usual case, a retry offering what is stored, changes nothing."""
        workflow_id = batch.workflow_id
        stored = session.scalars(
            select(JournalRow).where(
                JournalRow.workflow_id == workflow_id, JournalRow.seq.in_([entry.seq for entry in offered])
            )
        )
        rows = {row.seq: row for row in stored}
        replaced: set[int] = set()
        retask = False
        for entry in offered:
            row = rows.get(entry.seq)
            if row is None or _same_entry(row, entry) or not supersedes(decided, _decided(row)):
                continue
            retask = retask or "task" in (row.kind, entry.kind)
            row.at, row.kind, row.stage, row.detail = entry.at, entry.kind, entry.stage, entry.detail
            row.run, row.history_length = decided or (None, None)
            replaced.add(entry.seq)
        _unproject(session, workflow_id, replaced)
        return replaced, retask

    def _sweep(
        self, session: Session, batch: JournalBatch, decided: tuple[int, int], last: int
    ) -> list[tuple[int, str]]:
        """Remove the entries a failed workflow task numbered past `last`, the engine's count when this local record
        was decided, and decided earlier than it: no true entry can be either (the count only grows along the true
        history, across runs too), so each is one the retry never wrote, which `_replace` would meet only if the
        lifecycle wrote that far again (a lifecycle that closed in its retry would keep it). One indexed statement
        per local record, built once (`_SWEEP`: building it per call cost more than running it), which finds nothing
        but after a failed task. The entries removed, by number and kind."""
        run, length = decided
        values = {"workflow_id": batch.workflow_id, "last": last, "run": run, "length": length}
        gone = [(seq, kind) for seq, kind in session.connection().execute(_SWEEP, values)]
        _unproject(session, batch.workflow_id, {seq for seq, _ in gone})
        return gone

    def _rebuild_tasks(self, session: Session, batch: JournalBatch) -> None:
        """The workflow's task rows derived again from its journal, in order (see `_replace`)."""
        session.flush()
        session.execute(delete(TaskRow).where(TaskRow.workflow_id == batch.workflow_id))
        rows = session.scalars(
            select(JournalRow)
            .where(JournalRow.workflow_id == batch.workflow_id, JournalRow.kind == "task")
            .order_by(JournalRow.seq)
        ).all()
        for row in rows:
            entry = JournalEntry(seq=row.seq, at=row.at, kind="task", stage=row.stage, detail=row.detail)
            self._project(session, batch, entry)

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

    def _snapshot(
        self, session: Session, batch: JournalBatch, snap: DealSnapshot, seq: int, *, superseding: bool
    ) -> None:
        """The deal's row as of `seq`, never moved backwards: one upsert whose update applies only over an older row
        (PostgreSQL locks the row while it compares and writes, so two batches of one deal in flight at once cannot
        interleave), then the contacts in one more. A batch `superseding` entries of a failed workflow task
        (`supersedes`) writes over whatever row it finds: that task's snapshot may be numbered past this batch's,
        and shows a deal that never was."""
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
            where=None if superseding else DealRow.last_seq <= seq,
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
        """The lifecycle's engine state, never moved backwards: one upsert that changes only a row holding a state
        decided earlier (`JournalBatch.decided_at`), or at the same point and no further in `seq` (two records of one
        workflow task), so a local attempt that outlived its timeout and writes after its retry, an older batch
        retried late, or a workflow task that failed after writing (whose state may even be ahead in `seq`) leaves
        the true, newer state in place. (One statement built once: it runs with every local record,
        `forward_upsert`.)"""
        row = {
            "workflow_id": batch.workflow_id,
            "deal_id": batch.deal_id,
            "playbook": batch.playbook,
            "playbook_version": batch.playbook_version,
            "playbook_hash": batch.playbook_hash,
            "seq": state.seq,
            "run": state.run,
            "history_length": batch.history_length or 0,
            "as_of": batch.as_of,
            "state": state.model_dump_json(),
            "updated_at": datetime.now(UTC),
        }
        dialect = session.get_bind().dialect.name
        statement = forward_upsert(dialect, LifecycleStateRow, "workflow_id", ("run", "history_length", "seq"))
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
