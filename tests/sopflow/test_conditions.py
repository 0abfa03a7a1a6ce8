"""Conditions on a deal's context, and resolving roles to addresses and owner ids."""

from __future__ import annotations

from typing import Any

import pytest

from sopflow.conditions import Context, evaluate, make_context, resolve, role_address, role_owner_id
from sopflow.config import PROJECT_ROOT
from sopflow.playbook import Condition, Playbook
from sopflow.playbook_checks import load_playbook


@pytest.fixture(scope="module")
def playbook() -> Playbook:
    return load_playbook(PROJECT_ROOT / "playbooks" / "safe_balance.yaml")


def ctx(deal: dict[str, Any] | None = None, **forms: dict[str, Any]) -> Context:
    return {"deal": deal or {}, "forms": forms, "settings": {"corporate_email": "support-team@example.com"}}


def holds(condition: dict[str, Any], context: Context) -> bool:
    return evaluate(Condition.model_validate(condition), context)


TARGETING = {"service_tier": "Premium", "services": ["Balance assessment", "Therapy program"], "seats": 12}


def test_resolve_follows_a_dotted_reference() -> None:
    context = ctx({"rep_email": "rep@example.com"}, targeting=TARGETING)
    assert resolve(context, "deal.rep_email") == "rep@example.com"
    assert resolve(context, "forms.targeting.service_tier") == "Premium"
    assert resolve(context, "settings.corporate_email") == "support-team@example.com"


def test_resolve_gives_none_for_anything_missing() -> None:
    context = ctx({"rep_email": "rep@example.com"})
    assert resolve(context, "deal.launch_date") is None
    assert resolve(context, "forms.targeting.service_tier") is None
    assert resolve(context, "deal.rep_email.domain") is None


def test_make_context_exposes_deal_forms_and_playbook_settings(playbook: Playbook) -> None:
    context = make_context(playbook, {"rep_email": "rep@example.com"}, {"targeting": TARGETING})
    assert resolve(context, "settings.partner_manager_email") == "partners@example.com"
    assert resolve(context, "forms.targeting.seats") == 12


def test_a_missing_condition_is_true() -> None:
    assert evaluate(None, ctx())


# --- equals, in, is_set -------------------------------------------------------------------------------------


@pytest.mark.parametrize("expected", ["Premium", "premium", "PREMIUM"])
def test_equals_compares_strings_case_insensitively(expected: str) -> None:
    assert holds({"field": "forms.targeting.service_tier", "equals": expected}, ctx(targeting=TARGETING))


def test_equals_is_false_for_a_different_value() -> None:
    assert not holds({"field": "forms.targeting.service_tier", "equals": "Basic"}, ctx(targeting=TARGETING))


def test_equals_on_a_list_value_means_membership() -> None:
    context = ctx(targeting=TARGETING)
    assert holds({"field": "forms.targeting.services", "equals": "therapy program"}, context)
    assert not holds({"field": "forms.targeting.services", "equals": "Remote monitoring"}, context)


def test_equals_compares_non_strings_exactly() -> None:
    context = ctx(targeting=TARGETING)
    assert holds({"field": "forms.targeting.seats", "equals": 12}, context)
    assert not holds({"field": "forms.targeting.seats", "equals": "12"}, context)


def test_equals_on_a_missing_value_is_false() -> None:
    assert not holds({"field": "forms.targeting.service_tier", "equals": "Premium"}, ctx())


def test_in_matches_any_option_case_insensitively() -> None:
    context = ctx(targeting=TARGETING)
    assert holds({"field": "forms.targeting.service_tier", "in": ["standard", "premium"]}, context)
    assert not holds({"field": "forms.targeting.service_tier", "in": ["Basic", "Standard"]}, context)


def test_in_on_a_list_value_matches_any_shared_item() -> None:
    assert holds(
        {"field": "forms.targeting.services", "in": ["Remote monitoring", "therapy program"]}, ctx(targeting=TARGETING)
    )


def test_in_on_a_missing_value_is_false() -> None:
    assert not holds({"field": "deal.tier", "in": ["Basic"]}, ctx())


@pytest.mark.parametrize(
    ("value", "is_set"),
    [("2025-03-01", True), (False, True), (0, True), (["x"], True), (None, False), ("", False), ([], False)],
)
def test_is_set_treats_none_empty_text_and_empty_lists_as_unset(value: Any, is_set: bool) -> None:
    context = ctx({"launch_date": value})
    assert holds({"field": "deal.launch_date", "is_set": True}, context) is is_set
    assert holds({"field": "deal.launch_date", "is_set": False}, context) is not is_set


def test_is_set_false_holds_for_an_absent_field() -> None:
    assert holds({"field": "deal.launch_date", "is_set": False}, ctx())


