"""SQLite: the embedded default.  One connection, used from one database thread."""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from homeserver.storage.engines.base import DatabaseEngine


class SqliteEngine(DatabaseEngine):
    name = "sqlite"
    # SQLite allows one writer at a time; a single connection on a single thread avoids
    # SQLITE_BUSY entirely and keeps transactions strictly serialised.
    max_connections = 1

    def __init__(self, path: str) -> None:
        self.path = path

    def connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            parent = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(parent, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so DDL in migrations is
        # transactional too.  check_same_thread=False: the pool hands the connection to
        # one database thread, but closing happens from the shutdown path.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=10000")
        return conn

    def convert_sql(self, sql: str) -> str:
        return sql

    def is_integrity_error(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError)

    def is_retryable_error(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)

    def begin(self, conn: Any) -> None:
        # IMMEDIATE takes the write lock up front: a read-then-write transaction can then
        # never fail half-way because another process (e.g. the CLI) wrote meanwhile.
        conn.execute("BEGIN IMMEDIATE")

    def describe(self) -> str:
        return f"sqlite ({self.path})"
