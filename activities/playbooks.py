"""Loading a playbook for a hand-off: a workflow cannot read files, so the linked playbook comes through an activity.

Its result is recorded in history, so the started lifecycle is pinned to the playbook as it was on the day of the
hand-off, and a replay never reads the file again.
"""

from __future__ import annotations

from pathlib import Path

from temporalio import activity
from temporalio.exceptions import ApplicationError

from sopflow.playbook import Playbook, PlaybookError
from sopflow.playbook_checks import load_playbook


class PlaybookActivities:
    def __init__(self, playbooks_dir: Path, templates_dir: Path | None = None) -> None:
        self.playbooks_dir = playbooks_dir
        self.templates_dir = templates_dir

    @activity.defn
    async def load_playbook(self, playbook_id: str) -> Playbook:
        try:
            return load_playbook(self.playbooks_dir / f"{playbook_id}.yaml", self.templates_dir)
        except PlaybookError as exc:
            # Retrying cannot fix a broken or missing playbook; a person must, so fail at once with every error.
            raise ApplicationError(str(exc), type="PlaybookError", non_retryable=True) from None
