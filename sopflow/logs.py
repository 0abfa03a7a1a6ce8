"""Process logging for `sopflow worker`, `sopflow intake`, `sopflow codec-server` and `sopflow dev`.

One function, `configure_logging`, sets up the root logger once per process: JSON (one object per line, for a log
shipper) or text (for a terminal). Every line passes two filters first, whatever the format:

- `RedactEmails` replaces anything shaped like an email address with `<email>`, in the message and in a traceback.
  The privacy rule is that logs hold ids, never names or addresses; most lines obey it by construction, but an SMTP
  refusal quoted in an activity failure (logged by the SDK, with its traceback) carries the refused address.
- `SafeAccessLog` rewrites uvicorn's access lines to method, path (without the query string) and status: form links
  carry their token in `?token=`, and the client's IP address is personal data too.

In JSON, the fields besides `ts`, `level`, `logger` and `message` come from an allow-list (`FIELDS`): a field
passed with `extra=` that is not on it is dropped, so a careless `extra={"email": ...}` never reaches the shipper.
The SDK's workflow and activity loggers put their context in `temporal_workflow` / `temporal_activity`; those
become the flat fields `workflow_id`, `run_id`, `workflow_type`, `activity`, `attempt`, ….
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from temporalio import activity, workflow

LogFormat = Literal["json", "text"]

# Extra fields a JSON line may carry: ids, names of things in the playbook, outcomes, counts. Never a person's name
# or address: add a field here only if its values cannot be one.
FIELDS = frozenset(
    {
        "workflow_id",
        "run_id",
        "workflow_type",
        "namespace",
        "task_queue",
        "activity",
        "activity_id",
        "attempt",
        "update",
        "update_id",
        "deal_id",
        "playbook",
        "stage",
        "from_stage",
        "to_stage",
        "trigger",
        "template",
        "outcome",
        "error_type",
        "fields",
        "source",
        "event",
        "method",
        "path",
        "status",
        "metrics",
    }
)
# The SDK's context dicts, renamed to the flat fields above.
_TEMPORAL_KEYS = {
    "workflow_id": "workflow_id",
    "run_id": "run_id",
    "workflow_run_id": "run_id",
    "workflow_type": "workflow_type",
    "namespace": "namespace",
    "task_queue": "task_queue",
    "activity_type": "activity",
    "activity_id": "activity_id",
    "attempt": "attempt",
    "update_name": "update",
    "update_id": "update_id",
}
# Local part, @, a domain with at least one dot: what an address looks like in any message we or the SDK write.
_EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def redact(text: str) -> str:
    """`text` with every email-shaped substring replaced by `<email>`."""
    return _EMAIL.sub("<email>", text)


class RedactEmails(logging.Filter):
    """Renders each record's message once, redacted, so neither formatter can print an address from it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        record.exc_info = None  # the (redacted) text stands in for it: formatters must not render it again
        return True


class SafeAccessLog(logging.Filter):
    """uvicorn access lines without the query string (form tokens) and the client address (personal data)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            _client, method, full_path, _version, status = record.args
            path = str(full_path).split("?", 1)[0]
            record.msg, record.args = "%s %s %s", (method, path, status)
            record.method, record.path, record.status = method, path, status
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601), level, logger, message, allow-listed fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for context_key in ("temporal_workflow", "temporal_activity"):
            context = getattr(record, context_key, None)
            if isinstance(context, dict):
                for key, value in context.items():
                    if key in _TEMPORAL_KEYS:
                        data.setdefault(_TEMPORAL_KEYS[key], value)
        for key in FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                data[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(self.formatException(record.exc_info))
        if record.exc_text:
            data["exc"] = record.exc_text
        return json.dumps(data, default=str, ensure_ascii=False)


def configure_logging(
    log_format: LogFormat, level: str | int = "INFO", stream: TextIO | None = None
) -> logging.Handler:
    """Route every logger to one stderr (or `stream`) handler in `log_format`; returns that handler.

    Replaces handlers on the root logger, so calling it again (tests, `sopflow dev` after a command) reconfigures
    instead of printing every line twice. The SDK's internals log at WARNING and above only; its workflow and
    activity loggers (our log lines inside workflows and activities) at `level`. In JSON the SDK's context goes in
    fields, not appended to the message as it is for a terminal.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(SafeAccessLog())
    handler.addFilter(RedactEmails())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(_TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("temporalio").setLevel(logging.WARNING)
    for name in ("temporalio.workflow", "temporalio.activity"):
        logging.getLogger(name).setLevel(level)
    as_json = log_format == "json"
    workflow.logger.workflow_info_on_message = not as_json
    activity.logger.activity_info_on_message = not as_json
    return handler
