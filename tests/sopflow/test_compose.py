"""Email composition: who an email action reaches, resolved from the deal, and what the timeline says of it (roles)."""

from __future__ import annotations

from typing import Any

import pytest

from sopflow.compose import address
from sopflow.conditions import make_context, role_address, role_addresses
from sopflow.engine import Engine
from sopflow.models import CompleteTask, EmailResult, SetFields
from sopflow.playbook import EmailAction, Playbook
from tests.sopflow.conftest import T0

USERS = ["ana@example.com", "ben@example.com", "cy@example.com"]


@pytest.fixture(scope="module")
def onboarding() -> Playbook:
    """A contact role of one address and a users role of several (an `emails` deal field)."""
    return Playbook.model_validate(
        {
            "id": "onboarding",
            "version": 1,
            "roles": {
                "contact": {"email": "deal.contact_email", "name": "deal.contact_name"},
                "users": {"email": "deal.users"},
                "csm": {"email": "deal.csm_email"},
            },
            "deal": {
                "contact_email": {"type": "email"},
                "contact_name": {"type": "text"},
                "users": {"type": "emails"},
                "csm_email": {"type": "email"},
            },
            "stages": [{"id": "open", "owner": "csm", "on_enter": [{"email": {"template": "done", "to": ["users"]}}]}],
        }
    )


def addressed(playbook: Playbook, deal: dict[str, Any], **action: Any):
    return address(playbook, make_context(playbook, deal, {}), EmailAction.model_validate(action))


def test_a_role_of_several_addresses_is_one_recipient_per_address(onboarding: Playbook) -> None:
    result = addressed(onboarding, {"users": USERS, "csm_email": "csm@example.com"}, template="t", to=["users"])
    assert [(r.role, r.email) for r in result.to] == [("users", email) for email in USERS]
    assert result.missing == []


def test_the_timeline_names_each_role_once_and_never_an_address(onboarding: Playbook) -> None:
    deal = {"users": USERS, "csm_email": "csm@example.com"}
    detail = addressed(onboarding, deal, template="done", to=["users"], cc=["csm"]).detail("done")
    assert (detail.to, detail.cc) == (["users"], ["csm"])
    assert "@" not in detail.model_dump_json()


def test_an_address_already_reached_through_another_role_is_not_repeated(onboarding: Playbook) -> None:
    deal = {"contact_email": "ben@example.com", "users": USERS}
    result = addressed(onboarding, deal, template="t", to=["contact", "users"])
    assert [r.email for r in result.to] == ["ben@example.com", "ana@example.com", "cy@example.com"]
    assert [r.role for r in result.to] == ["contact", "users", "users"]


def test_a_role_whose_list_is_empty_or_unset_is_named_missing(onboarding: Playbook) -> None:
    deals: list[dict[str, Any]] = [{}, {"users": []}, {"users": None}]
    for deal in deals:
        result = addressed(onboarding, {**deal, "csm_email": "csm@example.com"}, template="t", to=["users", "csm"])
        assert result.missing == ["users"] and [r.role for r in result.to] == ["csm"]


def test_the_reply_to_of_a_role_of_several_addresses_is_its_first(onboarding: Playbook) -> None:
    result = addressed(onboarding, {"users": USERS, "csm_email": "csm@example.com"}, template="t", to=["csm"])
    assert result.reply_to is None
    result = addressed(onboarding, {"users": USERS}, template="t", to=["users"], from_role="users")
    assert result.reply_to is not None and result.reply_to.email == USERS[0]


def test_a_role_of_one_address_is_addressed_as_before(onboarding: Playbook) -> None:
    deal = {"contact_email": "contact@example.com", "contact_name": "Client Contact"}
    result = addressed(onboarding, deal, template="t", to=["contact"])
    assert [(r.role, r.email, r.name) for r in result.to] == [("contact", "contact@example.com", "Client Contact")]


def test_role_addresses_lists_each_address_and_role_address_joins_them_for_display(onboarding: Playbook) -> None:
    ctx = make_context(onboarding, {"users": USERS, "contact_email": "contact@example.com"}, {})
    assert role_addresses(onboarding, ctx, "users") == USERS
    assert role_addresses(onboarding, ctx, "contact") == ["contact@example.com"]
    assert role_addresses(onboarding, ctx, "csm") == []
    assert role_address(onboarding, ctx, "users") == (", ".join(USERS), None)


def test_an_address_that_already_has_the_email_is_skipped_whatever_its_case(onboarding: Playbook) -> None:
    ctx = make_context(onboarding, {"users": USERS}, {})
    result = address(onboarding, ctx, EmailAction(template="t", to=["users"]), skip=["ANA@example.com"])
    assert [r.email for r in result.to] == USERS[1:]


def test_a_user_who_bounced_gets_the_email_again_once_corrected_and_the_others_do_not(onboarding: Playbook) -> None:
    deal = {"users": USERS, "csm_email": "csm@example.com"}
    engine = Engine.start(onboarding, "D-1", deal, T0, "deal-D-1")
    step = next(step for step in engine.take_steps() if step.email is not None)
    result = EmailResult(status="partial", subject="Done", message_id="<m>", refused=["ben@example.com"])
    engine.email_sent(step, result, True)
    engine.take_steps()

    corrected = ["ana@example.com", "benjamin@example.com", "cy@example.com"]
    engine.set_fields(SetFields(fields={"users": corrected}), T0)
    engine.complete_task(CompleteTask(task="fix_email_done"), T0)
    (resent,) = [step.email for step in engine.take_steps() if step.email is not None]
    assert [r.email for r in resent.to] == ["benjamin@example.com"]


def test_a_resend_with_nobody_left_to_reach_is_journaled_as_skipped_saying_so(onboarding: Playbook) -> None:
    engine = Engine.start(onboarding, "D-1", {"users": USERS, "csm_email": "csm@example.com"}, T0, "deal-D-1")
    step = next(step for step in engine.take_steps() if step.email is not None)
    engine.email_sent(step, EmailResult(status="partial", subject="D", message_id="<m>", refused=[USERS[1]]), True)
    engine.take_steps()

    engine.set_fields(SetFields(fields={"users": [USERS[0], USERS[2]]}), T0)  # the bounced user left the list
    engine.complete_task(CompleteTask(task="fix_email_done"), T0)
    (skipped,) = [step.entry for step in engine.take_steps() if step.entry.kind == "email"]
    assert (skipped.detail["status"], skipped.detail["reason"]) == ("skipped", "every recipient has it")
