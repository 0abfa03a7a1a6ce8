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

Every line is bounded, because some of what it names comes from outside (the field names of a rejected form are
whatever was posted): each field value is redacted and cut to `FIELD_LIMIT` characters (a list to `FIELD_ITEMS`
items), a message to `MESSAGE_LIMIT`, each cut marked with `…` and the original length. Redaction itself runs in
time linear in the text: a line is written inside a workflow task, which must not stall on a long value.
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
# Linear time: a local part starts only where a run of local-part characters starts (the lookbehind), and the
# possessive quantifiers never give characters back, so a long run without an @ is scanned once, not once per
# position (the plain pattern took seconds on 30 KB).
_LOCAL = "A-Za-z0-9.!#$%&'*+/=?^_`{|}~-"
_EMAIL = re.compile(rf"(?<![{_LOCAL}])[{_LOCAL}]++@[A-Za-z0-9-]++(?:\.[A-Za-z0-9-]++)+")
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Bounds of one line (module docstring). 64 characters show any stage, template, outcome or field name we use; ids
# (a deal id may have 100 characters, an update id carries a deal id and a key) and paths get more.
FIELD_LIMIT = 64
ID_LIMIT = 256
_LONGER = {"workflow_id": ID_LIMIT, "run_id": ID_LIMIT, "deal_id": ID_LIMIT, "update_id": ID_LIMIT, "path": ID_LIMIT}
FIELD_ITEMS = 20
MESSAGE_LIMIT = 2000


def redact(text: str) -> str:
    """`text` with every email-shaped substring replaced by `<email>`."""
    return _EMAIL.sub("<email>", text)


def bounded(text: str, limit: int = FIELD_LIMIT) -> str:
    """`text` redacted and, past `limit` characters, cut there and marked `…(<original length> chars)`.

    Redacted before the cut, so a cut cannot leave half an address that no longer looks like one.
    """
    cleaned = redact(text)
    return cleaned if len(cleaned) <= limit else f"{cleaned[:limit]}…({len(text)} chars)"


def bounded_value(value: Any, limit: int = FIELD_LIMIT) -> Any:
    """A log field's value, bounded: text by `bounded`, a list or tuple to `FIELD_ITEMS` bounded items (then
    `…(+N more)`), numbers, booleans and None as they are, anything else as its bounded text."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, list | tuple | set | frozenset):
        items = list(value)
        shown = [bounded(str(item), limit) for item in items[:FIELD_ITEMS]]
        return [*shown, f"…(+{len(items) - FIELD_ITEMS} more)"] if len(items) > FIELD_ITEMS else shown
    return bounded(str(value), limit)


def field_value(name: str, value: Any) -> Any:
    """`bounded_value` with the limit of field `name` (ids and paths are longer than names)."""
    return bounded_value(value, _LONGER.get(name, FIELD_LIMIT))


class RedactEmails(logging.Filter):
    """Renders each record's message once, redacted and bounded, so neither formatter can print an address or an
    unbounded value from it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = bounded(message, MESSAGE_LIMIT)
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
                        name = _TEMPORAL_KEYS[key]
                        data.setdefault(name, field_value(name, value))
        for key in FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                data[key] = field_value(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(self.formatException(record.exc_info))
        if record.exc_text:
            data["exc"] = record.exc_text
        return json.dumps(data, default=str, ensure_ascii=False)


# Libraries that narrate their work at INFO (the SMTP sink's every connection, each migration step): quiet unless
# SOPFLOW_LOG_LEVEL=DEBUG, so a terminal shows what sopflow did (one line per email in `sopflow dev`).
CHATTY = ("mail.log", "alembic")


def configure_logging(
    log_format: LogFormat, level: str | int = "INFO", stream: TextIO | None = None
) -> logging.Handler:
    """Route every logger to one stderr (or `stream`) handler in `log_format`; returns that handler.

    Replaces handlers on the root logger, so calling it again (tests, `sopflow dev` after a command) reconfigures
    instead of printing every line twice. The SDK's internals and the CHATTY libraries log at WARNING and above only
    (everything at DEBUG); the SDK's workflow and activity loggers (our log lines inside workflows and activities)
    at `level`. In JSON the SDK's context goes in
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
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.NOTSET if root.level <= logging.DEBUG else logging.WARNING)
    as_json = log_format == "json"
    workflow.logger.workflow_info_on_message = not as_json
    activity.logger.activity_info_on_message = not as_json
    return handler
