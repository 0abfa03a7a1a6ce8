"""Error types and the names they travel under, in one place.

Temporal carries an application error across processes by its `type` string: the workflow raises `Rejected` for a
request that breaks a rule and the CLI, the intake and the tests match on the same name; activities raise the email
and records names and the workflow decides on them (a refused address opens a fix task; a refused record is kept for
the next batch). A typo in one of these strings would silently change behaviour, so every module imports them.
"""

from __future__ import annotations

# Requests: refused by a rule (the message is shown to the person as-is), or by a bug in a rule (nothing applied).
REJECTED = "Rejected"
ENGINE_FAULT = "EngineFault"
# Email: a template that does not render, permanent refusals a person fixes by correcting the deal (an address the
# server refused; a message that cannot be built from the request, such as an address that is no address), and the
# retryable overlap of two attempts of one step (another attempt holds the claim and may be talking to the relay).
TEMPLATE_ERROR = "TemplateError"
RECIPIENT_REFUSED = "RecipientRefused"
SMTP_REJECTED = "SmtpRejected"
MESSAGE_UNBUILDABLE = "MessageUnbuildable"
EMAIL_IN_FLIGHT = "EmailInFlight"
# Records: the store refused a value for good (retrying cannot help; a lost connection is not this).
RECORD_REFUSED = "RecordRefused"
# A hand-off's playbook that does not load or validate.
PLAYBOOK_ERROR = "PlaybookError"
# The staff directory (SOPFLOW_STAFF_FILE) does not read or validate: a person fixes the file, retrying cannot.
STAFF_FILE = "StaffFileError"

# Emails whose failure becomes a fix-the-address task instead of being lost.
UNDELIVERABLE = (RECIPIENT_REFUSED, SMTP_REJECTED, MESSAGE_UNBUILDABLE)


class Rejected(ValueError):
    """A request that breaks a playbook rule; the message is shown to the person as-is, so it names what is wrong."""

    def __init__(self, message: str, field_errors: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.field_errors = field_errors or {}


class EngineFault(Exception):
    """A rule raised something other than `Rejected`: a bug. The request changed nothing and the timeline says so."""
