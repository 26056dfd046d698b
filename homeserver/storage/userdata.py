"""Profiles, account data (global and per room) and stored filters."""

from __future__ import annotations

import json
from typing import Any

from homeserver.storage.database import Database, Transaction
from homeserver.storage.streams import StreamIdAllocator
from homeserver.storage.user_directory import refresh_local_user_txn


class ProfileRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_profile(self, user_id: str) -> tuple[str | None, str | None] | None:
        row = await self._db.run_interaction(
            "get_profile",
            lambda txn: txn.select_one("SELECT displayname, avatar_url FROM profiles WHERE user_id = ?", (user_id,)),
        )
        return None if row is None else (row[0], row[1])

    async def set_field(self, user_id: str, field: str, value: str | None) -> None:
        assert field in ("displayname", "avatar_url")

        def txn_fn(txn: Transaction) -> None:
            txn.execute(
                f"INSERT INTO profiles (user_id, {field}) VALUES (?, ?)"
                f" ON CONFLICT (user_id) DO UPDATE SET {field} = excluded.{field}",
                (user_id, value),
            )
            refresh_local_user_txn(txn, user_id)  # the user directory follows the profile

        await self._db.run_interaction("set_profile", txn_fn)

    async def search(self, term: str, limit: int) -> list[tuple[str, str | None, str | None]]:
        """(user_id, displayname, avatar_url) matching ``term`` in the user ID or display name:
        every active local account (with or without a profile row) and the known remote profiles."""
        like = f"%{term.lower()}%"
        rows = await self._db.run_interaction(
            "search_profiles",
            lambda txn: txn.select_all(
                "SELECT u.user_id, p.displayname, p.avatar_url FROM users u"
                " LEFT JOIN profiles p ON p.user_id = u.user_id"
                " WHERE u.deactivated = 0 AND (LOWER(u.user_id) LIKE ? OR LOWER(COALESCE(p.displayname, '')) LIKE ?)"
                " UNION"
                " SELECT p.user_id, p.displayname, p.avatar_url FROM profiles p"
                " WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = p.user_id)"
                " AND (LOWER(p.user_id) LIKE ? OR LOWER(COALESCE(p.displayname, '')) LIKE ?)"
                " ORDER BY 1 LIMIT ?",
                (like, like, like, like, limit),
            ),
        )
        return [(str(r[0]), r[1], r[2]) for r in rows]


class AccountDataRepository:
    def __init__(self, db: Database) -> None:
        self._db = db
        self.ids = StreamIdAllocator(db, "account_data")

    async def put(self, user_id: str, room_id: str, data_type: str, content: dict[str, Any]) -> int:
        """Store and return the new stream ID (room_id '' for global data)."""
        async with self.ids.lock:
            stream_id = await self.ids.next_id()
            await self._db.run_interaction(
                "put_account_data",
                lambda txn: txn.execute(
                    "INSERT INTO account_data (user_id, room_id, type, content, stream_id) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (user_id, room_id, type) DO UPDATE SET content = excluded.content,"
                    " stream_id = excluded.stream_id",
                    (user_id, room_id, data_type, json.dumps(content), stream_id),
                ),
            )
            self.ids.advance(stream_id)
        return stream_id

    async def get(self, user_id: str, room_id: str, data_type: str) -> dict[str, Any] | None:
        row = await self._db.run_interaction(
            "get_account_data",
            lambda txn: txn.select_one(
                "SELECT content FROM account_data WHERE user_id = ? AND room_id = ? AND type = ?",
                (user_id, room_id, data_type),
            ),
        )
        return None if row is None else dict(json.loads(row[0]))

    async def changed_since(self, user_id: str, after: int, upto: int) -> list[tuple[str, str, dict[str, Any]]]:
        """(room_id, type, content) changed in (after, upto]; all of it when after is 0."""

        def txn_fn(txn: Transaction) -> list[tuple[str, str, dict[str, Any]]]:
            rows = txn.select_all(
                "SELECT room_id, type, content FROM account_data WHERE user_id = ? AND stream_id > ?"
                " AND stream_id <= ? ORDER BY stream_id",
                (user_id, after, upto),
            )
            return [(str(r[0]), str(r[1]), json.loads(r[2])) for r in rows]

        return await self._db.run_interaction("account_data_since", txn_fn)

    # -- filters -----------------------------------------------------------------------

    async def add_filter(self, user_id: str, filter_json: dict[str, Any]) -> int:
        def txn_fn(txn: Transaction) -> int:
            row = txn.select_one("SELECT MAX(filter_id) FROM filters WHERE user_id = ?", (user_id,))
            filter_id = (int(row[0]) + 1) if row and row[0] is not None else 0
            txn.execute(
                "INSERT INTO filters (user_id, filter_id, filter_json) VALUES (?, ?, ?)",
                (user_id, filter_id, json.dumps(filter_json)),
            )
            return filter_id

        return await self._db.run_interaction("add_filter", txn_fn)

    async def get_filter(self, user_id: str, filter_id: int) -> dict[str, Any] | None:
        row = await self._db.run_interaction(
            "get_filter",
            lambda txn: txn.select_one(
                "SELECT filter_json FROM filters WHERE user_id = ? AND filter_id = ?", (user_id, filter_id)
            ),
        )
        return None if row is None else dict(json.loads(row[0]))
