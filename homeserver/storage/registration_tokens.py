"""Registration tokens (Synapse's admin API manages them; /register consumes them)."""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.storage.database import Database, Transaction


@dataclass(frozen=True, slots=True)
class RegistrationToken:
    token: str
    uses_allowed: int | None
    pending: int
    completed: int
    expiry_time: int | None

    def is_valid(self, now_ms: int) -> bool:
        if self.expiry_time is not None and self.expiry_time < now_ms:
            return False
        return self.uses_allowed is None or self.pending + self.completed < self.uses_allowed

    def to_json(self) -> dict[str, object]:
        return {
            "token": self.token,
            "uses_allowed": self.uses_allowed,
            "pending": self.pending,
            "completed": self.completed,
            "expiry_time": self.expiry_time,
        }


class RegistrationTokenRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, token: str, uses_allowed: int | None, expiry_time: int | None) -> bool:
        def txn_fn(txn: Transaction) -> bool:
            txn.execute(
                "INSERT INTO registration_tokens (token, uses_allowed, expiry_time) VALUES (?, ?, ?)"
                " ON CONFLICT (token) DO NOTHING",
                (token, uses_allowed, expiry_time),
            )
            return txn.rowcount == 1

        return await self._db.run_interaction("create_registration_token", txn_fn)

    async def get(self, token: str) -> RegistrationToken | None:
        def txn_fn(txn: Transaction) -> RegistrationToken | None:
            row = txn.select_one(
                "SELECT token, uses_allowed, pending, completed, expiry_time FROM registration_tokens"
                " WHERE token = ?",
                (token,),
            )
            return RegistrationToken(*row) if row else None

        return await self._db.run_interaction("get_registration_token", txn_fn)

    async def list_all(self) -> list[RegistrationToken]:
        def txn_fn(txn: Transaction) -> list[RegistrationToken]:
            rows = txn.select_all(
                "SELECT token, uses_allowed, pending, completed, expiry_time FROM registration_tokens"
                " ORDER BY token"
            )
            return [RegistrationToken(*r) for r in rows]

        return await self._db.run_interaction("list_registration_tokens", txn_fn)

    async def delete(self, token: str) -> bool:
        def txn_fn(txn: Transaction) -> bool:
            txn.execute("DELETE FROM registration_tokens WHERE token = ?", (token,))
            return txn.rowcount == 1

        return await self._db.run_interaction("delete_registration_token", txn_fn)

    async def reserve(self, token: str, now_ms: int) -> bool:
        """Count a pending use of the token if it is still valid (atomically)."""

        def txn_fn(txn: Transaction) -> bool:
            txn.execute(
                "UPDATE registration_tokens SET pending = pending + 1 WHERE token = ?"
                " AND (expiry_time IS NULL OR expiry_time >= ?)"
                " AND (uses_allowed IS NULL OR pending + completed < uses_allowed)",
                (token, now_ms),
            )
            return txn.rowcount == 1

        return await self._db.run_interaction("reserve_registration_token", txn_fn)

    async def complete(self, token: str) -> None:
        await self._db.run_interaction(
            "complete_registration_token",
            lambda txn: txn.execute(
                "UPDATE registration_tokens SET pending = pending - 1, completed = completed + 1"
                " WHERE token = ? AND pending > 0",
                (token,),
            ),
        )
