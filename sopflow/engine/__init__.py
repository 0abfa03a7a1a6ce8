"""The lifecycle rules as plain, deterministic functions over `LifecycleState`.

The workflow is a thin interpreter: it hands requests and the current time to `Engine`, which changes the state
and queues `Step`s (timeline entries, some carrying an email to send). Keeping every rule here means the rules are
unit-tested without Temporal, and the workflow's determinism only depends on `now` being workflow time.

The rules are layered, each module on the one before:
- `journal`: the state, the queued steps and what the workflow reports back about them, the read-only views;
- `transitions`: stages and what a stage sets up on entry (tasks, deadline, cadence, appointments, hand-offs);
- `timers`: the one timer table, every moment the lifecycle waits for with the rule that runs at it;
- `requests`: `Engine`, what people and systems ask. `check_*` methods only read: they back update validators,
  which must reject bad requests before anything is written to history. The matching mutators re-run them, so a
  request is never applied unchecked.
"""

from sopflow.engine.journal import Step, Wakeup
from sopflow.engine.requests import Engine, account_key, check_deal_fields

__all__ = ["Engine", "Step", "Wakeup", "account_key", "check_deal_fields"]
