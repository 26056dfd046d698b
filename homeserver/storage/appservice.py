"""The application services' durable queues (see schema 0018_appservice.sql)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.storage.database import Database, Transaction
from homeserver.storage.streams import StreamIdAllocator

EVENTS_STREAM = "events"


@dataclass(frozen=True, slots=True)
class QueueItem:
    seq: int
    kind: str  # "pdu", "ephemeral", "to_device", "device_lists"
    event_id: str | None
    content: Any


@dataclass(frozen=True, slots=True)
class ServiceState:
    next_txn_id: int = 1
    inflight_txn_id: int | None = None
    inflight_upto_seq: int | None = None
    failure_count: int = 0
    retry_at_ms: int = 0
    sent_transactions: int = 0
    failed_attempts: int = 0
    last_error: str | None = None


_STATE_COLUMNS = (
    "next_txn_id, inflight_txn_id, inflight_upto_seq, failure_count, retry_at_ms,"
    " sent_transactions, failed_attempts, last_error"
)


class AppServiceQueueRepository:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._seq = StreamIdAllocator(db, "appservice_queue", "seq")

    # -- the event stream ----------------------------------------------------------------

    async def stream_position(self, stream: str = EVENTS_STREAM) -> int | None:
        row = await self._db.run_interaction(
            "as_stream_position",
            lambda txn: txn.select_one("SELECT position FROM appservice_stream_positions WHERE stream = ?", (stream,)),
        )
        return int(row[0]) if row else None

    async def events_after(self, position: int, limit: int) -> list[tuple[int, str]]:
        """(stream_ordering, event_id) of timeline events after ``position``, in order."""
        rows = await self._db.run_interaction(
            "as_events_after",
            lambda txn: txn.select_all(
                "SELECT stream_ordering, event_id FROM events WHERE stream_ordering > ? AND outlier = 0"
                " AND rejected_reason IS NULL ORDER BY stream_ordering LIMIT ?",
                (position, limit),
            ),
        )
        return [(int(r[0]), str(r[1])) for r in rows]

    async def max_event_stream(self) -> int:
        row = await self._db.run_interaction(
            "as_max_stream", lambda txn: txn.select_one("SELECT MAX(stream_ordering) FROM events")
        )
        return int(row[0]) if row and row[0] is not None else 0

    async def users_with_pending_to_device(self) -> list[str]:
        """Users with to-device messages still in their inboxes (read once, at start-up, so
        what arrived while the services' host was stopped is not left waiting)."""
        rows = await self._db.run_interaction(
            "as_pending_to_device", lambda txn: txn.select_all("SELECT DISTINCT user_id FROM device_inbox")
        )
        return [str(r[0]) for r in rows]

    # -- enqueueing ----------------------------------------------------------------------

    async def enqueue(
        self,
        rows: Sequence[tuple[str, str, str | None, Any]],
        *,
        stream_position: tuple[str, int] | None = None,
    ) -> None:
        """Append (service_id, kind, event_id, content) rows, in order; optionally move a
        stream position in the same transaction (so a crash neither loses nor repeats)."""
        async with self._seq.lock:
            first = await self._seq.next_id()

            def txn_fn(txn: Transaction) -> None:
                txn.execute_many(
                    "INSERT INTO appservice_queue (service_id, seq, kind, event_id, content) VALUES (?, ?, ?, ?, ?)",
                    [
                        (sid, first + i, kind, event_id, None if content is None else json.dumps(content))
                        for i, (sid, kind, event_id, content) in enumerate(rows)
                    ],
                )
                if stream_position is not None:
                    txn.execute(
                        "INSERT INTO appservice_stream_positions (stream, position) VALUES (?, ?)"
                        " ON CONFLICT (stream) DO UPDATE SET position = excluded.position",
                        stream_position,
                    )

            await self._db.run_interaction("as_enqueue", txn_fn)
            if rows:
                self._seq.advance(first + len(rows) - 1)

    # -- reading and acknowledging ------------------------------------------------------

    async def items(self, service_id: str, *, upto_seq: int | None, limit: int) -> list[QueueItem]:
        def txn_fn(txn: Transaction) -> list[tuple[Any, ...]]:
            bound = "AND seq <= ? " if upto_seq is not None else ""
            params: tuple[Any, ...] = (service_id, upto_seq, limit) if upto_seq is not None else (service_id, limit)
            return txn.select_all(
                f"SELECT seq, kind, event_id, content FROM appservice_queue WHERE service_id = ? {bound}"
                "ORDER BY seq LIMIT ?",
                params,
            )

        rows = await self._db.run_interaction("as_items", txn_fn)
        return [QueueItem(int(r[0]), str(r[1]), r[2], None if r[3] is None else json.loads(r[3])) for r in rows]

    async def depth(self, service_id: str) -> int:
        row = await self._db.run_interaction(
            "as_depth",
            lambda txn: txn.select_one("SELECT COUNT(*) FROM appservice_queue WHERE service_id = ?", (service_id,)),
        )
        return int(row[0]) if row else 0

    async def state(self, service_id: str) -> ServiceState:
        row = await self._db.run_interaction(
            "as_state",
            lambda txn: txn.select_one(
                f"SELECT {_STATE_COLUMNS} FROM appservice_state WHERE service_id = ?", (service_id,)
            ),
        )
        if row is None:
            return ServiceState()
        return ServiceState(
            int(row[0]),
            None if row[1] is None else int(row[1]),
            None if row[2] is None else int(row[2]),
            int(row[3]),
            int(row[4]),
            int(row[5]),
            int(row[6]),
            row[7],
        )

    @staticmethod
    def _ensure_state_txn(txn: Transaction, service_id: str) -> None:
        txn.execute(
            "INSERT INTO appservice_state (service_id) VALUES (?) ON CONFLICT (service_id) DO NOTHING", (service_id,)
        )

    async def begin_transaction(self, service_id: str, upto_seq: int) -> int:
        """Fix the next transaction's ID and content (the items up to ``upto_seq``)."""

        def txn_fn(txn: Transaction) -> int:
            self._ensure_state_txn(txn, service_id)
            row = txn.select_one("SELECT next_txn_id FROM appservice_state WHERE service_id = ?", (service_id,))
            assert row is not None
            txn_id = int(row[0])
            txn.execute(
                "UPDATE appservice_state SET next_txn_id = ?, inflight_txn_id = ?, inflight_upto_seq = ?"
                " WHERE service_id = ?",
                (txn_id + 1, txn_id, upto_seq, service_id),
            )
            return txn_id

        return await self._db.run_interaction("as_begin_txn", txn_fn)

    async def complete_transaction(self, service_id: str, upto_seq: int) -> None:
        """The service acknowledged the transaction in flight: drop its items."""

        def txn_fn(txn: Transaction) -> None:
            txn.execute("DELETE FROM appservice_queue WHERE service_id = ? AND seq <= ?", (service_id, upto_seq))
            txn.execute(
                "UPDATE appservice_state SET inflight_txn_id = NULL, inflight_upto_seq = NULL, failure_count = 0,"
                " retry_at_ms = 0, sent_transactions = sent_transactions + 1 WHERE service_id = ?",
                (service_id,),
            )

        await self._db.run_interaction("as_complete_txn", txn_fn)

    async def record_failure(self, service_id: str, retry_at_ms: int, error: str) -> int:
        """Count a failed attempt; returns the number of failures in a row."""

        def txn_fn(txn: Transaction) -> int:
            self._ensure_state_txn(txn, service_id)
            txn.execute(
                "UPDATE appservice_state SET failure_count = failure_count + 1, retry_at_ms = ?,"
                " failed_attempts = failed_attempts + 1, last_error = ? WHERE service_id = ?",
                (retry_at_ms, error[:500], service_id),
            )
            row = txn.select_one("SELECT failure_count FROM appservice_state WHERE service_id = ?", (service_id,))
            return int(row[0]) if row else 1

        return await self._db.run_interaction("as_record_failure", txn_fn)

    async def reset_backoff(self, service_id: str) -> None:
        await self._db.run_interaction(
            "as_reset_backoff",
            lambda txn: txn.execute(
                "UPDATE appservice_state SET failure_count = 0, retry_at_ms = 0 WHERE service_id = ?", (service_id,)
            ),
        )
