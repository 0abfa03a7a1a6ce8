"""The staff directory: a readable YAML file, hashed tokens, limits on what a person sees."""

from __future__ import annotations

from pathlib import Path

import pytest

from sopflow.staff import Limits, Person, Staff, StaffFileError, load_staff, new_token, save_staff, token_hash


def test_a_missing_staff_file_is_an_empty_directory(tmp_path: Path) -> None:
    assert load_staff(tmp_path / "staff.yaml").people == []


def test_the_directory_round_trips_and_keeps_only_token_hashes(tmp_path: Path) -> None:
    token = new_token()
    person = Person(email="Rep@Example.com", timezone="America/Chicago", tokens=[token_hash(token)])
    path = tmp_path / "staff.yaml"
    save_staff(path, Staff(people=[person]))
    assert token not in path.read_text()
    assert path.stat().st_mode & 0o077 == 0
    staff = load_staff(path)
    assert staff.find("rep@example.com") == person
    assert staff.by_token(token) == person
    assert staff.by_token(new_token()) is None


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("people: [{email: nobody}]", "people.0.email"),
        ("people: [{email: a@example.com, timezone: Mars/Base}]", "people.0.timezone"),
        ("people: [{email: a@example.com, holidays: {country: XX}}]", "unknown holiday country"),
        ("people: [{email: a@example.com, colour: red}]", "people.0.colour"),
        ("people: [", "not valid YAML"),
    ],
)
def test_a_bad_staff_file_is_one_line_naming_the_file_and_the_entry(tmp_path: Path, text: str, names: str) -> None:
    path = tmp_path / "staff.yaml"
    path.write_text(text)
    with pytest.raises(StaffFileError) as refused:
        load_staff(path)
    assert str(path) in str(refused.value) and names in str(refused.value)
    assert "\n" not in str(refused.value)


def test_an_unlimited_person_sees_every_deal() -> None:
    assert Person(email="cs@example.com").may_see("rep:owner-17", set())


def test_a_limited_person_sees_deals_of_their_roles_owners_or_where_they_are_the_contact() -> None:
    person = Person(email="am@example.com", limits=Limits(roles=["account_manager"], owners=["rep:owner-17"]))
    assert person.may_see("account_manager:owner-3", set())
    assert person.may_see("rep:owner-17", set())
    assert person.may_see("rep:owner-18", {"account_manager"})
    assert not person.may_see("rep:owner-18", {"client"})
    assert not person.may_see(None, set())
