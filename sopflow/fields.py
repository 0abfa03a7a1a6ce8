"""Typed field values: coerce what staff type (CLI strings, web forms, JSON) into canonical JSON values.

Canonical forms are JSON-friendly so they survive workflow history unchanged: dates and datetimes as ISO text,
money as a two-decimal string (never a float), choices exactly as the playbook spells them.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, date, datetime, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from sopflow import zones
from sopflow.playbook import FieldSpec, Playbook

# Limits on every value a person or a CRM can send. A lifecycle lives for years on what it accepted once, so a value
# is refused here, with a message naming it, rather than breaking a search attribute, an email header or a timer later.
MAX_MONEY_DIGITS = 15
MAX_NUMBER = 10**15
MAX_TEXT_LENGTH = 1000
MAX_EMAIL_LENGTH = 254
# An `emails` field is a contact list (a client's users), not a mailing list: each address becomes a recipient.
MAX_EMAILS = 50
MAX_FIELDS_PER_REQUEST = 200
# Dates a business process can mean: far enough out for a 100-year contract, near enough that "7 days before" and
# "every 2 months after" stay inside what datetime can hold.
EARLIEST_DATE = date(1900, 1, 1)
LATEST_DATE = date(2200, 12, 31)
# An opaque CRM id (it reaches the SopOwner search attribute, stored unencrypted and shown to every operator): a short
# token with at least one digit, so neither an email address nor a name fits.
MAX_ID_LENGTH = 64
_OPAQUE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
# RFC 5322 dot-atom local part and a dotted domain, ASCII only: nothing that could close or open another address.
_EMAIL = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
)
_LENIENT_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# Bidirectional controls reorder what a reader sees (an RLO makes "exe.pdf" read "fdp.exe"); never in a value.
_BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# An RFC 2047 encoded-word in a display name is decoded by mail clients into whatever it hides (a second address).
_ENCODED_WORD = re.compile(r"=\?[^?]*\?[bBqQ]\?[^?]*\?=")
_TRUE = {"true", "yes", "y", "1", "on"}
_FALSE = {"false", "no", "n", "0", "off"}

# What a text field feeds besides the deal record: an owner id (a search attribute) or a display name (a header).
Shape = Literal["id", "name"]


class FieldErrors(ValueError):
    """Field-by-field messages, so a form UI or CLI can show each next to its field."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{name}: {message}" for name, message in errors.items()))


def is_blank(value: Any) -> bool:
    return value is None or value == [] or (isinstance(value, str) and not value.strip())


def shapes(playbook: Playbook, scope: str) -> dict[str, Shape]:
    """The fields of `scope` ('deal' or 'forms.<form id>') that roles use as owner ids or display names.

    Derived from the roles rather than declared per field, so the rule also holds for playbooks pinned into
    lifecycles before it existed: whatever feeds `SopOwner` must be an opaque id, whatever feeds a From/To display
    name must be a plain one-line name.
    """
    found: dict[str, Shape] = {}
    prefix = f"{scope}."
    for role in playbook.roles.values():
        for ref, shape in ((role.id, "id"), (role.name, "name")):
            if ref and ref.startswith(prefix) and "." not in ref[len(prefix) :]:
                found[ref[len(prefix) :]] = shape  # type: ignore[assignment]
    return found


