"""Settings from SOPFLOW_* variables: safe defaults for one machine, refusals for unsafe production mail."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sopflow.config import Settings


def test_defaults_point_at_the_embedded_dev_stack(monkeypatch: pytest.MonkeyPatch):
    for name in ("SOPFLOW_SMTP_HOST", "SOPFLOW_SMTP_PORT", "SOPFLOW_DATABASE_URL", "SOPFLOW_HOME", "SOPFLOW_SMTP_TLS"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert (settings.smtp_host, settings.smtp_port, settings.smtp_tls) == ("127.0.0.1", 1025, "none")
    assert settings.database_url == "sqlite:///.sopflow/sopflow.db"


def test_credentials_without_tls_to_a_remote_server_are_refused(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SOPFLOW_SMTP_HOST", "smtp.example.com")
    monkeypatch.setenv("SOPFLOW_SMTP_USERNAME", "mailer")
    monkeypatch.setenv("SOPFLOW_SMTP_PASSWORD", "secret")
    monkeypatch.delenv("SOPFLOW_SMTP_TLS", raising=False)
    with pytest.raises(ValidationError) as refused:
        Settings()
    (error,) = refused.value.errors()
    assert "without TLS: set SOPFLOW_SMTP_TLS=starttls" in error["msg"] and "secret" not in error["msg"]


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_credentials_over_tls_are_accepted(monkeypatch: pytest.MonkeyPatch, tls: str):
    monkeypatch.setenv("SOPFLOW_SMTP_HOST", "smtp.example.com")
    monkeypatch.setenv("SOPFLOW_SMTP_PASSWORD", "secret")
    monkeypatch.setenv("SOPFLOW_SMTP_TLS", tls)
    assert Settings().smtp_tls == tls


def test_the_local_sink_may_take_credentials_without_tls(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SOPFLOW_SMTP_HOST", "localhost")
    monkeypatch.setenv("SOPFLOW_SMTP_PASSWORD", "dev")
    monkeypatch.delenv("SOPFLOW_SMTP_TLS", raising=False)
    assert Settings().smtp_password == "dev"


def test_observability_settings_default_to_no_metrics_endpoint_and_accept_lowercase_levels(
    monkeypatch: pytest.MonkeyPatch,
):
    for name in ("SOPFLOW_METRICS_PORT", "SOPFLOW_METRICS_HOST", "SOPFLOW_LOG_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SOPFLOW_LOG_LEVEL", "warning")
    settings = Settings()
    assert (settings.metrics_port, settings.metrics_host, settings.log_format) == (None, "127.0.0.1", None)
    assert settings.log_level == "WARNING"
    monkeypatch.setenv("SOPFLOW_LOG_FORMAT", "yaml")
    with pytest.raises(ValidationError, match="log_format"):
        Settings()


@pytest.mark.parametrize("value", ["not an address", "a@example.com, b@example.com", "<a>,<eve@evil.example>"])
def test_a_mail_from_that_is_not_one_address_is_refused_at_start(value: str) -> None:
    with pytest.raises(ValueError, match="SOPFLOW_MAIL_FROM must be one email address"):
        Settings(mail_from=value)
