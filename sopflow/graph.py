"""A playbook drawn as a graph of stages and the moves between them, for SOP authors to check against the SOP.

Every way a client can leave a stage is drawn, labelled the way the playbook says it: a `when` condition, a form or an
event, a staff `advance`, a deadline expiring, and a close (allowed from any open stage into any terminal stage).
`moves` is the one description of those; `mermaid` and `dot` only lay it out, and `sopflow playbook show` prints it.

Only fields this module knows are read, and a transition field it does not know (a flag added to the schema later)
still shows on its edge, so a newer playbook never breaks the drawing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from sopflow.playbook import Condition, Playbook, Stage, Transition

# How a move happens: by itself once the gate is met (when/form/event), by staff, by a deadline, or by a close.
MoveKind = Literal["auto", "advance", "deadline", "close"]

# Pseudo-nodes. Stage ids are lower case, so these upper-case ids can never collide with a stage.
START = "START"
ANY_OPEN = "ANY_OPEN"

_KNOWN_TRANSITION_FIELDS = {"to", "advance", "form", "event", "when", "skip_gate"}
_OPERATORS = {"equals": "=", "in_": "in", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_OUTCOME_COLOURS = {
    "won": ("#dcfce7", "#15803d"),
    "lost": ("#fee2e2", "#b91c1c"),
    "expired": ("#fef3c7", "#b45309"),
    "cancelled": ("#e5e7eb", "#4b5563"),
}
_DEFAULT_COLOURS = ("#f3f4f6", "#374151")


@dataclass(frozen=True)
class Move:
    """One edge: `source` None means any open stage (a close can happen anywhere before the end)."""

    source: str | None
    target: str
    kind: MoveKind
    label: str


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # `gt: 3` is stored as 3.0; print it as the author wrote it
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    return str(value)


def condition_text(cond: Condition) -> str:
    """A condition as a person reads it (`deal.category = 'A'`); operators added later still print by name."""
    if cond.field is not None:
        for name in sorted(cond.model_fields_set - {"field"}):
            value = getattr(cond, name)
            if name == "is_set":
                return f"{cond.field} {'is set' if value else 'is not set'}"
            return f"{cond.field} {_OPERATORS.get(name, name.rstrip('_'))} {_value(value)}"
        return cond.field
    if cond.not_ is not None:
        return f"not ({condition_text(cond.not_)})"
    parts, joiner = (cond.all, " and ") if cond.all is not None else (cond.any or [], " or ")
    # A nested all/any is bracketed so "a and (b or c)" keeps its meaning; a lone child needs no brackets.
    return joiner.join(
        f"({condition_text(part)})"
        if part.field is None and part.not_ is None and len(parts) > 1
        else condition_text(part)
        for part in parts
    )


def _extras(transition: Transition) -> list[str]:
    """Transition fields this module does not know (a flag added later), so the drawing still shows them."""
    extras = []
    for name in sorted(transition.model_fields_set - _KNOWN_TRANSITION_FIELDS):
        value = getattr(transition, name, None)
        if value is True:
            extras.append(name)
        elif value not in (False, None):
            extras.append(f"{name}={_value(value)}")
    return extras


def transition_label(transition: Transition) -> str:
    if transition.advance:
        trigger = "advance"
    elif transition.form is not None:
        trigger = f"form {transition.form}"
    elif transition.event is not None:
        trigger = f"event {transition.event}"
    else:
        trigger = ""
    when = f"when {condition_text(transition.when)}" if transition.when is not None else ""
    label = f"{trigger} {when}".strip()
    extras = _extras(transition) + (["skips the gate"] if transition.skip_gate else [])
    return f"{label} ({', '.join(extras)})" if extras else label


def moves(playbook: Playbook) -> list[Move]:
    """Every move in playbook order: each stage's transitions, then its deadline; closes last."""
    found: list[Move] = []
    for stage in playbook.stages:
        for transition in stage.transitions:
            kind: MoveKind = "advance" if transition.advance else "auto"
            found.append(Move(stage.id, transition.to, kind, transition_label(transition)))
        if stage.deadline is not None:
            deadline = stage.deadline
            within = deadline.within.words
            when = f"after {within}" if deadline.from_ is None else f"{within} after {deadline.from_}"
            label = f"expires {when}" + (f" ({deadline.label})" if deadline.label != "deadline" else "")
            found.append(Move(stage.id, deadline.on_expiry.to, "deadline", label))
    # The engine lets staff close an open deal into any terminal stage, whatever stage it is in.
    found += [Move(None, stage.id, "close", "close") for stage in playbook.terminal_stages()]
    return found


