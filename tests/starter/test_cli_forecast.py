"""`sopflow forecast` as a manager runs it: the real binary. Bad input is one line and exit 1 before anything is
read; the forecast itself reads the records store that rehearsed lifecycles wrote."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import PLAYBOOKS
from tests.starter.conftest import offline_cli


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--weeks", "0"], "--weeks must be between 1 and 520 (got 0)"),
        (["--weeks", "521"], "--weeks must be between 1 and 520 (got 521)"),
        (["--playbook-file", "no_such_playbook.yaml"], "no playbook file no_such_playbook.yaml"),
        (["--chart", "forecast.png"], "--chart writes SVG: name the file with .svg (got forecast.png)"),
    ],
    ids=["no-weeks", "over-ten-years", "unknown-file", "not-svg"],
)
async def test_bad_input_is_one_line_and_exit_1(tmp_path: Path, args: list[str], message: str) -> None:
    cli = offline_cli(tmp_path)
    cli.cwd = tmp_path
    code, stdout, stderr = await cli("forecast", *args)
    assert code == 1
    assert stderr.strip() == f"error: {message}"
    assert stdout == ""


async def test_an_edited_playbook_that_does_not_validate_is_refused_with_the_validators_message(
    tmp_path: Path,
) -> None:
    edited = tmp_path / "safe_balance.yaml"
    text = (PLAYBOOKS / "safe_balance.yaml").read_text()
    edited.write_text(text.replace("every: 14d", "every: fortnightly", 1))
    cli = offline_cli(tmp_path)
    code, _, stderr = await cli("forecast", "--playbook-file", str(edited))
    assert code == 1
    assert len(stderr.strip().splitlines()) == 1
    assert stderr.startswith(f"error: {edited}: ") and "every" in stderr
