"""``database``: which engine to use and how to connect to it.

Synapse's shape::

    database:
      name: psycopg2            # or sqlite3 (the default)
      args:
        user: synapse
        password: secret
        dbname: synapse         # "database" is accepted too
        host: localhost
        port: 5432
        cp_min: 5
        cp_max: 10

For SQLite, ``args.database`` is the file (relative to the configuration directory) or
``:memory:``.  :func:`parse_postgres_url` turns a ``postgresql://`` URL into such args,
for ``generate-config``.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from homeserver.config.reader import ConfigError, Reader

DATABASE_ENGINES = ("sqlite3", "psycopg2")
DEFAULT_SQLITE_DATABASE = "homeserver.db"
DEFAULT_CP_MIN = 5
DEFAULT_CP_MAX = 10

# Connection-pool and driver settings that are not libpq connection parameters.
_POOL_ARGS = frozenset({"cp_min", "cp_max", "cp_reconnect", "cp_noisy", "check_same_thread"})
_SQLITE_ARGS = frozenset({"database", "cp_min", "cp_max", "check_same_thread"})


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """The ``database`` section: ``name`` (Synapse's driver name) and its ``args``."""

    name: str = "sqlite3"
    args: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({"database": DEFAULT_SQLITE_DATABASE}))

    @property
    def engine(self) -> str:
        """``"sqlite"`` or ``"postgres"``."""
        return "postgres" if self.name == "psycopg2" else "sqlite"

    @property
    def sqlite_path(self) -> str:
        """The SQLite database file as an absolute path, or ``":memory:"``."""
        database = str(self.args.get("database", DEFAULT_SQLITE_DATABASE))
        return database if database == ":memory:" else os.path.abspath(database)

    @property
    def postgres_connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``psycopg2.connect`` (libpq parameters only)."""
        kwargs = {key: value for key, value in self.args.items() if key not in _POOL_ARGS}
        if "database" in kwargs:
            kwargs.setdefault("dbname", kwargs.pop("database"))
        return kwargs

    @property
    def cp_min(self) -> int:
        """The minimum number of pooled connections."""
        return int(self.args.get("cp_min", DEFAULT_CP_MIN))

    @property
    def cp_max(self) -> int:
        """The maximum number of pooled connections."""
        return int(self.args.get("cp_max", DEFAULT_CP_MAX))


def read_database(r: Reader) -> DatabaseConfig:
    """Read the ``database`` section (the default is SQLite beside the config file)."""
    if r.has("databases"):
        r.raw("databases")
        r.error(
            "databases",
            "several databases are not supported; use a single `database` section",
        )
    section = r.optional_section("database")
    if section is None:
        return DatabaseConfig(
            "sqlite3",
            MappingProxyType({"database": r.resolve(DEFAULT_SQLITE_DATABASE)}),
        )

    name = section.raw("name", "sqlite3")
    if name not in DATABASE_ENGINES:
        section.expected("name", 'one of "sqlite3", "psycopg2"', name)
        name = "sqlite3"
    args_reader = section.section("args")
    section.finish(unsupported=("txn_limit", "allow_unsafe_locale", "data_stores"))

    args: dict[str, Any] = dict(args_reader.data)
    args_reader.ignore(*args)
    cp_min = args_reader.integer("cp_min", DEFAULT_CP_MIN, min=1)
    cp_max = args_reader.integer("cp_max", DEFAULT_CP_MAX, min=1)
    if cp_min > cp_max:
        args_reader.error("cp_min", f"must not exceed cp_max ({cp_max}), got {cp_min}")

    if name == "sqlite3":
        database = args_reader.string("database", DEFAULT_SQLITE_DATABASE, expected="a file path or :memory:")
        args["database"] = database if database == ":memory:" else r.resolve(database or DEFAULT_SQLITE_DATABASE)
        for key in args:
            if key not in _SQLITE_ARGS:
                args_reader.warn(key, "not used by SQLite, ignored")
    else:
        for key in ("user", "password", "host", "dbname", "database"):
            args_reader.optional_string(key)
        if "port" in args:
            args_reader.integer("port", 5432, min=1, max=65535)
        if "dbname" in args and "database" in args and args["dbname"] != args["database"]:
            args_reader.error("dbname", "both dbname and database are given and they differ")
    return DatabaseConfig(str(name), MappingProxyType(args))


def parse_postgres_url(url: str) -> dict[str, Any]:
    """Turn ``postgresql://user:password@host:port/dbname?sslmode=...`` into psycopg2 args.

    User name and password may be percent-encoded.  Raises :class:`ConfigError` naming
    what is wrong with the URL.
    """
    example = "postgresql://user:password@host:5432/dbname"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"database URL: {e}; expected something like {example}") from e
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(f'database URL: expected the scheme "postgresql://" (like {example}), got {url!r}')
    if parts.fragment:
        raise ConfigError(f"database URL: a #fragment is not allowed, got {url!r}")
    dbname = urllib.parse.unquote(parts.path.lstrip("/"))
    if not dbname or "/" in dbname:
        raise ConfigError(f"database URL: expected a database name after the host (like {example}), got {url!r}")
    args: dict[str, Any] = {}
    if parts.username:
        args["user"] = urllib.parse.unquote(parts.username)
    if parts.password is not None:
        args["password"] = urllib.parse.unquote(parts.password)
    args["dbname"] = dbname
    if parts.hostname:
        args["host"] = parts.hostname
    if port is not None:
        args["port"] = port
    for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        args[key] = value
    return args