def shown(text: str, limit: int = 40) -> str:
    """A value quoted in an error message, cut short: a 30 KB value must not become a 30 KB message or log line."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _bad_character(text: str) -> str | None:
    for char in text:
        if char in _BIDI:
            return f"contains a text-direction control character (U+{ord(char):04X})"
        category = unicodedata.category(char)
        if category in ("Cc", "Cs", "Zl", "Zp"):
            return f"contains a control character (U+{ord(char):04X}); use one line of plain text"
    return None


def _text(value: Any, shape: Shape | None, limits: bool) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ValueError("expected text")
    text = str(value).strip()
    if not limits:
        return text
    problem = _bad_character(text)
    if problem:
        raise ValueError(problem)
    if shape == "id" and not (_OPAQUE_ID.fullmatch(text) and any(c.isdigit() for c in text)):
        raise ValueError(
            f"{shown(text)} is not an opaque CRM id: 1-{MAX_ID_LENGTH} letters, digits and . _ : - with at least one "
            "digit (never a name or an email address: ids are shown to operators unencrypted)"
        )
    if len(text) > MAX_TEXT_LENGTH:
        raise ValueError(f"is {len(text)} characters long; at most {MAX_TEXT_LENGTH}")
    if shape == "name" and (_ENCODED_WORD.search(text) or any(c in text for c in "<>")):
        raise ValueError(f"{shown(text)} is not a plain name: no '<', '>' or encoded words (=?...?=)")
    return text


def pattern_problem(pattern: str, example: str | None) -> str | None:
    """Why a playbook's `pattern` cannot be used (it does not compile, or its own example does not match), or None.

    Checked when a playbook is loaded: a broken regex must stop the author, never a client's form later."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        return f"{shown(pattern)} is not a regular expression ({exc})"
    if example is not None and not compiled.fullmatch(example):
        return f"its example {shown(example)} does not match it"
    return None


def check_pattern(spec: FieldSpec, text: str) -> None:
    """Refuse text whose whole value does not match the field's `pattern`, saying what was expected with the
    playbook's format and example (`expected MM/DD/YY_Initials: Action, e.g. 04/20/23_MM: Customer asked ...`)."""
    assert spec.pattern is not None
    try:
        matched = re.fullmatch(spec.pattern, text) is not None
    except re.error:  # a pinned playbook that skipped the load checks: refuse the value, never raise in a lifecycle
        raise ValueError("cannot be checked: the playbook's pattern for this field is not valid") from None
    if not matched:
        expected = spec.format or f"text matching {spec.pattern}"
        example = f", e.g. {spec.example}" if spec.example else ""
        raise ValueError(f"{shown(text)} is not in the expected format: expected {expected}{example}")


def _email(value: Any, limits: bool) -> str:
    if not limits:  # the rule before limits: one '@' and a dot in the domain, no spaces
        text = str(value).strip()
        if not _LENIENT_EMAIL.match(text):
            raise ValueError(f"{text!r} is not an email address")
        return text
    if not isinstance(value, str):
        raise ValueError("expected an email address")
    text = value.strip()
    if len(text) > MAX_EMAIL_LENGTH or not _EMAIL.fullmatch(text):
        raise ValueError(f"{shown(text)} is not an email address")
    return text


def _emails(value: Any, limits: bool) -> list[str]:
    """A list of addresses, from a list or from text separated by commas, semicolons or spaces (a CLI `-f`, a web
    form, a CRM property); each checked like an `email` field, repeats (in any case) dropped, the first kept."""
    if isinstance(value, list):
        items = value
    elif isinstance(value, str):
        items = [part for part in re.split(r"[,;\s]+", value) if part]
    else:
        raise ValueError("expected email addresses, separated by commas")
    found: list[str] = []
    for item in items:
        try:
            address = _email(item, limits)
        except ValueError as exc:
            raise ValueError(f"{exc} (in a list of addresses separated by commas)") from None
        if all(address.lower() != known.lower() for known in found):
            found.append(address)
    if limits and len(found) > MAX_EMAILS:
        raise ValueError(f"{len(found)} addresses; at most {MAX_EMAILS}")
    return found


