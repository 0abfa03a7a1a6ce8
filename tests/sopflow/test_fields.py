"""Field coercion: what staff type becomes one canonical JSON value, or a message meant for them."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest

from sopflow.config import PROJECT_ROOT
from sopflow.fields import (
    MAX_EMAILS,
    MAX_FIELDS_PER_REQUEST,
    MAX_ID_LENGTH,
    MAX_TEXT_LENGTH,
    FieldErrors,
    coerce,
    shapes,
    validate_values,
)
from sopflow.playbook import FieldSpec, FieldType
from sopflow.playbook_checks import load_playbook

TIERS = ["Basic", "Standard", "Premium"]
SERVICES = ["Balance assessment", "Fall-risk screening", "Therapy program"]


def spec(kind: FieldType, *, required: bool = False, options: list[str] | None = None) -> FieldSpec:
    return FieldSpec(type=kind, required=required, options=options)


# --- text, email --------------------------------------------------------------------------------------------


def test_text_is_trimmed() -> None:
    assert coerce(spec("text"), "  Acme Clinic  ") == "Acme Clinic"


def test_text_accepts_numbers_as_text() -> None:
    assert coerce(spec("text"), 42) == "42"


@pytest.mark.parametrize("value", [True, ["a"], {"a": 1}, None])
def test_text_rejects_non_scalar_values(value: Any) -> None:
    with pytest.raises(ValueError, match="expected text"):
        coerce(spec("text"), value)


def test_email_is_trimmed_and_kept_as_typed() -> None:
    assert coerce(spec("email"), " Client.Signer@Example.com ") == "Client.Signer@Example.com"


@pytest.mark.parametrize("value", ["sam", "sam@acme", "sam @acme.com", "@acme.com", "sam@@acme.com"])
def test_email_rejects_text_that_is_not_an_address(value: str) -> None:
    with pytest.raises(ValueError, match="is not an email address"):
        coerce(spec("email"), value)


# --- date, datetime -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["2025-01-31", " 2025-01-31 ", date(2025, 1, 31), datetime(2025, 1, 31, 17, 30, tzinfo=UTC)]
)
def test_date_becomes_iso_text(value: Any) -> None:
    assert coerce(spec("date"), value) == "2025-01-31"


@pytest.mark.parametrize("value", ["31/01/2025", "2025-02-30", "tomorrow"])
def test_date_rejects_non_iso_or_impossible_dates(value: str) -> None:
    with pytest.raises(ValueError, match=r"is not a date \(YYYY-MM-DD\)"):
        coerce(spec("date"), value)


def test_naive_datetime_is_taken_as_utc() -> None:
    assert coerce(spec("datetime"), "2025-01-31T09:00") == "2025-01-31T09:00:00+00:00"
    assert coerce(spec("datetime"), datetime(2025, 1, 31, 9)) == "2025-01-31T09:00:00+00:00"


def test_aware_datetime_is_converted_to_utc() -> None:
    eastern = timezone(timedelta(hours=-5))
    assert coerce(spec("datetime"), datetime(2025, 1, 31, 9, tzinfo=eastern)) == "2025-01-31T14:00:00+00:00"
    assert coerce(spec("datetime"), "2025-01-31T09:00:00+02:00") == "2025-01-31T07:00:00+00:00"


def test_datetime_rejects_text_that_is_not_iso_8601() -> None:
    with pytest.raises(ValueError, match=r"is not a date-time \(ISO 8601\)"):
        coerce(spec("datetime"), "Jan 31 at 9")


# --- number, money ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"), [("12", 12), (" 12 ", 12), ("12.0", 12), (12, 12), ("1.5", 1.5), (-3, -3), (2.25, 2.25)]
)
def test_number_accepts_text_and_numbers_and_keeps_whole_numbers_integral(value: Any, expected: float) -> None:
    result = coerce(spec("number"), value)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize("value", ["twelve", "", "nan", "inf", "-inf", [1]])
def test_number_rejects_text_that_is_not_a_finite_number(value: Any) -> None:
    with pytest.raises(ValueError, match=r"is not a (finite )?number"):
        coerce(spec("number"), value)


def test_number_rejects_booleans() -> None:
    with pytest.raises(ValueError, match="expected a number"):
        coerce(spec("number"), True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1500", "1500.00"),
        ("1500.5", "1500.50"),
        ("1,500.25", "1500.25"),
        ("$1,500", "1500.00"),
        (1500, "1500.00"),
        (12.5, "12.50"),
        ("0.10", "0.10"),
    ],
)
def test_money_becomes_a_two_decimal_string_never_a_float(value: Any, expected: str) -> None:
    result = coerce(spec("money"), value)
    assert result == expected
    assert isinstance(result, str)


@pytest.mark.parametrize("value", ["1500.255", "0.001", 1.005])
def test_money_rejects_more_than_two_decimals(value: Any) -> None:
    with pytest.raises(ValueError, match="is not an amount with at most 2 decimals"):
        coerce(spec("money"), value)


@pytest.mark.parametrize("value", ["lots", "NaN", "Infinity"])
def test_money_rejects_text_that_is_not_an_amount(value: str) -> None:
    with pytest.raises(ValueError, match="is not an amount"):
        coerce(spec("money"), value)


def test_money_rejects_booleans() -> None:
    with pytest.raises(ValueError, match="expected an amount"):
        coerce(spec("money"), False)


# --- choice, multi_choice -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["Premium", "premium", " PREMIUM "])
def test_choice_matches_case_insensitively_and_returns_the_canonical_spelling(value: str) -> None:
    assert coerce(spec("choice", options=TIERS), value) == "Premium"


def test_choice_rejects_other_values_listing_the_options() -> None:
    with pytest.raises(ValueError, match="'Gold' is not one of: Basic, Standard, Premium"):
        coerce(spec("choice", options=TIERS), "Gold")


def test_multi_choice_accepts_comma_separated_text() -> None:
    value = "therapy program, balance ASSESSMENT"
    assert coerce(spec("multi_choice", options=SERVICES), value) == ["Therapy program", "Balance assessment"]


def test_multi_choice_accepts_a_list() -> None:
    assert coerce(spec("multi_choice", options=SERVICES), ["fall-risk screening"]) == ["Fall-risk screening"]


def test_multi_choice_drops_repeats_keeping_the_first_order() -> None:
    value = ["Therapy program", "balance assessment", "THERAPY PROGRAM"]
    assert coerce(spec("multi_choice", options=SERVICES), value) == ["Therapy program", "Balance assessment"]


def test_multi_choice_ignores_empty_items_in_text() -> None:
    assert coerce(spec("multi_choice", options=SERVICES), "Therapy program,, ") == ["Therapy program"]


def test_multi_choice_rejects_an_unknown_option() -> None:
    with pytest.raises(ValueError, match="'Yoga' is not one of: Balance assessment"):
        coerce(spec("multi_choice", options=SERVICES), "Therapy program, Yoga")


# --- bool ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, "yes", "Yes", "true", "TRUE", "y", "1", "on", 1])
def test_bool_accepts_yes_and_true_spellings(value: Any) -> None:
    assert coerce(spec("bool"), value) is True


@pytest.mark.parametrize("value", [False, "no", "No", "false", "n", "0", "off", 0])
def test_bool_accepts_no_and_false_spellings(value: Any) -> None:
    assert coerce(spec("bool"), value) is False


@pytest.mark.parametrize("value", ["maybe", "2", ""])
def test_bool_rejects_anything_else(value: str) -> None:
    with pytest.raises(ValueError, match="is not yes/no"):
        coerce(spec("bool"), value)


# --- validate_values ----------------------------------------------------------------------------------------

FORM = {
    "company": spec("text", required=True),
    "signer_email": spec("email", required=True),
    "service_tier": spec("choice", required=True, options=TIERS),
    "monthly_fee": spec("money"),
    "notes": spec("text"),
}
COMPLETE = {"company": "Acme", "signer_email": "rep@example.com", "service_tier": "Basic"}


def test_valid_values_come_back_canonical() -> None:
    values = {"company": " Acme ", "signer_email": "signer@example.com", "service_tier": "basic", "monthly_fee": "99"}
    assert validate_values(FORM, values) == {
        "company": "Acme",
        "signer_email": "signer@example.com",
        "service_tier": "Basic",
        "monthly_fee": "99.00",
    }


def test_blank_optional_values_become_none() -> None:
    values = {"company": "Acme", "signer_email": "signer@example.com", "service_tier": "Basic", "notes": ""}
    assert validate_values(FORM, values)["notes"] is None


def test_unknown_field_is_rejected_naming_the_known_fields() -> None:
    with pytest.raises(FieldErrors) as caught:
        validate_values(FORM, {**COMPLETE, "colour": "red"})
    assert caught.value.errors == {
        "colour": "unknown field (known: company, monthly_fee, notes, service_tier, signer_email)"
    }


def test_missing_required_fields_are_reported_as_required() -> None:
    with pytest.raises(FieldErrors) as caught:
        validate_values(FORM, {"company": "Acme"})
    assert caught.value.errors == {"signer_email": "required", "service_tier": "required"}


def test_blank_required_field_counts_as_missing() -> None:
    with pytest.raises(FieldErrors) as caught:
        validate_values(FORM, {"company": "", "signer_email": "rep@example.com", "service_tier": "Basic"})
    assert caught.value.errors == {"company": "required"}


def test_required_fields_may_come_from_previous_values() -> None:
    assert validate_values(FORM, {"notes": "call first"}, previous=COMPLETE) == {"notes": "call first"}


def test_partial_mode_does_not_require_missing_fields() -> None:
    assert validate_values(FORM, {"monthly_fee": "120"}, partial=True) == {"monthly_fee": "120.00"}


def test_partial_mode_refuses_to_clear_a_required_field() -> None:
    with pytest.raises(FieldErrors) as caught:
        validate_values(FORM, {"company": None}, partial=True)
    assert caught.value.errors == {"company": "required: cannot be cleared"}


def test_partial_mode_allows_clearing_an_optional_field() -> None:
    assert validate_values(FORM, {"notes": ""}, partial=True) == {"notes": None}


def test_partial_mode_refuses_to_clear_a_required_text_field_with_whitespace() -> None:
    with pytest.raises(FieldErrors) as caught:
        validate_values(FORM, {"company": "   "}, partial=True)
    assert caught.value.errors == {"company": "required: cannot be cleared"}


def test_all_errors_are_reported_at_once_field_by_field() -> None:
    values = {"signer_email": "not-an-address", "service_tier": "Gold", "monthly_fee": "9.999", "colour": "red"}
    with pytest.raises(FieldErrors) as caught:
        validate_values(FORM, values)
    errors = caught.value.errors
    assert set(errors) == {"company", "signer_email", "service_tier", "monthly_fee", "colour"}
    assert errors["company"] == "required"
    assert "is not an email address" in errors["signer_email"]
    assert "is not one of: Basic, Standard, Premium" in errors["service_tier"]
    assert "at most 2 decimals" in errors["monthly_fee"]
    assert errors["colour"].startswith("unknown field")


def test_field_errors_message_lists_every_field_and_is_a_value_error() -> None:
    error = FieldErrors({"company": "required", "service_tier": "'Gold' is not one of: Basic"})
    assert isinstance(error, ValueError)
    assert str(error) == "company: required; service_tier: 'Gold' is not one of: Basic"


# --- limits: what reaches headers, search attributes and timers ----------------------------------------------


@pytest.mark.parametrize("char", ["\r", "\n", "\x0b", "\x0c", "\x00", "\x1b", "\x85", "\u2028"])
def test_one_line_text_refuses_control_characters(char: str) -> None:
    with pytest.raises(ValueError, match="control character"):
        coerce(spec("text"), f"Client{char}Signer")


@pytest.mark.parametrize("char", ["\u202e", "\u2066", "\u200f", "\u061c"])
def test_text_refuses_text_direction_controls(char: str) -> None:
    with pytest.raises(ValueError, match="text-direction"):
        coerce(spec("text"), f"invoice{char}fdp.exe")


def test_text_refuses_a_lone_surrogate() -> None:
    with pytest.raises(ValueError, match="control character"):
        coerce(spec("text"), "a\ud800b")


def test_text_is_bounded_in_length() -> None:
    assert coerce(spec("text"), "x" * MAX_TEXT_LENGTH) == "x" * MAX_TEXT_LENGTH
    with pytest.raises(ValueError, match=f"at most {MAX_TEXT_LENGTH}"):
        coerce(spec("text"), "x" * (MAX_TEXT_LENGTH + 1))


@pytest.mark.parametrize("value", ["owner-101", "12345678", "crm:00A1.b_2"])
def test_an_owner_id_is_a_short_opaque_token(value: str) -> None:
    assert coerce(spec("text"), value, "id") == value


@pytest.mark.parametrize(
    "value",
    ["x" * 3000, "a" * (MAX_ID_LENGTH + 1) + "1", "rep1@example.com", "Jane Doe 1", "JaneDoe", "owner/1", "-1a"],
)
def test_an_owner_id_refuses_long_email_or_name_shaped_values(value: str) -> None:
    with pytest.raises(ValueError, match="opaque CRM id") as exc:
        coerce(spec("text"), value, "id")
    assert len(str(exc.value)) < 300  # the message quotes the value cut short


@pytest.mark.parametrize("value", ["=?utf-8?b?ZXZlQGV2aWwuZXhhbXBsZSw=?=", "Rep <eve@evil.example>", "x=?UTF-8?Q?a?=y"])
def test_a_display_name_refuses_encoded_words_and_angle_brackets(value: str) -> None:
    with pytest.raises(ValueError, match="plain name"):
        coerce(spec("text"), value, "name")


def test_a_display_name_keeps_ordinary_punctuation() -> None:
    assert coerce(spec("text"), "O'Brien, Facility Director (Site 2)", "name") == "O'Brien, Facility Director (Site 2)"


@pytest.mark.parametrize(
    "value", ["a>,<eve@evil.example", "a@b.c,eve@evil.example", "a b@example.com", "a@exa\nmple.com", "a@b", "@b.co"]
)
def test_email_refuses_anything_that_could_be_two_addresses_or_none(value: str) -> None:
    with pytest.raises(ValueError, match="not an email address"):
        coerce(spec("email"), value)


def test_email_is_bounded_in_length() -> None:
    with pytest.raises(ValueError, match="not an email address"):
        coerce(spec("email"), "a" * 250 + "@example.com")


@pytest.mark.parametrize("value", ["0001-01-02", "1899-12-31", "2201-01-01", "9999-12-31"])
def test_dates_outside_1900_to_2200_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="out of range"):
        coerce(spec("date"), value)


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-05:00", "1850-06-01T12:00"])
def test_datetimes_outside_the_range_are_refused_before_any_zone_arithmetic(value: str) -> None:
    with pytest.raises(ValueError, match="out of range"):
        coerce(spec("datetime"), value)


def test_the_range_edges_are_accepted() -> None:
    assert coerce(spec("date"), "1900-01-01") == "1900-01-01"
    assert coerce(spec("date"), "2200-12-31") == "2200-12-31"


@pytest.mark.parametrize("value", [1e16, "-1e300", 10**40])
def test_numbers_beyond_a_quadrillion_are_refused(value: Any) -> None:
    with pytest.raises(ValueError, match="too large"):
        coerce(spec("number"), value)


def test_a_huge_unknown_field_name_is_reported_cut_short() -> None:
    with pytest.raises(FieldErrors) as exc:
        validate_values({"company": spec("text")}, {"k" * 30_000: "x"})
    assert len(str(exc.value)) < 300


def test_too_many_fields_in_one_request_are_refused_at_once() -> None:
    with pytest.raises(FieldErrors, match="at most"):
        validate_values({}, {f"f{i}": i for i in range(MAX_FIELDS_PER_REQUEST + 1)})


def test_role_fields_are_derived_from_the_playbook_roles() -> None:
    playbook = load_playbook(PROJECT_ROOT / "playbooks" / "safe_balance.yaml")
    assert shapes(playbook, "deal") == {
        "rep_id": "id",
        "rep_name": "name",
        "account_manager_id": "id",
        "account_manager_name": "name",
    }
    assert shapes(playbook, "forms.targeting") == {"signer_name": "name"}


# --- text with a pattern (a format such as MM/DD/YY_Initials: Action) ------------------------------------------

DATED_ACTION = FieldSpec(
    type="text",
    pattern=r"[0-9]{2}/[0-9]{2}/[0-9]{2}_?[A-Za-z]{1,5}: ?\S.*",
    format="MM/DD/YY_Initials: Action",
    example="04/20/23_MM: Customer asked to cancel",
)


@pytest.mark.parametrize("value", ["04/20/23_MM: Customer asked to cancel", "04/20/23MM:Customer asked to cancel"])
def test_a_patterned_text_field_accepts_a_value_in_its_format(value: str) -> None:
    assert coerce(DATED_ACTION, f"  {value} ") == value


def test_a_patterned_text_field_refuses_another_shape_naming_the_format_and_its_example() -> None:
    with pytest.raises(ValueError) as caught:
        coerce(DATED_ACTION, "Customer asked to cancel")
    assert str(caught.value) == (
        "'Customer asked to cancel' is not in the expected format: expected MM/DD/YY_Initials: Action, "
        "e.g. 04/20/23_MM: Customer asked to cancel"
    )


def test_a_pattern_must_match_the_whole_value_not_a_part_of_it() -> None:
    with pytest.raises(ValueError, match="expected format"):
        coerce(DATED_ACTION, "Note: 04/20/23_MM: Customer asked to cancel")


def test_a_pattern_without_format_words_shows_the_pattern_itself() -> None:
    with pytest.raises(ValueError, match=r"expected text matching \[A-Z\]\{3\}"):
        coerce(FieldSpec(type="text", pattern="[A-Z]{3}"), "abcd")


def test_a_broken_pattern_in_a_pinned_playbook_refuses_the_value_instead_of_raising_anything_else() -> None:
    broken = FieldSpec(type="text", pattern="(unclosed")
    with pytest.raises(ValueError, match="pattern for this field is not valid"):
        coerce(broken, "anything")


def test_a_pattern_refusal_is_one_field_error_among_the_others() -> None:
    specs = {"description": DATED_ACTION, "subject": spec("text", required=True)}
    with pytest.raises(FieldErrors) as caught:
        validate_values(specs, {"description": "asked to cancel"})
    assert set(caught.value.errors) == {"description", "subject"}
    assert "e.g. 04/20/23_MM" in caught.value.errors["description"]


def test_a_blank_patterned_field_is_empty_not_refused() -> None:
    assert validate_values({"description": DATED_ACTION}, {"description": " "}) == {"description": None}


# --- emails: a list of addresses (a client's users) ------------------------------------------------------------


def test_emails_accept_text_separated_by_commas_semicolons_or_spaces() -> None:
    typed = " a@example.com, b@example.com;c@example.com  d@example.com,"
    assert coerce(spec("emails"), typed) == ["a@example.com", "b@example.com", "c@example.com", "d@example.com"]


def test_emails_accept_a_list() -> None:
    assert coerce(spec("emails"), [" a@example.com ", "b@example.com"]) == ["a@example.com", "b@example.com"]


def test_emails_drop_repeats_in_any_case_keeping_the_first() -> None:
    assert coerce(spec("emails"), "a@example.com, A@Example.com, b@example.com") == ["a@example.com", "b@example.com"]


@pytest.mark.parametrize("typed", ["a@example.com, not-an-address", ["a@example.com", "a>,<eve@evil.example"]])
def test_emails_refuse_a_list_with_one_bad_address_naming_it(typed: Any) -> None:
    with pytest.raises(ValueError, match=r"is not an email address \(in a list of addresses separated by commas\)"):
        coerce(spec("emails"), typed)


def test_emails_are_bounded_in_number() -> None:
    many = [f"user{i}@example.com" for i in range(MAX_EMAILS + 1)]
    assert len(coerce(spec("emails"), many[:MAX_EMAILS])) == MAX_EMAILS
    with pytest.raises(ValueError, match=f"at most {MAX_EMAILS}"):
        coerce(spec("emails"), many)


@pytest.mark.parametrize("typed", [42, True, {"a": "b@example.com"}])
def test_emails_refuse_what_is_neither_text_nor_a_list(typed: Any) -> None:
    with pytest.raises(ValueError, match="expected email addresses"):
        coerce(spec("emails"), typed)


def test_a_required_emails_field_needs_at_least_one_address() -> None:
    with pytest.raises(FieldErrors) as caught:
        validate_values({"users": spec("emails", required=True)}, {"users": []})
    assert caught.value.errors == {"users": "required"}
    with pytest.raises(FieldErrors) as caught:
        validate_values({"users": spec("emails", required=True)}, {"users": " , "})
    assert caught.value.errors == {"users": "required"}
