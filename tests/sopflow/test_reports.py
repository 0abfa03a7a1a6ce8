"""Reports over records written by real rehearsed lifecycles, on SQLite and on the real PostgreSQL.

Every deal of the data set runs through the real workflow and activities on one time-skipping server. The virtual
clock keeps moving across rehearsals; each rehearsal terminates its still-open lifecycle at the horizon, so the
deal's records freeze there while `now` (the server's clock after the last rehearsal) is later. Expectations are
therefore computed from each rehearsal's start plus the scenario's known offsets (the contract is sent on day 1 and
expires on day 15, ...), never from wall time.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from sopflow import reports
from sopflow.db import Database, DealRow, FormSubmission, StageTransition, TaskRow
from sopflow.durations import duration
from sopflow.playbook import Playbook
from starter.rehearse import Rehearsal
from tests.conftest import DEAL, PRELAUNCH_TASKS, launched_steps, run, sales_steps

DAY = timedelta(days=1)
# Real time passes between the steps the time-skipping server runs: a few seconds, far below a minute.
CLOSE = 1 / 24 / 60


def approx(value: float) -> Any:
    return pytest.approx(value, abs=CLOSE)


def near(moment: datetime, expected: datetime) -> bool:
    return abs(moment - expected) < CLOSE * DAY


def claiming(steps: list[dict[str, Any]], company: str) -> list[dict[str, Any]]:
    """The same steps with the deal's own account: the targeting form claims it, and claims are exclusive."""
    return [
        {**step, "fields": {**step["fields"], "company": company}} if step.get("form") == "targeting" else step
        for step in steps
    ]


@dataclass
class DataSet:
    db: Database
    runs: dict[str, Rehearsal]
    now: datetime

    def start(self, deal_id: str) -> datetime:
        return reports.utc(self.runs[deal_id].started_at)

    def days_since(self, deal_id: str, offset_days: float) -> float:
        """Days from `offset_days` into the deal's rehearsal until now."""
        return (self.now - self.start(deal_id)) / DAY - offset_days


# deal id, steps, horizon, deal fields. Run in this order: each later rehearsal moves the clock on.
PLAN: list[tuple[str, list[dict[str, Any]], str, dict[str, Any]]] = [
    # Stuck in targeting from its start: stalled by the playbook's 30-day stall_after.
    ("D-3", [], "1d", DEAL),
    # Launched on day 6; site visits every 14 days are all missed: next due on day 76, overdue from then on.
    ("D-1", launched_steps(), "80d", DEAL),
    # Contract sent on day 1, never signed: expires on day 15 (a 14-day stay in `contract`), open in contract_expired.
    ("D-2", sales_steps(None), "20d", DEAL),
    # Declined on day 5: closed lost, in no open report.
    ("D-4", [*sales_steps(None), {"at": "5d", "event": "contract_declined", "event_id": "env-4/declined"}], "6d", DEAL),
    # Signed on day 3, one pre-launch task done on day 4: in prelaunch with three open tasks.
    ("D-6", [*sales_steps("3d"), {"at": "4d", "task": "onsite_appointment"}], "5d", DEAL),
    # Another rep's client, launched on day 6: its first visit (day 20) is 10 days ahead when the data set is read.
    ("D-5", launched_steps(), "10d", {**DEAL, "rep_id": "owner-42"}),
]


@pytest.fixture
async def data(ts_env, records_db: Database, safe_balance_utc: Playbook) -> DataSet:
    """Deals rehearsed on Safe Balance's UTC rules, so the figures below count whole UTC days."""
    runs = {}
    for deal_id, steps, until, fields in PLAN:
        runs[deal_id] = await run(
            ts_env,
            safe_balance_utc,
            claiming(steps, f"Facility {deal_id}"),
            until,
            deal_id=deal_id,
            deal=fields,
            db=records_db,
        )
    return DataSet(db=records_db, runs=runs, now=reports.utc(await ts_env.get_current_time()))


async def test_the_data_set_reaches_the_stages_the_reports_are_checked_against(data: DataSet):
    final = {deal_id: (r.status.stage, r.status.outcome) for deal_id, r in data.runs.items()}
    assert final == {
        "D-1": ("ongoing", None),
        "D-2": ("contract_expired", None),
        "D-3": ("targeting", None),
        "D-4": ("closed_lost", "lost"),
        "D-5": ("ongoing", None),
        "D-6": ("prelaunch", None),
    }
    assert not [e for r in data.runs.values() for e in r.of_kind("rejected")]