def _number(value: Any, limits: bool) -> int | float:
    if isinstance(value, bool):
        raise ValueError("expected a number")
    try:
        number = float(value)
    except OverflowError:
        raise ValueError("is too large a number") from None
    except (TypeError, ValueError):
        raise ValueError(f"{shown(str(value))} is not a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"{shown(str(value))} is not a finite number")
    if limits and abs(number) > MAX_NUMBER:
        raise ValueError(f"{shown(str(value))} is too large a number (at most {MAX_NUMBER:.0e} either way)")
    return int(number) if number.is_integer() else number


def _money(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("expected an amount")
    try:
        amount = Decimal(str(value).replace(",", "").replace("$", "").strip())
    except InvalidOperation:
        raise ValueError(f"{shown(str(value))} is not an amount") from None
    if not amount.is_finite() or amount.as_tuple().exponent < -2:  # type: ignore[operator]
        raise ValueError(f"{shown(str(value))} is not an amount with at most 2 decimals")
    if amount.adjusted() >= MAX_MONEY_DIGITS:  # also keeps "1e999999999" from being expanded to a billion digits
        raise ValueError(f"{shown(str(value))} is too large an amount")
    return f"{amount:.2f}"


def _in_range(day: date, shown_value: str, limits: bool) -> None:
    if limits and not EARLIEST_DATE <= day <= LATEST_DATE:
        raise ValueError(f"{shown_value} is out of range ({EARLIEST_DATE.year}-{LATEST_DATE.year})")


def _date(value: Any, limits: bool) -> str:
    if isinstance(value, datetime):
        day = value.date()
    elif isinstance(value, date):
        day = value
    else:
        try:
            day = date.fromisoformat(str(value).strip())
        except ValueError:
            raise ValueError(f"{shown(str(value))} is not a date (YYYY-MM-DD)") from None
    _in_range(day, shown(day.isoformat()), limits)
    return day.isoformat()


def _datetime(value: Any, limits: bool, tz: tzinfo | None) -> str:
    """Canonical UTC text. A date-time typed without an offset is local to `tz`, the deal's zone (UTC for a
    playbook without one); one inside a daylight-saving gap is refused rather than guessed."""
    try:
        moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).strip())
    except ValueError:
        raise ValueError(f"{shown(str(value))} is not a date-time (ISO 8601)") from None
    _in_range(moment.date(), shown(str(value)), limits)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC) if tz is None else zones.localize(moment, tz)
    return moment.astimezone(UTC).isoformat()


def _timezone(value: Any) -> str:
    name = str(value).strip()
    zones.zone(name)  # raises UnknownZone (a ValueError) with the nearest names
    return name


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{shown(str(value))} is not yes/no")


def coerce(
    spec: FieldSpec, value: Any, shape: Shape | None = None, limits: bool = True, tz: tzinfo | None = None
) -> Any:
    """Return the canonical value or raise ValueError with a message meant for the person who typed it.

    `limits=False` keeps only the canonical conversion, as before the limits existed: a workflow replaying a request
    it accepted back then must apply it the same way (`workflow.patched`), even if the limits would refuse it today.
    """
    kind = spec.type
    if kind == "text":
        text = _text(value, shape, limits)
        if limits and spec.pattern is not None:
            check_pattern(spec, text)
        return text
    if kind == "email":
        return _email(value, limits)
    if kind == "emails":
        return _emails(value, limits)
    if kind == "bool":
        return _bool(value)
    if kind == "number":
        return _number(value, limits)
    if kind == "money":
        return _money(value)
    if kind == "date":
        return _date(value, limits)
    if kind == "datetime":
        return _datetime(value, limits, tz)
    if kind == "timezone":
        return _timezone(value)
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
    raise ValueError(f"{shown(text)} is not one of: {', '.join(options)}")


def validate_values(
    specs: dict[str, FieldSpec],
    values: dict[str, Any],
    *,
    partial: bool = False,
    previous: dict[str, Any] | None = None,
    roles: dict[str, Shape] | None = None,
    limits: bool = True,
    tz: tzinfo | None = None,
) -> dict[str, Any]:
    """Coerce every value; reject unknown fields and, unless partial, missing required ones. All errors at once.

    `roles` names the fields that feed owner ids or display names (`shapes`), which get the stricter rules. `tz`
    is the zone date-times without an offset are read in (None: UTC, the rule of playbooks without a zone).
    """
    if limits and len(values) > MAX_FIELDS_PER_REQUEST:
        raise FieldErrors({"fields": f"{len(values)} fields in one request; at most {MAX_FIELDS_PER_REQUEST}"})
    errors: dict[str, str] = {}
    clean: dict[str, Any] = {}
    for name, value in values.items():
        spec = specs.get(name)
        if spec is None:
            known = ", ".join(sorted(specs)) or "none"
            # Keyed by a bounded form of the name: a 30 KB or email-shaped key must not travel into messages and logs.
            errors[shown(name, 24)[1:-1]] = f"unknown field (known: {known})"
            continue
        if is_blank(value):
            clean[name] = None
            continue
        try:
            clean[name] = coerce(spec, value, (roles or {}).get(name), limits, tz)
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
