"""PostgreSQL via psycopg2: the production engine, a pool of connections in threads."""

from __future__ import annotations

import re
from typing import Any

import psycopg2
import psycopg2.errorcodes
import psycopg2.extensions

from homeserver.storage.engines.base import DatabaseEngine

# Keys of Synapse's ``database.args`` that are ours (pool sizing), not libpq's.
_POOL_KEYS = {"cp_min", "cp_max", "cp_reconnect", "cp_noisy"}
_PLACEHOLDER = re.compile(r"\?")


class PostgresEngine(DatabaseEngine):
    name = "postgres"

    def __init__(self, args: dict[str, Any]) -> None:
        self.max_connections = int(args.get("cp_max", 10))
        kwargs = {k: v for k, v in args.items() if k not in _POOL_KEYS}
        if "database" in kwargs and "dbname" not in kwargs:
            kwargs["dbname"] = kwargs.pop("database")
        self.connect_kwargs = kwargs

    def connect(self) -> Any:
        conn = psycopg2.connect(**self.connect_kwargs)
        conn.set_session(
            isolation_level=psycopg2.extensions.ISOLATION_LEVEL_READ_COMMITTED,
            autocommit=False,
        )
        with conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
        conn.commit()
        return conn

    def convert_sql(self, sql: str) -> str:
        # Our SQL never contains a literal "?" or "%" outside placeholders; psycopg2 needs
        # "%" doubled when parameters are passed, so escape before substituting.
        return _PLACEHOLDER.sub("%s", sql.replace("%", "%%"))

    def is_integrity_error(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg2.IntegrityError)

    def is_retryable_error(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg2.Error) and exc.pgcode in (
            psycopg2.errorcodes.SERIALIZATION_FAILURE,
            psycopg2.errorcodes.DEADLOCK_DETECTED,
        )

    def begin(self, conn: Any) -> None:
        # psycopg2 opens a transaction implicitly on the first statement.
        pass

    def describe(self) -> str:
        safe = {k: v for k, v in self.connect_kwargs.items() if k != "password"}
        return f"postgres ({safe})"
