"""`sopflow.logs`: JSON lines with allow-listed fields, and no address or form token in any line."""

from __future__ import annotations

import io
import logging
from typing import Any

import pytest
from temporalio import activity, workflow

from sopflow.logs import configure_logging
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
