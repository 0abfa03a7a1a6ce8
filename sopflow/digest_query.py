"""What the records store says is on one person's plate, for their morning digest (and `sopflow digest preview`).

Read from the records store, never from the workflows, like the work queue: one digest run covers every person in
the staff directory, and asking each lifecycle would load the server for nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from sopflow import zones
from sopflow.digest import WEEK_AHEAD, Digest, Links, compose_digest
from sopflow.models import workflow_id
from sopflow.playbook import Playbook
from sopflow.reports import StalledRow, stall_thresholds, stalled
from sopflow.staff import Person
from sopflow.work_queue import Filters, WorkItem, contact_roles, work_items


def plate(
    session: Session, person: Person, now: datetime, playbooks: Sequence[Playbook]
) -> tuple[list[WorkItem], list[StalledRow]]:
    """The person's work items due within the digest's week (overdue included), and the deals stalled in stages they
    own: stages whose owner role has the person's address as the deal's contact for that role."""
    tz = zones.zone(person.timezone)
    last_day = now.astimezone(tz).date() + timedelta(days=WEEK_AHEAD)
    items = work_items(session, now, tz, Filters(owner=person.email, due=last_day.isoformat()), playbooks)
    roles = contact_roles(session, person.email)
    stuck = [
        row
        for row in stalled(session, now, thresholds=stall_thresholds(playbooks))
        if (row.owner or "").split(":", 1)[0] in roles.get(workflow_id(row.deal_id), ())
    ]
    return items, stuck


def digest_for(
    session: Session, person: Person, now: datetime, playbooks: Sequence[Playbook], links: Links
) -> Digest | None:
    """The person's digest at `now`, or None when nothing is on their plate."""
    items, stuck = plate(session, person, now, playbooks)
    return compose_digest(person, items, stuck, now, links)
