"""Third-party identifiers bound to accounts, and their validation sessions."""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.storage.database import Database, Transaction


@dataclass(frozen=True, slots=True)
class ThreepidSession:
    session_id: str
    medium: str
    address: str
    client_secret: str
    purpose: str
    send_attempt: int
    link_token: str
    code: str
    failed_attempts: int
    created_ts: int
    validated_at: int | None


_SESSION_COLUMNS = (
    "session_id, medium, address, client_secret, purpose, send_attempt, link_token, code,"
    " failed_attempts, created_ts, validated_at"
)


class ThreepidRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- bound identifiers -------------------------------------------------------------

    async def user_for(self, medium: str, address: str) -> str | None:
        def txn_fn(txn: Transaction) -> str | None:
            row = txn.select_one(
                "SELECT user_id FROM user_threepids WHERE medium = ? AND address = ?", (medium, address)
            )
            return str(row[0]) if row else None

        return await self._db.run_interaction("threepid_user", txn_fn)

    async def for_user(self, user_id: str) -> list[tuple[str, str, int, int]]:
        """(medium, address, validated_at, added_at) of the user's identifiers."""

        def txn_fn(txn: Transaction) -> list[tuple[str, str, int, int]]:
            rows = txn.select_all(
                "SELECT medium, address, validated_at, added_at FROM user_threepids WHERE user_id = ?"
                " ORDER BY added_at, address",
                (user_id,),
            )
            return [(str(m), str(a), int(v), int(t)) for m, a, v, t in rows]

        return await self._db.run_interaction("user_threepids", txn_fn)

    async def add(self, user_id: str, medium: str, address: str, validated_at: int, now_ms: int) -> bool:
        """Bind the identifier; False if another account already holds it."""

        def txn_fn(txn: Transaction) -> bool:
            txn.execute(
                "INSERT INTO user_threepids (medium, address, user_id, validated_at, added_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (medium, address) DO NOTHING",
                (medium, address, user_id, validated_at, now_ms),
            )
            if txn.rowcount == 1:
                return True
            row = txn.select_one(
                "SELECT user_id FROM user_threepids WHERE medium = ? AND address = ?", (medium, address)
            )
            return row is not None and row[0] == user_id

        return await self._db.run_interaction("add_threepid", txn_fn)

    async def remove(self, user_id: str, medium: str, address: str) -> bool:
        def txn_fn(txn: Transaction) -> bool:
            txn.execute(
                "DELETE FROM user_threepids WHERE user_id = ? AND medium = ? AND address = ?",
                (user_id, medium, address),
            )
            return txn.rowcount == 1

        return await self._db.run_interaction("remove_threepid", txn_fn)

    # -- validation sessions -----------------------------------------------------------

    async def find_session(self, medium: str, address: str, client_secret: str, purpose: str) -> ThreepidSession | None:
        def txn_fn(txn: Transaction) -> ThreepidSession | None:
            row = txn.select_one(
                f"SELECT {_SESSION_COLUMNS} FROM threepid_validation_sessions"
                " WHERE client_secret = ? AND medium = ? AND address = ? AND purpose = ?",
                (client_secret, medium, address, purpose),
            )
            return ThreepidSession(*row) if row else None

        return await self._db.run_interaction("find_threepid_session", txn_fn)

    async def get_session(self, session_id: str) -> ThreepidSession | None:
        def txn_fn(txn: Transaction) -> ThreepidSession | None:
            row = txn.select_one(
                f"SELECT {_SESSION_COLUMNS} FROM threepid_validation_sessions WHERE session_id = ?", (session_id,)
            )
            return ThreepidSession(*row) if row else None

        return await self._db.run_interaction("get_threepid_session", txn_fn)

    async def create_session(self, s: ThreepidSession) -> None:
        def txn_fn(txn: Transaction) -> None:
            txn.execute(
                f"INSERT INTO threepid_validation_sessions ({_SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    s.session_id,
                    s.medium,
                    s.address,
                    s.client_secret,
                    s.purpose,
                    s.send_attempt,
                    s.link_token,
                    s.code,
                    s.failed_attempts,
                    s.created_ts,
                    s.validated_at,
                ),
            )

        await self._db.run_interaction("create_threepid_session", txn_fn)

    async def set_send_attempt(self, session_id: str, send_attempt: int) -> None:
        def txn_fn(txn: Transaction) -> None:
            txn.execute(
                "UPDATE threepid_validation_sessions SET send_attempt = ? WHERE session_id = ?",
                (send_attempt, session_id),
            )

        await self._db.run_interaction("threepid_send_attempt", txn_fn)

    async def mark_validated(self, session_id: str, now_ms: int) -> None:
        def txn_fn(txn: Transaction) -> None:
            txn.execute(
                "UPDATE threepid_validation_sessions SET validated_at = ? WHERE session_id = ? AND validated_at IS NULL",
                (now_ms, session_id),
            )

        await self._db.run_interaction("validate_threepid_session", txn_fn)

    async def count_failure(self, session_id: str) -> None:
        def txn_fn(txn: Transaction) -> None:
            txn.execute(
                "UPDATE threepid_validation_sessions SET failed_attempts = failed_attempts + 1 WHERE session_id = ?",
                (session_id,),
            )

        await self._db.run_interaction("threepid_failed_attempt", txn_fn)

    async def delete_older_than(self, ts_ms: int) -> None:
        def txn_fn(txn: Transaction) -> None:
            txn.execute("DELETE FROM threepid_validation_sessions WHERE created_ts < ?", (ts_ms,))

        await self._db.run_interaction("expire_threepid_sessions", txn_fn)


