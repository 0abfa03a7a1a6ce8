"""`sopflow`: the staff CLI, shaped like the `temporal` CLI.

The rule: nouns are groups, verbs act on them; services are top-level. `sopflow deal status D-1`, `sopflow deal
close D-2 lost --reason …`, `sopflow playbook migrate P --to-version 2`: the noun (deal, form, task, playbook, mail,
template, db, report, staff, digest) is a group, the verb acts on one of its things, named by the first argument.
What runs the system (`dev`, `worker`, `intake`, `codec-server`) and `rehearse`, which brings its own server, are
commands of their own, and so is `tasks`, the day's work queue (also `task list`). Spellings from before this rule
still work for one release, hidden (aliases.py).

Every command that prints data takes `-o text|json|jsonl|csv`; every command that talks to Temporal takes
`--address`, `--namespace` and `--profile` over TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE and TEMPORAL_PROFILE. Every
failure a person can cause (a rejected move, a typo in a field, no server running) prints one readable line and exits
1; tracebacks are for bugs only.
"""

from __future__ import annotations

import importlib
import os
import sys

from starter.cli.apps import app

# One module per noun adds its commands to `app` when imported, in the order `sopflow --help` lists them; the
# hidden old spellings come last.
COMMANDS = (
    "stack",
    "rehearsal",
    "deals",
    "deal_changes",
    "forms",
    "tasks",
    "playbooks",
    "mail",
    "templates",
    "reports",
    "forecast",
    "staff",
    "digest",
    "aliases",
)
for _module in COMMANDS:
    importlib.import_module(f"starter.cli.{_module}")


def main() -> None:
    """Entry point. Exits with `os._exit`: the SDK's native runtime can crash while the interpreter shuts down
    (sdk-python #300, seen here as a SIGSEGV after a successful command), which would turn success into failure."""
    code = 0
    try:
        app()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
