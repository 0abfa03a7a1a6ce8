"""`sopflow`: the staff CLI. Shaped like the `temporal` CLI: nouns and verbs, `-o json` for scripts.

Every failure a person can cause (a rejected move, a typo in a field, no server running) prints one readable line
and exits 1; tracebacks are for bugs only.
"""

from __future__ import annotations

import importlib
import os
import sys

from starter.cli.apps import app

# One module per noun adds its commands to `app` when imported, in the order `sopflow --help` lists them.
COMMANDS = ("stack", "deals", "rehearsal", "forms", "tasks", "playbooks", "mail", "templates", "reports")
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
