"""Typed field values: coerce what staff type (CLI strings, web forms, JSON) into canonical JSON values.

Canonical forms are JSON-friendly so they survive workflow history unchanged: dates and datetimes as ISO text,
money as a two-decimal string (never a float), choices exactly as the playbook spells them.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sopflow.playbook import FieldSpec

MAX_MONEY_DIGITS = 15
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_TRUE = {"true", "yes", "y", "1", "on"}
_FALSE = {"false", "no", "n", "0", "off"}


class FieldErrors(ValueError):
    """Field-by-field messages, so a form UI or CLI can show each next to its field."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{name}: {message}" for name, message in errors.items()))


def is_blank(value: Any) -> bool:
    return value is None or value == [] or (isinstance(value, str) and not value.strip())


def coerce(spec: FieldSpec, value: Any) -> Any:
    """Return the canonical value or raise ValueError with a message meant for the person who typed it."""
    kind = spec.type
    if kind == "text":
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ValueError("expected text")
        return str(value).strip()
    if kind == "email":
        text = str(value).strip()
        if not _EMAIL.match(text):
            raise ValueError(f"{text!r} is not an email address")
        return text
    if kind == "bool":
        if isinstance(value, bool):
            return value
        lowered = str(value).strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(f"{value!r} is not yes/no")
    if kind == "number":
        if isinstance(value, bool):
            raise ValueError("expected a number")
        try:
            number = float(value)
        except OverflowError:
            raise ValueError("is too large a number") from None
        except (TypeError, ValueError):
            raise ValueError(f"{value!r} is not a number") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError(f"{value!r} is not a finite number")
        return int(number) if number.is_integer() else number
    if kind == "money":
        if isinstance(value, bool):
            raise ValueError("expected an amount")
        try:
            amount = Decimal(str(value).replace(",", "").replace("$", "").strip())
        except InvalidOperation:
            raise ValueError(f"{value!r} is not an amount") from None
        if not amount.is_finite() or amount.as_tuple().exponent < -2:  # type: ignore[operator]
            raise ValueError(f"{value!r} is not an amount with at most 2 decimals")
        if amount.adjusted() >= MAX_MONEY_DIGITS:  # also keeps "1e999999999" from being expanded to a billion digits
            raise ValueError(f"{value!r} is too large an amount")
        return f"{amount:.2f}"
    if kind == "date":
        if isinstance(value, datetime):
            return value.date().isoformat()
        if isinstance(value, date):
            return value.isoformat()
        try:
            return date.fromisoformat(str(value).strip()).isoformat()
        except ValueError:
            raise ValueError(f"{value!r} is not a date (YYYY-MM-DD)") from None
    if kind == "datetime":
        try:
            moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).strip())
        except ValueError:
            raise ValueError(f"{value!r} is not a date-time (ISO 8601)") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC).isoformat()
    options = spec.options or []
    if kind == "choice":
        return _option(options, value)
    # multi_choice: a list, or comma-separated text from a CLI or web form
    items = value if isinstance(value, list) else [part for part in str(value).split(",") if part.strip()]
    chosen = [_option(options, item) for item in items]
    return sorted(set(chosen), key=chosen.index)


def _option(options: list[str], value: Any) -> str:
    text = str(value).strip()
    for option in options:
        if option.lower() == text.lower():
            return option
    raise ValueError(f"{text!r} is not one of: {', '.join(options)}")


def validate_values(
    specs: dict[str, FieldSpec],
    values: dict[str, Any],
    *,
    partial: bool = False,
    previous: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Coerce every value; reject unknown fields and, unless partial, missing required ones. All errors at once."""
    errors: dict[str, str] = {}
    clean: dict[str, Any] = {}
    for name, value in values.items():
        spec = specs.get(name)
        if spec is None:
            known = ", ".join(sorted(specs)) or "none"
            errors[name] = f"unknown field (known: {known})"
            continue
        if is_blank(value):
            clean[name] = None
            continue
        try:
            clean[name] = coerce(spec, value)
        except ValueError as exc:
            errors[name] = str(exc)
    merged = {**(previous or {}), **clean}
    if not partial:
        for name, spec in specs.items():
            if spec.required and is_blank(merged.get(name)) and name not in errors:
                errors[name] = "required"
    else:
        for name, value in clean.items():
            if value is None and specs[name].required:
                errors[name] = "required: cannot be cleared"
    if errors:
        raise FieldErrors(errors)
    return clean
