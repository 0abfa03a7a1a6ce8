"""Prometheus metrics: the Temporal SDK's own and sopflow's counters, out of one endpoint per process.

The SDK's Rust core serves `/metrics` for a `temporalio.runtime.Runtime` built with a `PrometheusConfig`. Such a
runtime binds its port when it is built and lives as long as the process, so a process builds it once
(`install_metrics`, called by `sopflow worker`, `intake` and `dev` before they connect) and every client of the
process connects with it (`sopflow.connect.connect` passes `runtime()`). sopflow's counters are created on the
same runtime's meter, so they need no dependency and no second port:

- in workflows, `workflow.metric_meter()` (replay-safe: nothing is counted while a history replays): the
  workflow calls `observe_timeline` with each batch of timeline entries it records (stage changes, email outcomes),
  and `LifecycleObserver`, a worker interceptor, counts refused updates;
- in activities, `activity.metric_meter()` (`activities.email`);
- in the intake, `meter()`, the process runtime's meter (`starter.intake.metrics`).

Labels are ids and names from the playbook (playbook, stage, template, update name), outcomes and HTTP statuses:
never an address or a person's name, so a metric can be shown to anyone who can see the dashboards. Without
`install_metrics` the meters are the default runtime's, which records nothing: the same code runs in tests and
rehearsals at no cost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from temporalio import workflow
from temporalio.common import MetricMeter
from temporalio.exceptions import ApplicationError
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import (
    HandleUpdateInput,
    Interceptor,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

from sopflow.constants import SA_PLAYBOOK, WORKFLOW_ID_PREFIX
from sopflow.errors import REJECTED
from sopflow.logs import bounded, bounded_value
from sopflow.models import JournalEntry

# Metric names (counters carry `_total`, the Prometheus convention; the SDK's own keep their `temporal_` names).
EMAIL_ATTEMPTS = "sopflow_email_attempts_total"
EMAILS = "sopflow_emails_total"
STAGE_TRANSITIONS = "sopflow_stage_transitions_total"
REJECTED_UPDATES = "sopflow_rejected_updates_total"
WEBHOOKS = "sopflow_webhook_requests_total"

_installed: Runtime | None = None
_installed_address: str | None = None


class MetricsError(RuntimeError):
    """The metrics endpoint cannot be served (port taken, or a second endpoint asked of one process)."""


def prometheus_runtime(bind_address: str) -> Runtime:
    """A runtime serving Prometheus metrics at `http://<bind_address>/metrics` (host:port); fails if the port is taken.

    Counters keep the SDK's default names (`temporal_request`, no `_total` suffix), as Temporal's published
    dashboards expect them.
    """
    try:
        return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=bind_address)))
    except ValueError as exc:  # the core's "Failed starting Prometheus exporter: Address already in use"
        raise MetricsError(f"cannot serve metrics on {bind_address}: {exc}") from exc


def install_metrics(host: str, port: int) -> Runtime:
    """Serve this process's metrics on host:port, and make that runtime the default one for every client after.

    Once per process: the same address again returns the same runtime; another address is an error, since the first
    endpoint cannot be moved.
    """
    global _installed, _installed_address
    address = f"{host}:{port}"
    if _installed is not None:
        if address != _installed_address:
            raise MetricsError(f"metrics are already served on {_installed_address}; cannot also serve {address}")
        return _installed
    installed = prometheus_runtime(address)
    Runtime.set_default(installed, error_if_already_set=False)
    _installed, _installed_address = installed, address
    return installed


def runtime() -> Runtime:
    """The process runtime: the one `install_metrics` built, else the SDK's default (no metrics)."""
    return _installed if _installed is not None else Runtime.default()


def meter() -> MetricMeter:
    """The process runtime's meter, for counters outside workflows and activities (the intake)."""
    return runtime().metric_meter


def count(source: MetricMeter, name: str, description: str, labels: Mapping[str, str | int]) -> None:
    """Add one to counter `name` with `labels` (values as strings: Prometheus labels are text)."""
    counter = source.create_counter(name, description)
    counter.with_additional_attributes({key: str(value) for key, value in labels.items()}).add(1)


# --- inside workflows ---------------------------------------------------------------------------------------------


def _deal_id() -> str:
    return workflow.info().workflow_id.removeprefix(WORKFLOW_ID_PREFIX)


