"""Accounts: the users table."""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.storage.database import Database, Transaction
from homeserver.storage.user_directory import refresh_local_user_txn


@dataclass(frozen=True, slots=True)
class UserRecord:
    user_id: str
    password_hash: str | None
    created_ts: int
    is_admin: bool
    is_guest: bool
    deactivated: bool
    user_type: str | None
    appservice_id: str | None


_COLUMNS = "user_id, password_hash, created_ts, is_admin, is_guest, deactivated, user_type, appservice_id"


def _record(row: tuple[object, ...]) -> UserRecord:
    return UserRecord(
        user_id=str(row[0]),
        password_hash=row[1] if row[1] is None else str(row[1]),
        created_ts=int(row[2]),  # type: ignore[call-overload]
        is_admin=bool(row[3]),
        is_guest=bool(row[4]),
        deactivated=bool(row[5]),
        user_type=None if row[6] is None else str(row[6]),
        appservice_id=None if row[7] is None else str(row[7]),
    )


class AccountRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_user(
        self,
        user_id: str,
        password_hash: str | None,
        now_ms: int,
        *,
        is_admin: bool = False,
        is_guest: bool = False,
        user_type: str | None = None,
        appservice_id: str | None = None,
    ) -> bool:
        """Create the account; False if the user ID is taken (nothing changed then)."""

        def txn_fn(txn: Transaction) -> bool:
            txn.execute(
                f"INSERT INTO users ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, 0, ?, ?)"
                " ON CONFLICT (user_id) DO NOTHING",
                (user_id, password_hash, now_ms, int(is_admin), int(is_guest), user_type, appservice_id),
            )
            if txn.rowcount != 1:
                return False
            refresh_local_user_txn(txn, user_id)  # findable in the user directory
            return True

        return await self._db.run_interaction("create_user", txn_fn)

    async def get_user(self, user_id: str) -> UserRecord | None:
        def txn_fn(txn: Transaction) -> UserRecord | None:
            row = txn.select_one(f"SELECT {_COLUMNS} FROM users WHERE user_id = ?", (user_id,))
            return _record(row) if row else None

        return await self._db.run_interaction("get_user", txn_fn)

    async def find_user_case_insensitive(self, user_id: str) -> list[str]:
        """User IDs equal to ``user_id`` ignoring case (logins are case-insensitive)."""

        def txn_fn(txn: Transaction) -> list[str]:
            rows = txn.select_all("SELECT user_id FROM users WHERE LOWER(user_id) = LOWER(?)", (user_id,))
            return [str(r[0]) for r in rows]

        return await self._db.run_interaction("find_user_ci", txn_fn)

    async def set_password_hash(self, user_id: str, password_hash: str | None) -> None:
        await self._db.run_interaction(
            "set_password_hash",
            lambda txn: txn.execute(
                "UPDATE users SET password_hash = ? WHERE user_id = ?", (password_hash, user_id)
            ),
        )

    async def deactivate(self, user_id: str) -> None:
        """Mark the account deactivated and forget its password (tokens are removed by the caller)."""
        await self._db.run_interaction(
            "deactivate",
            lambda txn: txn.execute(
                "UPDATE users SET deactivated = 1, password_hash = NULL WHERE user_id = ?", (user_id,)
            ),
        )
