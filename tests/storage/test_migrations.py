"""Migrations: applied once, in order, transactionally; a newer schema is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor

from homeserver.storage.database import Database
from homeserver.storage.engines import create_engine
from homeserver.storage.migrations import (
    SchemaError,
    available_migrations,
    prepare_database,
    schema_version,
    split_statements,
)


def _open(database_config: dict[str, Any]) -> Database:
    return Database(create_engine(database_config["name"], database_config["args"]), reactor)


def test_fresh_database_gets_every_migration(database_config: dict[str, Any]) -> None:
    db = _open(database_config)
    try:
        latest = available_migrations(db.engine.name)[-1].version
        assert prepare_database(db, 1000) == latest
        assert schema_version(db) == latest
        # A second start applies nothing and keeps the version.
        assert prepare_database(db, 2000) == latest
        rows = db.run_interaction_sync("rows", lambda txn: txn.select_all("SELECT version FROM schema_version"))
        assert sorted(r[0] for r in rows) == [m.version for m in available_migrations(db.engine.name)]
    finally:
        db.close()


def test_newer_schema_is_refused(database_config: dict[str, Any]) -> None:
    db = _open(database_config)
    try:
        prepare_database(db, 0)
        db.run_interaction_sync(
            "bump",
            lambda txn: txn.execute("INSERT INTO schema_version (version, name, applied_ts) VALUES (9999, 'future', 0)"),
        )
        with pytest.raises(SchemaError, match="newer than this code supports"):
            prepare_database(db, 0)
    finally:
        db.close()


def test_failed_migration_changes_nothing(database_config: dict[str, Any], tmp_path: Path, monkeypatch: Any) -> None:
    """A migration that fails half-way is rolled back whole, and the version is not recorded."""
    import homeserver.storage.migrations as migrations

    real = migrations.available_migrations
    bad = migrations.Migration(2, "broken", "CREATE TABLE half_done (x INTEGER);\nTHIS IS NOT SQL;\n")

    def with_broken(engine_name: str, package: str = "") -> list[migrations.Migration]:
        return [*real(engine_name)[:1], bad]

    monkeypatch.setattr(migrations, "available_migrations", with_broken)
    db = _open(database_config)
    try:
        with pytest.raises(Exception, match="(?i)syntax"):
            prepare_database(db, 0)
        assert schema_version(db) == 1
        # The table the broken migration created before failing was rolled back with it.
        with pytest.raises(Exception, match="half_done"):
            db.run_interaction_sync("probe", lambda txn: txn.execute("SELECT COUNT(*) FROM half_done"))
    finally:
        db.close()


def test_split_statements_ignores_comments() -> None:
    sql = "-- comment\nCREATE TABLE a (x INT);\n\nCREATE INDEX b ON a (x);\n"
    assert split_statements(sql) == ["CREATE TABLE a (x INT)", "CREATE INDEX b ON a (x)"]
