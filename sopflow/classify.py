"""Tier classification (A/B/C clients) from a profile, with one documented answer for profiles that straddle tiers.

Service models such as "A: net worth $2M+, income $400k+, ages 45-60, 3+ referrals ..." rarely fit a real client
on every row. The rule, chosen to be predictable and hard to game by one number:

1. Each row (criterion) whose fields are all known places the client in the best tier whose condition it meets.
   A value below every tier's range places it in the lowest tier: the lowest tier is the floor of service.
2. The tier is the median of those placements. With an even number of rows the lower of the two middle tiers is
   taken: a client exactly between A and B is B until the advisor, who knows more, says otherwise.
3. Rows not known are ignored; with fewer than `min_known` known rows there is no tier at all.

So a client with A-level assets but B-level income, revenue and products is B, and the explanation says which rows
pulled which way, so the person confirming the tier can decide whether an override is warranted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sopflow.conditions import Context, evaluate, resolve
from sopflow.fields import is_blank
from sopflow.playbook import Classifier


@dataclass(frozen=True)
class Classification:
    tier: str | None
    # Row -> the tier it places the client in (None: not known).
    placements: dict[str, str | None] = field(default_factory=dict)

    @property
    def straddles(self) -> bool:
        return len({tier for tier in self.placements.values() if tier is not None}) > 1

    def explain(self, tiers: list[str]) -> str:
        known = {row: tier for row, tier in self.placements.items() if tier is not None}
        unknown = sorted(row for row, tier in self.placements.items() if tier is None)
        if self.tier is None:
            text = f"no tier: {len(known)} of {len(self.placements)} profile rows known"
        else:
            groups = [
                f"{tier} on {', '.join(row for row, placed in known.items() if placed == tier)}"
                for tier in tiers
                if tier in known.values()
            ]
            text = f"{self.tier} (median of {len(known)} rows: {'; '.join(groups)})"
        if unknown:
            text += f"; unknown: {', '.join(unknown)}"
        return text


def classify(classifier: Classifier, tiers: list[str], ctx: Context) -> Classification:
    """`tiers` best first (the target field's options); `ctx` is the deal's condition context."""
    placements: dict[str, str | None] = {}
    for row, conditions in classifier.criteria.items():
        refs = {ref for cond in conditions.values() for ref in cond.refs()}
        if any(is_blank(resolve(ctx, ref)) for ref in refs):
            placements[row] = None
            continue
        met = [tier for tier in tiers if tier in conditions and evaluate(conditions[tier], ctx)]
        placements[row] = met[0] if met else tiers[-1]
    ranks = sorted(tiers.index(tier) for tier in placements.values() if tier is not None)
    if len(ranks) < classifier.min_known or not ranks:
        return Classification(None, placements)
    # Ranks count from the best tier, so the upper middle rank is the lower (more conservative) tier.
    return Classification(tiers[ranks[len(ranks) // 2]], placements)
