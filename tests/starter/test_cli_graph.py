"""`sopflow playbook graph` as a user runs it: the real binary, with and without graphviz on PATH (no server needed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sopflow import graph
from sopflow.playbook_checks import load_playbook
from tests.conftest import PLAYBOOKS
from tests.starter.conftest import Cli, offline_cli

needs_graphviz = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz (dot) is not installed")


def cli_without_graphviz(tmp_path: Path, fake_dot: str | None = None) -> Cli:
    """The CLI run from `tmp_path/work` with a PATH holding no `dot` (or only `fake_dot`, a shell script body)."""
    cli = offline_cli(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if fake_dot is not None:
        script = bin_dir / "dot"
        script.write_text(f"#!/bin/sh\n{fake_dot}\n")
        script.chmod(0o755)
    cli.env["PATH"] = str(bin_dir)
    cli.cwd = tmp_path / "work"
    cli.cwd.mkdir()
    return cli


async def test_graph_writes_mermaid_named_after_the_playbook_in_the_current_folder(tmp_path: Path):
    cli = cli_without_graphviz(tmp_path)
    assert (await cli.ok("playbook", "graph", "safe_balance")) == "safe_balance.mmd\n"
    expected = graph.mermaid(load_playbook(PLAYBOOKS / "safe_balance.yaml"))
    assert (tmp_path / "work" / "safe_balance.mmd").read_text() == expected
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["safe_balance.mmd"]


async def test_graph_accepts_a_playbook_path_and_writes_where_o_says(tmp_path: Path):
    cli = cli_without_graphviz(tmp_path)
    into_folder = await cli.ok("playbook", "graph", str(PLAYBOOKS / "radio_onboarding.yaml"), "-o", str(tmp_path))
    assert into_folder == f"{tmp_path / 'radio_onboarding.mmd'}\n"
    named = tmp_path / "diagram.mmd"
    assert await cli.ok("playbook", "graph", "radio_onboarding", "-o", str(named)) == f"{named}\n"
    assert named.read_text() == (tmp_path / "radio_onboarding.mmd").read_text()
    assert named.read_text().startswith('---\ntitle: "Radio station onboarding (radio_onboarding v3)"\n')


async def test_graph_to_stdout_prints_only_the_mermaid_text(tmp_path: Path):
    cli = cli_without_graphviz(tmp_path)
    stdout = await cli.ok("playbook", "graph", "medtrainer_onboarding", "-o", "-")
    assert stdout == graph.mermaid(load_playbook(PLAYBOOKS / "medtrainer_onboarding.yaml"))
    assert list((tmp_path / "work").iterdir()) == []


async def test_graph_of_an_unknown_playbook_is_one_line_and_exit_1(tmp_path: Path):
    cli = cli_without_graphviz(tmp_path)
    code, stdout, stderr = await cli("playbook", "graph", "no_such_playbook")
    assert code == 1 and stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no playbook 'no_such_playbook' (playbooks: ")


async def test_svg_without_graphviz_is_one_line_and_exit_1_and_the_mermaid_is_still_written(tmp_path: Path):
    cli = cli_without_graphviz(tmp_path)
    code, stdout, stderr = await cli("playbook", "graph", "safe_balance", "--format", "svg")
    assert code == 1 and stdout == "safe_balance.mmd\n"
    assert stderr.strip().splitlines() == [
        "error: graphviz is not installed (no `dot` on PATH), so no svg was written; install graphviz"
    ]
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["safe_balance.mmd"]


async def test_an_image_cannot_go_to_stdout_or_over_the_mermaid_file(tmp_path: Path):
    cli = cli_without_graphviz(tmp_path)
    code, stdout, stderr = await cli("playbook", "graph", "safe_balance", "-o", "-", "--format", "png")
    assert code == 1 and stdout == ""
    assert stderr.strip().splitlines() == ["error: -o - prints Mermaid only: give -o a file to write png next to it"]
    code, _, stderr = await cli("playbook", "graph", "safe_balance", "-o", "flow.svg", "--format", "svg")
    assert code == 1 and len(stderr.strip().splitlines()) == 1 and "e.g. flow.mmd" in stderr
    assert list((tmp_path / "work").iterdir()) == []


async def test_a_failing_dot_is_one_line_naming_its_error_and_exit_1(tmp_path: Path):
    cli = cli_without_graphviz(tmp_path, fake_dot='echo "Warning: ignore me" >&2; echo "Error: boom" >&2; exit 3')
    code, stdout, stderr = await cli("playbook", "graph", "safe_balance")
    assert code == 1 and stdout == "safe_balance.mmd\n"
    assert stderr.strip().splitlines() == ["error: graphviz `dot` failed to write safe_balance.svg: Error: boom"]


@needs_graphviz
async def test_with_graphviz_the_graph_is_also_an_svg_or_the_png_asked_for(tmp_path: Path):
    cli = offline_cli(tmp_path)
    cli.cwd = tmp_path
    assert await cli.ok("playbook", "graph", "health_prime_sales") == "health_prime_sales.mmd\nhealth_prime_sales.svg\n"
    svg = (tmp_path / "health_prime_sales.svg").read_text()
    assert "<svg" in svg and "Partner of Choice" in svg and "Backed out after signing" in svg

    out = tmp_path / "diagrams" / "sales.mmd"
    out.parent.mkdir()
    assert await cli.ok("playbook", "graph", "health_prime_sales", "-o", str(out), "--format", "png") == (
        f"{out}\n{out.with_suffix('.png')}\n"
    )
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    assert (
        await cli.ok("playbook", "graph", "financial_servicing", "--format", "mermaid") == "financial_servicing.mmd\n"
    )
    assert not (tmp_path / "financial_servicing.svg").exists()


@pytest.mark.parametrize("playbook", sorted(p.stem for p in PLAYBOOKS.glob("*.yaml")))
async def test_show_outlines_every_stage_and_move_uncut_in_an_80_column_terminal(playbook: str, tmp_path: Path):
    cli = offline_cli(tmp_path)
    cli.env["COLUMNS"] = "80"
    text = await cli.ok("playbook", "show", playbook)
    assert "…" not in text
    # Rich wraps at spaces under each tree branch: undo the wrapping and the tree guides, then read it as prose.
    unwrapped = " ".join(" ".join(line.strip(" │├└─") for line in text.splitlines()).split())
    pb = load_playbook(PLAYBOOKS / f"{playbook}.yaml")
    for stage in pb.stages:
        assert f"{stage.id} {stage.title}" in unwrapped
    for move in graph.moves(pb):
        if move.source is not None:
            assert f"→ {move.target} {move.label}" in unwrapped
    closes = ", ".join(stage.id for stage in pb.terminal_stages())
    assert f"close, from any open stage → {closes}" in unwrapped
    for check in (check for stage in pb.terminal_stages() for check in stage.close_checks):
        assert f"close check: {' '.join(check.message.split())}" in unwrapped
