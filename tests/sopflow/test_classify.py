"""The A/B/C rule on the seed's client service model (financial_servicing's `classify`), including straddles."""

from __future__ import annotations

from typing import Any

import pytest

from sopflow.classify import classify
from sopflow.conditions import make_context
from sopflow.config import PROJECT_ROOT
from sopflow.playbook import Playbook
from sopflow.playbook_checks import load_playbook

TIERS = ["A", "B", "C"]
# One profile per tier, each row inside the seed's range for that tier.
A = dict(net_worth=2_000_000, investable_assets=1_000_000, household_income=400_000, client_age=45,
         initial_revenue=10_000, recurring_revenue=10_000, referrals=3, products=4)  # fmt: skip
B = dict(net_worth=1_999_999, investable_assets=999_999, household_income=399_999, client_age=44,
         initial_revenue=9_999, recurring_revenue=9_999, referrals=2, products=3)  # fmt: skip
C = dict(net_worth=150_000, investable_assets=150_000, household_income=150_000, client_age=28,
         initial_revenue=1_000, recurring_revenue=500, referrals=1, products=2)  # fmt: skip


@pytest.fixture(scope="module")
def playbook() -> Playbook:
    return load_playbook(PROJECT_ROOT / "playbooks" / "financial_servicing.yaml")


def tier_of(playbook: Playbook, **profile: Any) -> tuple[str | None, dict[str, str | None], str]:
    classifier = playbook.classify["suggested_category"]
    result = classify(classifier, TIERS, make_context(playbook, profile, {}))
    return result.tier, result.placements, result.explain(TIERS)


@pytest.mark.parametrize(("profile", "tier"), [(A, "A"), (B, "B"), (C, "C")])
def test_a_profile_inside_one_tier_on_every_row_is_that_tier(playbook: Playbook, profile: dict, tier: str) -> None:
    found, placements, _ = tier_of(playbook, **profile)
    assert found == tier and set(placements.values()) == {tier}


@pytest.mark.parametrize(("age", "tier"), [(27, "C"), (28, "C"), (34, "C"), (35, "B"), (44, "B"), (45, "A"),
                                           (60, "A"), (61, "B"), (80, "B")])  # fmt: skip
def test_ages_place_by_the_seed_ranges_including_61_plus_as_b(playbook: Playbook, age: int, tier: str) -> None:
    _, placements, _ = tier_of(playbook, **{**A, "client_age": age})
    assert placements["ages"] == tier


def test_a_straddling_profile_takes_the_median_row(playbook: Playbook) -> None:
    # A on assets, B on five rows, C on referrals: B.
    profile = {**B, "net_worth": 2_100_000, "investable_assets": 1_100_000, "referrals": 1}
    tier, _, explanation = tier_of(playbook, **profile)
    assert tier == "B"
    assert explanation == (
        "B (median of 8 rows: A on net_worth, investable_assets; B on household_income, ages, initial_revenue, "
        "recurring_revenue, products; C on referrals)"
    )


def test_an_exact_split_between_two_tiers_takes_the_lower_one(playbook: Playbook) -> None:
    profile = {**A, **{k: B[k] for k in ("household_income", "client_age", "initial_revenue", "recurring_revenue")}}
    tier, placements, _ = tier_of(playbook, **profile)
    assert sorted(placements.values()) == ["A"] * 4 + ["B"] * 4  # type: ignore[type-var]
    assert tier == "B"


def test_wealth_alone_does_not_make_an_a_client(playbook: Playbook) -> None:
    tier, _, _ = tier_of(playbook, **{**C, "net_worth": 5_000_000, "investable_assets": 3_000_000})
    assert tier == "C"


def test_values_below_every_range_are_served_as_c(playbook: Playbook) -> None:
    tier, placements, _ = tier_of(playbook, **{k: 0 for k in C} | {"client_age": 22})
    assert tier == "C" and set(placements.values()) == {"C"}


def test_unknown_rows_are_ignored_and_named(playbook: Playbook) -> None:
    tier, placements, explanation = tier_of(playbook, net_worth=2_500_000, investable_assets=1_500_000, products=2)
    assert tier == "A"
    assert placements["referrals"] is None
    assert explanation.endswith("unknown: ages, household_income, initial_revenue, recurring_revenue, referrals")


def test_fewer_than_three_known_rows_give_no_tier(playbook: Playbook) -> None:
    tier, _, explanation = tier_of(playbook, net_worth=2_500_000, investable_assets=1_500_000)
    assert tier is None
    assert explanation.startswith("no tier: 2 of 8 profile rows known")