@dataclass(frozen=True, slots=True)
class PendingThreepidInvite:
    token: str
    room_id: str
    sender: str
    medium: str
    address: str
    display_name: str
    server_name: str
    created_ts: int


_INVITE_COLUMNS = "token, room_id, sender, medium, address, display_name, server_name, created_ts"


class ThreepidInviteRepository:
    """Invites by e-mail address waiting for the address's account."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, invite: PendingThreepidInvite) -> None:
        def txn_fn(txn: Transaction) -> None:
            txn.execute(
                f"INSERT INTO threepid_invites ({_INVITE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    invite.token,
                    invite.room_id,
                    invite.sender,
                    invite.medium,
                    invite.address,
                    invite.display_name,
                    invite.server_name,
                    invite.created_ts,
                ),
            )

        await self._db.run_interaction("add_threepid_invite", txn_fn)

    async def for_address(self, medium: str, address: str) -> list[PendingThreepidInvite]:
        def txn_fn(txn: Transaction) -> list[PendingThreepidInvite]:
            rows = txn.select_all(
                f"SELECT {_INVITE_COLUMNS} FROM threepid_invites WHERE medium = ? AND address = ? ORDER BY created_ts",
                (medium, address),
            )
            return [PendingThreepidInvite(*row) for row in rows]

        return await self._db.run_interaction("threepid_invites_for", txn_fn)

    async def for_other_servers(self, server_name: str, limit: int = 500) -> list[PendingThreepidInvite]:
        """Pending invites of addresses owned by servers other than ``server_name``."""

        def txn_fn(txn: Transaction) -> list[PendingThreepidInvite]:
            rows = txn.select_all(
                f"SELECT {_INVITE_COLUMNS} FROM threepid_invites WHERE server_name <> ? ORDER BY created_ts LIMIT ?",
                (server_name, limit),
            )
            return [PendingThreepidInvite(*row) for row in rows]

        return await self._db.run_interaction("remote_threepid_invites", txn_fn)

    async def delete(self, token: str) -> None:
        def txn_fn(txn: Transaction) -> None:
            txn.execute("DELETE FROM threepid_invites WHERE token = ?", (token,))

        await self._db.run_interaction("delete_threepid_invite", txn_fn)
