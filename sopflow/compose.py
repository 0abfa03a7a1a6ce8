"""Email composition as plain functions: who an action's email goes to, what its template sees, and what a bounce
turns into. The engine queues what these return; nothing here changes state.

Addresses are resolved when the email is queued (the deal's fields at that moment), and a role without an address is
named in the timeline instead of silently dropped.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sopflow.business_calendar import Clock
from sopflow.conditions import Context, role_address, role_addresses, role_name
from sopflow.models import EmailRequest, LifecycleState, Recipient, Resend, TaskState
from sopflow.playbook import EmailAction, Playbook
from sopflow.timeline import EmailDetail
from sopflow.views import context, stage_of

# Templates the engine itself sends (not a playbook's): templates/_system/<name>/.
SYSTEM_TEMPLATES = "_system"


@dataclass
class Addressed:
    """An email action's recipients as resolved now; `missing` names the roles that have no address."""

    to: list[Recipient]
    cc: list[Recipient]
    reply_to: Recipient | None
    missing: list[str]

    def detail(self, template: str) -> EmailDetail:
        """The timeline entry's detail: roles only (each once, however many addresses it has), never addresses."""
        return EmailDetail(
            template=template,
            to=list(dict.fromkeys(r.role for r in self.to)),
            cc=list(dict.fromkeys(r.role for r in self.cc)),
            missing_roles=self.missing or None,
        )


def address(playbook: Playbook, ctx: Context, action: EmailAction, skip: Collection[str] = ()) -> Addressed:
    """Each role once (the first list it appears in), whoever has the same address as an earlier one skipped. A
    role of several addresses (an `emails` field: the client's users) is one recipient per address. `skip`: the
    addresses that already have this email (a resend after some of a role's addresses bounced)."""
    to: list[Recipient] = []
    cc: list[Recipient] = []
    missing: list[str] = []
    skipped = {email.lower() for email in skip}
    for roles, out in ((action.to, to), (action.cc, cc)):
        for role_id in roles:
            emails = role_addresses(playbook, ctx, role_id)
            display = role_name(playbook, ctx, role_id)
            if not emails:
                missing.append(role_id)
            for email in emails:
                if email.lower() not in skipped and all(r.email != email for r in to + cc):
                    out.append(Recipient(role=role_id, email=email, name=display))
    reply_to = None
    if action.from_role is not None:
        emails = role_addresses(playbook, ctx, action.from_role)
        display = role_name(playbook, ctx, action.from_role)
        reply_to = Recipient(role=action.from_role, email=emails[0], name=display) if emails else None
    return Addressed(to=to, cc=cc, reply_to=reply_to, missing=missing)


def template_context(playbook: Playbook, state: LifecycleState, extra: dict[str, Any]) -> dict[str, Any]:
    """What every template of the deal sees; `extra` adds the site's own (the task, the visit, the appointment)."""
    ctx = context(playbook, state)
    roles = {}
    for role_id in playbook.roles:
        email, display = role_address(playbook, ctx, role_id)
        roles[role_id] = {"email": email, "name": display or role_id.replace("_", " ")}
    stage = stage_of(playbook, state)
    return {
        "deal_id": state.deal_id,
        "deal": dict(state.fields),
        "forms": ctx["forms"],
        "settings": dict(playbook.settings),
        "roles": roles,
        "stage": {"id": stage.id, "title": stage.name},
        "playbook": {"id": playbook.id, "title": playbook.title or playbook.id},
        "deadline": (
            {"label": state.deadline.label, "due_at": state.deadline.due_at.isoformat()} if state.deadline else None
        ),
        # The deal's zone, so the `date` filter shows its local times (absent for a playbook without a zone: UTC).
        **({"timezone": Clock.of(playbook, state.fields).name} if playbook.timezone else {}),
        **extra,
    }


@dataclass
class Undeliverable:
    """A permanently refused email as a fix-the-address task for the stage owner, and who to tell about it."""

    task: TaskState
    roles: list[str]
    owner: str
    notify: bool


def undeliverable(
    playbook: Playbook,
    state: LifecycleState,
    request: EmailRequest,
    seq: int,
    refused: list[str],
    reason: str,
) -> Undeliverable:
    """The task resends the email to the roles that did not get it (the others already have it) once done; its
    owner is told by email unless the owner's own address is what bounced, or the email was a system notice."""
    at = request.at
    refused_set = {address.lower() for address in refused}
    recipients = request.to + request.cc
    roles = sorted({r.role for r in recipients if r.email.lower() in refused_set}) or [r.role for r in request.to]
    # Only a role of several addresses can have both a refused address and delivered ones.
    delivered = [r.email for r in recipients if refused_set and r.role in roles and r.email.lower() not in refused_set]
    owner = stage_of(playbook, state).owner or (request.reply_to.role if request.reply_to else roles[0])
    task_id = f"fix_email_{request.template}"  # readable: `sopflow task done D-1 fix_email_welcome`
    if task_id in state.tasks:
        task_id = f"{task_id}_{seq}"
    base_keys = set(template_context(playbook, state, {}))
    what = f"could not be delivered to {', '.join(roles)}" if refused else f"could not be sent ({reason})"
    fix = "correct the address" if refused else "correct it"
    task = TaskState(
        id=task_id,
        title=f"Email '{request.template}' {what}: {fix} (marking this done sends it again)",
        owner=owner,
        opened_at=at,
        resend=Resend(
            template=request.template,
            playbook=request.playbook,
            to=roles,
            from_role=request.reply_to.role if request.reply_to else None,
            extra={k: v for k, v in request.context.items() if k not in base_keys},
            delivered=delivered,
        ),
    )
    owner_email = role_address(playbook, context(playbook, state), owner)[0] if owner in playbook.roles else None
    notify = bool(request.playbook != SYSTEM_TEMPLATES and owner_email and owner_email.lower() not in refused_set)
    return Undeliverable(task=task, roles=roles, owner=owner, notify=notify)
