"""Server-side key backup (/room_keys): versions and encrypted session keys."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from homeserver.storage.database import Database, Transaction

JsonDict = dict[str, Any]


@dataclass(frozen=True, slots=True)
class BackupVersion:
    version: int
    algorithm: str
    auth_data: JsonDict
    etag: int


@dataclass(frozen=True, slots=True)
class BackedUpKey:
    room_id: str
    session_id: str
    first_message_index: int
    forwarded_count: int
    is_verified: bool
    session_data: JsonDict

    def to_json(self) -> JsonDict:
        return {
            "first_message_index": self.first_message_index,
            "forwarded_count": self.forwarded_count,
            "is_verified": self.is_verified,
            "session_data": self.session_data,
        }


class KeyBackupRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_version(self, user_id: str, algorithm: str, auth_data: JsonDict) -> int:
        def txn_fn(txn: Transaction) -> int:
            row = txn.select_one("SELECT MAX(version) FROM room_key_backup_versions WHERE user_id = ?", (user_id,))
            version = (int(row[0]) if row and row[0] is not None else 0) + 1
            txn.execute(
                "INSERT INTO room_key_backup_versions (user_id, version, algorithm, auth_data) VALUES (?, ?, ?, ?)",
                (user_id, version, algorithm, json.dumps(auth_data)),
            )
            return version

        return await self._db.run_interaction("create_backup_version", txn_fn)

    async def get_version(self, user_id: str, version: int | None) -> BackupVersion | None:
        """A live version, or the latest when ``version`` is None."""

        def txn_fn(txn: Transaction) -> BackupVersion | None:
            if version is None:
                row = txn.select_one(
                    "SELECT version, algorithm, auth_data, etag FROM room_key_backup_versions"
                    " WHERE user_id = ? AND deleted = 0 ORDER BY version DESC LIMIT 1",
                    (user_id,),
                )
            else:
                row = txn.select_one(
                    "SELECT version, algorithm, auth_data, etag FROM room_key_backup_versions"
                    " WHERE user_id = ? AND version = ? AND deleted = 0",
                    (user_id, version),
                )
            if row is None:
                return None
            return BackupVersion(int(row[0]), str(row[1]), json.loads(row[2]), int(row[3]))

        return await self._db.run_interaction("get_backup_version", txn_fn)

    async def update_version(self, user_id: str, version: int, auth_data: JsonDict) -> None:
        await self._db.run_interaction(
            "update_backup_version",
            lambda txn: txn.execute(
                "UPDATE room_key_backup_versions SET auth_data = ? WHERE user_id = ? AND version = ?",
                (json.dumps(auth_data), user_id, version),
            ),
        )

    async def delete_version(self, user_id: str, version: int) -> bool:
        def txn_fn(txn: Transaction) -> bool:
            txn.execute(
                "UPDATE room_key_backup_versions SET deleted = 1 WHERE user_id = ? AND version = ? AND deleted = 0",
                (user_id, version),
            )
            deleted = txn.rowcount == 1
            txn.execute("DELETE FROM room_key_backup_keys WHERE user_id = ? AND version = ?", (user_id, version))
            return deleted

        return await self._db.run_interaction("delete_backup_version", txn_fn)

    async def get_keys(
        self, user_id: str, version: int, room_id: str | None = None, session_id: str | None = None
    ) -> list[BackedUpKey]:
        sql = (
            "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_data"
            " FROM room_key_backup_keys WHERE user_id = ? AND version = ?"
        )
        params: list[Any] = [user_id, version]
        if room_id is not None:
            sql += " AND room_id = ?"
            params.append(room_id)
        if session_id is not None:
            sql += " AND session_id = ?"
            params.append(session_id)

        def txn_fn(txn: Transaction) -> list[BackedUpKey]:
            return [
                BackedUpKey(str(r[0]), str(r[1]), int(r[2]), int(r[3]), bool(r[4]), json.loads(r[5]))
                for r in txn.select_all(sql, params)
            ]

        return await self._db.run_interaction("get_backup_keys", txn_fn)

    async def put_keys(self, user_id: str, version: int, keys: list[BackedUpKey], *, replace_if: Any) -> tuple[int, int]:
        """Store keys where ``replace_if(existing, new)`` says the new one is better; bump the
        etag if anything changed.  Returns (etag, count)."""

        def txn_fn(txn: Transaction) -> tuple[int, int]:
            changed = False
            for key in keys:
                row = txn.select_one(
                    "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_data"
                    " FROM room_key_backup_keys WHERE user_id = ? AND version = ? AND room_id = ? AND session_id = ?",
                    (user_id, version, key.room_id, key.session_id),
                )
                existing = (
                    None
                    if row is None
                    else BackedUpKey(str(row[0]), str(row[1]), int(row[2]), int(row[3]), bool(row[4]), json.loads(row[5]))
                )
                if existing is not None and not replace_if(existing, key):
                    continue
                txn.execute(
                    "INSERT INTO room_key_backup_keys (user_id, version, room_id, session_id, first_message_index,"
                    " forwarded_count, is_verified, session_data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET"
                    " first_message_index = excluded.first_message_index, forwarded_count = excluded.forwarded_count,"
                    " is_verified = excluded.is_verified, session_data = excluded.session_data",
                    (
                        user_id, version, key.room_id, key.session_id, key.first_message_index,
                        key.forwarded_count, int(key.is_verified), json.dumps(key.session_data),
                    ),
                )
                changed = True
            if changed:
                txn.execute(
                    "UPDATE room_key_backup_versions SET etag = etag + 1 WHERE user_id = ? AND version = ?",
                    (user_id, version),
                )
            return self._etag_count_txn(txn, user_id, version)

        return await self._db.run_interaction("put_backup_keys", txn_fn)

    async def delete_keys(self, user_id: str, version: int, room_id: str | None, session_id: str | None) -> tuple[int, int]:
        sql = "DELETE FROM room_key_backup_keys WHERE user_id = ? AND version = ?"
        params: list[Any] = [user_id, version]
        if room_id is not None:
            sql += " AND room_id = ?"
            params.append(room_id)
        if session_id is not None:
            sql += " AND session_id = ?"
            params.append(session_id)

        def txn_fn(txn: Transaction) -> tuple[int, int]:
            txn.execute(sql, params)
            if txn.rowcount:
                txn.execute(
                    "UPDATE room_key_backup_versions SET etag = etag + 1 WHERE user_id = ? AND version = ?",
                    (user_id, version),
                )
            return self._etag_count_txn(txn, user_id, version)

        return await self._db.run_interaction("delete_backup_keys", txn_fn)

    async def etag_and_count(self, user_id: str, version: int) -> tuple[int, int]:
        return await self._db.run_interaction("backup_etag", self._etag_count_txn, user_id, version)

    @staticmethod
    def _etag_count_txn(txn: Transaction, user_id: str, version: int) -> tuple[int, int]:
        etag = txn.select_one(
            "SELECT etag FROM room_key_backup_versions WHERE user_id = ? AND version = ?", (user_id, version)
        )
        count = txn.select_one(
            "SELECT COUNT(*) FROM room_key_backup_keys WHERE user_id = ? AND version = ?", (user_id, version)
        )
        return (int(etag[0]) if etag else 0), (int(count[0]) if count else 0)
