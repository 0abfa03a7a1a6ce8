"""The work queue (`sopflow tasks`) over a records store on each backend: what is on whose plate, in what order,
and the command that settles each item."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sopflow import zones
from sopflow.db import Database, DealContact, DealRow, TaskRow
from sopflow.playbook import Playbook
from sopflow.work_queue import Filters, WorkItem, due_limit, work_items

NOW = datetime(2026, 3, 4, 15, tzinfo=UTC)  # a Wednesday, 10:00 in New York
DAY = timedelta(days=1)
NEW_YORK = zones.zone("America/New_York")


def deal(deal_id: str, stage: str, owner: str = "rep:owner-17", **columns: Any) -> DealRow:
    values: dict[str, Any] = {
        "workflow_id": f"deal-{deal_id}",
        "deal_id": deal_id,
        "playbook": "safe_balance",
        "playbook_version": 3,
        "stage": stage,
        "stage_title": stage,
        "stage_entered_at": NOW - 10 * DAY,
        "owner": owner,
        "started_at": NOW - 30 * DAY,
        "updated_at": NOW,
        "last_seq": 1,
        "timezone": "America/New_York",
        **columns,
    }
    return DealRow(**values)


def task(deal_id: str, task_id: str, owner: str, due_at: datetime | None, **columns: Any) -> TaskRow:
    values: dict[str, Any] = {
        "workflow_id": f"deal-{deal_id}",
        "deal_id": deal_id,
        "opened_seq": columns.pop("opened_seq", hash(task_id) % 1000),
        "task": task_id,
        "title": task_id.replace("_", " "),
        "stage": "prelaunch",
        "owner": owner,
        "opened_at": NOW - 5 * DAY,
        "due_at": due_at,
        **columns,
    }
    return TaskRow(**values)


def contact(deal_id: str, role: str, email: str) -> DealContact:
    return DealContact(workflow_id=f"deal-{deal_id}", deal_id=deal_id, role=role, email=email, updated_at=NOW)


@pytest.fixture
def store(records_db: Database) -> Database:
    """D-1 in pre-launch with tasks for the rep and the account manager; D-2 in its contract with the deadline;
    D-3 ongoing with a visit due; D-4 closed (nothing of it is work)."""
    with records_db.session() as session:
        session.add_all(
            [
                deal("D-1", "prelaunch", owner="account_manager:am-5"),
                task("D-1", "onsite_appointment", "rep", NOW - 2 * DAY),
                task("D-1", "services_onboarded", "account_manager", NOW + 3 * DAY),
                task("D-1", "cleared_for_launch", "account_manager", None),
                task("D-1", "prelaunch_call", "account_manager", NOW - DAY, done_at=NOW - DAY),
                # Left open in an earlier visit of the stage: not today's work.
                task("D-1", "old_visit_task", "rep", NOW - 20 * DAY, opened_at=NOW - 40 * DAY),
                deal("D-2", "contract", deadline_label="contract expires", deadline_due=NOW + 6 * DAY),
                deal("D-3", "ongoing", visit_label="site visit", next_visit_due=NOW + 9 * DAY),
                deal("D-4", "closed_lost", outcome="lost", next_visit_due=NOW - DAY, deadline_due=NOW, visit_label="x"),
                DealContact(workflow_id="deal-D-1", deal_id="D-1", role="rep", email="Rep@Example.com", updated_at=NOW),
                DealContact(
                    workflow_id="deal-D-1",
                    deal_id="D-1",
                    role="account_manager",
                    email="am@example.com",
                    updated_at=NOW,
                ),
            ]
        )
        session.commit()
    return records_db


def queue(db: Database, filters: Filters | None = None, playbooks: list[Playbook] | None = None) -> list[WorkItem]:
    with db.session() as session:
        return work_items(session, NOW, NEW_YORK, filters or Filters(), playbooks or [])


def test_open_work_of_open_deals_overdue_first_then_by_due_moment_undated_last(store: Database) -> None:
    items = queue(store)
    assert [(i.deal_id, i.kind, i.what) for i in items] == [
        ("D-1", "task", "onsite appointment"),
        ("D-1", "task", "services onboarded"),
        ("D-2", "deadline", "contract expires"),
        ("D-3", "visit", "site visit"),
        ("D-1", "task", "cleared for launch"),
    ]
    assert items[0].days_until_due == pytest.approx(-2.0)
    assert items[-1].due_at is None and items[-1].days_until_due is None


def test_an_owner_is_a_role_an_owner_id_or_the_persons_address(store: Database) -> None:
    def owned(who: str) -> list[str]:
        return [i.what for i in queue(store, Filters(owner=who))]

    assert owned("rep") == ["onsite appointment", "contract expires", "site visit"]
    assert owned("account_manager") == ["services onboarded", "cleared for launch"]
    assert owned("rep:owner-17") == ["contract expires", "site visit"]  # the deals whose stage that owner owns
    assert owned("rep@example.com") == ["onsite appointment"]  # case does not matter
    assert owned("nobody@example.com") == []


@pytest.mark.parametrize(
    ("due", "expected"),
    [
        ("overdue", ["onsite appointment"]),
        ("today", ["onsite appointment"]),
        ("week", ["onsite appointment", "services onboarded", "contract expires"]),
        ("2026-03-13", ["onsite appointment", "services onboarded", "contract expires", "site visit"]),
    ],
)
def test_a_due_filter_keeps_what_is_due_by_then_in_the_viewers_days(store: Database, due: str, expected: list[str]):
    assert [i.what for i in queue(store, Filters(due=due))] == expected


def test_the_viewers_today_ends_at_their_own_midnight() -> None:
    limit, overdue_only = due_limit("today", NOW, NEW_YORK)
    assert (limit, overdue_only) == (datetime(2026, 3, 5, 5, tzinfo=UTC), False)
    with pytest.raises(ValueError, match="use today, week, overdue or a date"):
        due_limit("tomorrow", NOW, NEW_YORK)


def test_a_playbook_or_stage_filter_narrows_the_deals(store: Database) -> None:
    assert {i.deal_id for i in queue(store, Filters(stage="contract"))} == {"D-2"}
    assert queue(store, Filters(playbook="other")) == []


def test_each_item_names_the_command_that_settles_it(store: Database, safe_balance: Playbook) -> None:
    commands = {i.what: i.command for i in queue(store, playbooks=[safe_balance])}
    assert commands["onsite appointment"] == "sopflow task done D-1 onsite_appointment"
    assert commands["site visit"] == "sopflow form submit D-3 site_visit -f visited_on=YYYY-MM-DD"
    assert commands["contract expires"] == "sopflow deal event D-2 contract_signed"
    # Without the playbook the deal's status is the way in.
    assert {i.command for i in queue(store) if i.kind != "task"} == {
        "sopflow deal status D-2",
        "sopflow deal status D-3",
    }


def test_each_item_names_the_task_or_form_that_settles_it_on_the_board(store: Database, safe_balance: Playbook) -> None:
    settles = {i.what: (i.task, i.form) for i in queue(store, playbooks=[safe_balance])}
    assert settles["onsite appointment"] == ("onsite_appointment", None)
    assert settles["site visit"] == (None, "site_visit")
    assert settles["contract expires"] == (None, None)  # an e-signature event settles it, not a form


def test_a_booked_meeting_is_work_until_it_is_held(records_db: Database) -> None:
    with records_db.session() as session:
        session.add_all(
            [
                deal("M-1", "servicing", meeting_label="Client meeting", meeting_at=NOW + 2 * DAY),
                deal("M-2", "servicing", meeting_label="Client meeting", meeting_at=NOW - DAY),
            ]
        )
        session.commit()
    assert [(i.deal_id, i.kind) for i in queue(records_db)] == [("M-1", "meeting")]
