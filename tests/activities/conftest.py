"""Fixtures of the activity tests: the email activity on a small playbook's templates, and counters one can read.

Metrics go to a real SDK runtime whose meter writes into a `MetricBuffer`: what `send_email` counts can be read back
at once, without scraping an endpoint or waiting for an exporter.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from temporalio.runtime import MetricBuffer, Runtime, TelemetryConfig
from temporalio.testing import ActivityEnvironment

from activities.email import EmailActivities, SmtpConfig
from sopflow.db import Database
from sopflow.mailsink import MailSink
from sopflow.models import EmailRequest, Recipient
from sopflow.telemetry import EMAIL_ATTEMPTS
from sopflow.templates import TemplateRenderer

MAIL_FROM = "sopflow <sopflow@example.com>"


@dataclass
class Metrics:
    """An ActivityEnvironment whose activities count into `buffer`."""

    env: ActivityEnvironment
    buffer: MetricBuffer

    def email_attempts(self) -> Counter[str]:
        """send_email's attempts counted since the fixture started, by outcome label."""
        counted: Counter[str] = Counter()
        for update in self.buffer.retrieve_updates():
            if update.metric.name == EMAIL_ATTEMPTS:
                counted[str(update.attributes["outcome"])] += int(update.value)
        return counted


@pytest.fixture(scope="session")
def metric_runtime() -> tuple[Runtime, MetricBuffer]:
    """One runtime for the session (each starts threads of its own); tests drain its buffer before they count."""
    buffer = MetricBuffer(10_000)
    return Runtime(telemetry=TelemetryConfig(metrics=buffer)), buffer


@pytest.fixture
def metrics(metric_runtime: tuple[Runtime, MetricBuffer]) -> Metrics:
    runtime, buffer = metric_runtime
    buffer.retrieve_updates()  # what earlier tests counted
    env = ActivityEnvironment()
    env.metric_meter = runtime.metric_meter
    return Metrics(env, buffer)


@pytest.fixture
def demo_templates(tmp_path: Path) -> Path:
    """`templates/` with playbook `demo`: template `welcome` (one deal value in each part) and one attachment."""
    templates = tmp_path / "templates"
    folder = templates / "demo" / "welcome"
    folder.mkdir(parents=True)
    (folder / "subject.txt").write_text("Welcome, {{ deal.company }}")
    (folder / "body.txt").write_text("Welcome aboard, {{ deal.company }}.")
    (folder / "body.html").write_text("<p>Welcome aboard, {{ deal.company }}.</p>")
    (templates / "demo" / "attachments").mkdir()
    (templates / "demo" / "attachments" / "Roster.xlsx").write_bytes(b"PK\x03\x04 demo roster")
    return templates


@pytest.fixture
def mail(db: Database, demo_templates: Path, smtp_sink: MailSink) -> EmailActivities:
    """The email activity on the demo templates, delivering to the test's sink."""
    smtp = SmtpConfig(host=smtp_sink.host, port=smtp_sink.port, mail_from=MAIL_FROM)
    return EmailActivities(db, TemplateRenderer(demo_templates), smtp, "http://127.0.0.1:8000")


@pytest.fixture
def email_request() -> Callable[..., EmailRequest]:
    """A request for the demo welcome email to one signer; keyword arguments replace its fields."""

    def make(**changes: Any) -> EmailRequest:
        fields: dict[str, Any] = {
            "key": "deal-D-9/3/enter-welcome-0",
            "workflow_id": "deal-D-9",
            "deal_id": "D-9",
            "playbook": "demo",
            "template": "welcome",
            "at": datetime(2026, 1, 5, 10, tzinfo=UTC),
            "to": [Recipient(role="signer", email="signer@example.com", name="Client Signer")],
            "context": {"deal": {"company": "Example Clinic"}},
        }
        return EmailRequest(**{**fields, **changes})

    return make


@pytest.fixture
def held_sink() -> Iterator[tuple[MailSink, threading.Event]]:
    """A sink that holds every message's answer until the test sets the event (set at the end in any case)."""
    gate = threading.Event()
    try:
        with MailSink(hold=gate) as sink:
            yield sink, gate
    finally:
        gate.set()


@pytest.fixture
def mail_to(records_db: Database, demo_templates: Path) -> Callable[[MailSink], EmailActivities]:
    """The email activity on the demo templates and the records store of each backend (SQLite, PostgreSQL),
    delivering to the given sink."""

    def make(sink: MailSink) -> EmailActivities:
        smtp = SmtpConfig(host=sink.host, port=sink.port, mail_from=MAIL_FROM)
        return EmailActivities(records_db, TemplateRenderer(demo_templates), smtp, "http://127.0.0.1:8000")

    return make
