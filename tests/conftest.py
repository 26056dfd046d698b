"""Shared fixtures: database engines (SQLite and PostgreSQL), configurations, servers.

Every storage-backed test takes the ``database`` fixture, which runs it once on SQLite and
once on PostgreSQL.  PostgreSQL tests skip when no server is reachable, except in CI
(``CI=true``), where they fail: CI must never pass by silently skipping them.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

PG_ARGS = {
    "user": os.environ.get("PGUSER", "postgres"),
    "host": os.environ.get("PGHOST", "127.0.0.1"),
    "port": int(os.environ.get("PGPORT", "5432")),
}
if os.environ.get("PGPASSWORD"):
    PG_ARGS["password"] = os.environ["PGPASSWORD"]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``make test`` runs ``-n 2 --dist loadfile``), hand out the
    real-process interop modules first: they are few and long (servers, clients), the
    in-process files many and short, so the short ones fill the gaps at the end instead of
    one worker finishing a long interop module alone. Order within a file is unchanged; a
    serial run keeps pytest's own order."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    interop = os.sep + os.path.join("tests", "interop") + os.sep
    items.sort(key=lambda item: 0 if interop in str(item.path) else 1)  # stable sort


def _pg_unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"PostgreSQL is required in CI but unusable: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL not reachable ({reason}); these tests run in CI")


@pytest.fixture(scope="session")
def pg_database() -> Iterator[dict[str, Any]]:
    """A fresh PostgreSQL database for this test session; dropped at the end."""
    try:
        import psycopg2
    except ImportError as e:  # pragma: no cover
        _pg_unavailable(str(e))
    name = f"hs_test_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        admin = psycopg2.connect(dbname="postgres", connect_timeout=5, **PG_ARGS)
    except psycopg2.OperationalError as e:
        _pg_unavailable(str(e).strip())
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}" ENCODING \'UTF8\' LC_COLLATE \'C\' LC_CTYPE \'C\' TEMPLATE template0')
    try:
        yield {**PG_ARGS, "dbname": name}
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(params=["sqlite", "postgres"])
def database_config(request: pytest.FixtureRequest, tmp_path: Any) -> dict[str, Any]:
    """A Synapse-style ``database:`` section for a fresh, empty database on each engine.

    PostgreSQL isolation is per test through a schema of its own (fast, unlike a database).
    """
    if request.param == "sqlite":
        return {"name": "sqlite3", "args": {"database": str(tmp_path / "homeserver.db")}}
    pg = request.getfixturevalue("pg_database")
    import psycopg2

    schema = f"t_{secrets.token_hex(6)}"
    conn = psycopg2.connect(**pg)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema}")
    conn.close()
    return {
        "name": "psycopg2",
        "args": {**pg, "options": f"-c search_path={schema}", "cp_min": 1, "cp_max": 4},
    }
