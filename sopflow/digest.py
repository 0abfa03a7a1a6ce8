"""The morning digest: when a person's digest is due, and what it says. Pure rules, no I/O.

A Temporal Schedule fires every hour on the hour (`sopflow.digest_schedule`); at each firing the digest goes to the
people whose local morning hour it is on one of their working days. An hourly schedule rather than one per person:
people live in different zones, and one schedule keeps a single place to pause, trigger or backfill.

A person is sent a digest only when something is on their plate; every entry links to where it is settled: the form
to submit when the work queue settles the item with a form, otherwise the web board's page of the deal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Protocol
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict

from sopflow import zones
from sopflow.business_calendar import public_holidays
from sopflow.compose import SYSTEM_TEMPLATES
from sopflow.models import EmailRequest, Recipient
from sopflow.reports import StalledRow
from sopflow.staff import Person
from sopflow.templates import links_for
from sopflow.work_queue import WorkItem

# Monday to Friday: the business days. Digests are about work, and nobody wants one on a day off.
WORKING_DAYS = frozenset(range(5))
# What a week's visits and meetings look ahead to: the end of the sixth day after today (as `--due week` does).
WEEK_AHEAD = 6


def address_id(email: str) -> str:
    """A short opaque id for a person's address, where an id is needed (idempotency keys, logs): never the address."""
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()[:16]


def idempotency_key(email: str, day: date) -> str:
    """One digest per person per local date, whatever retries, re-runs or backfills happen: person + date."""
    return f"digest:{address_id(email)}:{day.isoformat()}"


def _is_working_day(person: Person, day: date) -> bool:
    if day.weekday() not in WORKING_DAYS:
        return False
    if person.holidays is None:
        return True
    return day not in public_holidays(person.holidays.country, person.holidays.subdivision, day.year)


def morning_due(person: Person, moment: datetime) -> date | None:
    """The person's local date when `moment` falls in their local morning hour on one of their working days (Mon-Fri,
    not a public holiday of their `holidays`), else None.

    "In their morning hour" is the hour that starts at `morning_hour`:00 local time, as an interval of instants, so
    an hourly schedule hits it exactly once a day in every zone: a half-hour zone (India) sees the firing at 07:30; a
    morning hour the clocks skip (02:00 on the night they spring forward) starts when they jump (03:00); an hour they
    repeat (01:00 when they fall back) is its first occurrence only."""
    tz = zones.zone(person.timezone)
    moment = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    day = moment.astimezone(tz).date()
    start = _morning_start(day, person.morning_hour, tz)
    if not start <= moment < start + timedelta(hours=1):
        return None
    return day if _is_working_day(person, day) else None


def digest_due(person: Person, moment: datetime) -> date | None:
    """`morning_due` for a person who wants the digest; None for one who opted out (`digest: false`)."""
    return morning_due(person, moment) if person.digest else None


def _morning_start(day: date, hour: int, tz: tzinfo) -> datetime:
    """The instant the local hour `hour` begins on `day`: fold 0 (the first of a repeated hour), and a wall time in
    a gap read with the offset before it, which lands on the moment the clocks jump to."""
    return datetime.combine(day, time(hour), tzinfo=tz).replace(fold=0).astimezone(UTC)


class Links(Protocol):
    """Where an entry points. The web board serves a deal's page at `/deals/<deal id>`; a form's link is the
    intake's signed form page, as emails of the lifecycle carry it."""

    def deal(self, deal_id: str) -> str: ...

    def form(self, deal_id: str, form: str) -> str: ...


class PublicLinks:
    """Links under `SOPFLOW_PUBLIC_URL`, form links carrying the per-form token when a form secret is set."""

    def __init__(self, public_url: str, form_secret: str | None = None) -> None:
        self.base = public_url.rstrip("/")
        self.form_secret = form_secret or None

    def deal(self, deal_id: str) -> str:
        return f"{self.base}/deals/{quote(deal_id, safe='')}"

    def form(self, deal_id: str, form: str) -> str:
        return links_for(self.base, deal_id, self.form_secret)["forms"][form]


