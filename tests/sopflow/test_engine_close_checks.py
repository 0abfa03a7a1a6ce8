"""`close_checks`: a terminal stage that an SOP allows only under a condition ("Deals Backed out *after a Contract
is signed*") refuses a close that does not meet it, in one line naming why, and changes nothing."""

from __future__ import annotations

from typing import Any

import pytest

from sopflow.engine import Engine
from sopflow.errors import Rejected
from sopflow.models import Close, SetFields
from sopflow.playbook import Playbook, PlaybookError
from sopflow.playbook_checks import parse_playbook
from tests.sopflow.conftest import T0

SIGNED = {"field": "deal.contract", "equals": "signed"}
NOT_SIGNED = "the contract is not signed: close it as lost"


def sales(**backed_out: Any) -> dict[str, Any]:
    return {
        "id": "mini_sales",
        "version": 1,
        "deal": {
            "contract": {"type": "choice", "options": ["sent", "signed"]},
            "why": {"type": "text"},
        },
        "stages": [
            {"id": "open", "transitions": [{"to": "won", "advance": True}]},
            {"id": "won", "terminal": "won"},
            {"id": "lost", "terminal": "lost"},
            {"id": "backed_out", "terminal": "cancelled", "reason_fields": ["why"], **backed_out},
        ],
    }


@pytest.fixture(scope="module")
def playbook() -> Playbook:
    return parse_playbook(sales(close_checks=[{"condition": SIGNED, "message": NOT_SIGNED}]))


def opened(playbook: Playbook, **fields: Any) -> Engine:
    engine = Engine.start(playbook, "D-1", fields, T0, "deal-D-1")
    engine.take_steps()
    return engine


def test_a_close_that_fails_a_close_check_is_refused_in_one_line_naming_the_check(playbook: Playbook) -> None:
    engine = opened(playbook, contract="sent")
    close = Close(outcome="cancelled", reason="bad fit", fields={"why": "bad fit"})

    with pytest.raises(Rejected) as refused:
        engine.close(close, T0)

    assert str(refused.value) == f"cannot close as cancelled into 'backed_out': {NOT_SIGNED}"
    assert "\n" not in str(refused.value)
    assert (engine.state.stage, engine.state.outcome, engine.closed) == ("open", None, False)
    assert "why" not in engine.state.fields  # all or nothing: the close's own fields are not kept either
    assert engine.take_steps() == []


def test_an_unset_field_fails_the_check_like_a_different_value(playbook: Playbook) -> None:
    with pytest.raises(Rejected, match="the contract is not signed"):
        opened(playbook).check_close(Close(outcome="cancelled", reason="x", fields={"why": "x"}))


def test_the_close_is_accepted_once_the_deal_meets_the_check(playbook: Playbook) -> None:
    engine = opened(playbook, contract="sent")
    engine.set_fields(SetFields(fields={"contract": "signed"}), T0)

    engine.close(Close(outcome="cancelled", reason="bad fit", fields={"why": "bad fit"}), T0)

    assert (engine.state.stage, engine.state.outcome) == ("backed_out", "cancelled")


def test_a_value_given_with_the_close_itself_counts_like_reason_fields(playbook: Playbook) -> None:
    engine = opened(playbook)
    engine.close(Close(outcome="cancelled", reason="x", fields={"why": "x", "contract": "signed"}), T0)
    assert engine.state.stage == "backed_out" and engine.state.fields["contract"] == "signed"


def test_other_terminal_stages_are_not_held_by_another_stages_checks(playbook: Playbook) -> None:
    engine = opened(playbook, contract="sent")
    engine.close(Close(outcome="lost", reason="went elsewhere"), T0)
    assert engine.state.stage == "lost"


def test_missing_reason_fields_are_named_before_the_checks(playbook: Playbook) -> None:
    with pytest.raises(Rejected, match=r"^closing as cancelled needs deal fields: why$"):
        opened(playbook).check_close(Close(outcome="cancelled", reason="x"))


def test_a_close_check_on_an_unknown_field_is_reported_with_its_path() -> None:
    unknown = [{"condition": {"field": "deal.nope", "is_set": True}, "message": "m"}]
    with pytest.raises(PlaybookError) as caught:
        parse_playbook(sales(close_checks=unknown))
    assert [e for e in caught.value.errors if e.startswith("stages[3].close_checks[0].condition")], caught.value.errors


def test_close_checks_belong_on_terminal_stages_only() -> None:
    data = sales()
    data["stages"][0]["close_checks"] = [{"condition": SIGNED, "message": "m"}]
    with pytest.raises(PlaybookError) as caught:
        parse_playbook(data)
    assert caught.value.errors == ["stages[0].close_checks: only a terminal stage is closed into"]