def gate_summary(stage: Stage) -> str:
    """What the gate asks for, counted: detail belongs in the playbook, the drawing only says a gate is there."""
    gate = stage.gate

    def count(n: int, noun: str) -> str:
        return f"{n} {noun}{'' if n == 1 else 's'}"

    tasks = len(stage.tasks) if gate.tasks == "all" else len(gate.tasks)
    parts = [
        count(len(gate.forms), "form") if gate.forms else "",
        count(len(gate.fields), "field") if gate.fields else "",
        ("all " if gate.tasks == "all" and tasks > 1 else "") + count(tasks, "task") if tasks else "",
        count(len(gate.checks), "check") if gate.checks else "",
    ]
    return ", ".join(part for part in parts if part)


def _notes(stage: Stage) -> list[str]:
    notes = []
    if stage.terminal:
        notes.append(f"ends: {stage.terminal}")
    if summary := gate_summary(stage):
        notes.append(f"gate: {summary}")
    if stage.cadence is not None:
        notes.append(f"cadence: {stage.cadence.label}")
    if stage.appointments:
        notes.append("appointments: " + ", ".join(a.label for a in stage.appointments))
    # A hand-off leaves this playbook: named, since the linked lifecycle is drawn by its own playbook's graph.
    handoffs = [a.start_lifecycle.playbook for a in stage.on_enter if a.start_lifecycle is not None]
    if handoffs:
        notes.append("starts: " + ", ".join(handoffs))
    return notes


def _css_class(outcome: str) -> str:
    return "ends_" + re.sub(r"\W", "_", outcome)


# --- Mermaid --------------------------------------------------------------------------------------------------------

# Words the Mermaid flowchart parser reads as statements when they start a line or stand as a node id.
_MERMAID_KEYWORDS = {
    "end", "graph", "flowchart", "subgraph", "style", "linkstyle", "classdef", "class", "click", "call", "href",
    "direction", "default", "interpolate",
}  # fmt: skip
# Inside a quoted Mermaid label these still break the parse or turn into HTML/markdown; they go as `#<code>;` entities.
_MERMAID_UNSAFE = re.compile(r"[\"#&<>|;`\\{}\x00-\x1f\x7f]")


def _mermaid_id(node: str) -> str:
    # Upper case never occurs in a stage id, so the renamed keyword cannot collide with another stage.
    return f"S_{node}" if node in _MERMAID_KEYWORDS else node


def mermaid_text(text: str) -> str:
    return _MERMAID_UNSAFE.sub(lambda m: f"#{ord(m.group())};", text)


def _mermaid_label(lines: Iterable[str]) -> str:
    return '"' + "<br/>".join(mermaid_text(line) for line in lines) + '"'


