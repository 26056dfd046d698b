#!/usr/bin/env python3
"""Run the load generator against this homeserver and against Synapse, print the ratios.

    .venv/bin/python tests/bench/compare.py [--quick] [--only ours|synapse] [loadgen options]

Each server is configured by its own tool (``homeserver generate-config``, Synapse's
``--generate-config``), patched the same way (rate limits out of the way, presence off,
cheap bcrypt for the set-up, the same PostgreSQL pool size), given a fresh PostgreSQL
database on 127.0.0.1:5432 (dropped afterwards), and started on a free loopback port.
Then ``loadgen.py`` runs against each in turn with the same parameters, as a separate
process, sampling the server's RSS by its PID.  The side-by-side table goes to stdout
and everything to tests/bench/_work/results.json; server logs stay in
tests/bench/_work/{ours,synapse}/server.log.  See tests/bench/README.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parents[1]
WORK_DIR = BENCH_DIR / "_work"
LOADGEN = BENCH_DIR / "loadgen.py"

# Roughly 2-4 minutes for both servers on a 2-core machine; --quick well under one.
PROFILES: dict[str, dict[str, Any]] = {
    "default": {
        "users": 40,
        "rooms": 8,
        "rooms_per_user": 3,
        "messages": 800,
        "concurrency": 16,
        "initial_sync_rooms": 200,
        "initial_sync_messages": 3,
        "initial_sync_runs": 3,
        "timeout": 420,
    },
    "quick": {
        "users": 12,
        "rooms": 4,
        "rooms_per_user": 2,
        "messages": 300,
        "concurrency": 8,
        "initial_sync_rooms": 50,
        "initial_sync_messages": 2,
        "initial_sync_runs": 2,
        "timeout": 180,
    },
}

# (label, metric key, which way is better, the goal as a ratio ours/Synapse)
HEADLINE = [
    ("messages/s sent", "throughput_msg_s", "higher", 3.0),
    ("send->/sync latency p50 (ms)", "latency_p50_ms", "lower", 1 / 3),
    ("send->/sync latency p99 (ms)", "latency_p99_ms", "lower", 1 / 3),
    ("initial /sync, {rooms} rooms (s)", "initial_sync_s", "lower", 1 / 3),
    ("server peak RSS (MB)", "peak_rss_mb", "lower", 1 / 3),
]
DETAIL = [
    ("fan-out latency p50 (ms)", "fanout_latency_p50_ms", "lower"),
    ("fan-out latency p99 (ms)", "fanout_latency_p99_ms", "lower"),
    ("PUT /send round trip p50 (ms)", "send_rtt_p50_ms", "lower"),
    ("PUT /send round trip p99 (ms)", "send_rtt_p99_ms", "lower"),
    ("initial /sync, first run (s)", "initial_sync_first_s", "lower"),
    ("initial /sync, same request again (s)", "initial_sync_repeat_s", "lower"),
    ("server CPU per message (ms)", "server_cpu_ms_per_msg", "lower"),
    ("server RSS before the run (MB)", "rss_start_mb", "lower"),
    ("load generator CPU use (0-1 core)", "client_cpu_util", None),
    ("whole machine CPU busy (0-1)", "machine_cpu_util", None),
]

HUGE_LIMIT = {"per_second": 100_000, "burst_count": 100_000}


def _ensure_venv() -> None:
    """Re-run under the repository's .venv when started with an interpreter that lacks Synapse."""
    try:
        import synapse  # noqa: F401
        import yaml  # noqa: F401
    except ImportError:
        venv_python = REPO / ".venv" / "bin" / "python"
        if venv_python.exists() and Path(sys.executable).absolute() != venv_python.absolute():
            os.execv(str(venv_python), [str(venv_python), *sys.argv])
        raise SystemExit(
            "matrix-synapse is not installed here: run `make install-test` (or pip install matrix-synapse)"
        ) from None


_ensure_venv()
sys.path.insert(0, str(REPO))

from tests.interop.harness import (  # noqa: E402
    TEST_RATE_LIMITS,
    HarnessError,
    Postgres,
    RunningServer,
    start_our_homeserver,
)
from tests.interop.synapse_server import start_synapse  # noqa: E402


def bench_rate_limits() -> dict[str, Any]:
    """The harness's relaxed rc_* settings, every bucket raised to 100,000/s."""

    def raise_buckets(value: Any) -> Any:
        if isinstance(value, dict) and set(value) == {"per_second", "burst_count"}:
            return dict(HUGE_LIMIT)
        if isinstance(value, dict):
            return {k: raise_buckets(v) for k, v in value.items()}
        return value

    limits: dict[str, Any] = raise_buckets(copy.deepcopy(TEST_RATE_LIMITS))
    return limits


