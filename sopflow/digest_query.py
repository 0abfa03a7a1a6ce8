"""What the records store says is on one person's plate, for their morning digest (and `sopflow digest preview`).

Read from the records store, never from the workflows, like the work queue: one digest run covers every person in
the staff directory, and asking each lifecycle would load the server for nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sopflow import zones
from sopflow.db import DealContact, DealRow
from sopflow.digest import WEEK_AHEAD, Digest, Links, compose_digest
from sopflow.playbook import Playbook, PlaybookError
from sopflow.playbook_checks import load_playbook
from sopflow.reports import StalledRow, stall_thresholds, stalled
from sopflow.staff import Person
from sopflow.work_queue import Filters, WorkItem, work_items


def loadable_playbooks(playbooks_dir: Path) -> list[Playbook]:
    """Every playbook file that loads, for the commands that settle items and the stages' stall thresholds. A file
    that fails to load is skipped: a digest must not depend on an unrelated YAML typo (`sopflow playbook validate`
    finds it)."""
    playbooks = []
    for path in sorted(playbooks_dir.glob("*.yaml")):
        try:
            playbooks.append(load_playbook(path))
        except PlaybookError:
            continue
    return playbooks


def plate(
    session: Session, person: Person, now: datetime, playbooks: Sequence[Playbook]
) -> tuple[list[WorkItem], list[StalledRow]]:
    """The person's work items due within the digest's week (overdue included), and the deals stalled in stages they
    own: stages whose owner role has the person's address as the deal's contact for that role."""
    tz = zones.zone(person.timezone)
    last_day = now.astimezone(tz).date() + timedelta(days=WEEK_AHEAD)
    items = work_items(session, now, tz, Filters(owner=person.email, due=last_day.isoformat()), playbooks)
    roles = session.execute(
        select(DealRow.deal_id, DealContact.role)
        .join(DealRow, DealRow.workflow_id == DealContact.workflow_id)
        .where(func.lower(DealContact.email) == person.email.lower(), DealRow.outcome.is_(None))
    )
    owned: set[tuple[str, str]] = {(deal_id, role) for deal_id, role in roles}
    stuck = [
        row
        for row in stalled(session, now, thresholds=stall_thresholds(playbooks))
        if (row.deal_id, (row.owner or "").split(":", 1)[0]) in owned
    ]
    return items, stuck


def digest_for(
    session: Session, person: Person, now: datetime, playbooks: Sequence[Playbook], links: Links
) -> Digest | None:
    """The person's digest at `now`, or None when nothing is on their plate."""
    items, stuck = plate(session, person, now, playbooks)
    return compose_digest(person, items, stuck, now, links)
