"""Fixtures for the real-process interop tests (see README.md and harness.py).

Servers
  homeserver        module-scoped, parametrised over the storage engines ("sqlite",
                    "postgres"): the server the client-side tests talk to. It is ours,
                    unless INTEROP_TARGET=synapse, which runs the same tests against a
                    real Synapse to prove the tests themselves right.
  servers           function-scoped ServerPool: servers.start_homeserver(engine=...),
                    servers.start_synapse(...), servers.start(kind, engine=...).
  module_servers    the same, module-scoped.
  synapse           function-scoped factory: synapse(**options) -> RunningServer (see
                    synapse_server.start_synapse for options: engine, host,
                    federation_tls, server_name, extra_config, ...).
  module_synapse    the same factory, module-scoped.
  our_homeserver    function-scoped factory for our server: our_homeserver(engine=...).

Every server is stopped at teardown with SIGTERM (a pool's servers all at once) and
must exit with code 0 within 10 s; otherwise the test errors with the server's log
tail. A failing test also shows the log tail of every server it used.

PostgreSQL (127.0.0.1:5432, user postgres): each server gets a fresh database, dropped
in the background after teardown (the session waits for every drop at its end).
Unreachable PostgreSQL skips the postgres cases, or fails them when CI=true.

pytest-xdist (make test: -n 2 --dist loadfile): a file's tests share one worker, so its
module-scoped servers start once; each worker takes ports from its own block
(harness.free_port), its own databases and tmp directories.

Node
  js_sdk            session-scoped: runs `npm ci` in js/ once (skipped when node_modules
                    matches package-lock.json); missing node/npm skips, or fails in CI.
"""

from __future__ import annotations

import fcntl
import hashlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.interop import harness as h
from tests.interop import js_node


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "interop: real-process tests with clients and servers written by others",
    )


def _unavailable(reason: str) -> None:
    """Fail in CI (a missing dependency there is a broken pipeline), skip elsewhere."""
    if h.in_ci():
        pytest.fail(f"{reason} (CI=true: this is required, not optional)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def interop_target() -> str:
    try:
        return h.interop_target()
    except h.HarnessError as exc:
        problem = str(exc)
    pytest.fail(problem, pytrace=False)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[h.Postgres]:
    cluster = h.Postgres()
    yield cluster
    cluster.drop_all()


def _postgres_checker(cluster: h.Postgres) -> Callable[[], h.Postgres]:
    def require() -> h.Postgres:
        reason = cluster.unavailable_reason()
        if reason:
            _unavailable(reason)
        return cluster

    return require


class _Starter:
    """A server factory bound to a pool; turns harness errors into test failures."""

    def __init__(self, start: Callable[..., h.RunningServer], pool: h.ServerPool) -> None:
        self._start = start
        self._pool = pool

    @property
    def interop_servers(self) -> list[h.RunningServer]:
        return self._pool.servers

    def __call__(self, **options: Any) -> h.RunningServer:
        try:
            return self._start(**options)
        except h.HarnessError as exc:
            problem = str(exc)
        pytest.fail(problem, pytrace=False)  # outside `except`: no chained traceback


def _pool(tmp_path_factory: pytest.TempPathFactory, cluster: h.Postgres) -> Iterator[h.ServerPool]:
    pool = h.ServerPool(make_dir=tmp_path_factory.mktemp, postgres=_postgres_checker(cluster))
    yield pool
    problems = pool.close()
    if problems:
        pytest.fail("unclean server shutdown:\n" + "\n\n".join(problems), pytrace=False)


@pytest.fixture
def servers(tmp_path_factory: pytest.TempPathFactory, postgres_cluster: h.Postgres) -> Iterator[h.ServerPool]:
    yield from _pool(tmp_path_factory, postgres_cluster)


@pytest.fixture(scope="module")
def module_servers(tmp_path_factory: pytest.TempPathFactory, postgres_cluster: h.Postgres) -> Iterator[h.ServerPool]:
    yield from _pool(tmp_path_factory, postgres_cluster)


@pytest.fixture
def synapse(servers: h.ServerPool) -> _Starter:
    return _Starter(servers.start_synapse, servers)


@pytest.fixture(scope="module")
def module_synapse(module_servers: h.ServerPool) -> _Starter:
    return _Starter(module_servers.start_synapse, module_servers)


@pytest.fixture
def our_homeserver(servers: h.ServerPool) -> _Starter:
    return _Starter(servers.start_homeserver, servers)


# The postgres case carries the suite's `postgres` marker, so `-m "not postgres"` drops it.
ENGINE_PARAMS = [
    pytest.param(engine, marks=[pytest.mark.postgres] if engine == "postgres" else []) for engine in h.ENGINES
]


@pytest.fixture(scope="module", params=ENGINE_PARAMS)
def homeserver(request: pytest.FixtureRequest, module_servers: h.ServerPool, interop_target: str) -> h.RunningServer:
    """The server under test (ours, or Synapse with INTEROP_TARGET=synapse), one per engine."""
    return _Starter(lambda **kw: module_servers.start(interop_target, **kw), module_servers)(engine=request.param)


@pytest.fixture(scope="session")
def js_sdk() -> Path:
    """js/ with node_modules installed; returns the directory."""
    reason = js_node.node_unavailable_reason()
    if reason:
        _unavailable(reason)
    try:
        # pytest-xdist workers each ask; the lock makes one run `npm ci` while the others
        # wait and then find node_modules up to date.
        digest = hashlib.sha256(str(js_node.JS_DIR).encode()).hexdigest()[:12]
        with open(Path(tempfile.gettempdir()) / f"interop-npm-{digest}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            js_node.ensure_node_modules()
        return js_node.JS_DIR
    except h.HarnessError as exc:
        problem = str(exc)
    _unavailable(problem)
    return js_node.JS_DIR


def _servers_used_by(item: pytest.Item) -> list[h.RunningServer]:
    found: dict[int, h.RunningServer] = {}
    for value in getattr(item, "funcargs", {}).values():
        candidates = [value] if isinstance(value, h.RunningServer) else getattr(value, "interop_servers", [])
        for server in candidates:
            if isinstance(server, h.RunningServer):
                found[id(server)] = server
    return list(found.values())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed and report.when == "call":
        for server in _servers_used_by(item):
            report.sections.append(
                (
                    f"server log tail: {server.label} [{server.log_path}]",
                    server.log_tail(),
                )
            )
