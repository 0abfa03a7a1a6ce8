"""The forecast: every live client's own playbook run forward on a simulated clock, counted per week (issue 18).

A CRM reports on the past; because every rule of a lifecycle is a plain function over its state (`sopflow.engine`),
sopflow can also run each client's lifecycle ahead of time with nothing but the clock moving, and tell a manager what
the coming weeks will demand: visits and meetings due, tasks falling due, emails to be sent, deadlines that will
expire, escalations that will fire.

`Simulation` is the workflow's main loop without Temporal (`workflows.lifecycle.ClientLifecycle`): it fires the
engine's timers a `REQUESTS_FIRST` after their moment, applies a request after the timers due strictly before it, and
checks each request as the update validator would before applying it. The differential test
(`tests/workflows/test_forecast_against_rehearsal.py`) holds it to that: every shipped scenario, replayed here from
its start, writes the same timeline as the real workflow rehearsed on the time-skipping server.

Two assumptions bound what people will do, so a manager sees the range:
- "nothing happens" (the pessimistic default): no visit is logged, no task is done, no signature or form arrives;
- "on time": every touchpoint is logged and every task done on its due date (the best a team can do without the
  client's own actions: signatures and other forms still do not arrive).
"""

from __future__ import annotations

import gc
import multiprocessing
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import partial
from itertools import repeat
from typing import Any, Literal

from sopflow.business_calendar import Clock, zone_field
from sopflow.conditions import role_owner_id
from sopflow.constants import REQUESTS_FIRST
from sopflow.durations import Duration
from sopflow.engine import Engine
from sopflow.errors import Rejected
from sopflow.models import (
    Advance,
    ClientSeed,
    Close,
    CompleteTask,
    ExternalEvent,
    JournalEntry,
    LifecycleState,
    MigratePlaybook,
    SetFields,
    SubmitForm,
)
from sopflow.playbook import Playbook, shared

Assumption = Literal["nothing", "on_time"]
ASSUMPTIONS: dict[Assumption, str] = {
    "nothing": "nothing happens: no visit logged, no task done, no signature or form arrives "
    "(every deadline expires, every visit is missed)",
    "on_time": "on time: every touchpoint logged and every task done on its due date "
    "(signatures and other forms still do not arrive)",
}
# What a week demands, in the order the tables and the chart show it.
CATEGORIES: dict[str, str] = {
    "visits": "site visits due",
    "meetings": "meetings",
    "tasks": "tasks falling due",
    "emails": "emails to be sent",
    "deadlines": "deadlines expiring",
    "escalations": "escalations",
}
GroupBy = Literal["owner", "role", "playbook", "stage"]
MAX_WEEKS = 520
UNASSIGNED = "unassigned"
Request = SubmitForm | CompleteTask | Advance | SetFields | Close | MigratePlaybook | ExternalEvent
_JUST_BEFORE = timedelta(microseconds=1)
# Like `Engine.tick`'s bound: wake-ups fired at one moment before a simulation gives up on a client.
MAX_FIRED_AT_ONCE = 1000
# Below this many clients per process, starting processes costs more than it saves; more chunks than processes
# keep both cores busy to the end.
MIN_CLIENTS_PER_PROCESS = 500
CHUNKS_PER_PROCESS = 4


