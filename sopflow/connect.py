"""Connecting to Temporal the way the `temporal` CLI does, through `temporalio.envconfig`.

Address, namespace, TLS (server CA, client certificate and key) and a Temporal Cloud API key all come from the same
places the CLI reads: `TEMPORAL_ADDRESS`, `TEMPORAL_NAMESPACE`, `TEMPORAL_API_KEY`, `TEMPORAL_TLS*`,
`TEMPORAL_PROFILE` and `temporal.toml` (`TEMPORAL_CONFIG_FILE`). One `connect()` for the CLI, the worker and the
intake, with one data converter (`sopflow.codec.data_converter`), so everything that talks to the server reads and
writes payloads the same way, and one runtime per process (`sopflow.telemetry.runtime`), so all of a process's
clients report to its one metrics endpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from temporalio.client import Client
from temporalio.envconfig import ClientConfig

from sopflow import telemetry
from sopflow.codec import data_converter
from sopflow.config import Settings

DEFAULT_ADDRESS = "localhost:7233"


class ConnectionFailed(RuntimeError):
    pass


def connect_config(profile: str | None = None, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """`Client.connect` keyword arguments from envconfig (`env` replaces the process environment, for tests).

    A missing certificate file or an unknown profile is a ConnectionFailed with one line naming it.
    """
    try:
        config: dict[str, Any] = dict(
            ClientConfig.load_client_connect_config(
                profile=profile, override_env_vars=dict(env) if env is not None else None
            )
        )
    except (OSError, RuntimeError, ValueError) as exc:  # RuntimeError: the SDK's ConfigError (bad TOML, no profile)
        raise ConnectionFailed(f"invalid Temporal connection settings (TEMPORAL_* / temporal.toml): {exc}") from exc
    config.setdefault("target_host", DEFAULT_ADDRESS)
    return config


async def connect(profile: str | None = None, settings: Settings | None = None) -> Client:
    config = connect_config(profile)
    if settings is None:
        try:
            settings = Settings()
        except ValidationError as exc:  # e.g. a malformed SOPFLOW_ENCRYPTION_KEYS: the converter depends on it
            messages = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
            raise ConnectionFailed(f"invalid configuration: {messages}") from None
    converter = data_converter(settings)
    try:
        # The process runtime: with `install_metrics` done, this client's request metrics join the worker's.
        return await Client.connect(**config, data_converter=converter, runtime=telemetry.runtime())
    except RuntimeError as exc:
        # The address and namespace only: the API key and TLS material never reach a terminal.
        raise ConnectionFailed(
            f"cannot reach Temporal at {config['target_host']} (namespace {config.get('namespace', 'default')}: "
            f"{exc}); start the local stack with `make dev` (or `sopflow dev`), or set TEMPORAL_ADDRESS"
        ) from exc
