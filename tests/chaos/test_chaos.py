"""The fault-injection run, small: `make chaos` runs 200 clients; this one keeps `make test` honest about it."""

from __future__ import annotations

from pathlib import Path

from tests.chaos.harness import ChaosConfig, print_report, run_chaos


async def test_worker_kills_a_server_restart_and_a_flaky_relay_lose_and_duplicate_nothing(tmp_path: Path):
    config = ChaosConfig(clients=8, kills=1, restarts=1, smtp_fail_every=5, interval=2.0)
    report = await run_chaos(config, tmp_path)
    print_report(report)

    assert report.problems == []
    assert (report.kills, report.server_restarts) == (1, 1)
    assert report.smtp_dropped > 0 and report.smtp_deferred > 0  # the relay really was flaky
    assert report.emails_arrived == report.emails_expected > 0
