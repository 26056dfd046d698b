"""Numbered schema migrations, applied at start-up inside one transaction each.

Files live in ``homeserver/storage/schema/`` as ``NNNN_description.sql``.  When a change
cannot be written portably, ``NNNN_description.sqlite.sql`` or ``.postgres.sql`` replaces
the portable file for that engine (and only then).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

from homeserver.storage.database import Database, Transaction

logger = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^(\d{4})_([a-z0-9_]+?)(?:\.(sqlite|postgres))?\.sql$")


class SchemaError(Exception):
    """The database cannot be used with this version of the code."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations(engine_name: str, package: str = "homeserver.storage.schema") -> list[Migration]:
    """The migrations for ``engine_name``, in order, dialect variants taking precedence."""
    chosen: dict[int, tuple[str, str, bool]] = {}
    for entry in resources.files(package).iterdir():
        m = _NAME_RE.match(entry.name)
        if not m:
            continue
        version, desc, dialect = int(m.group(1)), m.group(2), m.group(3)
        if dialect is not None and dialect != engine_name:
            continue
        specific = dialect is not None
        previous = chosen.get(version)
        if previous is not None and previous[1] != desc:
            raise SchemaError(f"two migrations numbered {version:04d}: {previous[1]} and {desc}")
        if previous is None or specific:
            chosen[version] = (entry.read_text("utf-8"), desc, specific)
    return [Migration(v, chosen[v][1], chosen[v][0]) for v in sorted(chosen)]


def split_statements(sql: str) -> list[str]:
    """Split a migration into statements at ``;`` ending a line; drop ``--`` comments."""
    statements, current = [], []
    for line in sql.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("--"):
            continue
        current.append(line)
        if stripped.endswith(";"):
            statements.append("\n".join(current).rstrip().rstrip(";"))
            current = []
    if current:
        statements.append("\n".join(current))
    return statements


def _current_version(txn: Transaction) -> int:
    txn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version INTEGER NOT NULL, name TEXT NOT NULL, applied_ts BIGINT NOT NULL)"
    )
    row = txn.select_one("SELECT MAX(version) FROM schema_version")
    return int(row[0]) if row and row[0] is not None else 0


def prepare_database(db: Database, now_ms: int, package: str = "homeserver.storage.schema") -> int:
    """Bring the schema up to date; returns the resulting version.

    Refuses to touch a database whose schema is newer than this code knows.
    """
    migrations = available_migrations(db.engine.name, package)
    latest = migrations[-1].version if migrations else 0
    current = db.run_interaction_sync("schema_version", _current_version)
    if current > latest:
        raise SchemaError(
            f"the database schema is at version {current}, newer than this code supports "
            f"({latest}); it was used by a newer release: upgrade the homeserver, do not downgrade"
        )
    for migration in migrations:
        if migration.version <= current:
            continue
        logger.info("applying schema migration %04d_%s", migration.version, migration.name)

        def apply(txn: Transaction, m: Migration = migration) -> None:
            # Re-check inside the transaction: another process may have migrated meanwhile.
            if _current_version(txn) >= m.version:
                return
            for statement in split_statements(m.sql):
                txn.execute(statement)
            txn.execute(
                "INSERT INTO schema_version (version, name, applied_ts) VALUES (?, ?, ?)",
                (m.version, m.name, now_ms),
            )

        db.run_interaction_sync(f"migrate_{migration.version:04d}", apply)
    return max(current, latest)


def schema_version(db: Database) -> int:
    return db.run_interaction_sync("schema_version", _current_version)


