"""Resolving `deal.x` / `forms.f.x` / `settings.x` references, evaluating conditions, and resolving roles."""

from __future__ import annotations

from typing import Any

from sopflow.fields import is_blank
from sopflow.playbook import Condition, Playbook

Context = dict[str, Any]


def make_context(playbook: Playbook, fields: dict[str, Any], forms: dict[str, dict[str, Any]]) -> Context:
    return {"deal": fields, "forms": forms, "settings": playbook.settings}


def resolve(ctx: Context, ref: str) -> Any:
    node: Any = ctx
    for part in ref.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def evaluate(cond: Condition | None, ctx: Context) -> bool:
    """A missing condition is true; comparisons against a missing value are false (never an error mid-workflow)."""
    if cond is None:
        return True
    if cond.all is not None:
        return all(evaluate(child, ctx) for child in cond.all)
    if cond.any is not None:
        return any(evaluate(child, ctx) for child in cond.any)
    if cond.not_ is not None:
        return not evaluate(cond.not_, ctx)
    assert cond.field is not None
    value = resolve(ctx, cond.field)
    fields_set = cond.model_fields_set
    if "is_set" in fields_set:
        return (not is_blank(value)) == cond.is_set
    if "equals" in fields_set:
        return _same(value, cond.equals)
    if "in_" in fields_set:
        return any(_same(value, option) for option in cond.in_ or [])
    number = _number(value)
    if number is None:
        return False
    for op, bound in (("gt", cond.gt), ("gte", cond.gte), ("lt", cond.lt), ("lte", cond.lte)):
        if op in fields_set and bound is not None:
            return {"gt": number > bound, "gte": number >= bound, "lt": number < bound, "lte": number <= bound}[op]
    return False


def _same(value: Any, expected: Any) -> bool:
    if isinstance(value, list):
        return any(_same(item, expected) for item in value)
    if isinstance(value, str) and isinstance(expected, str):
        return value.casefold() == expected.casefold()
    return bool(value == expected)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def role_addresses(playbook: Playbook, ctx: Context, role_id: str) -> list[str]:
    """Every address a role resolves to: one for an `email` field or a setting, each of an `emails` field's list (a
    client's users), none until the deal provides them."""
    value = resolve(ctx, playbook.roles[role_id].email)
    items = value if isinstance(value, list) else [value]
    return [str(item) for item in items if not is_blank(item)]


def role_name(playbook: Playbook, ctx: Context, role_id: str) -> str | None:
    """A role's display name, if the playbook gives one and the deal has it."""
    spec = playbook.roles[role_id]
    name = resolve(ctx, spec.name) if spec.name else None
    return str(name) if not is_blank(name) else None


def role_address(playbook: Playbook, ctx: Context, role_id: str) -> tuple[str | None, str | None]:
    """(email, display name) for a role, either possibly missing until the deal provides it; a role of several
    addresses gives them joined by ", " (contact lists and templates show them; emails address each one)."""
    return ", ".join(role_addresses(playbook, ctx, role_id)) or None, role_name(playbook, ctx, role_id)


def role_owner_id(playbook: Playbook, ctx: Context, role_id: str) -> str:
    """The search-attribute owner: `role` or `role:<opaque id>`; never a name or address."""
    spec = playbook.roles.get(role_id)
    owner = resolve(ctx, spec.id) if spec and spec.id else None
    return f"{role_id}:{owner}" if not is_blank(owner) else role_id