class Projection(Engine):
    """`Engine` for simulation: no rollback copies and no email bodies, because a forecast runs thousands of
    client-years and throws every state away. A rule that raises is not rolled back (there is no copy to roll back
    to): `fault` says which, and the simulation stops that client there instead of forecasting from a broken state.

    Requests are checked before they are applied (as the workflow's validators do), so a refusal changes nothing."""

    fault: str | None = None
    # What `_classify` and `_replan` last read (see `_inputs`), so that a settle after a timer, which changes neither
    # fields nor forms nor stage, does not compute them again: about half of a simulation's time.
    _classified: tuple[Any, ...] | None = None
    _replanned: tuple[Any, ...] | None = None

    def _inputs(self) -> tuple[Any, ...]:
        """Everything `_classify` and `_replan` depend on besides the clock: given the same, both change nothing (the
        test against every rehearsal holds this to the engine's own behaviour)."""
        state = self.state
        forms = {form_id: record.count for form_id, record in state.forms.items()}
        return (
            id(self.playbook),
            state.stage,
            dict(state.fields),
            forms,
            tuple(state.tasks),
            tuple(state.appointments),
        )

    def _classify(self, now: datetime) -> None:
        if self._classified != self._inputs():
            super()._classify(now)
            self._classified = self._inputs()

    def _replan(self, now: datetime) -> None:
        if self._replanned != self._inputs():
            super()._replan(now)
            self._replanned = self._inputs()

    _clock: tuple[Playbook, Any, Clock] | None = None

    @property
    def clock(self) -> Clock:
        """The deal's clock, kept answers and all (`MemoClock`), looked up again only when the playbook or the
        deal's zone changed: the engine asks for it a few times per timer it lists."""
        playbook = self.playbook
        key = zone_field(playbook)
        zone = self.state.fields.get(key) if key is not None else None
        kept = self._clock
        if kept is None or kept[0] is not playbook or kept[1] != zone:
            kept = self._clock = playbook, zone, MemoClock.around(Clock.of(playbook, self.state.fields))
        return kept[2]

    def _save(self) -> tuple[LifecycleState, Playbook, int]:
        return self.state, self.playbook, len(self.steps)

    def _fault(self, now: datetime, what: str, exc: Exception) -> JournalEntry:
        self.fault = f"{what}: {type(exc).__name__}"
        return super()._fault(now, what, exc)

    def template_context(self, extra: dict[str, Any]) -> dict[str, Any]:
        return {}


@dataclass(frozen=True, slots=True)
class Item:
    """One thing a week demands of somebody: when, what, in which stage, and the role it falls on."""

    at: datetime
    category: str
    stage: str
    role: str | None


class Simulation:
    """One lifecycle driven as `ClientLifecycle` drives it, on a clock that only moves when told to.

    `entries` collects the timeline the engine writes; `visits_logged` the touchpoints the "on time" assumption made.
    """

    def __init__(self, engine: Projection, now: datetime, assumption: Assumption = "nothing") -> None:
        self.engine = engine
        self.now = now
        self.assumption = assumption
        # What the engine queued before (a new lifecycle's start) is the simulation's first entries.
        self.entries: list[JournalEntry] = [step.entry for step in engine.take_steps()]
        self.visits_logged: list[tuple[datetime, str]] = []
        self._blocked: set[str] = set()

    @property
    def stopped(self) -> bool:
        return self.engine.closed or self.engine.fault is not None

    def run_until(self, until: datetime, *, inclusive: bool = True) -> None:
        """Fire every timer due by `until` (strictly before it with `inclusive=False`: the timers a request made at
        `until` comes after), with the assumption's own actions in between.

        As the workflow does: a timer wakes it `REQUESTS_FIRST` after its moment (or just before a request that comes
        sooner: `_catch_up`), and that wake-up fires everything due by then (`Engine.tick`), one at a time here so
        that each wake-up is looked up once."""
        engine = self.engine
        fired_at_this_moment = 0
        while not self.stopped:
            wake = engine.next_wakeup()
            action = self._next_action() if self.assumption == "on_time" else None
            if action is not None and (wake is None or action[0] <= wake.at):
                at = max(action[0], self.now)
                if at > until or (at == until and not inclusive):
                    break
                self.now = at
                action[1](at)
                self._collect()
                continue
            if wake is None or wake.at > until or (wake.at == until and not inclusive):
                break
            if wake.at > self.now:  # a new wake-up; else due within the current one
                fire_at = wake.at + REQUESTS_FIRST
                self.now = fire_at if inclusive or fire_at < until else until - _JUST_BEFORE
                fired_at_this_moment = 0
            fired_at_this_moment += 1
            if fired_at_this_moment > MAX_FIRED_AT_ONCE:  # as `tick`: rules that never move their moment on
                engine.fault = "timers: no progress"
                break
            engine.fire(wake, self.now)
            self._collect()

    def request(self, request: Request, at: datetime) -> Rejected | None:
        """Apply a request made at `at`, after the timers due before it; a refusal (what the update validator would
        answer) is returned and changes nothing. Events cannot be refused (a signal): one that does not apply is
        journaled as ignored. Account claims are taken as granted: a forecast runs without the records store."""
        self.run_until(at, inclusive=False)
        self.now = max(self.now, at)
        engine = self.engine
        try:
            if isinstance(request, ExternalEvent):
                engine.attempt("event", lambda: engine.event(request, at), at)
            elif isinstance(request, SubmitForm):
                checked = engine.check_submit(request, at)
                engine.attempt("submit_form", lambda: engine.submit_form(request, at, checked), at)
            elif isinstance(request, CompleteTask):
                engine.check_task(request)
                engine.attempt("complete_task", lambda: engine.complete_task(request, at), at)
            elif isinstance(request, Advance):
                engine.check_advance(request)
                engine.attempt("advance", lambda: engine.advance(request, at), at)
            elif isinstance(request, SetFields):
                engine.check_set_fields(request)
                engine.attempt("set_fields", lambda: engine.set_fields(request, at), at)
            elif isinstance(request, Close):
                engine.check_close(request)
                engine.attempt("close", lambda: engine.close(request, at), at)
            else:
                engine.check_migrate(request)
                engine.attempt("migrate_playbook", lambda: engine.migrate(request, at), at)
        except Rejected as exc:
            return exc
        finally:
            self._collect()
        self._blocked.clear()
        return None

    # --- the "on time" assumption --------------------------------------------------------------------------------

    def _next_action(self) -> tuple[datetime, Callable[[datetime], None]] | None:
        """The earliest thing the team does on time: a task done on its due date, or the cadence's touchpoint logged
        on its due date (one already late is done at once)."""
        engine, state = self.engine, self.engine.state
        candidates: list[tuple[datetime, Callable[[datetime], None]]] = [
            (task.due_at, partial(self._do_task, task.id))
            for task in state.tasks.values()
            if task.done_at is None and task.due_at is not None and task.id not in self._blocked
        ]
        if state.cadence is not None and engine.stage.cadence is not None:
            candidates.append((state.cadence.next_due, self._log_visit))
        return min(candidates, key=lambda c: c[0], default=None)

    def _do_task(self, task_id: str, at: datetime) -> None:
        engine = self.engine
        request = CompleteTask(task=task_id, actor="forecast")
        try:
            engine.check_task(request)
        except Rejected:
            self._blocked.add(task_id)  # waits for another task: tried again once something is done
            return
        engine.attempt("complete_task", lambda: engine.complete_task(request, at), at)
        self._blocked.clear()

    def _log_visit(self, at: datetime) -> None:
        self.visits_logged.append((at, self.engine.state.stage))
        self.engine.visit_logged(at)

    def _collect(self) -> None:
        self.entries.extend(step.entry for step in self.engine.take_steps())


