"""The engine interface and the factory choosing one from configuration."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any


class IntegrityError(Exception):
    """A uniqueness or foreign-key violation, whatever the engine."""


class DatabaseEngine(abc.ABC):
    """What differs between engines: connecting, placeholders, error types, locking."""

    name: str
    #: How many connections (and database threads) to use.
    max_connections: int = 1

    @abc.abstractmethod
    def connect(self) -> Any:
        """Open a new DB-API connection, configured for our use (explicit transactions)."""

    @abc.abstractmethod
    def convert_sql(self, sql: str) -> str:
        """Turn portable SQL (``?`` placeholders) into this engine's dialect."""

    @abc.abstractmethod
    def is_integrity_error(self, exc: BaseException) -> bool: ...

    @abc.abstractmethod
    def is_retryable_error(self, exc: BaseException) -> bool:
        """True for serialization failures and deadlocks, where a retry is right."""

    @abc.abstractmethod
    def begin(self, conn: Any) -> None:
        """Start a transaction on ``conn``."""

    def close(self, conn: Any) -> None:
        conn.close()

    def describe(self) -> str:
        return self.name


def create_engine(name: str, args: Mapping[str, Any]) -> DatabaseEngine:
    """Build the engine for a Synapse-style ``database:`` section (name + args)."""
    if name in ("sqlite3", "sqlite"):
        from homeserver.storage.engines.sqlite import SqliteEngine

        return SqliteEngine(str(args.get("database", ":memory:")))
    if name in ("psycopg2", "postgres", "postgresql"):
        from homeserver.storage.engines.postgres import PostgresEngine

        return PostgresEngine(dict(args))
    raise ValueError(f"unknown database engine {name!r}: expected sqlite3 or psycopg2")
