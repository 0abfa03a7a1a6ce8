"""The sopflow worker: runs `ClientLifecycle` and its activities on the `sopflow` task queue.

`build_worker` is shared by `sopflow worker`, `sopflow dev`, `sopflow rehearse` and the tests, so every one of them
runs the same workflow and activity set, differing only in where mail and records go.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from temporalio.client import Client
from temporalio.worker import Worker

from activities.email import EmailActivities, SmtpConfig
from activities.playbooks import PlaybookActivities
from activities.records import RecordActivities
from sopflow.config import PROJECT_ROOT, Settings
from sopflow.constants import TASK_QUEUE
from sopflow.db import Database
from sopflow.templates import TemplateRenderer
from workflows.lifecycle import ClientLifecycle


def smtp_config(settings: Settings) -> SmtpConfig:
    return SmtpConfig(
        host=settings.smtp_host,
        port=settings.smtp_port,
        mail_from=settings.mail_from,
        username=settings.smtp_username,
        password=settings.smtp_password,
        tls=settings.smtp_tls,
    )


def form_secret_of(settings: Settings) -> str | None:
    """The per-form token key, so the links in emails carry tokens the intake (same settings) accepts."""
    return settings.form_secret.get_secret_value() if settings.form_secret else None


def build_worker(
    client: Client,
    db: Database,
    smtp: SmtpConfig,
    templates_dir: Path,
    public_url: str = "http://127.0.0.1:8000",
    task_queue: str = TASK_QUEUE,
    email_activities: type[EmailActivities] = EmailActivities,
    record_activities: type[RecordActivities] = RecordActivities,
    form_secret: str | None = None,
    playbooks_dir: Path = PROJECT_ROOT / "playbooks",
    max_cached_workflows: int = 1000,
) -> Worker:
    """`max_cached_workflows` (default: the SDK's own, 1,000) lets `bench.scale` measure a worker whose cache
    holds fewer lifecycles than are open, i.e. what a request to an evicted client costs."""
    emails = email_activities(db, TemplateRenderer(templates_dir), smtp, public_url, form_secret=form_secret)
    records = record_activities(db)
    playbooks = PlaybookActivities(playbooks_dir, templates_dir)
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[ClientLifecycle],
        activities=[
            emails.send_email,
            records.record_journal,
            records.claim_account,
            records.release_claims,
            playbooks.load_playbook,
        ],
        max_cached_workflows=max_cached_workflows,
    )


def worker_for(client: Client, db: Database, settings: Settings) -> Worker:
    """The production worker: mail, templates, links and form tokens as the SOPFLOW_* settings say."""
    return build_worker(
        client,
        db,
        smtp_config(settings),
        settings.templates_dir,
        settings.public_url,
        form_secret=form_secret_of(settings),
        playbooks_dir=settings.playbooks_dir,
    )


async def run_worker(settings: Settings | None = None) -> None:
    from starter.connect import connect

    settings = settings or Settings()
    db = Database(settings.database_url)
    db.upgrade()
    await worker_for(await connect(), db, settings).run()


if __name__ == "__main__":
    asyncio.run(run_worker())
