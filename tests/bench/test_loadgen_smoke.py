"""The load generator, with tiny numbers, against our server started from its CLI on SQLite.

Proves that loadgen.py runs end to end and reports sane numbers; the benchmark itself is
``make bench`` (tests/bench/compare.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.interop.harness import RunningServer, start_our_homeserver

LOADGEN = Path(__file__).resolve().parent / "loadgen.py"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = start_our_homeserver(
        tmp_path / "ours",
        engine="sqlite",
        patch_config=lambda config: config.update({"presence": {"enabled": False}, "bcrypt_rounds": 4}),
    )
    try:
        yield running
    finally:
        problem = running.stop()
        assert problem is None, f"{problem}\n{running.log_tail()}"


def run_loadgen(server: RunningServer, *extra: str) -> dict[str, Any]:
    argv = [
        sys.executable,
        str(LOADGEN),
        "--url",
        server.client_url,
        f"--shared-secret={server.registration_shared_secret}",
        "--pid",
        str(server.process.pid),
        "--json",
        *extra,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=45)
    assert done.returncode == 0, f"loadgen failed:\n{done.stdout}\n{done.stderr}\n{server.log_tail()}"
    return dict(json.loads(done.stdout))


def test_loadgen_reports_sane_numbers(server: RunningServer) -> None:
    results = run_loadgen(
        server,
        *("--users", "3", "--rooms", "2", "--rooms-per-user", "2", "--messages", "30", "--concurrency", "3"),
        *("--initial-sync-rooms", "4", "--initial-sync-messages", "1", "--initial-sync-runs", "2"),
        *("--timeout", "40", "--drain-timeout", "10"),
    )
    m, c = results["metrics"], results["counts"]
    assert results["unavailable"] == {}, results
    assert c["users_registered"] == 3 and c["rooms_created"] == 2
    assert c["messages_sent"] == 30 and c["messages_failed"] == 0
    # Every message reaches both other members of its room, and only once each.
    assert c["messages_delivered"] == 30 and c["messages_never_delivered"] == 0
    assert c["deliveries"] == c["deliveries_expected"] == 60
    assert 0 < m["throughput_msg_s"] < 100_000
    assert 0 < m["latency_p50_ms"] <= m["latency_p99_ms"] < 10_000
    assert m["fanout_latency_p50_ms"] >= m["latency_p50_ms"]
    assert 0 < m["send_rtt_p50_ms"] <= m["send_rtt_p99_ms"]
    assert 0 < m["initial_sync_s"] < 10 and c["initial_sync_rooms_seen"] == c["initial_sync_rooms"] == 4
    # A Python process serving HTTP is tens of MB, never under 10 or over a few GB.
    assert 10 < m["peak_rss_mb"] < 4096 and m["rss_start_mb"] <= m["peak_rss_mb"]
    assert m["server_cpu_ms_per_msg"] > 0
    # Room-ID collisions on concurrent createRoom are reported and retried, not fatal.
    assert all(e["phase"] == "initial_sync_setup" and e["status"] == 400 for e in results["errors"]), results["errors"]


def test_loadgen_reports_na_instead_of_crashing(server: RunningServer) -> None:
    """A wrong shared secret: every metric is n/a with the HTTP error, and the run ends by itself."""
    argv = [sys.executable, str(LOADGEN), "--url", server.client_url, "--shared-secret=wrong"]
    done = subprocess.run(
        [*argv, "--users", "2", "--messages", "1", "--json"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert results["metrics"]["throughput_msg_s"] is None
    assert "POST /_synapse/admin/v1/register" in results["unavailable"]["throughput_msg_s"]
    assert results["errors"][0]["status"] in (401, 403)


def test_loadgen_refuses_non_loopback_targets() -> None:
    done = subprocess.run(
        [sys.executable, str(LOADGEN), "--url", "http://192.0.2.1:8008", "--shared-secret=x"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0 and "loopback" in done.stderr
