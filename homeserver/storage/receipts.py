"""Read receipts (m.read, m.read.private; threaded or not) and push actions for badges."""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from homeserver.storage.database import Database, Transaction
from homeserver.storage.streams import StreamIdAllocator


class ReceiptRepository:
    def __init__(self, db: Database) -> None:
        self._db = db
        self.ids = StreamIdAllocator(db, "receipts")

    async def put(
        self,
        room_id: str,
        receipt_type: str,
        user_id: str,
        thread_id: str,
        event_id: str,
        event_stream: int,
        data: dict[str, Any],
    ) -> int | None:
        """Store a receipt unless it points before the user's current one; returns its stream ID."""
        async with self.ids.lock:
            stream_id = await self.ids.next_id()

            def txn_fn(txn: Transaction) -> bool:
                row = txn.select_one(
                    "SELECT event_stream_ordering FROM receipts WHERE room_id = ? AND receipt_type = ?"
                    " AND user_id = ? AND thread_id = ?",
                    (room_id, receipt_type, user_id, thread_id),
                )
                if row is not None and int(row[0]) >= event_stream:
                    return False  # receipts never move backwards
                txn.execute(
                    "INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id,"
                    " event_stream_ordering, data, stream_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (room_id, receipt_type, user_id, thread_id) DO UPDATE SET"
                    " event_id = excluded.event_id, event_stream_ordering = excluded.event_stream_ordering,"
                    " data = excluded.data, stream_id = excluded.stream_id",
                    (room_id, receipt_type, user_id, thread_id, event_id, event_stream, json.dumps(data), stream_id),
                )
                return True

            stored = await self._db.run_interaction("put_receipt", txn_fn)
            if not stored:
                return None
            self.ids.advance(stream_id)
        return stream_id

    async def changed_since(
        self, room_ids: Collection[str], after: int, upto: int
    ) -> list[tuple[str, str, str, str, str, dict[str, Any]]]:
        """(room_id, type, user_id, thread_id, event_id, data) changed in (after, upto]."""
        ids = list(room_ids)
        if not ids or after >= upto:
            return []

        def txn_fn(txn: Transaction) -> list[tuple[str, str, str, str, str, dict[str, Any]]]:
            out = []
            for start in range(0, len(ids), 200):
                chunk = ids[start : start + 200]
                marks = ",".join("?" * len(chunk))
                for r in txn.select_all(
                    "SELECT room_id, receipt_type, user_id, thread_id, event_id, data FROM receipts"
                    f" WHERE stream_id > ? AND stream_id <= ? AND room_id IN ({marks})",
                    (after, upto, *chunk),
                ):
                    out.append((str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), json.loads(r[5])))
            return out

        return await self._db.run_interaction("receipts_since", txn_fn)

    async def add_push_actions(
        self, room_id: str, event_id: str, stream: int, thread_id: str, actions: list[tuple[str, bool, bool]]
    ) -> None:
        """Record (user_id, notify, highlight) for an event."""
        if not actions:
            return
        await self._db.run_interaction(
            "add_push_actions",
            lambda txn: txn.execute_many(
                "INSERT INTO event_push_actions (room_id, event_id, user_id, stream_ordering, thread_id, notif,"
                " highlight) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(room_id, event_id, u, stream, thread_id, int(n), int(h)) for u, n, h in actions],
            ),
        )

    async def notifications(
        self, user_id: str, *, before_stream: int | None, limit: int, only_highlight: bool
    ) -> list[tuple[str, str, int, bool, bool]]:
        """The user's notifying events, newest first, before ``before_stream``:
        (room_id, event_id, stream_ordering, highlight, read by the user's receipt)."""
        highlight_only = " AND p.highlight = 1" if only_highlight else ""
        rows = await self._db.run_interaction(
            "notifications",
            lambda txn: txn.select_all(
                "SELECT p.room_id, p.event_id, p.stream_ordering, p.highlight, COALESCE(("
                " SELECT MAX(r.event_stream_ordering) FROM receipts AS r WHERE r.user_id = p.user_id"
                " AND r.room_id = p.room_id AND r.receipt_type IN ('m.read', 'm.read.private')), 0)"
                " FROM event_push_actions AS p WHERE p.user_id = ? AND p.notif = 1 AND p.stream_ordering < ?"
                f"{highlight_only} ORDER BY p.stream_ordering DESC LIMIT ?",
                (user_id, before_stream if before_stream is not None else 2**62, limit),
            ),
        )
        return [(str(r[0]), str(r[1]), int(r[2]), bool(r[3]), int(r[2]) <= int(r[4])) for r in rows]

    async def unread_counts(self, user_id: str, room_id: str) -> tuple[int, int]:
        """(notification_count, highlight_count) of events after the user's read receipt."""
        return (await self.unread_counts_many(user_id, [room_id]))[room_id]

    async def unread_counts_many(self, user_id: str, room_ids: Collection[str]) -> dict[str, tuple[int, int]]:
        """:meth:`unread_counts` for many rooms in one transaction (rooms with none: (0, 0))."""
        by_thread = await self.unread_thread_counts_many(user_id, room_ids)
        return {
            room_id: (sum(n for n, _ in threads.values()), sum(h for _, h in threads.values()))
            for room_id, threads in by_thread.items()
        }

    async def unread_thread_counts_many(
        self, user_id: str, room_ids: Collection[str]
    ) -> dict[str, dict[str, tuple[int, int]]]:
        """Per room, per thread ('' for the main timeline): (notifications, highlights) after
        the read receipt that covers it: an unthreaded receipt covers every thread, a receipt
        with thread_id "main" the main timeline, any other one its thread."""
        ids = list(room_ids)
        if not ids:
            return {}

        def txn_fn(txn: Transaction) -> dict[str, dict[str, tuple[int, int]]]:
            out: dict[str, dict[str, tuple[int, int]]] = {room_id: {} for room_id in ids}
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for room_id, thread_id, notifications, highlights in txn.select_all(
                    "SELECT p.room_id, p.thread_id, COALESCE(SUM(p.notif), 0), COALESCE(SUM(p.highlight), 0)"
                    f" FROM event_push_actions AS p WHERE p.user_id = ? AND p.room_id IN ({marks})"
                    " AND p.stream_ordering > COALESCE((SELECT MAX(r.event_stream_ordering) FROM receipts AS r"
                    " WHERE r.user_id = p.user_id AND r.room_id = p.room_id"
                    " AND r.receipt_type IN ('m.read', 'm.read.private')"
                    " AND (r.thread_id = '' OR r.thread_id = p.thread_id"
                    " OR (p.thread_id = '' AND r.thread_id = 'main'))), 0)"
                    " GROUP BY p.room_id, p.thread_id",
                    (user_id, *chunk),
                ):
                    out[str(room_id)][str(thread_id)] = (int(notifications), int(highlights))
            return out

        return await self._db.run_interaction("unread_counts_many", txn_fn)