# --- gt, gte, lt, lte ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "bound", "expected"),
    [
        ("gt", 11, True),
        ("gt", 12, False),
        ("gte", 12, True),
        ("gte", 13, False),
        ("lt", 13, True),
        ("lt", 12, False),
        ("lte", 12, True),
        ("lte", 11, False),
    ],
)
def test_comparisons_on_numbers(op: str, bound: float, expected: bool) -> None:
    assert holds({"field": "forms.targeting.seats", op: bound}, ctx(targeting=TARGETING)) is expected


def test_comparisons_read_numeric_text_such_as_money() -> None:
    context = ctx({"monthly_fee": "1500.00"})
    assert holds({"field": "deal.monthly_fee", "gt": 1000}, context)
    assert not holds({"field": "deal.monthly_fee", "lt": 1000}, context)


@pytest.mark.parametrize("op", ["gt", "gte", "lt", "lte"])
@pytest.mark.parametrize("value", [None, "", "lots", True, ["1"]])
def test_comparisons_on_missing_or_non_numeric_values_are_false_not_an_error(op: str, value: Any) -> None:
    assert not holds({"field": "deal.monthly_fee", op: 0}, ctx({"monthly_fee": value}))


# --- all, any, not ------------------------------------------------------------------------------------------

PREMIUM = {"field": "forms.targeting.service_tier", "equals": "Premium"}
BIG = {"field": "forms.targeting.seats", "gt": 50}


def test_all_needs_every_child() -> None:
    context = ctx(targeting=TARGETING)
    assert holds({"all": [PREMIUM, {"field": "forms.targeting.seats", "gt": 10}]}, context)
    assert not holds({"all": [PREMIUM, BIG]}, context)


def test_any_needs_one_child() -> None:
    context = ctx(targeting=TARGETING)
    assert holds({"any": [BIG, PREMIUM]}, context)
    assert not holds({"any": [BIG, {"field": "forms.targeting.service_tier", "equals": "Basic"}]}, context)


def test_not_negates() -> None:
    context = ctx(targeting=TARGETING)
    assert holds({"not": BIG}, context)
    assert not holds({"not": PREMIUM}, context)


def test_combinators_nest() -> None:
    condition = {"all": [PREMIUM, {"not": {"any": [BIG, {"field": "deal.launch_date", "is_set": True}]}}]}
    assert holds(condition, ctx(targeting=TARGETING))
    assert not holds(condition, ctx({"launch_date": "2025-03-01"}, targeting=TARGETING))


def test_empty_all_is_true_and_empty_any_is_false() -> None:
    assert holds({"all": []}, ctx())
    assert not holds({"any": []}, ctx())


# --- roles --------------------------------------------------------------------------------------------------

DEAL = {
    "rep_email": "rep@example.com",
    "rep_name": "Riley Rep",
    "rep_id": "hs-owner-17",
    "account_manager_email": "am@example.com",
}
SIGNER = {"signer_email": "signer@example.com", "signer_name": "Sam"}


def test_role_address_resolves_email_and_name_from_the_deal(playbook: Playbook) -> None:
    context = make_context(playbook, DEAL, {})
    assert role_address(playbook, context, "rep") == ("rep@example.com", "Riley Rep")


def test_role_address_resolves_from_a_form_and_from_settings(playbook: Playbook) -> None:
    context = make_context(playbook, DEAL, {"targeting": SIGNER})
    assert role_address(playbook, context, "signer") == ("signer@example.com", "Sam")
    assert role_address(playbook, context, "corporate") == ("support-team@example.com", None)


def test_role_address_is_missing_until_the_deal_provides_it(playbook: Playbook) -> None:
    context = make_context(playbook, DEAL, {})
    assert role_address(playbook, context, "signer") == (None, None)
    assert role_address(playbook, context, "account_manager") == ("am@example.com", None)


def test_role_owner_id_is_the_role_and_its_opaque_id(playbook: Playbook) -> None:
    assert role_owner_id(playbook, make_context(playbook, DEAL, {}), "rep") == "rep:hs-owner-17"


@pytest.mark.parametrize("role", ["rep", "account_manager", "signer", "partner_manager", "corporate"])
def test_role_owner_id_never_returns_an_email_or_a_name(playbook: Playbook, role: str) -> None:
    deal = {**DEAL, "rep_id": None}
    context = make_context(playbook, deal, {"targeting": SIGNER})
    owner = role_owner_id(playbook, context, role)
    assert owner == role
    assert "@" not in owner
    assert "Riley" not in owner and "Sam" not in owner


def test_role_owner_id_of_an_unknown_role_is_the_role_name(playbook: Playbook) -> None:
    assert role_owner_id(playbook, make_context(playbook, DEAL, {}), "auditor") == "auditor"
