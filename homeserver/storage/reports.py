"""Client-API gap fillers' storage: content reports (events and rooms reported by users),
OpenID tokens, and the timeline lookup by timestamp."""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.storage.database import Database, Transaction


@dataclass(frozen=True, slots=True)
class ContentReport:
    id: int
    received_ts: int
    room_id: str
    event_id: str | None
    user_id: str
    reason: str | None
    score: int | None


_COLUMNS = "id, received_ts, room_id, event_id, user_id, reason, score"


def _report(row: tuple[object, ...]) -> ContentReport:
    return ContentReport(
        id=int(row[0]),  # type: ignore[call-overload]
        received_ts=int(row[1]),  # type: ignore[call-overload]
        room_id=str(row[2]),
        event_id=None if row[3] is None else str(row[3]),
        user_id=str(row[4]),
        reason=None if row[5] is None else str(row[5]),
        score=None if row[6] is None else int(row[6]),  # type: ignore[call-overload]
    )


class ReportRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(
        self,
        *,
        received_ts: int,
        room_id: str,
        event_id: str | None,
        user_id: str,
        reason: str | None,
        score: int | None,
    ) -> int:
        """Store a report; returns its ID (increasing with arrival)."""

        def txn_fn(txn: Transaction) -> int:
            row = txn.select_one("SELECT MAX(id) FROM content_reports")
            new_id = (int(row[0]) if row and row[0] is not None else 0) + 1
            txn.execute(
                f"INSERT INTO content_reports ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (new_id, received_ts, room_id, event_id, user_id, reason, score),
            )
            return new_id

        return await self._db.run_interaction("add_content_report", txn_fn)

    async def list(
        self, *, offset: int, limit: int, newest_first: bool, room_id: str | None, user_id: str | None
    ) -> tuple[list[ContentReport], int]:
        """A page of reports matching the filters, and how many match in all."""
        where: list[str] = []
        params: list[object] = []
        if room_id is not None:
            where.append("room_id = ?")
            params.append(room_id)
        if user_id is not None:
            where.append("user_id = ?")
            params.append(user_id)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        order = "DESC" if newest_first else "ASC"

        def txn_fn(txn: Transaction) -> tuple[list[ContentReport], int]:
            total_row = txn.select_one(f"SELECT COUNT(*) FROM content_reports{clause}", params)
            rows = txn.select_all(
                f"SELECT {_COLUMNS} FROM content_reports{clause} ORDER BY received_ts {order}, id {order}"
                " LIMIT ? OFFSET ?",
                (*params, limit, offset),
            )
            return [_report(r) for r in rows], int(total_row[0]) if total_row else 0

        return await self._db.run_interaction("list_content_reports", txn_fn)

    async def get(self, report_id: int) -> ContentReport | None:
        row = await self._db.run_interaction(
            "get_content_report",
            lambda txn: txn.select_one(f"SELECT {_COLUMNS} FROM content_reports WHERE id = ?", (report_id,)),
        )
        return _report(row) if row else None


class OpenIdTokenRepository:
    """OpenID tokens, by SHA-256 digest, with their expiry."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, token_hash: str, user_id: str, expires_ts: int) -> None:
        def txn_fn(txn: Transaction) -> None:
            txn.execute(
                "INSERT INTO openid_tokens (token_hash, user_id, expires_ts) VALUES (?, ?, ?)",
                (token_hash, user_id, expires_ts),
            )

        await self._db.run_interaction("add_openid_token", txn_fn)

    async def user_for(self, token_hash: str, now_ms: int) -> str | None:
        row = await self._db.run_interaction(
            "get_openid_token",
            lambda txn: txn.select_one(
                "SELECT user_id FROM openid_tokens WHERE token_hash = ? AND expires_ts > ?", (token_hash, now_ms)
            ),
        )
        return str(row[0]) if row else None

    async def delete_expired(self, now_ms: int) -> None:
        await self._db.run_interaction(
            "expire_openid_tokens",
            lambda txn: txn.execute("DELETE FROM openid_tokens WHERE expires_ts <= ?", (now_ms,)),
        )


class EventTimestampLookup:
    """The room's local timeline event closest to a timestamp (``timestamp_to_event``)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def closest(self, room_id: str, ts: int, *, forwards: bool) -> tuple[str, int] | None:
        """(event_id, origin_server_ts) of the first non-outlier event at or after ``ts``
        (``forwards``) or at or before it; None when there is none."""
        if forwards:
            sql = (
                "SELECT event_id, origin_server_ts FROM events WHERE room_id = ? AND outlier = 0 AND rejected_reason IS NULL"
                " AND origin_server_ts >= ? ORDER BY origin_server_ts ASC, stream_ordering ASC LIMIT 1"
            )
        else:
            sql = (
                "SELECT event_id, origin_server_ts FROM events WHERE room_id = ? AND outlier = 0 AND rejected_reason IS NULL"
                " AND origin_server_ts <= ? ORDER BY origin_server_ts DESC, stream_ordering DESC LIMIT 1"
            )
        row = await self._db.run_interaction("event_by_timestamp", lambda txn: txn.select_one(sql, (room_id, ts)))
        return (str(row[0]), int(row[1])) if row else None