async def test_pipeline_counts_open_deals_per_stage_in_playbook_order(data: DataSet, safe_balance: Playbook):
    with data.db.session() as session:
        rows = reports.pipeline(session, data.now, stage_order=reports.stage_orders([safe_balance]))
        unordered = reports.pipeline(session, data.now)
        other = reports.pipeline(session, data.now, playbook="no_such_playbook")

    assert [(r.stage, r.count) for r in rows] == [
        ("targeting", 1),
        ("contract_expired", 1),
        ("prelaunch", 1),
        ("ongoing", 2),
    ]
    by_stage = {r.stage: r for r in rows}
    assert by_stage["targeting"].median_days == approx(data.days_since("D-3", 0))
    assert by_stage["contract_expired"].max_days == approx(data.days_since("D-2", 15))
    assert by_stage["prelaunch"].stage_title == "Pre-launch"
    ongoing = by_stage["ongoing"]
    # Nearest-rank median of two ages is the smaller one: D-5 entered ongoing 4 days ago; D-1 is the oldest.
    assert ongoing.median_days == approx(data.days_since("D-5", 6)) == approx(4.0)
    assert ongoing.max_days == approx(data.days_since("D-1", 6))
    # Without a stage order (no playbook file) the same rows come back, alphabetically.
    assert [r.stage for r in unordered] == sorted(by_stage)
    assert other == []


async def test_stalled_with_explicit_days_and_with_the_playbooks_thresholds(data: DataSet, safe_balance: Playbook):
    with data.db.session() as session:
        over_five_days = reports.stalled(session, data.now, days=5)
        by_playbook = reports.stalled(session, data.now, thresholds=reports.stall_thresholds([safe_balance]))
        over_a_year = reports.stalled(session, data.now, days=365)
        calendar = reports.stalled(session, data.now, thresholds={("safe_balance", "ongoing"): duration("3mo")})

    # Longest first; D-5 (4 days in ongoing) and the closed D-4 are not stalled.
    assert [(r.deal_id, r.stage) for r in over_five_days] == [
        ("D-3", "targeting"),
        ("D-1", "ongoing"),
        ("D-2", "contract_expired"),
        ("D-6", "prelaunch"),
    ]
    assert {r.deal_id: r.days_in_stage for r in over_five_days} == {
        "D-3": approx(data.days_since("D-3", 0)),
        "D-1": approx(data.days_since("D-1", 6)),
        "D-2": approx(data.days_since("D-2", 15)),
        "D-6": approx(data.days_since("D-6", 3)),
    }
    assert {r.threshold_days for r in over_five_days} == {5.0}
    # The stage's owner role, with the CRM id when the deal has one (no account_manager_id here).
    assert {r.deal_id: r.owner for r in over_five_days} == {
        "D-3": "rep:owner-17",
        "D-1": "rep:owner-17",
        "D-2": "rep:owner-17",
        "D-6": "account_manager",
    }

    # Only targeting, contract_request and prelaunch have a stall_after (30 days): D-6 is 12 days into prelaunch.
    assert [(r.deal_id, r.stage, r.threshold_days) for r in by_playbook] == [("D-3", "targeting", 30.0)]
    assert over_a_year == []
    # A calendar threshold: three months from the day D-1 entered ongoing (about 110 days ago), not 90 fixed days.
    assert [r.deal_id for r in calendar] == ["D-1"]
    entered = data.start("D-1") + 6 * DAY
    assert calendar[0].threshold_days == approx((duration("3mo").after(entered) - entered) / DAY)


async def test_visits_overdue_first_and_upcoming_per_owner(data: DataSet):
    with data.db.session() as session:
        month = reports.visits(session, data.now, within=timedelta(days=30))
        week = reports.visits(session, data.now, within=timedelta(days=7))
        together = reports.visits(session, data.now, within=timedelta(days=30), by_owner=False)

    assert [(v.deal_id, v.status, v.owner) for v in month.deals] == [
        ("D-1", "overdue", "rep:owner-17"),
        ("D-5", "upcoming", "rep:owner-42"),
    ]
    overdue, upcoming = month.deals
    # D-1 launched on day 6: due days 20, 34, 48, 62 were missed, so the next is due on day 76 (6 + 5 x 14).
    assert near(overdue.due_at, data.start("D-1") + 76 * DAY)
    assert overdue.days_until_due == approx(-data.days_since("D-1", 76))
    assert overdue.label == "site visit" and overdue.stage == "ongoing"
    assert near(upcoming.due_at, data.start("D-5") + 20 * DAY)
    assert upcoming.days_until_due == approx(10.0)
    assert [(s.owner, s.overdue, s.upcoming) for s in month.summary] == [("rep:owner-17", 1, 0), ("rep:owner-42", 0, 1)]

    # Ten days ahead is outside a week: only the overdue visit is left.
    assert [v.deal_id for v in week.deals] == ["D-1"]
    assert [(s.owner, s.overdue, s.upcoming) for s in week.summary] == [("rep:owner-17", 1, 0)]
    assert [(s.owner, s.overdue, s.upcoming) for s in together.summary] == [(None, 1, 1)]