class Entry(BaseModel):
    """One line of a digest: what, for which deal, when (in the person's zone), and the link that settles it."""

    model_config = ConfigDict(extra="forbid")

    deal_id: str
    kind: str
    what: str
    stage: str
    due_at: datetime | None
    when: str
    link: str
    # The form the link opens, when the item is settled by submitting one.
    form: str | None = None


class StalledEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    deal_id: str
    playbook: str
    stage: str
    days_in_stage: int
    link: str


class Digest(BaseModel):
    """A person's digest for one local date. `email` is the recipient only: it is never logged or used as an id."""

    model_config = ConfigDict(extra="forbid")

    email: str
    date: date
    timezone: str
    overdue: list[Entry] = []
    due_today: list[Entry] = []
    this_week: list[Entry] = []
    stalled: list[StalledEntry] = []

    @property
    def key(self) -> str:
        return idempotency_key(self.email, self.date)

    def count(self) -> int:
        return len(self.overdue) + len(self.due_today) + len(self.this_week) + len(self.stalled)


def _when(moment: datetime | None, tz: tzinfo) -> str:
    if moment is None:
        return "no due date"
    local = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(tz)
    return local.strftime("%a %b %d, %H:%M %Z")


def _entry(item: WorkItem, tz: tzinfo, links: Links) -> Entry:
    form = item.form
    link = links.form(item.deal_id, form) if form else links.deal(item.deal_id)
    return Entry(
        deal_id=item.deal_id,
        kind=item.kind,
        what=item.what,
        stage=item.stage,
        due_at=item.due_at,
        when=_when(item.due_at, tz),
        link=link,
        form=form,
    )


def compose_digest(
    person: Person,
    items: Iterable[WorkItem],
    stalled: Sequence[StalledRow],
    now: datetime,
    links: Links,
) -> Digest | None:
    """The person's digest at `now` (the scheduled hour), or None when nothing is on their plate: nothing is sent.

    `items` are the person's work queue and `stalled` the deals stuck in stages they own (see `sopflow.digest_query`).
    Sections: overdue (due before now), due today (by the end of their local today), this week's visits and
    meetings (after today, by the end of the sixth day after it); tasks and deadlines further out wait for their
    own morning. Stalled deals are listed whatever their items."""
    tz = zones.zone(person.timezone)
    now = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    today = now.astimezone(tz).date()
    end_of_today = datetime.combine(today + timedelta(days=1), time(0), tzinfo=tz).astimezone(UTC)
    end_of_week = datetime.combine(today + timedelta(days=WEEK_AHEAD + 1), time(0), tzinfo=tz).astimezone(UTC)
    digest = Digest(email=person.email, date=today, timezone=person.timezone)
    for item in items:
        if item.due_at is None:
            continue
        due = item.due_at if item.due_at.tzinfo else item.due_at.replace(tzinfo=UTC)
        if due < now:
            digest.overdue.append(_entry(item, tz, links))
        elif due < end_of_today:
            digest.due_today.append(_entry(item, tz, links))
        elif due < end_of_week and item.kind in ("visit", "meeting"):
            digest.this_week.append(_entry(item, tz, links))
    digest.stalled = [
        StalledEntry(
            deal_id=row.deal_id,
            playbook=row.playbook,
            stage=row.stage,
            days_in_stage=int(row.days_in_stage),
            link=links.deal(row.deal_id),
        )
        for row in stalled
    ]
    return digest if digest.count() else None


# The outbox row's playbook and template: a system template, `templates/_system/morning_digest/`.
TEMPLATE = "morning_digest"


def email_request(digest: Digest, workflow_id: str, at: datetime) -> EmailRequest:
    """The digest as a `send_email` request, keyed person + date, so the outbox sends it once that day whatever
    re-runs, retries or backfills come. The outbox row has no deal: `deal_id` is empty."""
    context = {
        **digest.model_dump(mode="json", exclude={"email"}),
        "day": digest.date.strftime("%A %B %d").replace(" 0", " "),
        "total": digest.count(),
    }
    return EmailRequest(
        key=digest.key,
        workflow_id=workflow_id,
        deal_id="",
        playbook=SYSTEM_TEMPLATES,
        template=TEMPLATE,
        at=at,
        to=[Recipient(role="staff", email=digest.email)],
        context=context,
    )
