"""Attachments come from `templates/<playbook>/attachments/` and nowhere else: `playbook validate` refuses a path
that leaves the folder (`..`, absolute, a symlink pointing out), and so does the renderer when the email is sent."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from sopflow.config import PROJECT_ROOT
from sopflow.playbook import PlaybookError
from sopflow.playbook_checks import AttachmentRefused, check_references, parse_playbook
from sopflow.templates import TemplateRenderer

SAFE_BALANCE = PROJECT_ROOT / "playbooks" / "safe_balance.yaml"
# Where the contract email sits in safe_balance.yaml, as validation reports it.
CONTRACT_EMAIL = "stages[2].on_enter[0].email"
FOLDER = "templates/safe_balance/attachments/"


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    """A copy of the Safe Balance templates with an attachments folder, next to a secret that is not in it."""
    templates = tmp_path / "templates"
    shutil.copytree(PROJECT_ROOT / "templates" / "safe_balance", templates / "safe_balance")
    attachments = templates / "safe_balance" / "attachments"
    (attachments / "rosters").mkdir(parents=True)
    (attachments / "Terms.pdf").write_bytes(b"%PDF terms")
    (attachments / "rosters" / "Payor Roster.xlsx").write_bytes(b"PK roster")
    (tmp_path / "secret.txt").write_text("not for clients")
    return templates


def attaching(*files: str) -> dict[str, Any]:
    """safe_balance.yaml with the contract email attaching `files`."""
    data: dict[str, Any] = yaml.safe_load(SAFE_BALANCE.read_text())
    data["stages"][2]["on_enter"][0]["email"]["attach"] = [{"file": file} for file in files]
    return data


def errors_of(data: dict[str, Any], templates: Path | None) -> list[str]:
    with pytest.raises(PlaybookError) as refused:
        parse_playbook(data, "safe_balance.yaml", templates)
    return refused.value.errors


@pytest.mark.parametrize(
    "file",
    [
        "../../../../etc/passwd",
        "../../secret.txt",
        "rosters/../../contract_sent/body.txt",  # inside templates/, still outside attachments/
        "/etc/passwd",
        "/tmp",
    ],
)
def test_validation_refuses_an_attachment_path_that_leaves_the_attachments_folder(templates: Path, file: str) -> None:
    assert errors_of(attaching(file), templates) == [f"{CONTRACT_EMAIL}.attach[0].file: {file!r} is outside {FOLDER}"]


def test_validation_refuses_dot_dot_and_absolute_paths_even_without_a_templates_folder() -> None:
    errors = errors_of(attaching("../secret.txt", "/etc/passwd", "Terms.pdf"), None)

    assert errors == [
        f"{CONTRACT_EMAIL}.attach[0].file: '../secret.txt' is outside {FOLDER}",
        f"{CONTRACT_EMAIL}.attach[1].file: '/etc/passwd' is outside {FOLDER}",
    ]


def test_validation_refuses_a_symlink_in_the_attachments_folder_that_points_out_of_it(templates: Path) -> None:
    attachments = templates / "safe_balance" / "attachments"
    (attachments / "Brochure.pdf").symlink_to(templates.parent / "secret.txt")
    (attachments / "shared").symlink_to(templates.parent, target_is_directory=True)

    errors = errors_of(attaching("Brochure.pdf", "shared/secret.txt"), templates)

    assert errors == [
        f"{CONTRACT_EMAIL}.attach[0].file: 'Brochure.pdf' is outside {FOLDER}",
        f"{CONTRACT_EMAIL}.attach[1].file: 'shared/secret.txt' is outside {FOLDER}",
    ]


def test_files_in_the_attachments_folder_its_subfolders_and_links_within_it_are_accepted(templates: Path) -> None:
    attachments = templates / "safe_balance" / "attachments"
    (attachments / "Latest Terms.pdf").symlink_to(attachments / "Terms.pdf")

    playbook = parse_playbook(
        attaching("Terms.pdf", "rosters/Payor Roster.xlsx", "./Latest Terms.pdf"), "safe_balance.yaml", templates
    )

    assert check_references(playbook, templates) == []


def test_an_attachment_that_is_not_a_file_there_is_named(templates: Path) -> None:
    errors = errors_of(attaching("Missing.pdf", "rosters", ""), templates)

    assert errors == [
        f"{CONTRACT_EMAIL}.attach[0].file: 'Missing.pdf' is not a file in {FOLDER}",
        f"{CONTRACT_EMAIL}.attach[1].file: 'rosters' is not a file in {FOLDER}",
        f"{CONTRACT_EMAIL}.attach[2].file: '' is not a file in {FOLDER}",
    ]


@pytest.mark.parametrize(
    ("file", "refusal"),
    [
        ("../../secret.txt", f"'../../secret.txt' is outside {FOLDER}"),
        ("/etc/passwd", f"'/etc/passwd' is outside {FOLDER}"),
        ("Brochure.pdf", f"'Brochure.pdf' is outside {FOLDER}"),  # a symlink to the secret, made after validation
        ("Terms\x00.pdf", "'Terms\\x00.pdf' is not a file name"),
    ],
)
def test_the_renderer_refuses_the_same_paths_when_the_email_is_sent(templates: Path, file: str, refusal: str) -> None:
    (templates / "safe_balance" / "attachments" / "Brochure.pdf").symlink_to(templates.parent / "secret.txt")

    with pytest.raises(AttachmentRefused) as refused:
        TemplateRenderer(templates).attachment_path("safe_balance", file)

    assert str(refused.value) == refusal


def test_the_renderer_gives_the_resolved_file_inside_the_folder(templates: Path) -> None:
    attachments = templates / "safe_balance" / "attachments"
    (attachments / "Latest Terms.pdf").symlink_to(attachments / "Terms.pdf")
    renderer = TemplateRenderer(templates)

    assert renderer.attachment_path("safe_balance", "Latest Terms.pdf") == (attachments / "Terms.pdf").resolve()
    assert renderer.attachment_path("safe_balance", "rosters/Payor Roster.xlsx").read_bytes() == b"PK roster"
