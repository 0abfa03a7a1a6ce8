"""The board's rules: who a deal answers to, and what the deal calls its company."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sopflow.board import owned_by
from sopflow.models import FormRecord, LifecycleState
from sopflow.views import company


@pytest.mark.parametrize(
    ("who", "owner", "roles", "answers"),
    [
        ("rep", "rep:owner-17", set(), True),
        ("REP:owner-17", "rep:owner-17", set(), True),
        ("rep:owner-18", "rep:owner-17", set(), False),
        ("rep@example.com", "rep:owner-17", {"rep"}, True),
        ("am@example.com", "rep:owner-17", {"account_manager"}, False),
        ("rep", None, set(), False),
    ],
)
def test_a_deal_answers_to_its_owner_role_owner_id_or_the_owner_roles_contact(
    who: str, owner: str | None, roles: set[str], answers: bool
) -> None:
    assert owned_by(who, owner, roles) is answers


def _state(fields: dict[str, object], forms: dict[str, dict[str, object]]) -> LifecycleState:
    at = datetime(2026, 12, 1, tzinfo=UTC)
    return LifecycleState.model_validate(
        {
            "deal_id": "D-1",
            "stage": "targeting",
            "stage_entered_at": at,
            "started_at": at,
            "run_started_at": at,
            "fields": fields,
            "forms": {k: FormRecord(values=v, submitted_at=at) for k, v in forms.items()},
        }
    )


def test_the_company_is_the_deals_own_field_before_any_forms() -> None:
    state = _state({"company_name": " Acme Health "}, {"targeting": {"company": "Other"}})
    assert company(state) == "Acme Health"


def test_the_company_comes_from_a_form_when_the_deal_has_none_and_is_none_when_nothing_names_it() -> None:
    assert company(_state({}, {"targeting": {"company": "Sunrise Care"}})) == "Sunrise Care"
    assert company(_state({"rep_email": "rep@example.com"}, {})) is None
