"""SQLite state for a bridge through mautrix's async_db (aiosqlite), one file ``matrix.db``:
room state and memberships seen in transactions (mautrix's appservice state store) and the
crypto store (Olm account, sessions, devices)."""

from __future__ import annotations

import logging
from pathlib import Path

from mautrix.appservice.state_store.asyncpg import PgASStateStore
from mautrix.client.state_store.asyncpg.upgrade import upgrade_table as state_upgrade_table
from mautrix.crypto import PgCryptoStore
from mautrix.crypto import StateStore as CryptoStateStore
from mautrix.types import RoomID, UserID
from mautrix.util.async_db import Database


def sqlite_database(path: Path, upgrade_table: object, name: str) -> Database:
    return Database.create(
        f"sqlite://{path.resolve()}",
        upgrade_table=upgrade_table,  # type: ignore[arg-type]
        log=logging.getLogger(f"bridge.db.{name}"),
    )


class BridgeStateStore(PgASStateStore, CryptoStateStore):  # type: ignore[misc]
    """Memberships, power levels and encryption state of the rooms the bridge is in."""

    def __init__(self, db: Database) -> None:
        PgASStateStore.__init__(self, db)

    async def find_shared_rooms(self, user_id: UserID) -> list[RoomID]:
        rows = await self.db.fetch(
            "SELECT p.room_id FROM mx_user_profile p JOIN mx_room_state s ON s.room_id = p.room_id "
            "WHERE p.user_id = $1 AND p.membership IN ('join', 'invite') AND s.is_encrypted = true",
            user_id,
        )
        return [RoomID(row["room_id"]) for row in rows]


def state_database(data_dir: Path) -> Database:
    return sqlite_database(data_dir / "matrix.db", state_upgrade_table, "state")


def crypto_database(state_db: Database) -> Database:
    """The crypto tables in the same file, through the same connection: mautrix keeps the
    connection of an open transaction in a context variable shared by every Database, so the
    crypto store's transactions call the state store on whatever connection they hold."""
    db = sqlite_database(Path(state_db.url.path), PgCryptoStore.upgrade_table, "crypto")
    db.override_pool(state_db)
    return db
