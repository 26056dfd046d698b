"""Account validity: each account's expiry and its latest renewal token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from homeserver.storage.database import Database, Transaction


@dataclass(frozen=True, slots=True)
class Validity:
    user_id: str
    expiration_ts_ms: int
    email_sent: bool
    renewal_token: str | None
    token_used_ts_ms: int | None


_COLUMNS = "user_id, expiration_ts_ms, email_sent, renewal_token, token_used_ts_ms"


def _validity(row: tuple[Any, ...]) -> Validity:
    user_id, expiry, sent, token, used = row
    return Validity(
        str(user_id),
        int(expiry),
        bool(sent),
        token if isinstance(token, str) else None,
        int(used) if used is not None else None,
    )


class AccountValidityRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, user_id: str) -> Validity | None:
        def txn_fn(txn: Transaction) -> Validity | None:
            row = txn.select_one(f"SELECT {_COLUMNS} FROM account_validity WHERE user_id = ?", (user_id,))
            return _validity(row) if row else None

        return await self._db.run_interaction("get_account_validity", txn_fn)

    async def set_expiration(self, user_id: str, expiration_ts_ms: int, *, email_sent: bool = False) -> None:
        """Set the expiry (a new period: the renewal e-mail may go out again)."""

        def txn_fn(txn: Transaction) -> None:
            txn.execute(
                "INSERT INTO account_validity (user_id, expiration_ts_ms, email_sent) VALUES (?, ?, ?)"
                " ON CONFLICT (user_id) DO UPDATE SET expiration_ts_ms = excluded.expiration_ts_ms,"
                " email_sent = excluded.email_sent",
                (user_id, expiration_ts_ms, int(email_sent)),
            )

        await self._db.run_interaction("set_account_validity", txn_fn)

    async def insert_if_missing(self, user_id: str, expiration_ts_ms: int) -> Validity:
        def txn_fn(txn: Transaction) -> Validity:
            txn.execute(
                "INSERT INTO account_validity (user_id, expiration_ts_ms) VALUES (?, ?)"
                " ON CONFLICT (user_id) DO NOTHING",
                (user_id, expiration_ts_ms),
            )
            row = txn.select_one(f"SELECT {_COLUMNS} FROM account_validity WHERE user_id = ?", (user_id,))
            assert row is not None
            return _validity(row)

        return await self._db.run_interaction("insert_account_validity", txn_fn)

    async def set_renewal_token(self, user_id: str, token: str) -> None:
        def txn_fn(txn: Transaction) -> None:
            txn.execute(
                "UPDATE account_validity SET renewal_token = ?, token_used_ts_ms = NULL WHERE user_id = ?",
                (token, user_id),
            )

        await self._db.run_interaction("set_renewal_token", txn_fn)

    async def mark_email_sent(self, user_id: str) -> None:
        def txn_fn(txn: Transaction) -> None:
            txn.execute("UPDATE account_validity SET email_sent = 1 WHERE user_id = ?", (user_id,))

        await self._db.run_interaction("mark_renewal_email_sent", txn_fn)

    async def by_token(self, token: str) -> Validity | None:
        def txn_fn(txn: Transaction) -> Validity | None:
            row = txn.select_one(f"SELECT {_COLUMNS} FROM account_validity WHERE renewal_token = ?", (token,))
            return _validity(row) if row else None

        return await self._db.run_interaction("get_validity_by_token", txn_fn)

    async def renew_with_token(self, token: str, expiration_ts_ms: int, now_ms: int) -> Validity | None:
        """Use the token (once): extend the account; None if the token is unknown."""

        def txn_fn(txn: Transaction) -> Validity | None:
            txn.execute(
                "UPDATE account_validity SET expiration_ts_ms = ?, email_sent = 0, token_used_ts_ms = ?"
                " WHERE renewal_token = ? AND token_used_ts_ms IS NULL",
                (expiration_ts_ms, now_ms, token),
            )
            row = txn.select_one(f"SELECT {_COLUMNS} FROM account_validity WHERE renewal_token = ?", (token,))
            return _validity(row) if row else None

        return await self._db.run_interaction("renew_account", txn_fn)

    async def expiring_before(self, ts_ms: int, limit: int = 500) -> list[Validity]:
        """Accounts expiring before ``ts_ms`` that were not sent their renewal e-mail yet."""

        def txn_fn(txn: Transaction) -> list[Validity]:
            rows = txn.select_all(
                f"SELECT {_COLUMNS} FROM account_validity WHERE email_sent = 0 AND expiration_ts_ms < ?"
                " ORDER BY expiration_ts_ms LIMIT ?",
                (ts_ms, limit),
            )
            return [_validity(r) for r in rows]

        return await self._db.run_interaction("accounts_expiring_before", txn_fn)
