"""The spellings from before the noun-verb tree, kept working for one release and hidden from `--help`.

`sopflow status D-1` is `sopflow deal status D-1`, `sopflow migrate P` is `sopflow playbook migrate P`, and so on:
the same commands (same options, same output), registered a second time under the old name. `sopflow close` keeps
its `--lost`/`--cancelled` flags, which `deal close`'s positional OUTCOME replaces. Remove this module (and its
tests) in the release after the one that introduced `deal …`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from starter.cli.apps import app
from starter.cli.common import UPDATE_WAIT, ActorOpt, DealIdArg, FieldOpt, KeyOpt, WaitOpt, connects
from starter.cli.deal_changes import (
    CloseOutcome,
    CloseStageOpt,
    ReasonOpt,
    close_deal,
    deal_advance,
    deal_event,
    deal_set,
)
from starter.cli.deals import deal_list, deal_status
from starter.cli.playbooks import playbook_migrate
from starter.cli.render import ObjectOutputOpt, Output, fail

# Old name -> the command it now is.
MOVED = {
    "status": ("deal status", deal_status),
    "list": ("deal list", deal_list),
    "advance": ("deal advance", deal_advance),
    "set": ("deal set", deal_set),
    "event": ("deal event", deal_event),
    "migrate": ("playbook migrate", playbook_migrate),
}
for _old, (_new, _command) in MOVED.items():
    app.command(_old, hidden=True, help=f"Old spelling of `sopflow {_new}`.")(_command)


@app.command("close", hidden=True)
@connects
def close(
    deal_id: DealIdArg,
    reason: ReasonOpt,
    outcome: Annotated[CloseOutcome | None, typer.Argument(metavar="OUTCOME", help="lost or cancelled")] = None,
    lost: Annotated[bool, typer.Option("--lost", hidden=True, help="same as OUTCOME lost")] = False,
    cancelled: Annotated[bool, typer.Option("--cancelled", hidden=True, help="same as OUTCOME cancelled")] = False,
    stage: CloseStageOpt = None,
    field: FieldOpt = None,
    actor: ActorOpt = "cli",
    output: ObjectOutputOpt = Output.text,
    idempotency_key: KeyOpt = None,
    wait: WaitOpt = UPDATE_WAIT,
) -> None:
    """Old spelling of `sopflow deal close DEAL_ID OUTCOME` (`sopflow close DEAL_ID --lost|--cancelled`)."""
    flags = [CloseOutcome.lost] * lost + [CloseOutcome.cancelled] * cancelled
    chosen = {*flags, *([outcome] if outcome else [])}
    if len(chosen) != 1:
        fail("say how the deal ends: sopflow deal close DEAL_ID lost|cancelled --reason TEXT")
    close_deal(deal_id, chosen.pop(), reason, stage, field, actor, output, idempotency_key, wait)
