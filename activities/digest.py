"""`send_morning_digests`: the digests due at one scheduled hour, each sent once per person per local date.

Delivery reuses `send_email` and its outbox rather than a table of its own: the outbox already gives exactly what a
digest needs (a row per idempotency key that is never sent twice, a lease so overlapping attempts cannot both talk
SMTP, a Message-ID derived from the key, permanent refusals recorded and not retried, `sopflow mail list` showing
it). The key is `digest:<sha256(address)[:16]>:<local date>`, so a re-run of the hour, a retry, a manual trigger or
a backfill of that morning finds the row sent and sends nothing.

One activity for the whole hour, people one after another: the staff directory is a few dozen people, and one
activity keeps the schedule's run to one line in the Temporal UI. A temporary failure (the relay down) for one
person does not stop the others; the activity raises at the end so Temporal retries it, and the retry skips those
already sent. A permanent one (an address the relay refuses) is counted and not retried.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.email import EmailActivities
from sopflow.constants import DIGEST_SCHEDULE_ID
from sopflow.db import Database
from sopflow.digest import Digest, PublicLinks, address_id, email_request, morning_due
from sopflow.digest_query import digest_for
from sopflow.errors import STAFF_FILE
from sopflow.models import DigestOutcome, DigestRun
from sopflow.playbook import Playbook
from sopflow.playbook_checks import loadable_playbooks
from sopflow.staff import Person, StaffFileError, load_staff

log = logging.getLogger("sopflow.digest")


class DigestActivities:
    def __init__(
        self,
        db: Database,
        emails: EmailActivities,
        staff_path: Path | None,
        playbooks_dir: Path,
        form_secret: str | None = None,
    ) -> None:
        """`staff_path` None: no staff directory, so no digests (a worker built for tests of something else).
        Links point under the email activities' public URL, as every email's do."""
        self.db = db
        self.emails = emails
        self.staff_path = staff_path
        self.playbooks_dir = playbooks_dir
        self.links = PublicLinks(emails.public_url, form_secret)

    @activity.defn
    async def send_morning_digests(self, run: DigestRun) -> DigestOutcome:
        """Send the digest of everyone whose local morning hour `run.at` is, on their working day."""
        outcome = DigestOutcome()
        if self.staff_path is None:
            return outcome
        try:
            staff = await asyncio.to_thread(load_staff, self.staff_path)
        except StaffFileError as exc:
            # Retrying cannot fix a file; the next hour reads it again, once someone has corrected it.
            raise ApplicationError(str(exc), type=STAFF_FILE, non_retryable=True) from None
        due: list[Person] = []
        for person in staff.people:
            if morning_due(person, run.at) is None:
                continue
            if not person.digest:
                outcome.opted_out += 1
                continue
            due.append(person)
        outcome.due = len(due)
        if not due:
            return outcome
        playbooks = await asyncio.to_thread(loadable_playbooks, self.playbooks_dir)
        temporary: BaseException | None = None
        for person in due:
            activity.heartbeat(address_id(person.email))
            digest = await asyncio.to_thread(self._compose, person, run, playbooks)
            if digest is None:
                outcome.nothing_due += 1
                continue
            request = email_request(digest, activity.info().workflow_id or DIGEST_SCHEDULE_ID, run.at)
            try:
                result = await self.emails.send_email(request)
            except ApplicationError as exc:
                if not exc.non_retryable:
                    temporary = exc
                    continue
                outcome.failed += 1
                activity.logger.warning("digest %s not delivered: %s", address_id(person.email), exc.type)
                continue
            except Exception as exc:  # the relay unreachable, a timeout, a 4xx: retried with the whole run
                temporary = exc
                continue
            if result.status == "already_sent":
                outcome.already_sent += 1
            else:
                outcome.sent += 1
        activity.logger.info("morning digests at %s: %s", run.at.isoformat(), outcome.model_dump())
        if temporary is not None:
            raise temporary
        return outcome

    def _compose(self, person: Person, run: DigestRun, playbooks: list[Playbook]) -> Digest | None:
        with self.db.session() as session:
            return digest_for(session, person, run.at, playbooks, self.links)
