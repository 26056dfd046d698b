"""SQLite state for a bridge through mautrix's async_db (aiosqlite): room state and
memberships seen in transactions (mautrix's appservice state store) and the crypto store."""

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
        print("FSR", getattr(self.db, "_path", None), getattr(self.db, "_parent", None), flush=True)
        rows = await self.db.fetch(
            "SELECT p.room_id FROM mx_user_profile p JOIN mx_room_state s ON s.room_id = p.room_id "
            "WHERE p.user_id = $1 AND p.membership IN ('join', 'invite') AND s.is_encrypted = true",
            user_id,
        )
        return [RoomID(row["room_id"]) for row in rows]


def state_database(data_dir: Path) -> Database:
    return sqlite_database(data_dir / "matrix-state.db", state_upgrade_table, "state")


def crypto_database(data_dir: Path) -> Database:
    return sqlite_database(data_dir / "matrix-crypto.db", PgCryptoStore.upgrade_table, "crypto")