# --- from a client's state to what each week demands ------------------------------------------------------------------


@dataclass
class ClientForecast:
    """What one client's lifecycle demands between the forecast's start and its horizon, and who it falls on."""

    workflow_id: str
    playbook: str
    items: list[Item]
    # The client's zone, for the weeks its items fall in (its people's calendar, not UTC's).
    clock_date: Callable[[datetime], date]
    owners: dict[str, str]
    fault: str | None = None


def project(engine: Projection, start: datetime, until: datetime, assumption: Assumption) -> ClientForecast:
    """Run one client's engine from `start` to `until` with no requests but the assumption's."""
    playbook = engine.playbook
    sim = Simulation(engine, start, assumption)
    initial = _pending_items(engine, start)
    sim.run_until(until)
    items = (
        initial
        + items_of(sim.entries, playbook)
        + [Item(at, "visits", stage, playbook.stage(stage).owner) for at, stage in sim.visits_logged]
    )
    # What the simulation does is still to happen, even dated before `start` (a timer the lifecycle has not caught up
    # with yet: counted in the first week); what the state already held counts only when it falls due from now on.
    items = [item for item in _latest(items) if item.at < until]
    clock = engine.clock
    ctx = engine.context()
    owners = {role: role_owner_id(playbook, ctx, role) for role in {i.role for i in items if i.role}}
    return ClientForecast(engine.workflow_id, playbook.id, items, clock.local_date, owners, engine.fault)


