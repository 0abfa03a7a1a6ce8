"""The benches run end to end at tiny sizes and report what they claim: every figure's counts add up.

No timing is asserted (the machine is shared; figures belong in bench/RESULTS.md): these tests prove the benches
measure the right work, e.g. that every site visit's email reached the sink and the bare workflow did the same
updates and signals as the engine.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from bench import (
    answers,
    forecast,
    forecast_source,
    io_work,
    latency,
    long_life,
    sandbox,
    scale,
    sqlite_pragmas,
    throughput,
    work_queue,
)
from bench.common import (
    ACTIVATIONS,
    EVENT_LOOP,
    EXITED,
    IO_THREADS,
    OTHER_PYTHON,
    RUST_CORE,
    cpu_by_group,
    percentile,
    table,
)
from bench.handwritten import SafeBalanceByHand
from bench.safe_balance import DEAL, EMAILS_TO_ONGOING, apply, bare_plan, lifecycle, playbook, today
from sopflow.config import PROJECT_ROOT
from sopflow.engine import Engine
from sopflow.models import Advance, CompleteTask, ExternalEvent, SetFields, SubmitForm, workflow_id
from sopflow.templates import TemplateRenderer, links_for


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 1001)]
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 99)) == (500.0, 950.0, 990.0)
    assert percentile([7.0], 99) == 7.0


def test_table_aligns_numbers_right():
    text = table("t", ["name", "n"], [["a", 1], ["bb", 1234]])
    assert text.splitlines()[3:] == ["a         1", "bb    1,234"]


def test_bare_plan_has_the_lifecycle_requests_and_its_emails():
    plan = bare_plan(playbook(), lifecycle(1, 2, today()), datetime.now(UTC))
    totals = plan.totals()
    assert totals["updates"] == 12 and totals["signals"] == 1  # 11 requests to ongoing + 2 visits, one a signal
    assert sum(step.emails for step in plan.steps) == EMAILS_TO_ONGOING + 2
    assert sum(step.handler_activities for step in plan.steps) == 1  # the targeting form's account claim
    # a record per request (a regular activity after an update, local otherwise), and one local record of its
    # delivered emails per request that sent any
    updates, emailing = totals["updates"], sum(step.emails > 0 for step in plan.steps)
    assert totals["activities"] == EMAILS_TO_ONGOING + 2 + 1 + updates  # the emails, the claim, the update records
    assert totals["local_activities"] == len(plan.steps) - updates + emailing


def test_worker_cpu_is_split_by_thread_and_adds_up():
    pid = 100
    before = {100: ("python", 1.0), 101: ("sop-activation", 2.0), 102: ("sop-io", 0.5), 103: ("tokio-runtime-w", 1.0)}
    after = {**before, 100: ("python", 3.0), 101: ("sop-activation", 5.0), 102: ("sop-io", 1.5)}
    after |= {103: ("tokio-runtime-w", 1.5), 104: ("python", 0.25), 105: ("sop-activation", 0.75)}  # 104, 105 new
    groups = cpu_by_group(pid, before, after, total=8.0)
    assert groups == {
        EVENT_LOOP: 2.0,  # the main thread runs the event loop
        IO_THREADS: 1.0,
        ACTIVATIONS: 3.75,
        RUST_CORE: 0.5,  # a thread with a name of its own
        OTHER_PYTHON: 0.25,  # a Python thread nobody named has the process's name
        EXITED: 0.5,  # what the process used beyond its living threads
    }


def test_handwritten_sop_writes_and_sends_what_the_engine_does():
    """Entry for entry, email for email (rendered), snapshot and next wake-up after every request of the bench."""
    now = datetime(2026, 12, 3, 20, 0, tzinfo=UTC)  # a Thursday: US Eastern time, no holiday near
    book, renderer, links = playbook(), TemplateRenderer(PROJECT_ROOT / "templates"), links_for("http://x", "B-1")
    engine = Engine.start(book, "B-1", DEAL, now, workflow_id("B-1"), "bench")
    by_hand = SafeBalanceByHand.start(workflow_id("B-1"), "B-1", DEAL, now, "bench")
    handlers = {
        SubmitForm: by_hand.submit_form,
        CompleteTask: by_hand.complete_task,
        SetFields: by_hand.set_fields,
        Advance: by_hand.advance,
        ExternalEvent: by_hand.event,
    }
    for n, request in enumerate([None, *lifecycle(1, 2, now.date())]):
        at = now + timedelta(seconds=n)
        if request is not None:
            arg = request.arg
            if isinstance(arg, SubmitForm):
                assert by_hand.claim(arg, at) == engine.check_submit(arg, at).claim
            apply(engine, request, at)
            handlers[type(arg)](arg, at)  # type: ignore[operator]
        theirs, ours = engine.take_steps(), by_hand.take_steps()
        assert [s.entry for s in ours] == [s.entry for s in theirs]
        for mine, its in zip(ours, theirs, strict=True):
            assert (mine.email is None) == (its.email is None)
            if mine.email is not None and its.email is not None:
                assert mine.email.model_dump(exclude={"context"}) == its.email.model_dump(exclude={"context"})
                render = [
                    renderer.render("safe_balance", e.template, {**e.context, "links": links})
                    for e in (mine.email, its.email)
                ]
                assert render[0] == render[1]
        assert by_hand.snapshot() == engine.snapshot()
        wake = engine.next_wakeup()
        assert by_hand.next_wakeup() == (None if wake is None else (wake.at, wake.summary))
    assert by_hand.stage == engine.state.stage == "ongoing"


async def test_throughput_engine_handwritten_and_bare_do_the_same_requests():
    result = await throughput.run(clients=3, concurrency=3, visits=1)
    json.dumps(result)
    engine, hand, bare = result["engine"], result["handwritten"], result["bare"]
    assert engine["emails"] == hand["emails"] == 3 * (EMAILS_TO_ONGOING + 1)
    assert engine["records"] == hand["records"] and engine["records"]["journal"] > 0  # checked by the bench too
    for key in ("updates", "signals"):
        assert engine["per_client"][key] == hand["per_client"][key] == bare["per_client"][key]
        assert bare["per_client"][key] == result["bare_plan_totals"][key]
    assert engine["per_client"]["search_attribute_upserts"] > 0 == hand["per_client"]["search_attribute_upserts"]
    for phase in (engine, hand, bare):
        assert phase["events"] == round(phase["per_client"]["events"] * 3)
        assert phase["events_per_s"] > 0 and phase["server_rss_mb"] > 0 and phase["worker_rss_mb"] > 0
        cpu = phase["worker_cpu_per_lifecycle"]
        assert cpu["real_io_work"] + cpu["rest"] == pytest.approx(cpu["total"], abs=0.01)
        assert cpu[ACTIVATIONS] > 0 and cpu[EVENT_LOOP] > 0
    assert hand["worker_cpu_per_lifecycle"][IO_THREADS] > 0 == bare["worker_cpu_per_lifecycle"][IO_THREADS]
    assert result["ratio_events_per_s"] == pytest.approx(engine["events_per_s"] / bare["events_per_s"], abs=0.005)
    by_hand = result["ratios"]["handwritten"]["lifecycles_per_s"]
    assert by_hand == pytest.approx(engine["lifecycles_per_s"] / hand["lifecycles_per_s"], rel=0.02)  # rounded rates
    assert result["target_met"] == (by_hand >= throughput.TARGET_RATIO)
    assert "engine/handwritten" in throughput.render(result)


async def test_latency_counts_one_email_per_event():
    result = await latency.run(events=10, clients=3, concurrency=2)
    json.dumps(result)
    assert result["events"] == result["emails"] == 10
    email = result["email_ms"]
    assert 0 < email["p50"] <= email["p95"] <= email["p99"] <= email["max"]
    assert result["update_ms"]["p50"] <= email["p50"]  # the email follows the update's return
    assert "p99" in latency.render(result)


async def test_scale_opens_clients_and_probes_an_evicted_one():
    result = await scale.run(clients=4, cache=2, concurrency=4, probes=1, settle_pause=0)
    json.dumps(result)
    assert result["clients"] == 4 and result["first_clients_evicted"] is True
    assert result["loaded"]["worker_rss_mb"] > 0 and result["loaded"]["server_rss_mb"] > 0
    assert result["update_in_cache_ms"]["p50"] > 0 and result["update_not_in_cache_ms"]["p50"] > 0
    assert "evicted" in scale.render(result)


async def test_long_life_counts_every_run():
    result = await long_life.run(years=2)
    json.dumps(result)
    assert result["runs"] == len(result["per_run"]) >= 2  # continued as new after a year
    assert result["events"] == sum(r["events"] for r in result["per_run"]) == result["events_per_client_year"] * 2
    assert result["largest_run_events"] == max(r["events"] for r in result["per_run"])
    assert result["emails"] >= EMAILS_TO_ONGOING + result["site_visits"]  # plus visit reminders
    assert result["local_activities"] > 0 < result["activities"]  # records nobody waits for; emails, update records
    assert "client-year" in long_life.render(result)


def test_sqlite_pragmas_renders_both_settings():
    phase = {"events_per_s": 2.0, "server_cpu_seconds": 1.0, "worker_cpu_seconds": 1.0}
    result = {
        "pragmas": ["journal_mode=wal"],
        "clients": 1,
        "concurrency": 1,
        "engine": {"with": phase, "without": phase},
        "bare": {"with": phase, "without": phase},
        "ratio_engine": 1.0,
        "ratio_bare": 1.0,
        "target_ratio": 1.8,
        "target_met": False,
    }
    assert "MISSED" in sqlite_pragmas.render(result)


def test_work_queue_reads_every_item_it_wrote():
    """40 clients: 10 in pre-launch (4 open tasks each), 4 with a contract out, 26 with a visit due."""
    result = work_queue.run(clients=40)
    assert result["rows"] == {"deals": 40, "tasks": 40, "contacts": 80}
    assert result["reads"]["everything"]["items"] == 40 + 4 + 26
    # rep3@example.com is the rep of every 20th deal from the 4th: BENCH-3 (its onsite task) and BENCH-23 (same).
    assert result["reads"]["one person (address)"]["items"] == 2
    assert "Work queue over 40 open clients" in work_queue.render(result)


def test_forecast_source_reads_every_client_it_wrote():
    """40 clients with 30 journal entries each; every tenth has entries newer than its stored state."""
    result = forecast_source.run(clients=40)
    assert result["rows"] == {"deals": 40, "journal": 40 * forecast_source.JOURNAL, "states": 40}
    assert (result["seeds"], result["stale"]) == (36, 4)
    assert "Forecast source over 40 live clients" in forecast_source.render(result)


async def test_sandbox_replays_with_every_runner_and_reports_each_ones_cost():
    result = await sandbox.run(replays=1)
    assert set(result["sandbox_cost_ms"]["safe_balance_declined.run1.json"]) == set(sandbox.SANDBOXED)
    assert "sopflow" in sandbox.SANDBOXED and "unsandboxed" not in sandbox.SANDBOXED
    assert "Sandbox: median per replay" in sandbox.report(result)
    assert set(result["sandbox_cost_cpu_ms"]["safe_balance_declined.run1.json"]) == set(sandbox.SANDBOXED)


async def test_io_work_sends_every_email_and_records_every_batch_of_its_clients():
    result = await io_work.run(clients=1)
    assert result["emails"] == EMAILS_TO_ONGOING + 3
    assert result["batches"] > 0 and result["email_cpu_ms"] > 0 and result["batch_cpu_ms"] > 0
    assert "send_email, per email" in io_work.render(result)


async def test_answers_compares_the_same_updates_answered_small_and_in_full():
    result = await answers.run(rounds=1)
    before, after = result["figures"]["before (full status)"], result["figures"]["after (UpdateResult)"]
    assert before["updates"] == after["updates"] > 0
    assert after["answer_bytes_max"] < before["answer_bytes_mean"]
    assert "Update answers" in answers.render(result)


def test_forecast_runs_a_book_across_the_shipped_playbooks_and_prints_its_figures():
    result = forecast.run(clients=40, weeks=4, processes=(1,))
    assert len(result["playbooks"]) >= 5
    assert result["figures"]["1 process"]["faults"] == 0
    assert "Forecast: 40 live clients x 4 weeks" in forecast.render(result)
