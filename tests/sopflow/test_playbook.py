"""Playbooks: the reference playbook loads and round-trips; a broken one reports every problem at its path.

Each file under `broken/` states the errors it must produce in `# expect:` lines (exact) or `# expect-start:`
lines (the error starts with the text), so a file and its expected messages are read together.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from sopflow.config import PROJECT_ROOT
from sopflow.durations import duration
from sopflow.playbook import TEMPLATE_PARTS, Condition, Deadline, Playbook, PlaybookError, shared
from sopflow.playbook_checks import load_playbook, parse_playbook, template_names

SAFE_BALANCE = PROJECT_ROOT / "playbooks" / "safe_balance.yaml"
BROKEN = sorted((Path(__file__).parent / "broken").glob("*.yaml"))


@pytest.fixture(scope="module")
def playbook() -> Playbook:
    return load_playbook(SAFE_BALANCE)


def expectations(path: Path) -> list[tuple[str, str]]:
    """(mode, text) for each `# expect: ...` / `# expect-start: ...` line of a broken playbook."""
    found = []
    for line in path.read_text().splitlines():
        for mode in ("expect", "expect-start"):
            prefix = f"# {mode}: "
            if line.startswith(prefix):
                found.append((mode, line.removeprefix(prefix)))
    return found


def load_errors(path: Path, templates_dir: Path | None = None) -> list[str]:
    with pytest.raises(PlaybookError) as caught:
        load_playbook(path, templates_dir)
    assert caught.value.source == str(path)
    return caught.value.errors


def minimal(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "mini",
        "version": 1,
        "stages": [{"id": "open", "transitions": [{"to": "done", "advance": True}]}, {"id": "done", "terminal": "won"}],
    }
    return {**data, **overrides}


# --- the reference playbook ---------------------------------------------------------------------------------


def test_safe_balance_playbook_loads_without_templates(playbook: Playbook) -> None:
    assert playbook.id == "safe_balance"
    assert [stage.id for stage in playbook.stages] == [
        "targeting",
        "contract_request",
        "contract",
        "contract_expired",
        "assign_account_manager",
        "prelaunch",
        "launch",
        "ongoing",
        "closed_lost",
        "closed_expired",
        "cancelled",
    ]


def test_safe_balance_playbook_round_trips_through_json_unchanged(playbook: Playbook) -> None:
    assert Playbook.model_validate_json(playbook.model_dump_json()) == playbook


def test_safe_balance_json_is_stable_across_round_trips(playbook: Playbook) -> None:
    once = playbook.model_dump_json()
    assert Playbook.model_validate_json(once).model_dump_json() == once


def shape(node: Any) -> Any:
    """The keys of nested data, with every scalar replaced by None."""
    if isinstance(node, dict):
        return {key: shape(value) for key, value in node.items()}
    if isinstance(node, list):
        return [shape(item) for item in node]
    return None


def test_safe_balance_json_holds_only_what_the_author_wrote(playbook: Playbook) -> None:
    """The pinned snapshot stays small: no defaults are added, aliases keep their written names."""
    assert shape(json.loads(playbook.model_dump_json())) == shape(yaml.safe_load(SAFE_BALANCE.read_text()))


def test_durations_are_serialised_as_text(playbook: Playbook) -> None:
    contract = json.loads(playbook.model_dump_json())["stages"][2]
    assert contract["deadline"]["within"] == "14d"
    assert [r["before"] for r in contract["deadline"]["remind"]] == ["7d", "2d"]
    assert playbook.stage("contract").deadline.within == duration("2w")  # type: ignore[union-attr]


def test_aliased_keywords_round_trip_by_their_written_names() -> None:
    condition = Condition.model_validate(
        {"any": [{"field": "deal.tier", "in": ["Gold"]}, {"not": {"field": "deal.tier", "is_set": True}}]}
    )
    dumped = json.loads(condition.model_dump_json())
    assert dumped == {"any": [{"field": "deal.tier", "in": ["Gold"]}, {"not": {"field": "deal.tier", "is_set": True}}]}
    assert Condition.model_validate(dumped) == condition
    deadline = Deadline.model_validate({"within": "30d", "from": "deal.launch_date", "on_expiry": {"to": "lost"}})
    assert json.loads(deadline.model_dump_json())["from"] == "deal.launch_date"
    assert Deadline.model_validate_json(deadline.model_dump_json()) == deadline


def test_safe_balance_loads_when_every_template_exists(playbook: Playbook, tmp_path: Path) -> None:
    for name in template_names(playbook):
        folder = tmp_path / "safe_balance" / name
        folder.mkdir(parents=True)
        for part in TEMPLATE_PARTS:
            (folder / part).write_text("x")
    assert load_playbook(SAFE_BALANCE, tmp_path) == playbook


def test_missing_templates_are_reported_when_a_templates_dir_is_given(playbook: Playbook, tmp_path: Path) -> None:
    errors = load_errors(SAFE_BALANCE, tmp_path)
    missing = "is missing subject.txt, body.txt, body.html"
    assert f"stages[1].on_enter[0].email.template: template 'account_claimed' {missing}" in errors
    assert f"stages[2].deadline.remind[1].email.template: template 'contract_reminder' {missing}" in errors
    assert f"forms.site_visit.on_submit[0].email.template: template 'site_visit_needs' {missing}" in errors
    assert all(".template: template '" in error for error in errors)
    assert {error.split("'")[1] for error in errors} == template_names(playbook)


def test_a_template_missing_one_part_names_that_part(playbook: Playbook, tmp_path: Path) -> None:
    for name in template_names(playbook):
        folder = tmp_path / "safe_balance" / name
        folder.mkdir(parents=True)
        for part in TEMPLATE_PARTS:
            if not (name == "welcome" and part == "body.html"):
                (folder / part).write_text("x")
    assert load_errors(SAFE_BALANCE, tmp_path) == [
        "stages[5].on_enter[0].email.template: template 'welcome' is missing body.html"
    ]


def test_an_unreadable_playbook_file_is_a_playbook_error(tmp_path: Path) -> None:
    assert load_errors(tmp_path / "nope.yaml") == ["cannot read: No such file or directory"]


# --- broken playbooks ---------------------------------------------------------------------------------------


def test_there_are_broken_playbooks_and_each_states_its_expected_errors() -> None:
    assert len(BROKEN) >= 9
    assert all(expectations(path) for path in BROKEN)


@pytest.mark.parametrize("path", BROKEN, ids=[path.stem for path in BROKEN])
def test_broken_playbook_reports_each_problem_at_its_path(path: Path) -> None:
    errors = load_errors(path)
    remaining = list(errors)
    for mode, text in expectations(path):
        match = next((e for e in remaining if (e == text if mode == "expect" else e.startswith(text))), None)
        assert match is not None, f"expected {mode} {text!r} among {errors}"
        remaining.remove(match)
    assert not remaining, f"unexpected errors: {remaining}"


def test_a_file_with_several_problems_reports_all_of_them() -> None:
    for name in ("several_references", "several_shapes"):
        assert len(load_errors(Path(__file__).parent / "broken" / f"{name}.yaml")) >= 7


def test_a_yaml_syntax_error_points_at_the_line() -> None:
    [error] = load_errors(Path(__file__).parent / "broken" / "yaml_syntax_error.yaml")
    assert "line 7" in error


def test_playbook_error_message_names_the_source_and_lists_every_error() -> None:
    path = Path(__file__).parent / "broken" / "several_references.yaml"
    with pytest.raises(PlaybookError) as caught:
        load_playbook(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: 9 error(s)\n")
    assert all(f"  {error}" in message for error in caught.value.errors)


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        (
            {"stages": [{"id": "done", "terminal": "won"}]},
            "stages[0]: the first stage is where clients start; it cannot be terminal",
        ),
        (
            {"stages": [{"id": "open", "transitions": [{"to": "open", "advance": True}]}]},
            "stages[0].transitions[0].to: a stage cannot transition to itself",
        ),
        (
            {"forms": {"intake": {"fields": {"name": {}}, "claim_contact": "nobody"}}},
            "forms.intake.claim_contact: the form claims no account ('claims')",
        ),
        (
            {"forms": {"intake": {"fields": {"name": {}}, "claims": "name", "claim_contact": "nobody"}}},
            "forms.intake.claim_contact: unknown role 'nobody'",
        ),
        (
            {
                "stages": [{"id": "open", "transitions": [{"to": "done", "form": "intake"}]}, {"id": "done"}],
                "forms": {"intake": {"fields": {"name": {}}}},
            },
            "stages[0].transitions[0].form: form 'intake' is not open in stage 'open' "
            "(list it under the stage's forms)",
        ),
        (
            {
                "stages": [
                    {
                        "id": "open",
                        "tasks": [
                            {"id": "call", "title": "Call", "owner": "rep"},
                            {"id": "call", "title": "Call again", "owner": "rep"},
                        ],
                    }
                ],
                "roles": {"rep": {"email": "settings.rep"}},
                "settings": {"rep": "rep@example.com"},
            },
            "stages[0].tasks[1].id: duplicate task 'call'",
        ),
        (
            {
                "stages": [
                    {"id": "open", "transitions": [{"to": "done", "advance": True}]},
                    {"id": "done", "terminal": "won", "forms": ["x"]},
                ],
                "forms": {"x": {"fields": {}}},
            },
            "stages[1]: terminal stage 'done' ends the lifecycle: it cannot have transitions, tasks, forms, "
            "a deadline or a cadence",
        ),
        (
            {
                "deal": {"owner_email": {"type": "email"}, "company": {"type": "text"}},
                "roles": {"owner": {"email": "deal.owner_email"}},
                "stages": [
                    {
                        "id": "open",
                        "appointments": [
                            {
                                "at": "deal.company",
                                "remind": [{"before": "1d", "email": {"template": "t", "to": ["owner"]}}],
                            }
                        ],
                    }
                ],
            },
            "stages[0].appointments[0].at: 'deal.company' is a text field; a moment needs a date or datetime field",
        ),
        (
            {
                "deal": {"tier": {"type": "text"}},
                "classify": {"tier": {"criteria": {"assets": {"A": {"field": "deal.tier", "is_set": True}}}}},
            },
            "classify.tier: the target must be a choice deal field (its options are the tiers, best first)",
        ),
        (
            {
                "deal": {"tier": {"type": "choice", "options": ["A", "B"]}, "assets": {"type": "money"}},
                "classify": {"tier": {"criteria": {"assets": {"Z": {"field": "deal.assets", "gte": 1}}}}},
            },
            "classify.tier.criteria.assets.Z: 'Z' is not an option of deal field 'tier'",
        ),
        (
            {"stages": [{"id": "open", "on_enter": [{"copy": {"nowhere": "deal.missing"}}]}]},
            "stages[0].on_enter[0].copy.nowhere: unknown deal field 'nowhere'",
        ),
        (
            {"stages": [{"id": "open", "on_enter": [{"set": {"a": 1}, "copy": {"b": "deal.c"}}]}]},
            "stages[0].on_enter[0]: an action is exactly one of 'email', 'set', 'copy', 'start_lifecycle' or 'notify'",
        ),
        ({"stages": []}, "stages: List should have at least 1 item after validation, not 0"),
        (
            {"deal": {"signed_on": {"type": "date", "pattern": "[0-9-]+"}}},
            "deal.signed_on: 'pattern' only applies to text fields, not date",
        ),
        (
            {"deal": {"note": {"type": "text", "example": "04/20/23_MM: Called"}}},
            "deal.note: 'format' and 'example' describe a 'pattern'; add one",
        ),
        ({"id": "Safe-Balance"}, "id: String should match pattern '^[a-z][a-z0-9_]*$'"),
    ],
)
def test_structural_rules_are_reported_with_their_path(overrides: dict[str, Any], error: str) -> None:
    with pytest.raises(PlaybookError) as caught:
        parse_playbook(minimal(**overrides))
    assert error in caught.value.errors


def test_error_path_keeps_a_field_whose_name_starts_with_function() -> None:
    forms = {"intake": {"fields": {"functional_area": {"type": "choice"}}}}
    with pytest.raises(PlaybookError) as caught:
        parse_playbook(minimal(forms=forms))
    assert caught.value.errors == ["forms.intake.fields.functional_area: a choice field needs 'options'"]


def test_a_hand_off_to_a_missing_playbook_or_without_its_required_fields_is_reported(tmp_path: Path) -> None:
    handoff = {
        "start_lifecycle": {"playbook": "onboarding", "fields": {"company": "deal.company", "nope": "deal.company"}}
    }
    data = minimal(
        deal={"company": {"type": "text"}},
        stages=[
            {"id": "open", "transitions": [{"to": "won", "advance": True}]},
            {"id": "won", "terminal": "won", "on_enter": [handoff]},
        ],
    )
    path = tmp_path / "sales.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_errors(path) == [
        "stages[1].on_enter[0].start_lifecycle.playbook: playbook 'onboarding' cannot be loaded "
        "(cannot read: No such file or directory)"
    ]
    onboarding = minimal(
        id="onboarding", deal={"company": {"type": "text"}, "go_live": {"type": "date", "required": True}}
    )
    (tmp_path / "onboarding.yaml").write_text(yaml.safe_dump(onboarding))
    assert load_errors(path) == [
        "stages[1].on_enter[0].start_lifecycle.fields.nope: playbook 'onboarding' has no deal field 'nope'",
        "stages[1].on_enter[0].start_lifecycle.fields: playbook 'onboarding' requires deal field 'go_live'",
    ]


# --- limits checked at load time ------------------------------------------------------------------------------


def test_a_duration_longer_than_a_century_is_refused_with_its_path() -> None:
    stages = [
        {"id": "open", "deadline": {"within": "200y", "on_expiry": {"to": "done"}}, "transitions": []},
        {"id": "done", "terminal": "won"},
    ]
    with pytest.raises(PlaybookError) as caught:
        parse_playbook(minimal(stages=stages))
    assert caught.value.errors == ["stages[0].deadline.within: 200y is longer than 100 years"]


def test_a_pinned_playbook_with_a_long_duration_still_decodes_so_its_lifecycles_replay() -> None:
    stages = [
        {"id": "open", "deadline": {"within": "200y", "on_expiry": {"to": "done"}}, "transitions": []},
        {"id": "done", "terminal": "won"},
    ]
    assert Playbook.model_validate(minimal(stages=stages)).stages[0].deadline is not None


def test_an_overlong_title_is_refused() -> None:
    with pytest.raises(PlaybookError) as caught:
        parse_playbook(minimal(title="T" * 201))
    assert caught.value.errors == ["title: 201 characters long; at most 200"]


def test_a_role_of_several_addresses_cannot_carry_one_name_or_owner_id() -> None:
    data = minimal(
        deal={"users": {"type": "emails"}, "users_name": {"type": "text"}},
        roles={"users": {"email": "deal.users", "name": "deal.users_name"}},
    )
    with pytest.raises(PlaybookError) as caught:
        parse_playbook(data)
    assert caught.value.errors == [
        "roles.users: a role of several addresses (deal.users is an emails field) has no name or id"
    ]
    assert parse_playbook(minimal(deal={"users": {"type": "emails"}}, roles={"users": {"email": "deal.users"}}))


def test_equal_playbooks_parsed_apart_share_one_copy_and_an_edit_under_the_same_version_does_not() -> None:
    text = SAFE_BALANCE.read_text()
    first, second = (Playbook.model_validate(yaml.safe_load(text)) for _ in range(2))
    assert first is not second and shared(first) is shared(second)
    edited = first.model_copy(update={"title": "Edited without a new version"})
    assert shared(edited) is edited and shared(first) is not edited
