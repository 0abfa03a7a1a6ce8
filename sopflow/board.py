"""What the web board shows, read from the records store: one column per stage, a card per open deal.

Like the work queue (`sopflow.work_queue`), the board never asks the workflows: one indexed query answers for
thousands of deals, and the records store is kept current by every lifecycle's journal batches. Only the deal page
asks its one workflow (the gate item by item, the open forms), because there the answer must be exact.

Who sees what is decided here too, so the board, the work queue page and the deal page agree: a person limited in
the staff directory (`sopflow.staff.Person.may_see`) sees the deals whose owner is in their limits, or where they are
the contact of one of their roles.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from sopflow.db import DealContact, DealRow, OutboxEmail
from sopflow.playbook import Playbook
from sopflow.reports import Threshold, in_days, stalls_at, utc
from sopflow.staff import Person
from sopflow.work_queue import contact_roles


@dataclass(frozen=True)
class Card:
    deal_id: str
    company: str | None
    owner: str | None
    days_in_stage: float
    next_due: datetime | None
    stalled: bool
    timezone: str | None


@dataclass(frozen=True)
class Column:
    stage: str
    title: str
    cards: list[Card]


def owned_by(who: str, owner: str | None, contact_roles: set[str]) -> bool:
    """Whether a deal owned by `owner` (`rep:owner-17`) answers to `who`: the owner role (`rep`), the owner id, or the
    address of the owner role's contact (`contact_roles`: the roles `who` is the contact of on this deal)."""
    wanted, owner = who.strip().lower(), (owner or "").lower()
    role = owner.split(":", 1)[0]
    return bool(owner) and (wanted in (owner, role) or role in contact_roles)


def board(
    session: Session,
    playbook: Playbook,
    now: datetime,
    thresholds: Mapping[tuple[str, str], Threshold],
    viewer: Person | None,
    viewer_email: str,
    owner: str | None = None,
) -> list[Column]:
    """The playbook's stages in order, each with its open deals (longest in the stage first), as `viewer` may see
    them and filtered by `owner` (a role, an owner id or an address)."""
    now = utc(now)
    query = select(
        DealRow.workflow_id,
        DealRow.deal_id,
        DealRow.company,
        DealRow.owner,
        DealRow.stage,
        DealRow.stage_entered_at,
        DealRow.next_due,
        DealRow.timezone,
    ).where(DealRow.outcome.is_(None), DealRow.playbook == playbook.id)
    mine = contact_roles(session, viewer_email)
    wanted = contact_roles(session, owner) if owner and "@" in owner else {}
    cards: dict[str, list[Card]] = defaultdict(list)
    for workflow_id, deal_id, company, deal_owner, stage, entered, next_due, zone in session.execute(query):
        if viewer is not None and not viewer.may_see(deal_owner, mine.get(workflow_id, set())):
            continue
        if owner and not owned_by(owner, deal_owner, wanted.get(workflow_id, set())):
            continue
        entered = utc(entered)
        threshold = thresholds.get((playbook.id, stage))
        stalled = threshold is not None and now > stalls_at(threshold, entered)
        cards[stage].append(
            Card(
                deal_id=deal_id,
                company=company,
                owner=deal_owner,
                days_in_stage=in_days(now - entered),
                next_due=utc(next_due) if next_due is not None else None,
                stalled=stalled,
                timezone=zone,
            )
        )
    known = [stage.id for stage in playbook.stages]
    columns = [
        Column(stage.id, stage.name, sorted(cards.pop(stage.id, []), key=lambda c: (-c.days_in_stage, c.deal_id)))
        for stage in playbook.stages
    ]
    # A stage a newer version no longer has (deals still on an older version): shown after the known ones.
    columns += [Column(stage, stage, rows) for stage, rows in sorted(cards.items()) if stage not in known]
    return columns


@dataclass(frozen=True)
class DealRecord:
    """What the records store knows of one deal beside its workflow: its row and who its contacts are."""

    workflow_id: str
    deal_id: str
    playbook: str
    company: str | None
    owner: str | None
    outcome: str | None
    timezone: str | None
    contact_roles: dict[str, str | None]


def deal_record(session: Session, workflow_id: str) -> DealRecord | None:
    row = session.scalars(select(DealRow).where(DealRow.workflow_id == workflow_id)).one_or_none()
    if row is None:
        return None
    contacts = session.execute(
        select(DealContact.role, DealContact.email).where(DealContact.workflow_id == workflow_id)
    ).all()
    return DealRecord(
        workflow_id=row.workflow_id,
        deal_id=row.deal_id,
        playbook=row.playbook,
        company=row.company,
        owner=row.owner,
        outcome=row.outcome,
        timezone=row.timezone,
        contact_roles={role: email for role, email in contacts},
    )


def may_see(viewer: Person | None, viewer_email: str, record: DealRecord) -> bool:
    if viewer is None:
        return True
    roles = {role for role, email in record.contact_roles.items() if email and email.lower() == viewer_email.lower()}
    return viewer.may_see(record.owner, roles)


@dataclass(frozen=True)
class SentEmail:
    template: str
    subject: str
    status: str
    at: datetime
    error: str | None


def emails(session: Session, workflow_id: str, limit: int = 50) -> list[SentEmail]:
    """The deal's emails, newest first, with their delivery status (the outbox's own words: sent, partial, failed,
    pending); addresses are left out, the template and subject say what each was."""
    query = (
        select(OutboxEmail.template, OutboxEmail.subject, OutboxEmail.status)
        .add_columns(OutboxEmail.scheduled_at, OutboxEmail.error)
        .where(OutboxEmail.workflow_id == workflow_id)
        .order_by(OutboxEmail.scheduled_at.desc(), OutboxEmail.id.desc())
        .limit(limit)
    )
    return [SentEmail(t, s, st, utc(at), e) for t, s, st, at, e in session.execute(query)]


def owners(session: Session, deal_ids: set[str]) -> dict[str, str | None]:
    """Each open deal's owner id, by deal id."""
    query = select(DealRow.deal_id, DealRow.owner).where(DealRow.deal_id.in_(deal_ids), DealRow.outcome.is_(None))
    return {deal_id: owner for deal_id, owner in session.execute(query)}


def playbooks_with_deals(session: Session, books: Iterable[Playbook]) -> list[Playbook]:
    """The shipped playbooks that have open deals, in name order: the board's playbook choices."""
    used = set(session.scalars(select(DealRow.playbook).where(DealRow.outcome.is_(None)).distinct()))
    return sorted((book for book in books if book.id in used), key=lambda book: book.id)
