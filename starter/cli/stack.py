"""Running sopflow: the dev stack, the worker, the intake, the codec server and the records database's migrations."""

from __future__ import annotations

import asyncio
from enum import StrEnum
from typing import Annotated

import typer

from sopflow.config import Settings
from sopflow.connect import ConnectionFailed
from sopflow.logs import LogFormat, configure_logging
from sopflow.telemetry import MetricsError, install_metrics
from starter.cli.apps import SERVICES, app, db_app
from starter.cli.common import connects, records_at, run, settings
from starter.cli.render import err, fail, out


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(metavar="REVISION", help="target revision")] = "head",
) -> None:
    """Apply the Alembic migrations (sopflow dev and the worker do this at start)."""
    db = records_at(revision)
    db.dispose()
    out.print(f"[green]✓[/green] records database at revision {revision}", highlight=False)


class LogFormatChoice(StrEnum):
    json = "json"
    text = "text"


MetricsPortOpt = Annotated[
    int | None,
    typer.Option(
        "--metrics-port",
        min=1,
        max=65535,
        help="serve Prometheus metrics at /metrics on this port (SOPFLOW_METRICS_PORT)",
    ),
]


def observability(log_format: LogFormatChoice | None, default: LogFormat, metrics_port: int | None = None) -> Settings:
    """Configure logging (`sopflow.logs`) and, with a port, the metrics endpoint (`sopflow.telemetry`) before a
    long-running command connects; returns the settings, with the port the endpoint really uses."""
    config = settings()
    chosen: LogFormat = config.log_format or default
    if log_format is not None:
        chosen = "json" if log_format == LogFormatChoice.json else "text"
    configure_logging(chosen, config.log_level)
    port = metrics_port if metrics_port is not None else config.metrics_port
    if port is not None:
        try:
            install_metrics(config.metrics_host, port)
        except MetricsError as exc:
            fail(f"{exc}; choose another port with --metrics-port or SOPFLOW_METRICS_PORT")
    return config.model_copy(update={"metrics_port": port})


@app.command(rich_help_panel=SERVICES)
def dev(
    log_format: Annotated[LogFormatChoice | None, typer.Option("--log-format", help="text (default) or json")] = None,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Run the whole local stack: Temporal dev server + UI, worker, SMTP sink, webhook intake."""
    from starter.devstack import run_dev

    config = observability(log_format, "text", metrics_port)
    try:
        asyncio.run(run_dev(config))
    except KeyboardInterrupt:
        err.print("stopped")
    except (RuntimeError, OSError) as exc:
        fail(str(exc))


@app.command(rich_help_panel=SERVICES)
@connects
def worker(
    log_format: Annotated[LogFormatChoice | None, typer.Option("--log-format", help="json (default) or text")] = None,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Run a worker against the configured Temporal server (TEMPORAL_ADDRESS, profiles)."""
    from worker import run_worker

    config = observability(log_format, "json", metrics_port)
    try:
        run(run_worker(config))
    except KeyboardInterrupt:
        err.print("stopped")


@app.command(rich_help_panel=SERVICES)
@connects
def intake(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    log_format: Annotated[LogFormatChoice | None, typer.Option("--log-format", help="json (default) or text")] = None,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Run the webhook intake (HubSpot, DocuSign, web forms) against the configured Temporal server."""
    import uvicorn

    from starter.webhooks import create_app

    # An invalid SOPFLOW_* configuration fails here, in one line, not on the first webhook. One line per handled
    # event (ids and outcomes only: bodies, headers and secrets are never logged); log_config=None: uvicorn's lines
    # go through the same handler (access lines without query strings: form tokens travel in them).
    config = observability(log_format, "json", metrics_port)
    uvicorn.run(create_app(config), host=host, port=port, log_level="info", log_config=None)


# --- codec server: decrypts payloads for the Temporal UI and CLI ------------------------------------------------------


@app.command("codec-server", rich_help_panel=SERVICES)
@connects
def codec_server(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8081,
    log_format: Annotated[LogFormatChoice | None, typer.Option("--log-format", help="json (default) or text")] = None,
) -> None:
    """Serve /encode and /decode for the Temporal UI and `temporal --codec-endpoint` (needs SOPFLOW_ENCRYPTION_KEYS
    and SOPFLOW_CODEC_TOKEN)."""
    import uvicorn

    from sopflow.connect import connect_config
    from starter.codec_server import CodecServerError, app_from_settings

    # Logging first, so the warning of a token-less (trust-the-UI's-origin) server is a line like the others. Access
    # lines carry paths and statuses only: payloads and the Authorization header are never logged.
    config = observability(log_format, "json")
    try:
        namespace = str(connect_config().get("namespace") or "default")
        web = app_from_settings(config, namespace)
    except (CodecServerError, ConnectionFailed) as exc:
        fail(str(exc))
    uvicorn.run(web, host=host, port=port, log_level="info", log_config=None)
