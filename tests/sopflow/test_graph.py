"""Playbook diagrams: every stage and every move is drawn and labelled; no title or condition breaks the syntax."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from sopflow import graph
from sopflow.playbook import Playbook, Stage, Transition
from sopflow.playbook_checks import load_playbook, parse_playbook
from tests.conftest import PLAYBOOKS, TEMPLATES

SHIPPED = sorted(PLAYBOOKS.glob("*.yaml"))
HAS_DOT = shutil.which("dot") is not None
NASTY = 'Say "hi" [x] {y} <b>a|b</b> #1; & `t` \\n %% -->'
# A DOT quoted string, escapes included; what is left outside them is DOT syntax only.
DOT_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
# A Mermaid node or edge label: a quoted string (our escaping leaves no `"` inside one).
MERMAID_LABEL = re.compile(r'"([^"]*)"')


def nasty_playbook() -> Playbook:
    """Titles, conditions and a deadline label full of characters that mean something in Mermaid or DOT."""
    return parse_playbook(
        {
            "id": "nasty",
            "version": 1,
            "title": NASTY,
            "deal": {"x": {"type": "text"}},
            "stages": [
                {
                    "id": "end",  # a Mermaid keyword
                    "title": NASTY,
                    "transitions": [{"to": "style", "when": {"field": "deal.x", "in": ['a|"b"', "<c>"]}}],
                    "deadline": {"label": 'late "<|>"', "within": "14d", "on_expiry": {"to": "lost"}},
                },
                {"id": "style", "title": "back\\slash\nnew line", "transitions": [{"to": "end", "advance": True}]},
                {"id": "lost", "title": NASTY, "terminal": "lost"},
            ],
        }
    )


def mermaid_edges(text: str) -> list[tuple[str, str, str, str]]:
    """(source, arrow, label, target) for each labelled edge."""
    return re.findall(r'^    (\w+) (-->|==>|-\.->)\|"([^"]*)"\| (\w+)$', text, re.M)


def dot_edges(text: str) -> list[tuple[str, str, str]]:
    return re.findall(r'^    "(\w+)" -> "(\w+)" \[label=("(?:[^"\\]|\\.)*")', text, re.M)


def dot_unquote(quoted: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), quoted[1:-1])


def assert_dot_structure(text: str) -> None:
    """Without graphviz: outside quoted strings only ids, arrows, attribute lists and `;` remain, braces balance."""
    bare = DOT_STRING.sub("Q", text)
    assert '"' not in bare
    lines = bare.strip().splitlines()
    assert lines[0] == "digraph Q {" and lines[-1] == "}"
    for line in lines[1:-1]:
        assert re.fullmatch(r"    (graph|node|edge|Q)( -> Q)?( \[\w+=Q(, \w+=Q)*\])?;", line), line


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_stage_and_every_move_of_a_shipped_playbook_is_drawn(path: Path):
    pb = load_playbook(path, TEMPLATES)
    text, dot = graph.mermaid(pb), graph.dot(pb)
    for stage in pb.stages:
        assert re.search(rf"^    {stage.id}(\[|\(\[)\"{re.escape(graph.mermaid_text(stage.name))}", text, re.M)
        assert f"    {graph.dot_string(stage.id)} [label={graph.dot_string(stage.name)[:-1]}" in dot

    expected = []
    for stage in pb.stages:
        for t in stage.transitions:
            expected.append((stage.id, "==>" if t.advance else "-->", t.to))
        if stage.deadline:
            expected.append((stage.id, "-.->", stage.deadline.on_expiry.to))
    expected += [("ANY_OPEN", "-.->", stage.id) for stage in pb.terminal_stages()]
    drawn = mermaid_edges(text)
    assert [(source, arrow, target) for source, arrow, _, target in drawn] == expected
    assert [(source, target) for source, target, _ in dot_edges(dot)] == [(s, t) for s, _, t in expected]
    assert f'    START(["start"]):::pseudo --> {pb.stages[0].id}' in text


def test_each_kind_of_move_is_labelled_by_what_triggers_it(playbook: Callable[[str], Playbook]):
    labels = {
        (source, target): label
        for name in ("safe_balance", "medtrainer_onboarding", "financial_servicing", "health_prime_sales")
        for source, _, label, target in mermaid_edges(graph.mermaid(playbook(name)))
    }
    assert labels["targeting", "contract_request"] == "form targeting"
    assert labels["contract", "prelaunch"] == "event contract_signed when deal.account_manager_email is set"
    assert labels["contract", "assign_account_manager"] == "event contract_signed"
    assert labels["assign_account_manager", "prelaunch"] == "when deal.account_manager_email is set"
    assert labels["contract_expired", "contract"] == "advance"
    assert labels["contract_expired", "closed_expired"] == "expires after 30 days (re-send window closes)"
    assert labels["preparation", "escalated"] == (
        "expires 1 day after deal.onboarding_call_scheduled_for (onboarding call)"
    )
    assert labels["categorisation", "servicing_a"] == "when deal.category = 'A'"
    assert labels["servicing_a", "servicing_b"] == "advance when deal.category = 'B'"
    assert labels["sql", "closed_lost"] == (
        "when deal.lost_reason_category is set and deal.lost_reason_details is set (skips the gate)"
    )
    assert labels["ANY_OPEN", "backed_out"] == "close"


def test_nested_conditions_keep_their_meaning_in_words():
    pb = parse_playbook(
        {
            "id": "p",
            "version": 1,
            "deal": {"n": {"type": "number"}, "s": {"type": "text"}},
            "stages": [
                {
                    "id": "a",
                    "transitions": [
                        {
                            "to": "b",
                            "when": {
                                "all": [
                                    {"field": "deal.n", "gte": 3},
                                    {"any": [{"field": "deal.s", "is_set": False}, {"field": "deal.n", "lt": 1.5}]},
                                    {"not": {"field": "deal.s", "in": ["x", "y"]}},
                                ]
                            },
                        }
                    ],
                },
                {"id": "b", "terminal": "won"},
            ],
        }
    )
    condition = pb.stages[0].transitions[0].when
    assert condition is not None
    assert graph.condition_text(condition) == (
        "deal.n >= 3 and (deal.s is not set or deal.n < 1.5) and not (deal.s in ['x', 'y'])"
    )


def test_special_characters_in_titles_and_conditions_are_escaped_in_mermaid():
    text = graph.mermaid(nasty_playbook())
    labels = MERMAID_LABEL.findall(text.split("flowchart LR\n", 1)[1])
    assert labels, text
    for label in labels:
        without_entities = re.sub(r"#\d+;", "", label.replace("<br/>", ""))
        assert not set(without_entities) & set('"#&<>|;`\\{}'), label
    assert '    S_end["Say #34;hi#34; [x] #123;y#125; #60;b#62;a#124;b#60;/b#62; #35;1#59; #38; #96;t#96;' in text
    assert 'S_style ==>|"advance"| S_end' in text  # a stage named like a keyword is renamed, everywhere
    assert "when deal.x in ['a#124;#34;b#34;', '#60;c#62;']" in text
    assert 'title: "Say \\"hi\\"' in text  # the front matter title is a YAML (JSON) string


def test_special_characters_survive_dot_quoting_unchanged():
    pb = nasty_playbook()
    text = graph.dot(pb)
    assert_dot_structure(text)
    labels = [dot_unquote(label) for _, _, label in dot_edges(text)]
    assert labels == ["when deal.x in ['a|\"b\"', '<c>']", 'expires after 14 days (late "<|>")', "advance", "close"]
    node_labels = re.findall(r'^    "style" \[label=("(?:[^"\\]|\\.)*")', text, re.M)
    assert [dot_unquote(label) for label in node_labels] == ["back\\slash\nnew line"]


@pytest.mark.parametrize("path", [*SHIPPED, None], ids=lambda p: p.stem if p else "nasty")
def test_dot_is_well_formed(path: Path | None, tmp_path: Path):
    pb = load_playbook(path) if path else nasty_playbook()
    text = graph.dot(pb)
    assert_dot_structure(text)
    if HAS_DOT:
        done = subprocess.run(["dot", "-Tsvg"], input=text, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert "<svg" in done.stdout


def test_terminal_stages_are_drawn_apart_and_coloured_by_outcome(safe_balance: Playbook):
    text, dot = graph.mermaid(safe_balance), graph.dot(safe_balance)
    assert '    closed_lost(["Closed lost<br/>ends: lost"]):::ends_lost' in text
    assert '    closed_expired(["Contract expired (closed)<br/>ends: expired"]):::ends_expired' in text
    assert re.search(r"^    classDef ends_lost fill:#\w+,stroke:#\w+", text, re.M)
    assert '    prelaunch["Pre-launch<br/>gate: 1 field, all 5 tasks"]' in text
    lost = next(line for line in dot.splitlines() if line.startswith('    "closed_lost" ['))
    assert 'peripheries="2"' in lost and 'style="rounded,filled"' in lost
    prelaunch = next(line for line in dot.splitlines() if line.startswith('    "prelaunch" ['))
    assert "peripheries" not in prelaunch


def test_a_transition_field_the_graph_does_not_know_still_shows_on_its_edge():
    class FutureTransition(Transition):
        note: str | None = None

    first = Stage(
        id="a",
        transitions=[
            FutureTransition(to="b", advance=True, skip_gate=True, note="x"),
            Transition(to="b", advance=True),
        ],
    )
    pb = Playbook(id="p", version=1, stages=[first, Stage(id="b", terminal="won")])
    assert [move.label for move in graph.moves(pb)] == ["advance (note='x', skips the gate)", "advance", "close"]


def test_a_hand_off_and_appointments_are_noted_on_their_stage(playbook: Callable[[str], Playbook]):
    sales, implementation = playbook("health_prime_sales"), playbook("health_prime_implementation")
    assert "starts: health_prime_implementation" in graph.mermaid(sales)
    assert "appointments: Target go-live" in graph.dot(implementation)