def _playbook() -> str:
    """The lifecycle's playbook id, from the search attribute every lifecycle starts with ("" if absent)."""
    return workflow.info().typed_search_attributes.get(SA_PLAYBOOK) or ""


def _rejected(update: str, exc: BaseException) -> None:
    """Log and count a refused update: its name, the error type and the field names, never the message (it may
    quote what was typed into a form).

    The field names are keys someone posted (an unknown field is named by what was typed), so they are bounded and
    redacted here (`sopflow.logs.bounded_value`: at most 20 names of 64 characters, no address), not only by the
    JSON formatter: any other handler of this record gets them bounded too.
    """
    details = exc.details if isinstance(exc, ApplicationError) else ()
    names = sorted(map(str, details[0])) if details and isinstance(details[0], Mapping) else []
    fields = bounded_value(names)
    error_type = bounded((exc.type if isinstance(exc, ApplicationError) else None) or type(exc).__name__)
    playbook = _playbook()
    workflow.logger.warning(
        "update %s rejected",
        update,
        extra={
            "deal_id": _deal_id(),
            "playbook": playbook,
            "update": update,
            "error_type": error_type,
            "fields": fields,
        },
    )
    count(
        workflow.metric_meter(),
        REJECTED_UPDATES,
        "Updates a lifecycle refused (validator or handler), by update name",
        {"playbook": playbook, "update": update},
    )


def observe_timeline(playbook: str, deal_id: str, entries: Sequence[JournalEntry]) -> None:
    """Log and count what a batch of new timeline entries records: stage changes, and each email step's outcome.

    The workflow calls it with each batch it records, before the records activity: every stage change and every
    email step's result passes there exactly once per workflow execution (entries the records store refused and
    offers again are not new). In the workflow only: logger and meter are silent while a history replays.
    """
    meter_ = workflow.metric_meter()
    for entry in entries:
        detail: Mapping[str, Any] = entry.detail
        if entry.kind == "stage":
            from_stage = str(detail.get("from") or "start")
            to_stage = str(detail.get("to") or entry.stage)
            workflow.logger.info(
                "stage %s -> %s",
                from_stage,
                to_stage,
                extra={
                    "deal_id": deal_id,
                    "playbook": playbook,
                    "from_stage": from_stage,
                    "to_stage": to_stage,
                    "trigger": detail.get("trigger"),
                },
            )
            count(
                meter_,
                STAGE_TRANSITIONS,
                "Stage changes of lifecycles, by playbook, stage left and stage entered",
                {"playbook": playbook, "from_stage": from_stage, "stage": to_stage},
            )
        elif entry.kind == "email":
            template, status = str(detail.get("template", "")), str(detail.get("status", "unknown"))
            log = workflow.logger.warning if status in ("failed", "skipped") else workflow.logger.info
            log(
                "email %s %s",
                template,
                status,
                extra={"deal_id": deal_id, "playbook": playbook, "template": template, "outcome": status},
            )
            count(
                meter_,
                EMAILS,
                "Email steps of lifecycles by final outcome (sent, partial, already_sent, failed, skipped)",
                {"playbook": playbook, "template": template, "outcome": status},
            )


class _Inbound(WorkflowInboundInterceptor):
    def handle_update_validator(self, input: HandleUpdateInput) -> None:
        try:
            self.next.handle_update_validator(input)
        except Exception as exc:
            _rejected(input.update, exc)
            raise

    async def handle_update_handler(self, input: HandleUpdateInput) -> Any:
        try:
            return await self.next.handle_update_handler(input)
        except ApplicationError as exc:
            if exc.type == REJECTED:  # refused after validation (an account claimed meanwhile)
                _rejected(input.update, exc)
            raise


class LifecycleObserver(Interceptor):
    """Worker interceptor: a log line and a counter for every refused update, by its validator or its handler.

    An interceptor sees each update by its name whichever way it was refused, with no code in every handler. It runs
    inside the workflow sandbox; `workflow.logger` and `workflow.metric_meter()` stay silent during replay, so a
    worker picking up a lifecycle cold does not log or count its past again.
    """

    def workflow_interceptor_class(self, input: WorkflowInterceptorClassInput) -> type[WorkflowInboundInterceptor]:
        return _Inbound