# The same patch for both servers; registration (bcrypt) is set-up, not what is measured.
COMMON_CONFIG: dict[str, Any] = {
    **bench_rate_limits(),
    "presence": {"enabled": False},
    "bcrypt_rounds": 4,
    "enable_registration": False,
}
# Synapse's generated config has no pool size of ours: use ours (generate-config's 5..10).
SYNAPSE_CONFIG: dict[str, Any] = {
    **COMMON_CONFIG,
    "rc_key_requests": HUGE_LIMIT,
    "database": {"args": {"cp_min": 5, "cp_max": 10}},
}


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def start_server(kind: str, pg: Postgres, data_dir: Path) -> RunningServer:
    """A fresh database and a started server of this kind (the database is dropped on failure)."""
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    database = pg.create_database()
    try:
        if kind == "ours":
            return start_our_homeserver(
                data_dir,
                engine="postgres",
                database_url=pg.url(database),
                database=database,
                patch_config=lambda config: config.update(copy.deepcopy(COMMON_CONFIG)),
            )
        return start_synapse(
            data_dir, engine="postgres", postgres=pg, database=database, extra_config=copy.deepcopy(SYNAPSE_CONFIG)
        )
    except BaseException:
        pg.drop_database(database)
        raise


_ERROR_LINE = re.compile(r"\b(ERROR|CRITICAL)\b|Traceback \(most recent call last\)")
# Twisted's access log ('"PUT /x HTTP/1.1" 500 59') and Synapse's ('59B 500 "PUT /x HTTP/1.1"').
_HTTP_5XX = re.compile(r'HTTP/1\.[01]" 5\d\d \d|B 5\d\d "[A-Z]+ ')


def scan_log(path: Path, samples: int = 8) -> dict[str, Any]:
    """Error lines and 5xx responses in a server log, with the first few of each."""
    found: dict[str, Any] = {"error_lines": 0, "http_5xx": 0, "samples": []}
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        found["samples"].append(f"(cannot read {path}: {exc})")
        return found
    for line in text.splitlines():
        is_error, is_5xx = bool(_ERROR_LINE.search(line)), bool(_HTTP_5XX.search(line))
        found["error_lines"] += is_error
        found["http_5xx"] += is_5xx
        if (is_error or is_5xx) and len(found["samples"]) < samples:
            found["samples"].append(line[:400])
    return found


_PG_COUNTERS = ("xact_commit", "xact_rollback", "tup_returned", "tup_fetched", "tup_inserted", "tup_updated")


def database_stats(pg: Postgres, database: str) -> dict[str, Any]:
    """PostgreSQL's own counters for one database (per database, so other users of the
    cluster do not disturb them); read after the server stopped, when its backends have
    flushed their statistics."""
    import psycopg2

    try:
        conn = psycopg2.connect(
            host=pg.host, port=pg.port, user=pg.user, password=pg.password or None, dbname="postgres", connect_timeout=5
        )
    except psycopg2.Error as exc:
        return {"problem": str(exc).strip()}
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT {', '.join(_PG_COUNTERS)} FROM pg_stat_database WHERE datname = %s", (database,))
            row = cur.fetchone()
    finally:
        conn.close()
    return dict(zip(_PG_COUNTERS, row, strict=True)) if row else {"problem": f"no statistics for {database}"}


def load_average() -> str:
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def run_loadgen(server: RunningServer, options: dict[str, Any]) -> dict[str, Any]:
    """loadgen.py --json against one server, as its own process; its progress goes to stderr."""
    argv = [
        sys.executable,
        str(LOADGEN),
        "--url",
        server.client_url,
        # "=" form: a secret may start with "-", which argparse would take for an option.
        f"--shared-secret={server.registration_shared_secret}",
        "--pid",
        str(server.process.pid),
        "--json",
    ]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, timeout=float(options["timeout"]) + 60)
    except subprocess.TimeoutExpired:
        return {"failed": f"loadgen did not finish within {options['timeout']}s + 60s"}
    try:
        return dict(json.loads(done.stdout))
    except ValueError:
        return {"failed": f"loadgen exited with {done.returncode} and no JSON: {done.stdout[-2000:]}"}