def _pending_items(engine: Projection, start: datetime) -> list[Item]:
    """What the state already holds that falls due later: open tasks with a due date and booked meetings."""
    state, stage = engine.state, engine.stage
    items = [
        Item(task.due_at, "tasks", state.stage, task.owner)
        for task in state.tasks.values()
        if task.done_at is None and task.due_at is not None and task.due_at >= start
    ]
    items += [
        Item(planned.at, "meetings", state.stage, stage.owner)
        for planned in state.appointments.values()
        if planned.at >= start
    ]
    return items


def items_of(entries: Iterable[JournalEntry], playbook: Playbook) -> list[Item]:
    """The timeline entries a week's work is counted from. A task counts at its due moment, and a meeting at its
    start (a later entry for the same task or meeting moves it: `_latest`)."""
    items: list[Item] = []
    for entry in entries:
        kind, detail, stage = entry.kind, entry.detail, entry.stage
        owner = playbook.stage(stage).owner if playbook.has_stage(stage) else None
        if kind == "email" and detail.get("status") != "skipped":
            items.append(Item(entry.at, "emails", stage, owner))
        elif kind == "escalation":
            items.append(Item(entry.at, "escalations", stage, detail.get("owner") or owner))
        elif kind == "stage" and detail.get("trigger") == "deadline":
            items.append(Item(entry.at, "deadlines", detail.get("from") or stage, owner))
        elif kind == "visit_due":
            items.append(Item(entry.at, "visits", stage, owner))
        elif kind == "task" and detail.get("due_at") and detail.get("status") in ("opened", "rescheduled"):
            due = datetime.fromisoformat(detail["due_at"])
            items.append(_Keyed(due, "tasks", stage, detail.get("owner"), key=f"task:{detail['task']}"))
        elif kind == "appointment":
            starts = datetime.fromisoformat(detail["starts_at"])
            items.append(_Keyed(starts, "meetings", stage, owner, key=f"meeting:{detail['label']}"))
    return items


@dataclass(frozen=True, slots=True)
class _Keyed(Item):
    """An item a later entry can move (a task rescheduled, a meeting booked for another time)."""

    key: str = ""


def _latest(items: list[Item]) -> list[Item]:
    """Items with a key keep only their last version: a rescheduled task is due once, at its new moment."""
    keyed: dict[str, Item] = {}
    plain: list[Item] = []
    for item in items:
        if isinstance(item, _Keyed):
            keyed[item.key] = item
        else:
            plain.append(item)
    return plain + list(keyed.values())


# --- weeks, groups, the whole book ------------------------------------------------------------------------------------


