"""Connecting to Temporal the way the `temporal` CLI does (envconfig: TEMPORAL_ADDRESS, profiles, ...)."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfig


class ConnectionFailed(RuntimeError):
    pass


async def connect(profile: str | None = None) -> Client:
    config = ClientConfig.load_client_connect_config(profile=profile)
    config.setdefault("target_host", "localhost:7233")
    try:
        return await Client.connect(**config, data_converter=pydantic_data_converter)
    except RuntimeError as exc:
        raise ConnectionFailed(
            f"cannot reach Temporal at {config['target_host']} ({exc}); start the local stack with "
            "`make dev` (or `sopflow dev`), or set TEMPORAL_ADDRESS"
        ) from exc