def bench_one(kind: str, pg: Postgres, options: dict[str, Any], data_dir: Path) -> dict[str, Any]:
    print(f"== {kind}: starting on a fresh PostgreSQL database", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        server = start_server(kind, pg, data_dir)
    except HarnessError as exc:
        return {"failed": f"could not start: {exc}"}
    load_before = load_average()
    db_stats: dict[str, Any] = {}
    try:
        print(f"== {kind}: up at {server.client_url} (pid {server.process.pid})", file=sys.stderr, flush=True)
        results = run_loadgen(server, options)
        if not server.is_running():
            results["server_died"] = f"exited with code {server.process.returncode} during the run"
    finally:
        stop_problem = server.stop(timeout=20)
        if server.database:
            db_stats = database_stats(pg, server.database)
            pg.drop_database(server.database)
    results["database_stats"] = db_stats
    results["load_average"] = {"before": load_before, "after": load_average()}
    results["server"] = {
        "kind": kind,
        "version": _version("homeserver" if kind == "ours" else "matrix-synapse"),
        "log": str(server.log_path),
        "log_problems": scan_log(server.log_path),
        "stop_problem": stop_problem,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    print(f"== {kind}: done in {results['server']['wall_seconds']}s", file=sys.stderr, flush=True)
    return results


def combine_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One server's repeated runs as one: the median of every number, all errors."""
    if len(runs) == 1:
        return runs[0]
    combined = copy.deepcopy(runs[-1])
    for section in ("metrics", "database_stats", "counts"):
        keys = {k for run in runs for k in (run.get(section) or {})}
        combined[section] = {k: _median([(run.get(section) or {}).get(k) for run in runs]) for k in sorted(keys)}
    combined["error_count"] = sum(run.get("error_count") or 0 for run in runs)
    combined["errors"] = [group for run in runs for group in run.get("errors") or []]
    combined["unavailable"] = {k: v for run in runs for k, v in (run.get("unavailable") or {}).items()}
    combined["failed"] = "; ".join(run["failed"] for run in runs if run.get("failed")) or None
    return combined


def _median(values: list[Any]) -> Any:
    numbers = [v for v in values if isinstance(v, int | float)]
    return statistics.median(numbers) if numbers else None


def git_commit() -> str:
    """The commit the server code was measured at, with "+dirty" for local changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "homeserver"], cwd=REPO, capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if head.returncode == 0 else "unknown"


# --------------------------------------------------------------------------- the table


def ratio(ours: Any, synapse: Any) -> float | None:
    if not isinstance(ours, int | float) or not isinstance(synapse, int | float) or synapse == 0:
        return None
    return ours / synapse


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def build_table(results: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The side-by-side table as text, and the ratios (with goal verdicts) as data."""
    ours = (results.get("ours") or {}).get("metrics") or {}
    synapse = (results.get("synapse") or {}).get("metrics") or {}
    rooms = results["parameters"]["initial_sync_rooms"]
    rows: list[tuple[str, ...]] = [("metric", "ours", "synapse", "ours/synapse", "goal", "")]
    ratios: dict[str, Any] = {}
    for label, key, better, goal in HEADLINE:
        r = ratio(ours.get(key), synapse.get(key))
        goal_text = f">= {goal:g}x" if better == "higher" else f"<= 1/{1 / goal:g}"
        met = None if r is None else (r >= goal if better == "higher" else r <= goal)
        ratios[key] = {"ratio": r, "goal": goal_text, "met": met}
        verdict = "n/a" if met is None else ("met" if met else "MISSED")
        rows.append(
            (label.format(rooms=rooms), _cell(ours.get(key)), _cell(synapse.get(key)), _ratio(r), goal_text, verdict)
        )
    rows.append(("", "", "", "", "", ""))
    for label, key, _better in DETAIL:
        r = ratio(ours.get(key), synapse.get(key))
        ratios[key] = {"ratio": r}
        rows.append((label, _cell(ours.get(key)), _cell(synapse.get(key)), _ratio(r), "", ""))
    database_rows: list[tuple[str, str | None]] = [
        ("PostgreSQL transactions, whole run", "xact_commit"),
        ("PostgreSQL rows read, whole run", None),
    ]
    for label, db_key in database_rows:
        values = [_db_counter(results.get(kind), db_key) for kind in ("ours", "synapse")]
        r = ratio(*values)
        ratios[db_key or "db_rows_read"] = {"ratio": r}
        rows.append((label, _cell(values[0]), _cell(values[1]), _ratio(r), "", ""))
    failed = [_cell((results.get(kind) or {}).get("error_count")) for kind in ("ours", "synapse")]
    rows.append(("requests that failed", *failed, "", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(widths[i]) for i, cell in enumerate(row[1:], 1)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines), ratios


def _db_counter(run: dict[str, Any] | None, key: str | None) -> int | None:
    """A pg_stat_database counter of a run; key None means rows read (returned + fetched)."""
    stats = (run or {}).get("database_stats") or {}
    if key is None:
        parts = [stats.get("tup_returned"), stats.get("tup_fetched")]
        numbers = [p for p in parts if isinstance(p, int | float)]
        return round(sum(numbers)) if len(numbers) == len(parts) else None
    value = stats.get(key)
    return round(value) if isinstance(value, int | float) else None


def _ratio(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.3g}x"


def problems_report(results: dict[str, Any]) -> list[str]:
    """Human-readable lines about failures: n/a metrics, failed requests, server log errors."""
    lines = []
    for kind in ("ours", "synapse"):
        run = results.get(kind)
        if not run:
            continue
        if run.get("failed"):
            lines.append(f"{kind}: RUN FAILED: {run['failed']}")
        if run.get("server_died"):
            lines.append(f"{kind}: server {run['server_died']}")
        for metric, reason in (run.get("unavailable") or {}).items():
            lines.append(f"{kind}: {metric} n/a: {reason}")
        for group in run.get("errors") or []:
            lines.append(
                f"{kind}: {group['count']} x {group['request']} -> {group['status']} (phase {group['phase']}): "
                f"{group['sample'][:300]}"
            )
        server = run.get("server") or {}
        log = server.get("log_problems") or {}
        if log.get("error_lines") or log.get("http_5xx"):
            lines.append(
                f"{kind}: server log {server.get('log')}: {log['error_lines']} error lines, {log['http_5xx']} HTTP 5xx"
            )
            lines += [f"    {sample}" for sample in log.get("samples", [])]
        load = run.get("load_average") or {}
        if load:
            lines.append(f"{kind}: machine load average {load.get('before')} before, {load.get('after')} after")
        if server.get("stop_problem"):
            lines.append(f"{kind}: {server['stop_problem']}")
        util = (run.get("metrics") or {}).get("client_cpu_util")
        if isinstance(util, int | float) and util > 0.8:
            lines.append(f"{kind}: the load generator used {util:.0%} of a core: its numbers may be client-bound")
    return lines


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a small run (well under a minute per server)")
    p.add_argument("--only", choices=("ours", "synapse"), help="benchmark one server only")
    p.add_argument("--repeat", type=int, default=1, help="runs of each server, alternating; reports medians")
    p.add_argument("--output", type=Path, default=WORK_DIR / "results.json", help="where to write the JSON")
    for key in PROFILES["default"]:
        p.add_argument(f"--{key.replace('_', '-')}", type=float if key == "timeout" else int, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = dict(PROFILES["quick" if args.quick else "default"])
    for key in options:
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    pg = Postgres(prefix=f"hs_bench_{os.getpid()}")
    problem = pg.unavailable_reason()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    WORK_DIR.mkdir(exist_ok=True)
    command = " ".join(shlex.quote(a) for a in [Path(sys.executable).name, "tests/bench/compare.py", *sys.argv[1:]])
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "commit": git_commit(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "parameters": options,
    }
    kinds = [kind for kind in ("ours", "synapse") if args.only in (None, kind)]
    runs: list[dict[str, Any]] = []
    try:
        for n in range(args.repeat):
            run: dict[str, Any] = {}
            # Alternate the order, so that neither server always runs on a warmer machine.
            for kind in kinds if n % 2 == 0 else kinds[::-1]:
                data_dir = WORK_DIR / (kind if args.repeat == 1 else f"{kind}-{n + 1}")
                run[kind] = bench_one(kind, pg, options, data_dir)
            runs.append(run)
    finally:
        pg.drop_all()
    for kind in kinds:
        results[kind] = combine_runs([run[kind] for run in runs if kind in run])
    if args.repeat > 1:
        results["runs"] = runs
    table, results["ratios"] = build_table(results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    versions = ", ".join(
        f"{kind} {results[kind].get('server', {}).get('version', '?')}"
        for kind in ("ours", "synapse")
        if kind in results
    )
    print(
        f"\n{command}   ({results['date']}, commit {results['commit']}, {os.cpu_count()} CPUs; {versions}; PostgreSQL)"
    )
    p = options
    print(
        f"{p['users']} users in {p['rooms']} rooms ({p['rooms_per_user']} each), {p['messages']} messages, "
        f"{p['concurrency']} concurrent senders; initial /sync of a user in {p['initial_sync_rooms']} rooms"
        + (f"; medians of {args.repeat} runs each" if args.repeat > 1 else "")
        + "\n"
    )
    print(table)
    problems = problems_report(results)
    if problems:
        print("\nProblems:")
        print("\n".join(f"  {line}" for line in problems))
    print(f"\nJSON: {args.output}")
    return 0 if all(not (results.get(k) or {}).get("failed") for k in ("ours", "synapse")) else 1


if __name__ == "__main__":
    sys.exit(main())