@dataclass
class Forecast:
    """Counts per group, category and week (weeks start on the Monday of the forecast's first day)."""

    monday: date
    weeks: int
    assumption: Assumption
    by: GroupBy
    counts: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    clients: int = 0
    faults: list[str] = field(default_factory=list)

    def add(self, client: ClientForecast) -> None:
        self.clients += 1
        if client.fault is not None:
            self.faults.append(client.workflow_id)
        for item in client.items:
            week = max(0, (client.clock_date(item.at) - self.monday).days // 7)
            if week >= self.weeks:
                continue
            group = self._group(client, item)
            per_category = self.counts.setdefault(group, {c: [0] * self.weeks for c in CATEGORIES})
            per_category[item.category][week] += 1

    def _group(self, client: ClientForecast, item: Item) -> str:
        if self.by == "playbook":
            return client.playbook
        if self.by == "stage":
            return item.stage
        if item.role is None:
            return UNASSIGNED
        return item.role if self.by == "role" else client.owners.get(item.role, item.role)

    def merge(self, other: Forecast) -> None:
        """Add another part of the same book's forecast (another process's clients)."""
        for group, per_category in other.counts.items():
            mine = self.counts.setdefault(group, {c: [0] * self.weeks for c in CATEGORIES})
            for category, values in per_category.items():
                mine[category] = [a + b for a, b in zip(mine[category], values, strict=True)]
        self.clients += other.clients
        self.faults += other.faults

    def totals(self) -> dict[str, list[int]]:
        """Every group summed: what the whole book demands per category and week."""
        total = {c: [0] * self.weeks for c in CATEGORIES}
        for per_category in self.counts.values():
            for category, values in per_category.items():
                total[category] = [a + b for a, b in zip(total[category], values, strict=True)]
        return total

    def week_starts(self) -> list[date]:
        return [self.monday + timedelta(weeks=w) for w in range(self.weeks)]


def horizon(today: date, weeks: int) -> tuple[date, datetime]:
    """The Monday of `today`'s week and the moment the forecast runs to: a day past the last week's end in UTC, so
    clients west and east of UTC have all their last week's local days; later items are dropped by week."""
    monday = today - timedelta(days=today.weekday())
    return monday, datetime.combine(monday + timedelta(weeks=weeks, days=1), time(0), UTC)


@dataclass(frozen=True)
class Refusal:
    """A client the what-if could not move onto the edited playbook, and `sopflow playbook migrate`'s reason."""

    workflow_id: str
    deal_id: str
    reason: str


def forecast(
    seeds: Sequence[ClientSeed],
    now: datetime,
    weeks: int,
    assumption: Assumption,
    by: GroupBy,
    what_if: Playbook | None = None,
) -> tuple[Forecast, list[Refusal]]:
    """Each seed run from `now` for `weeks`. With `what_if`, the clients of that playbook run as if migrated to it
    first (the same rules as `sopflow playbook migrate`); those the migration would refuse keep their own version and
    are returned with the reason."""
    monday, until = horizon(now.date(), weeks)
    result, refused = Forecast(monday, weeks, assumption, by), []
    for seed in seeds:
        # Its own copy (the seed serves every assumption); dumped and validated again, which is twice as fast as
        # a deep copy of the models.
        state = LifecycleState.model_validate(seed.state.model_dump())
        engine = Projection(seed.playbook, state, seed.workflow_id)
        if what_if is not None and seed.playbook.id == what_if.id:
            reason = migrate(engine, what_if, now)
            if reason is not None:
                refused.append(Refusal(seed.workflow_id, seed.deal_id, reason))
        result.add(project(engine, now, until, assumption))
    return result, refused


def migrate(engine: Projection, playbook: Playbook, now: datetime) -> str | None:
    """Move a client onto `playbook` as `sopflow playbook migrate` would; the refusal's reason, or None.

    An edited copy that kept its version number is taken as the next version: a what-if asks what the change would
    do, and a copy not yet numbered would otherwise be refused for every client."""
    if playbook.version <= engine.playbook.version:
        playbook = playbook.model_copy(update={"version": engine.playbook.version + 1})
    request = MigratePlaybook(playbook=playbook, actor="forecast")
    try:
        engine.check_migrate(request)
    except Rejected as exc:
        return str(exc)
    engine.attempt("migrate_playbook", lambda: engine.migrate(request, now), now)
    engine.take_steps()
    return None


Which = Literal["today", "what_if"]


@dataclass
class Book:
    """What a manager reads: the forecast under each assumption, today's and (with a what-if) the edited playbook's,
    and the clients the what-if's migration would refuse."""

    forecasts: dict[tuple[Which, Assumption], Forecast]
    refused: list[Refusal]

    def merge(self, other: Book) -> None:
        for key, part in other.forecasts.items():
            self.forecasts[key].merge(part)
        self.refused += other.refused


def forecast_book(
    seeds: Sequence[ClientSeed],
    now: datetime,
    weeks: int,
    by: GroupBy,
    what_if: Playbook | None = None,
    processes: int = 1,
) -> Book:
    """Every assumption (and the what-if) for every seed, spread over `processes` worker processes: the forecast is
    Python CPU work, about half a millisecond per client-year, so 10,000 clients want every core. The result is the same
    for any number of processes (each client is simulated alone; the counts are sums).

    Spawned, never forked: the CLI that calls this may hold the Temporal client's threads (`forecast_seed` queries),
    and a fork copies their locks in whatever state they are."""
    if processes <= 1 or len(seeds) < MIN_CLIENTS_PER_PROCESS * 2:
        return _book(seeds, now, weeks, by, what_if)
    parts = processes * CHUNKS_PER_PROCESS
    size = -(-len(seeds) // parts)
    chunks = (_packed(seeds[i : i + size]) for i in range(0, len(seeds), size))
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        books = list(pool.map(_unpacked_book, chunks, *(repeat(arg) for arg in (now, weeks, by, what_if))))
    book = books[0]
    for other in books[1:]:
        book.merge(other)
    return book


def _book(seeds: Sequence[ClientSeed], now: datetime, weeks: int, by: GroupBy, what_if: Playbook | None = None) -> Book:
    kinds: list[Which] = ["today", "what_if"] if what_if is not None else ["today"]
    forecasts: dict[tuple[Which, Assumption], Forecast] = {}
    refused: list[Refusal] = []
    with _seeds_left_out_of_collection():
        for which in kinds:
            for assumption in ASSUMPTIONS:
                edit = what_if if which == "what_if" else None
                forecasts[which, assumption], turned_down = forecast(seeds, now, weeks, assumption, by, edit)
                if assumption == "nothing":
                    refused += turned_down
    return Book(forecasts, refused)


@contextmanager
def _seeds_left_out_of_collection() -> Iterator[None]:
    """While the book runs, Python's cyclic collector leaves what already exists alone (the seeds: 10,000 states of
    nested models), so its full passes, which the simulation's many short-lived objects set off, do not walk them
    again and again (what that saves is within the noise of these shared cores: bench/RESULTS.md). Put back after,
    so a long-lived process (the web board) collects them as usual once they are garbage."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


# A chunk of seeds on its way to a process: the playbooks once, each state as JSON. Pickled models cost twice as much
# to load as JSON costs to validate, and a state is copied from JSON for each assumption anyway.
_Packed = tuple[dict[int, str], list[tuple[str, str, int, str]]]


def _packed(seeds: Sequence[ClientSeed]) -> _Packed:
    playbooks: dict[int, str] = {}
    clients = []
    for seed in seeds:
        key = id(seed.playbook)
        if key not in playbooks:
            playbooks[key] = seed.playbook.model_dump_json()
        clients.append((seed.workflow_id, seed.deal_id, key, seed.state.model_dump_json()))
    return playbooks, clients


def _unpacked_book(packed: _Packed, now: datetime, weeks: int, by: GroupBy, what_if: Playbook | None) -> Book:
    # One copy per playbook in this process across its chunks (`shared`): the deals' clocks and their holiday
    # calendars are cached per playbook object, and computing them again for every chunk cost a fifth of its time.
    playbooks = {key: shared(Playbook.model_validate_json(text)) for key, text in packed[0].items()}
    seeds = [
        ClientSeed.model_construct(
            workflow_id=workflow_id,
            deal_id=deal_id,
            playbook=playbooks[key],
            state=LifecycleState.model_validate_json(state),
            as_of=now,
        )
        for workflow_id, deal_id, key, state in packed[1]
    ]
    return _book(seeds, now, weeks, by, what_if)


@dataclass(frozen=True)
class MemoClock(Clock):
    """A deal clock whose answers are kept: a simulation lists its timers again after every one it fires, asking the
    same questions of the calendar each time (a third of a forecast's time went there). Shared by every client on
    that clock in a process, and emptied when it grows past `_MEMO_KEPT` answers."""

    _memo: dict[tuple[Any, ...], datetime] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def around(cls, clock: Clock) -> MemoClock:
        found = _MEMO_CLOCKS.get(id(clock))
        if found is None or found[0] is not clock:
            if len(_MEMO_CLOCKS) >= _MEMO_CLOCKS_KEPT:
                _MEMO_CLOCKS.clear()
            memo = cls(tz=clock.tz, calendar=clock.calendar, zoned=clock.zoned, _days_off=clock._days_off)
            found = _MEMO_CLOCKS[id(clock)] = (clock, memo)
        return found[1]

    def _kept(self, key: tuple[Any, ...], answer: Callable[[], datetime]) -> datetime:
        found = self._memo.get(key)
        if found is None:
            if len(self._memo) >= _MEMO_KEPT:
                self._memo.clear()
            found = self._memo[key] = answer()
        return found

    def after(self, span: Duration, moment: datetime) -> datetime:
        return self._kept((1, span, moment), lambda: Clock.after(self, span, moment))

    def before(self, span: Duration, moment: datetime) -> datetime:
        return self._kept((-1, span, moment), lambda: Clock.before(self, span, moment))

    def hold(self, moment: datetime) -> datetime:
        return self._kept((0, moment), lambda: Clock.hold(self, moment))


_MEMO_CLOCKS: dict[int, tuple[Clock, MemoClock]] = {}
_MEMO_CLOCKS_KEPT = 256
_MEMO_KEPT = 200_000
