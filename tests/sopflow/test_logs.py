"""`sopflow.logs`: JSON lines with allow-listed fields, and no address or form token in any line."""

from __future__ import annotations

import io
import logging
import time
from typing import Any

import pytest
from temporalio import activity, workflow

from sopflow.logs import FIELD_ITEMS, MESSAGE_LIMIT, configure_logging, redact
from tests.conftest import json_lines


def test_json_lines_carry_ts_level_logger_message_and_only_allow_listed_fields(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    extra = {"deal_id": "D-1", "template": "account_claimed", "outcome": "sent", "email": "a@b.example", "signer": "X"}
    logging.getLogger("sopflow.test").info("email %s %s", "account_claimed", "sent", extra=extra)

    (line,) = json_lines(stream)
    assert set(line) == {"ts", "level", "logger", "message", "deal_id", "template", "outcome"}
    assert line["level"] == "INFO" and line["logger"] == "sopflow.test"
    assert line["message"] == "email account_claimed sent"
    assert line["ts"].endswith("+00:00")


def test_email_addresses_are_redacted_from_messages_and_tracebacks(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    log = logging.getLogger("sopflow.test")
    try:
        raise RuntimeError("no recipient accepted the email: signer@example.com: 550 no such user")
    except RuntimeError:
        log.exception("refused %s", "rep@example.com")

    (line,) = json_lines(stream)
    assert line["message"] == "refused <email>"
    assert "RuntimeError: no recipient accepted the email: <email>: 550" in line["exc"]
    assert "@" not in stream.getvalue()


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_access_lines_lose_the_query_string_and_the_client_address(restore_logging: None, log_format: Any) -> None:
    stream = io.StringIO()
    configure_logging(log_format, stream=stream)
    args = ("203.0.113.9:5000", "POST", "/forms/D-1/site_visit?token=abc123", "1.1", 200)
    logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', *args)

    output = stream.getvalue()
    assert "POST /forms/D-1/site_visit 200" in output
    assert "abc123" not in output and "203.0.113.9" not in output
    if log_format == "json":
        (line,) = json_lines(stream)
        assert (line["method"], line["path"], line["status"]) == ("POST", "/forms/D-1/site_visit", 200)


def test_json_takes_the_sdk_context_as_fields_instead_of_appending_it_to_the_message(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    assert not workflow.logger.workflow_info_on_message and not activity.logger.activity_info_on_message
    context = {"workflow_id": "deal-D-1", "run_id": "r1", "workflow_type": "ClientLifecycle", "attempt": 1}
    logging.getLogger("temporalio.workflow").info("stage a -> b", extra={"temporal_workflow": context})

    (line,) = json_lines(stream)
    assert line["workflow_id"] == "deal-D-1" and line["run_id"] == "r1" and line["workflow_type"] == "ClientLifecycle"
    assert "temporal_workflow" not in line


def test_text_keeps_the_sdk_context_on_the_message_and_quietens_sdk_internals(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("text", stream=stream)
    assert workflow.logger.workflow_info_on_message
    logging.getLogger("temporalio.worker._workflow").info("internal detail")
    logging.getLogger("temporalio.activity").info("our activity line")
    assert "internal detail" not in stream.getvalue()
    assert "INFO temporalio.activity: our activity line" in stream.getvalue()


@pytest.mark.parametrize("logger", ["mail.log", "alembic.runtime.migration"])
def test_the_smtp_sink_and_migrations_narrate_only_at_debug(restore_logging: None, logger: str) -> None:
    quiet, chatty = io.StringIO(), io.StringIO()
    configure_logging("text", "INFO", stream=quiet)
    logging.getLogger(logger).info("handling connection")
    logging.getLogger(logger).warning("something went wrong")
    configure_logging("text", "DEBUG", stream=chatty)
    logging.getLogger(logger).info("handling connection")

    assert "handling connection" not in quiet.getvalue() and "something went wrong" in quiet.getvalue()
    assert "handling connection" in chatty.getvalue()


def test_field_values_are_bounded_and_redacted_with_their_original_length(restore_logging: None) -> None:
    """A rejected update names the unknown fields someone posted: their names are whatever was typed."""
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    typed = ["k" * 30_000, "client-7f3a@example.com", "visited_on", *(f"extra_{n}" for n in range(500))]
    extra = {"fields": typed, "error_type": "E" * 500, "update": "submit_form", "deal_id": "D-1"}
    logging.getLogger("sopflow.test").warning("update %s rejected", "submit_form", extra=extra)

    output = stream.getvalue()
    (line,) = json_lines(stream)
    assert len(output) < 4_000 and "@" not in output
    assert line["fields"][:3] == [f"{'k' * 64}…(30000 chars)", "<email>", "visited_on"]
    assert len(line["fields"]) == FIELD_ITEMS + 1 and line["fields"][-1] == f"…(+{len(typed) - FIELD_ITEMS} more)"
    assert line["error_type"] == f"{'E' * 64}…(500 chars)"
    assert (line["update"], line["deal_id"]) == ("submit_form", "D-1")


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_a_huge_message_is_cut_to_a_bounded_line(restore_logging: None, log_format: Any) -> None:
    stream = io.StringIO()
    configure_logging(log_format, stream=stream)
    logging.getLogger("sopflow.test").warning("unknown field %s from %s", "x" * 100_000, "someone@example.com")
    output = stream.getvalue()
    assert len(output) < MESSAGE_LIMIT + 500 and "…(" in output


def test_redaction_is_linear_in_the_length_of_the_text() -> None:
    """A long run of address-like characters without an @ once took seconds per line (regex backtracking): in a
    workflow's log line that is a stalled workflow task. 200 KB now passes in a blink, addresses still go."""
    for text in ("k" * 200_000, "k." * 100_000, "a" * 200_000 + "@", "a@" * 100_000):
        began = time.perf_counter()
        redact(text)
        assert time.perf_counter() - began < 0.5, text[:4]
    assert redact("to a.b+c@mail.example.com, x@y and b@c@d.org.") == "to <email>, x@y and b@<email>."
