"""Idempotency keys: every request that changes a lifecycle is applied once, however often it arrives.

The key becomes the Temporal **update id** (`handle.execute_update(..., id=...)`). Temporal applies an update id
once per workflow run: a second request with the same id, whether it arrives while the first is still in flight
or after it finished, gets the first one's result instead of being applied again. So two copies of the same form
post (a double click, a browser resending, a sender retrying after a 503) change the lifecycle once, and both
callers are told it worked. A request the lifecycle refused (its validator said no) is not recorded, so a corrected
retry with the same key is judged afresh.

Where the key comes from:

- a form page: a one-time submission id, generated when the page is rendered and posted back in the hidden field
  `_submission`; reloading or resending that page is the same submission, opening the link again is a new one;
- the JSON (or form-encoded) API: the `Idempotency-Key` header, chosen by the sender; without it nothing is
  derived, and each post is a new submission;
- the CLI: a fresh key per invocation, or the one given with `--idempotency-key` to retry a command safely.

Each is prefixed by its kind (`form:`, `cli:`; the webhooks use their own `hubspot:` keys), so ids of different
kinds never collide. A key is 8 to 64 characters of `A-Z a-z 0-9 _ -` (a UUID, with or without dashes, fits): short
enough for Temporal's id limit and for a log line, and without separators that could make two prefixes meet.
"""

from __future__ import annotations

import re
import uuid

KEY_HEADER = "Idempotency-Key"
SUBMISSION_FIELD = "_submission"
MIN_KEY_LENGTH = 8
MAX_KEY_LENGTH = 64
KEY_RULE = f"{MIN_KEY_LENGTH} to {MAX_KEY_LENGTH} characters of A-Z a-z 0-9 _ -"
_KEY = re.compile(rf"[A-Za-z0-9_-]{{{MIN_KEY_LENGTH},{MAX_KEY_LENGTH}}}")


def new_key() -> str:
    """A random key (128 bits, 32 hex digits): one per rendered form page, one per CLI invocation."""
    return uuid.uuid4().hex


def valid_key(key: str) -> bool:
    """Whether `key` follows `KEY_RULE` (the whole string: `fullmatch`, so a trailing newline does not pass)."""
    return _KEY.fullmatch(key) is not None


def form_update_id(deal_id: str, form: str, key: str) -> str:
    """The update id of a form submission: scoped to the deal and the form its token was issued for."""
    return f"form:{deal_id}:{form}:{key}"


def cli_update_id(update: str, key: str) -> str:
    """The update id of a CLI command (the workflow is the deal; the update name keeps a reused key from returning
    another command's result)."""
    return f"cli:{update}:{key}"
