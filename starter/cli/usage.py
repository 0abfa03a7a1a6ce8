"""How `--help` and usage lines name parameters: `DEAL_ID`, `KEY=VALUE`, `TEXT`, `[text|json]`, as CLIs usually do.

Typer 0.29 renders every parameter's type as `<str>` / `<list[str]>` / `<bool>` and a required argument as
`{deal_id}` in the usage line, and has no setting to change it: the labels come from its parameter classes. So every
sopflow command and group is built from the classes below (`apps.Commands` makes them the default), which give each
parameter a metavar before help or usage is rendered: an explicit `metavar=` wins, otherwise a label derived from
the type (the names click uses). A flag shows no type at all.
"""

from __future__ import annotations

from typer._click import Context, Parameter
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

# Typer's type names (`display_type`, without the angle brackets) -> the label shown instead.
_LABELS = {
    "str": "TEXT",
    "int": "INTEGER",
    "float": "NUMBER",
    "bool": "BOOLEAN",
    "path": "PATH",
    "file": "FILE",
    "directory": "DIRECTORY",
}


def type_label(param: TyperArgument | TyperOption, ctx: Context) -> str:
    """`TEXT`, `INTEGER`, `[a|b]` for a choice: what a value of this parameter looks like."""
    label = param.display_type(ctx).strip("<>")
    if label.startswith("list[") and label.endswith("]"):
        label = label[len("list[") : -1]
    label = label.removesuffix(" range")  # typer appends the range itself ("[x>=1]")
    if label in _LABELS:
        return _LABELS[label]
    return f"[{label}]" if "|" in label else label.upper()


class LabelledArgument(TyperArgument):
    """An argument named by its metavar everywhere: `DEAL_ID` in the usage line (`[NAME]` when optional), and its
    value's label, not `<str>`, in the help table."""

    def display_type_rich(self, ctx: Context) -> str | None:
        return type_label(self, ctx)

    def get_usage_pieces(self, ctx: Context) -> list[str]:
        name = self.display_name_raw
        name = name if self.required else f"[{name}]"
        return [f"{name}..." if self.nargs != 1 else name]


def label(param: Parameter, ctx: Context) -> None:
    """Give `param` a metavar (once): its own, its upper-cased name for an argument, none for a flag."""
    if isinstance(param, TyperArgument):
        if type(param) is TyperArgument:
            param.__class__ = LabelledArgument  # same object, two display methods overridden
        if param.metavar is None:
            param.metavar = (param.name or "value").upper()
    elif isinstance(param, TyperOption) and param.metavar is None:
        param.metavar = "" if param.is_flag or param.count else type_label(param, ctx)


class _Labelled:
    """Labels a command's parameters (its help option and typer's completion options included) when they are read:
    for help, for the usage line of an error, for parsing."""

    def get_params(self, ctx: Context) -> list[Parameter]:
        params: list[Parameter] = super().get_params(ctx)  # type: ignore[misc]  # a mixin: super() is the command
        for param in params:
            label(param, ctx)
        return params


class LabelledCommand(_Labelled, TyperCommand):
    pass


class LabelledGroup(_Labelled, TyperGroup):
    pass
