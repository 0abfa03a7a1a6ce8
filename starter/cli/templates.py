"""Email template previews, with sample data or a live deal's context."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from temporalio.client import (
    WorkflowQueryFailedError,
)
from temporalio.service import RPCError, RPCStatusCode

from sopflow.playbook_checks import template_names
from sopflow.samples import email_uses, sample_context
from sopflow.templates import RenderError, TemplateRenderer, links_for
from starter.cli.apps import template_app
from starter.cli.common import connects, handle_of, load, run, settings, write_file
from starter.cli.render import ObjectOutputOpt, Output, err, fail, out, print_object
from worker import form_secret_of
from workflows.lifecycle import ClientLifecycle


@template_app.command("preview")
@connects
def template_preview(
    playbook: Annotated[str, typer.Argument(metavar="PLAYBOOK", help="playbook id or YAML file")],
    template: Annotated[str, typer.Argument(metavar="TEMPLATE", help="the template's name, e.g. welcome")],
    deal: Annotated[
        str | None, typer.Option("--deal", metavar="DEAL_ID", help="render with this running deal's live data")
    ] = None,
    html: Annotated[
        Path | None, typer.Option("--html", metavar="FILE", help="write the HTML body to this file")
    ] = None,
    output: ObjectOutputOpt = Output.text,
) -> None:
    """Render a template's subject and text body, with sample data or with a deal's live context (which needs
    Temporal)."""
    pb = load(playbook)
    uses = [use for use in email_uses(pb) if use.template == template]
    if not uses:
        known = ", ".join(sorted(template_names(pb))) or "none"
        fail(f"playbook {pb.id} sends no template {template!r} (templates: {known})")
    config = settings()
    use = uses[0]
    sample = sample_context(pb, use, minimal=False, public_url=config.public_url)
    if deal is None:
        context = sample
    else:
        live = run(_email_context(deal))
        live_playbook = (live.get("playbook") or {}).get("id")
        if live_playbook != pb.id:
            fail(f"deal {deal} runs playbook {live_playbook}, not {pb.id}")
        context = {**live, "links": links_for(config.public_url, deal, form_secret_of(config), list(pb.forms))}
        # Extras exist only where the engine sends the email (a task's reminder, a visit): samples stand in.
        for key in use.extra_keys:
            if context.get(key) is None:
                context[key] = sample[key]
    try:
        rendered = TemplateRenderer(config.templates_dir).render(pb.id, template, context)
    except RenderError as exc:
        fail(str(exc))
    if html is not None:
        write_file(html, rendered.html)
    if output != Output.text:
        data = {
            "playbook": pb.id,
            "template": template,
            "deal": deal,
            "context": "deal" if deal else "sample",
            "subject": rendered.subject,
            "text": rendered.text,
            "html": rendered.html,
        }
        print_object(data, output)
        return
    out.print(f"Subject: {rendered.subject}", markup=False, highlight=False, soft_wrap=True)
    out.print()
    out.print(rendered.text, markup=False, highlight=False, soft_wrap=True)
    source = f"deal {deal}" if deal else "sample data"
    note = f"rendered with {source}" + (f"; HTML body written to {html}" if html else "")
    err.print(note, style="dim", highlight=False)


async def _email_context(deal_id: str) -> dict[str, Any]:
    handle = await handle_of(deal_id)
    try:
        context: dict[str, Any] = await handle.query(ClientLifecycle.email_context, rpc_timeout=timedelta(seconds=20))
    except WorkflowQueryFailedError as exc:
        fail(f"deal {deal_id} could not answer the email context query: {exc.message}")
    except RPCError as exc:
        if exc.status == RPCStatusCode.DEADLINE_EXCEEDED:
            fail(f"deal {deal_id} did not answer: is a worker running (`sopflow worker` or `make dev`)?")
        raise
    return context
