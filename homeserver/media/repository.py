"""Media metadata in the database: local uploads, the remote media cache, thumbnails."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from homeserver.storage.database import Database, Row, Transaction


@dataclass(frozen=True, slots=True)
class LocalMedia:
    media_id: str
    user_id: str
    media_type: str | None  # None (and media_length None) until uploaded
    media_length: int | None
    upload_name: str | None
    created_ts: int
    last_access_ts: int | None
    sha256: str | None
    quarantined_by: str | None
    safe_from_quarantine: bool
    authenticated: bool
    image_width: int | None = None
    image_height: int | None = None

    @property
    def uploaded(self) -> bool:
        return self.media_length is not None


@dataclass(frozen=True, slots=True)
class RemoteMedia:
    media_origin: str
    media_id: str
    filesystem_id: str
    media_type: str
    media_length: int
    upload_name: str | None
    created_ts: int
    last_access_ts: int
    sha256: str | None
    quarantined_by: str | None
    authenticated: bool
    image_width: int | None = None
    image_height: int | None = None


@dataclass(frozen=True, slots=True)
class ThumbnailInfo:
    width: int
    height: int
    method: str
    media_type: str
    media_length: int


_LOCAL_COLUMNS = (
    "media_id, user_id, media_type, media_length, upload_name, created_ts, last_access_ts,"
    " sha256, quarantined_by, safe_from_quarantine, authenticated, image_width, image_height"
)
_REMOTE_COLUMNS = (
    "media_origin, media_id, filesystem_id, media_type, media_length, upload_name, created_ts,"
    " last_access_ts, sha256, quarantined_by, authenticated, image_width, image_height"
)


def _local(row: Row) -> LocalMedia:
    return LocalMedia(
        media_id=row[0],
        user_id=row[1],
        media_type=row[2],
        media_length=row[3],
        upload_name=row[4],
        created_ts=row[5],
        last_access_ts=row[6],
        sha256=row[7],
        quarantined_by=row[8],
        safe_from_quarantine=bool(row[9]),
        authenticated=bool(row[10]),
        image_width=row[11],
        image_height=row[12],
    )


def _remote(row: Row) -> RemoteMedia:
    return RemoteMedia(
        media_origin=row[0],
        media_id=row[1],
        filesystem_id=row[2],
        media_type=row[3],
        media_length=row[4],
        upload_name=row[5],
        created_ts=row[6],
        last_access_ts=row[7],
        sha256=row[8],
        quarantined_by=row[9],
        authenticated=bool(row[10]),
        image_width=row[11],
        image_height=row[12],
    )


class MediaRepository:
    """One class for the four media tables; every method is one transaction."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- local media -------------------------------------------------------------------

    async def create_pending(self, media_id: str, user_id: str, now_ms: int, *, authenticated: bool) -> None:
        """Reserve a media ID for a later upload (POST /create)."""

        def txn_fn(txn: Transaction) -> None:
            txn.execute(
                "INSERT INTO local_media (media_id, user_id, created_ts, authenticated) VALUES (?, ?, ?, ?)",
                (media_id, user_id, now_ms, int(authenticated)),
            )

        await self._db.run_interaction("create_pending_media", txn_fn)

    async def store_local(
        self,
        *,
        media_id: str,
        user_id: str,
        media_type: str,
        media_length: int,
        upload_name: str | None,
        now_ms: int,
        sha256: str,
        authenticated: bool,
    ) -> LocalMedia:
        """Record an uploaded file; quarantined at once if identical content already is."""

        def txn_fn(txn: Transaction) -> LocalMedia:
            quarantined_by = _quarantined_hash(txn, sha256)
            txn.execute(
                f"INSERT INTO local_media ({_LOCAL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, NULL, NULL)",
                (
                    media_id,
                    user_id,
                    media_type,
                    media_length,
                    upload_name,
                    now_ms,
                    now_ms,
                    sha256,
                    quarantined_by,
                    int(authenticated),
                ),
            )
            row = txn.select_one(f"SELECT {_LOCAL_COLUMNS} FROM local_media WHERE media_id = ?", (media_id,))
            assert row is not None
            return _local(row)

        return await self._db.run_interaction("store_local_media", txn_fn)

    async def complete_pending(
        self,
        *,
        media_id: str,
        media_type: str,
        media_length: int,
        upload_name: str | None,
        now_ms: int,
        sha256: str,
    ) -> bool:
        """Fill in a reserved media ID; False if someone else already did."""

        def txn_fn(txn: Transaction) -> bool:
            quarantined_by = _quarantined_hash(txn, sha256)
            txn.execute(
                "UPDATE local_media SET media_type = ?, media_length = ?, upload_name = ?, sha256 = ?,"
                " quarantined_by = ?, last_access_ts = ? WHERE media_id = ? AND media_length IS NULL",
                (media_type, media_length, upload_name, sha256, quarantined_by, now_ms, media_id),
            )
            return txn.rowcount == 1

        return await self._db.run_interaction("complete_pending_media", txn_fn)

    async def get_local(self, media_id: str) -> LocalMedia | None:
        def txn_fn(txn: Transaction) -> LocalMedia | None:
            row = txn.select_one(f"SELECT {_LOCAL_COLUMNS} FROM local_media WHERE media_id = ?", (media_id,))
            return _local(row) if row else None

        return await self._db.run_interaction("get_local_media", txn_fn)

    async def count_pending(self, user_id: str, created_after_ms: int) -> tuple[int, int | None]:
        """How many reserved, not yet uploaded, unexpired media IDs a user holds, and the oldest."""

        def txn_fn(txn: Transaction) -> tuple[int, int | None]:
            row = txn.select_one(
                "SELECT COUNT(*), MIN(created_ts) FROM local_media"
                " WHERE user_id = ? AND media_length IS NULL AND created_ts > ?",
                (user_id, created_after_ms),
            )
            assert row is not None
            return int(row[0]), (int(row[1]) if row[1] is not None else None)

        return await self._db.run_interaction("count_pending_media", txn_fn)

    async def uploaded_size(self, user_id: str, since_ms: int) -> int:
        """Bytes the user uploaded since ``since_ms`` (for media_upload_limits)."""

        def txn_fn(txn: Transaction) -> int:
            row = txn.select_one(
                "SELECT COALESCE(SUM(media_length), 0) FROM local_media WHERE user_id = ? AND created_ts > ?",
                (user_id, since_ms),
            )
            return int(row[0]) if row else 0

        return await self._db.run_interaction("uploaded_media_size", txn_fn)

    async def user_media(self, user_id: str) -> list[LocalMedia]:
        def txn_fn(txn: Transaction) -> list[LocalMedia]:
            rows = txn.select_all(
                f"SELECT {_LOCAL_COLUMNS} FROM local_media WHERE user_id = ? ORDER BY created_ts, media_id",
                (user_id,),
            )
            return [_local(r) for r in rows]

        return await self._db.run_interaction("user_media", txn_fn)

    async def delete_local(self, media_ids: Iterable[str]) -> None:
        ids = [(m,) for m in media_ids]

        def txn_fn(txn: Transaction) -> None:
            txn.execute_many("DELETE FROM local_media_thumbnails WHERE media_id = ?", ids)
            txn.execute_many("DELETE FROM local_media WHERE media_id = ?", ids)

        await self._db.run_interaction("delete_local_media", txn_fn)

    async def local_unused_since(self, before_ms: int, limit: int = 500) -> list[str]:
        """Uploaded media last accessed before ``before_ms``, except quarantined or protected."""

        def txn_fn(txn: Transaction) -> list[str]:
            rows = txn.select_all(
                "SELECT media_id FROM local_media WHERE media_length IS NOT NULL"
                " AND COALESCE(last_access_ts, created_ts) < ? AND quarantined_by IS NULL"
                " AND safe_from_quarantine = 0 ORDER BY media_id LIMIT ?",
                (before_ms, limit),
            )
            return [str(r[0]) for r in rows]

        return await self._db.run_interaction("local_unused_media", txn_fn)

    async def expired_pending(self, created_before_ms: int, limit: int = 500) -> list[str]:
        def txn_fn(txn: Transaction) -> list[str]:
            rows = txn.select_all(
                "SELECT media_id FROM local_media WHERE media_length IS NULL AND created_ts < ?"
                " ORDER BY media_id LIMIT ?",
                (created_before_ms, limit),
            )
            return [str(r[0]) for r in rows]

        return await self._db.run_interaction("expired_pending_media", txn_fn)

    async def set_local_quarantine(self, media_id: str, quarantined_by: str | None) -> bool:
        def txn_fn(txn: Transaction) -> bool:
            if quarantined_by is None:
                txn.execute("UPDATE local_media SET quarantined_by = NULL WHERE media_id = ?", (media_id,))
            else:
                txn.execute(
                    "UPDATE local_media SET quarantined_by = ? WHERE media_id = ? AND safe_from_quarantine = 0",
                    (quarantined_by, media_id),
                )
            return txn.rowcount == 1

        return await self._db.run_interaction("quarantine_local_media", txn_fn)

    async def set_protected(self, media_id: str, protected: bool) -> bool:
        def txn_fn(txn: Transaction) -> bool:
            txn.execute(
                "UPDATE local_media SET safe_from_quarantine = ? WHERE media_id = ?", (int(protected), media_id)
            )
            return txn.rowcount == 1

        return await self._db.run_interaction("protect_local_media", txn_fn)

    async def touch(self, local: Mapping[str, int], remote: Mapping[tuple[str, str], int]) -> None:
        """Record access times (media ID -> ms, batched by the service) for retention."""
        local_rows = [(ts, m) for m, ts in local.items()]
        remote_rows = [(ts, o, m) for (o, m), ts in remote.items()]

        def txn_fn(txn: Transaction) -> None:
            if local_rows:
                txn.execute_many("UPDATE local_media SET last_access_ts = ? WHERE media_id = ?", local_rows)
            if remote_rows:
                txn.execute_many(
                    "UPDATE remote_media_cache SET last_access_ts = ? WHERE media_origin = ? AND media_id = ?",
                    remote_rows,
                )

        await self._db.run_interaction("touch_media", txn_fn)

    # -- thumbnails --------------------------------------------------------------------

    async def set_image_size(self, origin: str | None, media_id: str, width: int, height: int) -> None:
        """Record an image's size (``origin`` None for local media)."""

        def txn_fn(txn: Transaction) -> None:
            if origin is None:
                txn.execute(
                    "UPDATE local_media SET image_width = ?, image_height = ? WHERE media_id = ?",
                    (width, height, media_id),
                )
            else:
                txn.execute(
                    "UPDATE remote_media_cache SET image_width = ?, image_height = ?"
                    " WHERE media_origin = ? AND media_id = ?",
                    (width, height, origin, media_id),
                )

        await self._db.run_interaction("set_image_size", txn_fn)

    async def store_local_thumbnails(self, media_id: str, thumbnails: Iterable[ThumbnailInfo]) -> None:
        rows = [(media_id, t.width, t.height, t.method, t.media_type, t.media_length) for t in thumbnails]

        def txn_fn(txn: Transaction) -> None:
            for row in rows:
                txn.execute(
                    "INSERT INTO local_media_thumbnails (media_id, width, height, method, media_type,"
                    " media_length) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    row,
                )

        await self._db.run_interaction("store_local_thumbnails", txn_fn)

    async def local_thumbnails(self, media_id: str) -> list[ThumbnailInfo]:
        def txn_fn(txn: Transaction) -> list[ThumbnailInfo]:
            rows = txn.select_all(
                "SELECT width, height, method, media_type, media_length FROM local_media_thumbnails"
                " WHERE media_id = ? ORDER BY width, height, method, media_type",
                (media_id,),
            )
            return [ThumbnailInfo(*r) for r in rows]

        return await self._db.run_interaction("local_thumbnails", txn_fn)

    # -- the remote media cache --------------------------------------------------------

    async def get_remote(self, origin: str, media_id: str) -> RemoteMedia | None:
        def txn_fn(txn: Transaction) -> RemoteMedia | None:
            row = txn.select_one(
                f"SELECT {_REMOTE_COLUMNS} FROM remote_media_cache WHERE media_origin = ? AND media_id = ?",
                (origin, media_id),
            )
            return _remote(row) if row else None

        return await self._db.run_interaction("get_remote_media", txn_fn)

    async def store_remote(self, media: RemoteMedia) -> None:
        def txn_fn(txn: Transaction) -> None:
            txn.execute(
                f"INSERT INTO remote_media_cache ({_REMOTE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)"
                " ON CONFLICT (media_origin, media_id) DO NOTHING",
                (
                    media.media_origin,
                    media.media_id,
                    media.filesystem_id,
                    media.media_type,
                    media.media_length,
                    media.upload_name,
                    media.created_ts,
                    media.last_access_ts,
                    media.sha256,
                    media.quarantined_by,
                    int(media.authenticated),
                ),
            )

        await self._db.run_interaction("store_remote_media", txn_fn)

    async def set_remote_quarantine(self, origin: str, media_id: str, quarantined_by: str | None) -> bool:
        def txn_fn(txn: Transaction) -> bool:
            txn.execute(
                "UPDATE remote_media_cache SET quarantined_by = ? WHERE media_origin = ? AND media_id = ?",
                (quarantined_by, origin, media_id),
            )
            return txn.rowcount == 1

        return await self._db.run_interaction("quarantine_remote_media", txn_fn)

    async def remote_unused_since(self, before_ms: int, limit: int = 500) -> list[RemoteMedia]:
        """Cached remote media last accessed before ``before_ms`` (quarantined ones are kept)."""

        def txn_fn(txn: Transaction) -> list[RemoteMedia]:
            rows = txn.select_all(
                f"SELECT {_REMOTE_COLUMNS} FROM remote_media_cache WHERE last_access_ts < ?"
                " AND quarantined_by IS NULL ORDER BY media_origin, media_id LIMIT ?",
                (before_ms, limit),
            )
            return [_remote(r) for r in rows]

        return await self._db.run_interaction("remote_unused_media", txn_fn)

    async def delete_remote(self, origin: str, media_id: str) -> None:
        def txn_fn(txn: Transaction) -> None:
            txn.execute(
                "DELETE FROM remote_media_thumbnails WHERE media_origin = ? AND media_id = ?", (origin, media_id)
            )
            txn.execute("DELETE FROM remote_media_cache WHERE media_origin = ? AND media_id = ?", (origin, media_id))

        await self._db.run_interaction("delete_remote_media", txn_fn)

    async def store_remote_thumbnails(self, origin: str, media_id: str, thumbnails: Iterable[ThumbnailInfo]) -> None:
        rows = [(origin, media_id, t.width, t.height, t.method, t.media_type, t.media_length) for t in thumbnails]

        def txn_fn(txn: Transaction) -> None:
            for row in rows:
                txn.execute(
                    "INSERT INTO remote_media_thumbnails (media_origin, media_id, width, height, method,"
                    " media_type, media_length) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    row,
                )

        await self._db.run_interaction("store_remote_thumbnails", txn_fn)

    async def remote_thumbnails(self, origin: str, media_id: str) -> list[ThumbnailInfo]:
        def txn_fn(txn: Transaction) -> list[ThumbnailInfo]:
            rows = txn.select_all(
                "SELECT width, height, method, media_type, media_length FROM remote_media_thumbnails"
                " WHERE media_origin = ? AND media_id = ? ORDER BY width, height, method, media_type",
                (origin, media_id),
            )
            return [ThumbnailInfo(*r) for r in rows]

        return await self._db.run_interaction("remote_thumbnails", txn_fn)


def _quarantined_hash(txn: Transaction, sha256: str) -> str | None:
    """Who quarantined identical content, if anyone (so re-uploads stay quarantined)."""
    row = txn.select_one(
        "SELECT quarantined_by FROM local_media WHERE sha256 = ? AND quarantined_by IS NOT NULL"
        " UNION ALL SELECT quarantined_by FROM remote_media_cache WHERE sha256 = ? AND quarantined_by IS NOT NULL"
        " LIMIT 1",
        (sha256, sha256),
    )
    return str(row[0]) if row else None