async def test_time_in_stage_from_consecutive_transitions(data: DataSet, safe_balance: Playbook):
    with data.db.session() as session:
        rows = reports.time_in_stage(session, stage_order=reports.stage_orders([safe_balance]))
        none = reports.time_in_stage(session, playbook="no_such_playbook")
        expired = _stays(session, "deal-D-2")

    # The expired deal's contract stage lasted exactly its 14-day deadline.
    assert expired == [("targeting", approx(0.0)), ("contract_request", approx(1.0)), ("contract", approx(14.0))]
    # Completed stays: every deal but D-3 left targeting (day 0) and contract_request (day 1). Contract: 2 days
    # (D-1, D-5: signed on day 3), 14 (D-2: expired), 4 (D-4: declined on day 5), 2 (D-6). Current stages and
    # terminal ones are no completed stays.
    table = {r.stage: (r.stays, r.median_days, r.p90_days) for r in rows}
    assert [r.stage for r in rows] == ["targeting", "contract_request", "contract", "prelaunch", "launch"]
    assert table["targeting"] == (5, approx(0.0), approx(0.0))
    assert table["contract_request"] == (5, approx(1.0), approx(1.0))
    # Nearest rank over 2, 2, 2, 4, 14: the median is the 3rd value, p90 the 5th.
    assert table["contract"] == (5, approx(2.0), approx(14.0))
    assert table["prelaunch"] == (2, approx(2.0), approx(2.0))  # D-1 and D-5: signed day 3, launched day 5
    assert table["launch"] == (2, approx(1.0), approx(1.0))
    assert none == []


def _stays(session: Session, workflow_id: str) -> list[tuple[str, float]]:
    """One deal's stays, straight from its transitions (what time_in_stage aggregates)."""
    moves = session.scalars(
        select(StageTransition).where(StageTransition.workflow_id == workflow_id).order_by(StageTransition.seq)
    ).all()
    return [(a.to_stage, (reports.utc(b.at) - reports.utc(a.at)) / DAY) for a, b in itertools.pairwise(moves)]


async def test_deal_history_is_the_ordered_readable_audit_trail(data: DataSet):
    with data.db.session() as session:
        history = reports.deal_history(session, "D-2")
        declined = reports.deal_history(session, "D-4")
        unknown = reports.deal_history(session, "D-404")

    assert unknown == []
    assert [h.seq for h in history] == sorted(h.seq for h in history)
    assert [h.at for h in history] == sorted(h.at for h in history)
    assert near(history[0].at, data.start("D-2"))
    moves = [h.summary for h in history if h.kind == "stage"]
    assert moves == [
        "start → targeting (start)",
        "targeting → contract_request (form:targeting)",
        "contract_request → contract (form:contract_request)",
        "contract → contract_expired (deadline): contract not signed within 14 days",
    ]
    summaries = [h.summary for h in history]
    assert "form targeting submitted by rehearsal" in summaries
    assert "form contract_request submitted by rehearsal" in summaries
    emails = [h for h in history if h.kind == "email"]
    assert [e.summary.split()[1] for e in emails] == [
        "account_claimed",
        "contract_sent",
        "contract_reminder",
        "contract_reminder",
        "contract_expired",
    ]
    assert all(e.summary.endswith("[sent]") for e in emails)
    sent = next(e for e in emails if "contract_sent" in e.summary)
    assert "→ signer, cc rep [sent]" in sent.summary and "'" in sent.summary  # the rendered subject, quoted
    reminders = [h for h in history if h.kind == "reminder"]
    assert len(reminders) == 2
    assert near(reminders[0].at, data.start("D-2") + 8 * DAY) and near(reminders[1].at, data.start("D-2") + 13 * DAY)
    assert all(h.summary.startswith("reminder: contract expires on ") for h in reminders)
    expiry = next(h for h in history if h.kind == "stage" and "deadline" in h.summary)
    assert near(expiry.at, data.start("D-2") + 15 * DAY) and expiry.stage == "contract_expired"
    # Form values hold names and addresses: summaries never repeat them.
    assert not [h.summary for h in history if "@" in h.summary or "Client Signer" in h.summary]

    event = next(h for h in declined if h.kind == "event")
    assert event.summary == "event contract_declined from rehearsal: accepted"
    assert declined[-1].kind == "stage" and declined[-1].summary == "contract → closed_lost (event:contract_declined)"