def mermaid(playbook: Playbook) -> str:
    """A `flowchart LR`: renders on GitHub and in any Markdown with Mermaid, so a diagram can sit next to the SOP."""
    arrows = {"auto": "-->", "advance": "==>", "deadline": "-.->", "close": "-.->"}
    title = f"{playbook.title or playbook.id} ({playbook.id} v{playbook.version})"
    lines = ["---", f"title: {json.dumps(title)}", "---", "flowchart LR"]
    lines.append(f'    {START}(["start"]):::pseudo --> {_mermaid_id(playbook.stages[0].id)}')
    for stage in playbook.stages:
        label = _mermaid_label([stage.name, *_notes(stage)])
        if stage.terminal:
            lines.append(f"    {_mermaid_id(stage.id)}([{label}]):::{_css_class(stage.terminal)}")
        else:
            lines.append(f"    {_mermaid_id(stage.id)}[{label}]")
    all_moves = moves(playbook)
    if any(move.kind == "close" for move in all_moves):
        lines.append(f'    {ANY_OPEN}(["any open stage"]):::pseudo')
    for move in all_moves:
        source = _mermaid_id(move.source) if move.source is not None else ANY_OPEN
        label = _mermaid_label([move.label])
        lines.append(f"    {source} {arrows[move.kind]}|{label}| {_mermaid_id(move.target)}")
    lines.append("    classDef pseudo fill:none,stroke:#9ca3af,stroke-dasharray:4 3,color:#6b7280")
    for outcome in sorted({stage.terminal for stage in playbook.terminal_stages() if stage.terminal}):
        fill, stroke = _OUTCOME_COLOURS.get(outcome, _DEFAULT_COLOURS)
        lines.append(f"    classDef {_css_class(outcome)} fill:{fill},stroke:{stroke},stroke-width:2px")
    return "\n".join(lines) + "\n"


# --- Graphviz DOT ---------------------------------------------------------------------------------------------------


def dot_string(text: str) -> str:
    """A DOT quoted string. Backslashes are doubled so `\\n`, `\\N`, `\\G` in a title stay text, not DOT escapes."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "\\n")
    return f'"{escaped}"'


def _dot_attrs(**attrs: str) -> str:
    return "[" + ", ".join(f"{key}={dot_string(value)}" for key, value in attrs.items()) + "]"


def dot(playbook: Playbook) -> str:
    """Graphviz DOT, for an SVG or PNG where Mermaid is not rendered (a wiki page, a printed SOP)."""
    title = f"{playbook.title or playbook.id} ({playbook.id} v{playbook.version})"
    edge_style = {"auto": "solid", "advance": "bold", "deadline": "dashed", "close": "dotted"}
    lines = [
        f"digraph {dot_string(playbook.id)} {{",
        f"    graph {_dot_attrs(rankdir='LR', label=title, labelloc='t', fontname='Helvetica')};",
        f"    node {_dot_attrs(shape='box', style='rounded', fontname='Helvetica')};",
        f"    edge {_dot_attrs(fontname='Helvetica', fontsize='10')};",
        f"    {dot_string(START)} {_dot_attrs(label='start', shape='oval', style='dashed', color='#9ca3af')};",
        f"    {dot_string(START)} -> {dot_string(playbook.stages[0].id)};",
    ]
    for stage in playbook.stages:
        label = "\n".join([stage.name, *_notes(stage)])
        if stage.terminal:
            fill, stroke = _OUTCOME_COLOURS.get(stage.terminal, _DEFAULT_COLOURS)
            attrs = _dot_attrs(label=label, style="rounded,filled", peripheries="2", fillcolor=fill, color=stroke)
        else:
            attrs = _dot_attrs(label=label)
        lines.append(f"    {dot_string(stage.id)} {attrs};")
    all_moves = moves(playbook)
    if any(move.kind == "close" for move in all_moves):
        lines.append(
            f"    {dot_string(ANY_OPEN)} {_dot_attrs(label='any open stage', style='dashed', color='#9ca3af')};"
        )
    for move in all_moves:
        source = dot_string(move.source if move.source is not None else ANY_OPEN)
        attrs = _dot_attrs(label=move.label, style=edge_style[move.kind])
        lines.append(f"    {source} -> {dot_string(move.target)} {attrs};")
    lines.append("}")
    return "\n".join(lines) + "\n"
