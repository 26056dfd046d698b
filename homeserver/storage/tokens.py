"""Access and refresh tokens, stored as SHA-256 digests."""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.storage.database import Database, Transaction


@dataclass(frozen=True, slots=True)
class AccessTokenInfo:
    user_id: str
    device_id: str | None
    valid_until_ts: int | None
    is_guest: bool
    deactivated: bool
    token_hash: str


@dataclass(frozen=True, slots=True)
class RefreshTokenInfo:
    user_id: str
    device_id: str
    expiry_ts: int | None
    ultimate_session_expiry_ts: int | None
    next_token_hash: str | None


_CACHE_SIZE = 50_000


class TokenRepository:
    """Tokens, with the access-token lookups of every request served from a cache.

    Every deletion of access tokens goes through this class (or announces itself through
    :meth:`forget_user`), so a cached token is never valid longer than the stored one.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._cache: dict[str, AccessTokenInfo] = {}
        # Bumped by every invalidation: a lookup that raced a deletion is not cached.
        self._generation = 0

    def forget_user(self, user_id: str, *_: object) -> None:
        """Drop the user's cached tokens (after devices or tokens were deleted elsewhere)."""
        self._generation += 1
        for token_hash in [h for h, info in self._cache.items() if info.user_id == user_id]:
            del self._cache[token_hash]

    async def add_access_token(
        self,
        token_hash: str,
        user_id: str,
        device_id: str | None,
        now_ms: int,
        *,
        valid_until_ts: int | None = None,
        refresh_token_hash: str | None = None,
    ) -> None:
        await self._db.run_interaction(
            "add_access_token",
            lambda txn: txn.execute(
                "INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts, valid_until_ts,"
                " refresh_token_hash) VALUES (?, ?, ?, ?, ?, ?)",
                (token_hash, user_id, device_id, now_ms, valid_until_ts, refresh_token_hash),
            ),
        )

    async def get_access_token(self, token_hash: str) -> AccessTokenInfo | None:
        cached = self._cache.get(token_hash)
        if cached is not None:
            return cached
        generation = self._generation
        info = await self._db.run_interaction("get_access_token", self._get_access_token_txn, token_hash)
        if info is not None and generation == self._generation:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
            self._cache[token_hash] = info
        return info

    @staticmethod
    def _get_access_token_txn(txn: Transaction, token_hash: str) -> AccessTokenInfo | None:
        row = txn.select_one(
            "SELECT t.user_id, t.device_id, t.valid_until_ts, u.is_guest, u.deactivated"
            " FROM access_tokens AS t JOIN users AS u ON u.user_id = t.user_id"
            " WHERE t.token_hash = ?",
            (token_hash,),
        )
        if row is None:
            return None
        return AccessTokenInfo(
            user_id=str(row[0]),
            device_id=None if row[1] is None else str(row[1]),
            valid_until_ts=None if row[2] is None else int(row[2]),
            is_guest=bool(row[3]),
            deactivated=bool(row[4]),
            token_hash=token_hash,
        )

    async def delete_access_token(self, token_hash: str) -> None:
        await self._db.run_interaction(
            "delete_access_token",
            lambda txn: txn.execute("DELETE FROM access_tokens WHERE token_hash = ?", (token_hash,)),
        )
        # After the commit: a lookup that read the row before it is then not cached.
        self._generation += 1
        self._cache.pop(token_hash, None)

    async def add_refresh_token(
        self,
        token_hash: str,
        user_id: str,
        device_id: str,
        now_ms: int,
        expiry_ts: int | None,
        ultimate_session_expiry_ts: int | None,
    ) -> None:
        await self._db.run_interaction(
            "add_refresh_token",
            lambda txn: txn.execute(
                "INSERT INTO refresh_tokens (token_hash, user_id, device_id, created_ts, expiry_ts,"
                " ultimate_session_expiry_ts) VALUES (?, ?, ?, ?, ?, ?)",
                (token_hash, user_id, device_id, now_ms, expiry_ts, ultimate_session_expiry_ts),
            ),
        )

    async def get_refresh_token(self, token_hash: str) -> RefreshTokenInfo | None:
        def txn_fn(txn: Transaction) -> RefreshTokenInfo | None:
            row = txn.select_one(
                "SELECT user_id, device_id, expiry_ts, ultimate_session_expiry_ts, next_token_hash"
                " FROM refresh_tokens WHERE token_hash = ?",
                (token_hash,),
            )
            return RefreshTokenInfo(*row) if row else None

        return await self._db.run_interaction("get_refresh_token", txn_fn)

    async def replace_refresh_token(self, old_hash: str, new_hash: str) -> bool:
        """Record that ``old_hash`` was exchanged for ``new_hash``; False if it already was.

        The old token and the access tokens issued with it are removed once the new
        refresh token is itself used (see :meth:`forget_predecessors`), so a client whose
        response was lost can retry with the old one meanwhile.
        """

        def txn_fn(txn: Transaction) -> bool:
            txn.execute(
                "UPDATE refresh_tokens SET next_token_hash = ? WHERE token_hash = ? AND next_token_hash IS NULL",
                (new_hash, old_hash),
            )
            return txn.rowcount == 1

        return await self._db.run_interaction("replace_refresh_token", txn_fn)

    async def forget_predecessors(self, token_hash: str) -> None:
        """The client used ``token_hash``: its predecessors and their access tokens go."""

        def txn_fn(txn: Transaction) -> list[str]:
            gone: list[str] = []
            rows = txn.select_all("SELECT token_hash FROM refresh_tokens WHERE next_token_hash = ?", (token_hash,))
            for (old,) in rows:
                gone += [str(r[0]) for r in txn.select_all(
                    "SELECT token_hash FROM access_tokens WHERE refresh_token_hash = ?", (old,)
                )]
                txn.execute("DELETE FROM access_tokens WHERE refresh_token_hash = ?", (old,))
                txn.execute("DELETE FROM refresh_tokens WHERE token_hash = ?", (old,))
            return gone

        gone_hashes = await self._db.run_interaction("forget_predecessors", txn_fn)
        self._generation += 1
        for gone in gone_hashes:
            self._cache.pop(gone, None)

    async def delete_user_tokens(self, user_id: str, *, except_token_hash: str | None = None) -> None:
        """Remove every access and refresh token of the user but one access token."""

        def txn_fn(txn: Transaction) -> None:
            keep_refresh = None
            if except_token_hash is not None:
                row = txn.select_one(
                    "SELECT refresh_token_hash FROM access_tokens WHERE token_hash = ?", (except_token_hash,)
                )
                keep_refresh = row[0] if row else None
            txn.execute(
                "DELETE FROM access_tokens WHERE user_id = ? AND token_hash != ?",
                (user_id, except_token_hash or ""),
            )
            txn.execute(
                "DELETE FROM refresh_tokens WHERE user_id = ? AND token_hash != ?",
                (user_id, keep_refresh or ""),
            )

        await self._db.run_interaction("delete_user_tokens", txn_fn)
        self.forget_user(user_id)