async def test_workflow_status_and_records_agree(data: DataSet):
    with data.db.session() as session:
        for deal_id, rehearsal in data.runs.items():
            _assert_records_match(session, deal_id, rehearsal)
    # The prelaunch deal exercises open and done tasks.
    prelaunch = data.runs["D-6"].status
    assert {t.id for t in prelaunch.open_tasks} == set(PRELAUNCH_TASKS) - {"onsite_appointment"}
    assert prelaunch.done_tasks == ["onsite_appointment"]


def _assert_records_match(session: Session, deal_id: str, rehearsal: Rehearsal) -> None:
    status, workflow_id = rehearsal.status, f"deal-{deal_id}"
    deal = session.scalars(select(DealRow).where(DealRow.workflow_id == workflow_id)).one()
    assert (deal.deal_id, deal.playbook, deal.stage, deal.stage_title, deal.outcome, deal.owner) == (
        status.deal_id,
        status.playbook,
        status.stage,
        status.stage_title,
        status.outcome,
        status.owner,
    ), deal_id
    assert reports.utc(deal.stage_entered_at) == status.stage_entered_at, deal_id

    moves = session.scalars(
        select(StageTransition).where(StageTransition.workflow_id == workflow_id).order_by(StageTransition.seq)
    ).all()
    recorded = [(m.from_stage, m.to_stage, reports.utc(m.at), m.actor, m.trigger, m.reason) for m in moves]
    assert recorded == [(h.from_stage, h.to_stage, h.at, h.actor, h.trigger, h.reason) for h in status.history]

    forms = session.scalars(
        select(FormSubmission).where(FormSubmission.workflow_id == workflow_id).order_by(FormSubmission.seq)
    ).all()
    latest = {form.form: reports.utc(form.at) for form in forms}
    assert latest == status.forms_submitted, deal_id

    # Tasks of the current stage visit: opened when (or after) the stage was entered.
    tasks = session.scalars(
        select(TaskRow).where(TaskRow.workflow_id == workflow_id, TaskRow.stage == status.stage)
    ).all()
    current = [t for t in tasks if reports.utc(t.opened_at) >= status.stage_entered_at]
    assert sorted(t.task for t in current if t.done_at is None) == sorted(t.id for t in status.open_tasks), deal_id
    assert sorted(t.task for t in current if t.done_at is not None) == sorted(status.done_tasks), deal_id
    due = {t.task: reports.utc(t.due_at) if t.due_at else None for t in current if t.done_at is None}
    assert due == {t.id: t.due_at for t in status.open_tasks}, deal_id


def test_nearest_rank_percentile():
    assert reports.percentile([14.0, 2.0, 4.0, 2.0], 50) == 2.0
    assert reports.percentile([14.0, 2.0, 4.0, 2.0], 90) == 14.0
    assert reports.percentile([1.0, 2.0, 3.0], 50) == 2.0
    assert reports.percentile([5.0], 90) == 5.0
    assert reports.percentile(list(map(float, range(1, 11))), 90) == 9.0
    assert reports.percentile(list(map(float, range(1, 11))), 70) == 7.0  # no floating-point rank drift
    with pytest.raises(ValueError):
        reports.percentile([], 50)


def test_an_audit_trail_line_reads_the_detail_through_its_kinds_model():
    assert reports.summarize("stage", {"to": "targeting", "trigger": "start", "by": "cli"}) == (
        "start → targeting (start) by cli"
    )
    bounced = {"template": "welcome", "roles": ["signer"], "owner": "rep", "task": "fix_email_welcome", "reason": "550"}
    assert (
        reports.summarize("escalation", bounced)
        == "escalation: email welcome undeliverable (550); task fix_email_welcome"
    )
    visit = {"form": "site_visit", "count": 2, "by": "riley", "values": {"visited_on": "2025-02-12"}}
    visit |= {"next_due": "2025-02-26T09:00:00+00:00", "logged_at": "2025-02-12T09:00:00+00:00", "touchpoint": "visit"}
    assert reports.summarize("form", visit) == (
        "form site_visit submitted by riley (#2); visit logged 2025-02-12 09:00, next due 2025-02-26 09:00"
    )


def test_a_row_of_a_kind_this_version_does_not_know_is_listed_as_written():
    """A newer version's rows (read after a rollback) still show in the audit trail, never fail it."""
    assert reports.summarize("call_logged", {"who": "rep", "minutes": 12}) == "who=rep, minutes=12"


def test_a_row_whose_detail_does_not_fit_its_kind_is_listed_as_written():
    assert reports.summarize("stage", {"to": "targeting"}) == "to=targeting"
