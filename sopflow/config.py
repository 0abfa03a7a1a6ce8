"""Runtime configuration from `SOPFLOW_*` environment variables.

Temporal connection settings are deliberately not here: they come from `temporalio.envconfig` (TEMPORAL_ADDRESS,
TEMPORAL_NAMESPACE, profiles in temporal.toml) so that sopflow connects exactly like the `temporal` CLI does.
"""

from __future__ import annotations

from email.headerregistry import AddressHeader, HeaderRegistry
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sopflow import zones
from sopflow.codec import KeyRing, parse_key_ring

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    # hide_input_in_errors: a validation error printed anywhere must not quote the secrets it was given.
    model_config = SettingsConfigDict(env_prefix="SOPFLOW_", extra="ignore", hide_input_in_errors=True)

    home: Path = Path(".sopflow")
    database_url: str = ""
    templates_dir: Path = PROJECT_ROOT / "templates"
    playbooks_dir: Path = PROJECT_ROOT / "playbooks"

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_tls: Literal["none", "starttls", "implicit"] = "none"
    mail_from: str = "sopflow <sopflow@example.com>"

    # New lifecycles run this many times faster than real time (86400: a playbook day per second), for demos and
    # fault-injection runs. Pinned per lifecycle at its start; production leaves it at 1.
    time_scale: float = Field(default=1, ge=1)

    # The zone the CLI shows times in where no one deal's zone applies (lists, reports, mail): an IANA name.
    timezone: str = "UTC"

    # The staff directory (`sopflow.staff`): digests, web board sign-in and limits. Unset: <home>/staff.yaml.
    staff_file: Path | None = None
    # The web board (`starter.web`): the key of its session cookies (unset: a random key per process, so a restart
    # signs everyone out), the SSO proxy's header naming the signed-in person and the addresses it is believed from
    # (IPs or networks, comma-separated; empty: the header is ignored), and the person `sopflow dev` signs in.
    web_secret: SecretStr | None = None
    web_proxy_header: str = "X-Forwarded-Email"
    web_trusted_proxies: str = ""
    web_dev_user: str | None = None

    public_url: str = "http://127.0.0.1:8000"
    ui_url: str = "http://localhost:8233"

    dev_temporal_port: int = 7233
    dev_ui_port: int = 8233
    dev_intake_port: int = 8000
    dev_codec_port: int = 8081

    # Payload encryption (`sopflow.codec`): `k2:<base64 32 bytes>,k1:<base64>`, the current key first. Unset: payloads
    # are stored as plain JSON, as in a throwaway dev server.
    encryption_keys: SecretStr | None = None
    # The codec server (`sopflow codec-server`) decrypts for whoever reaches it: it answers only requests whose
    # Authorization header carries this token (`Bearer <token>`). Browsers may call it from `ui_url` only (CORS).
    codec_token: SecretStr | None = None
    # Accept browser requests from `ui_url`'s origin without the token. The Temporal UI cannot send a static token
    # (only its signed-in user's access token), so without this its pages stay encrypted. An Origin header can be
    # forged by anything that is not a browser: turn it on only where the codec port is reachable from trusted hosts
    # alone. Refused while a codec token is set: the token would then protect nothing.
    codec_trust_ui_origin: bool = False

    # Webhook intake (`sopflow intake`). Secrets come from the environment only and are SecretStr, so a repr, a log
    # line or a validation error never shows them.
    # HubSpot app's client secret: the key of X-HubSpot-Signature-v3 (and of the legacy v1/v2 hashes).
    hubspot_client_secret: SecretStr | None = None
    # Also accept v1/v2 X-HubSpot-Signature when a request has no v3 header. Off by default: those hashes carry no
    # timestamp, so a captured request could be replayed forever.
    hubspot_accept_legacy_signatures: bool = False
    # The public base URL HubSpot calls (e.g. https://hooks.example.com/intake): HubSpot signs the URI it sent, which
    # a proxy rewrites. Unset: the URL the request arrived at.
    public_intake_url: str | None = None
    # DocuSign Connect HMAC keys, comma-separated: any one matching any X-DocuSign-Signature-N header is enough.
    docusign_hmac_keys: SecretStr | None = None
    # Key of the per-form tokens: token = hex HMAC-SHA256(form_secret, "<deal id>:<form>").
    form_secret: SecretStr | None = None
    # Larger bodies are refused with 413 before they are parsed or their signature is computed.
    max_body_bytes: int = Field(default=1_000_000, gt=0)
    # Pipeline -> playbook, HubSpot property -> deal field, property values -> lifecycle events.
    intake_config: Path = PROJECT_ROOT / "playbooks" / "intake" / "mapping.yaml"

    # Observability (`sopflow.logs`, `sopflow.telemetry`). Log format: unset means the command's own default (json for
    # worker, intake and codec-server, whose output goes to a log shipper; text for `sopflow dev`, read by a person).
    log_format: Literal["json", "text"] | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Prometheus endpoint of the worker / intake process (`/metrics`); unset: no endpoint. The host defaults to this
    # machine only: set 0.0.0.0 in a container so Prometheus can reach it over the container network.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"

    # Worker tuning (README, "Worker tuning"). Defaults are the SDK's: measured here, 10,000 sleeping lifecycles cost
    # the worker 164 MB with a 1,000-workflow cache and 550 MB with 10,000; a lifecycle not in the cache replays its
    # history (one run is at most a year) when it next wakes, which is cheap for our short histories.
    worker_cache_size: int = Field(default=1000, ge=0)
    # At least 2 while the cache is on (the SDK's rule: one poller for the sticky queue, one for the normal one).
    worker_max_concurrent_workflow_tasks: int = Field(default=100, ge=2)
    # Emails and record writes; keep it within what the SMTP relay accepts in parallel connections.
    worker_max_concurrent_activities: int = Field(default=100, ge=1)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if not zones.is_known(value):
            raise ValueError(f"SOPFLOW_TIMEZONE: {zones.unknown_zone_message(value)}")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_capitals(cls, value: object) -> object:
        """`info` works as well as `INFO`, as in most tools' LOG_LEVEL."""
        return value.upper() if isinstance(value, str) else value

    @field_validator("mail_from")
    @classmethod
    def _one_sender(cls, value: str) -> str:
        """A bad sender would fail every email, one by one, at send time: refuse it when the process starts."""
        header = HeaderRegistry()("From", value)
        if not isinstance(header, AddressHeader) or header.defects or len(header.addresses) != 1:
            raise ValueError("SOPFLOW_MAIL_FROM must be one email address, e.g. 'sopflow <sopflow@example.com>'")
        return value

    @model_validator(mode="after")
    def _default_database(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'sopflow.db'}"
        return self

    @model_validator(mode="after")
    def _no_plaintext_credentials(self) -> Settings:
        """A password sent without TLS to a real mail server can be read on the wire; only the local sink may."""
        local = self.smtp_host in ("127.0.0.1", "localhost", "::1")
        if (self.smtp_username or self.smtp_password) and self.smtp_tls == "none" and not local:
            raise ValueError(
                f"SOPFLOW_SMTP_USERNAME/PASSWORD are set for {self.smtp_host} without TLS: "
                "set SOPFLOW_SMTP_TLS=starttls (usually port 587) or implicit (port 465)"
            )
        return self

    @model_validator(mode="after")
    def _valid_encryption_keys(self) -> Settings:
        """A bad key fails at start, in one line naming the entry: not later as an undecryptable history."""
        self.encryption_key_ring()
        return self

    def encryption_key_ring(self) -> KeyRing | None:
        """The payload key ring, or None when encryption is off (no keys set)."""
        raw = self.encryption_keys.get_secret_value().strip() if self.encryption_keys else ""
        return parse_key_ring(raw) if raw else None

    def docusign_keys(self) -> list[str]:
        """The configured Connect HMAC keys (blank entries dropped), for `sopflow.signatures.verify_docusign`."""
        raw = self.docusign_hmac_keys.get_secret_value() if self.docusign_hmac_keys else ""
        return [key.strip() for key in raw.split(",") if key.strip()]

    def staff_path(self) -> Path:
        return self.staff_file or self.home / "staff.yaml"

    def playbook_path(self, name_or_path: str) -> Path:
        """Accept `safe_balance` as well as `playbooks/safe_balance.yaml`, as users type either."""
        candidate = Path(name_or_path)
        if candidate.suffix in {".yaml", ".yml"} or candidate.exists():
            return candidate
        return self.playbooks_dir / f"{name_or_path}.yaml"
