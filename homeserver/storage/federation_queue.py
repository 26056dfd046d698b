"""The outbound federation queue, persisted: pending PDUs and durable EDUs per destination,
and each destination's backoff.

The per-destination state machine (:mod:`homeserver.federation.queue`) stays in memory;
this repository records what it must not forget so that :meth:`FederationQueueRepository.load`
can rebuild it after a restart.  PDUs are stored by reference (stream ordering and event
ID) and read back from ``events.json``, so a PDU sent to many servers is stored once.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from homeserver.federation.queue import BackoffPolicy, DestinationQueue, Edu, Pdu
from homeserver.storage.database import Database, Transaction
from homeserver.storage.streams import StreamIdAllocator


@dataclass(frozen=True, slots=True)
class RetryState:
    failure_count: int
    retry_at_ms: int
    last_delivered_stream: int | None


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class FederationQueueRepository:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._edu_ids = StreamIdAllocator(db, "federation_queue_edus", "edu_id")

    async def enqueue_pdu(self, destinations: Collection[str], stream: int, event_id: str) -> None:
        """Record that ``destinations`` are to receive the event at ``stream`` (idempotent)."""
        rows = [(d, stream, event_id) for d in sorted(set(destinations))]
        if not rows:
            return

        def txn_fn(txn: Transaction) -> None:
            txn.execute_many(
                "INSERT INTO federation_queue_pdus (destination, stream_ordering, event_id) VALUES (?, ?, ?)"
                " ON CONFLICT (destination, stream_ordering) DO NOTHING",
                rows,
            )

        await self._db.run_interaction("federation_enqueue_pdu", txn_fn)

    async def enqueue_edu(
        self, destination: str, edu_type: str, content: Mapping[str, Any], key: str | None = None
    ) -> int:
        """Record a durable EDU for ``destination``; returns its ID.

        With a ``key``, the EDU replaces any pending one of the same type and key.
        """
        content_json = _dumps(content)

        def txn_fn(txn: Transaction, edu_id: int) -> None:
            if key is not None:
                txn.execute(
                    "DELETE FROM federation_queue_edus WHERE destination = ? AND edu_type = ? AND edu_key = ?",
                    (destination, edu_type, key),
                )
            txn.execute(
                "INSERT INTO federation_queue_edus (edu_id, destination, edu_type, edu_key, content)"
                " VALUES (?, ?, ?, ?, ?)",
                (edu_id, destination, edu_type, key, content_json),
            )

        async with self._edu_ids.lock:
            edu_id = await self._edu_ids.next_id()
            await self._db.run_interaction("federation_enqueue_edu", txn_fn, edu_id)
            self._edu_ids.advance(edu_id)
        return edu_id

    async def mark_delivered(self, destination: str, pdu_streams: Collection[int], edu_ids: Collection[int]) -> None:
        """Forget PDUs and EDUs that were delivered (or abandoned)."""
        streams, ids = sorted(pdu_streams), sorted(edu_ids)
        if not streams and not ids:
            return

        def txn_fn(txn: Transaction) -> None:
            if streams:
                txn.execute_many(
                    "DELETE FROM federation_queue_pdus WHERE destination = ? AND stream_ordering = ?",
                    [(destination, s) for s in streams],
                )
                txn.execute(
                    "INSERT INTO federation_destinations (destination, last_delivered_stream) VALUES (?, ?)"
                    " ON CONFLICT (destination) DO UPDATE SET last_delivered_stream = excluded.last_delivered_stream"
                    " WHERE federation_destinations.last_delivered_stream IS NULL"
                    " OR federation_destinations.last_delivered_stream < excluded.last_delivered_stream",
                    (destination, streams[-1]),
                )
            if ids:
                txn.execute_many(
                    "DELETE FROM federation_queue_edus WHERE destination = ? AND edu_id = ?",
                    [(destination, i) for i in ids],
                )

        await self._db.run_interaction("federation_mark_delivered", txn_fn)

    async def save_retry_state(self, destination: str, failure_count: int, retry_at_ms: int) -> None:
        def txn_fn(txn: Transaction) -> None:
            txn.execute(
                "INSERT INTO federation_destinations (destination, failure_count, retry_at_ms) VALUES (?, ?, ?)"
                " ON CONFLICT (destination) DO UPDATE SET failure_count = excluded.failure_count,"
                " retry_at_ms = excluded.retry_at_ms",
                (destination, failure_count, retry_at_ms),
            )

        await self._db.run_interaction("federation_save_retry_state", txn_fn)

    async def get_retry_state(self, destination: str) -> RetryState:
        row = await self._db.run_interaction(
            "federation_get_retry_state",
            lambda txn: txn.select_one(
                "SELECT failure_count, retry_at_ms, last_delivered_stream FROM federation_destinations"
                " WHERE destination = ?",
                (destination,),
            ),
        )
        if row is None:
            return RetryState(0, 0, None)
        return RetryState(int(row[0]), int(row[1]), None if row[2] is None else int(row[2]))

    async def destinations_to_resume(self) -> list[str]:
        """Destinations with something pending, or still backed off."""

        def txn_fn(txn: Transaction) -> list[str]:
            rows = txn.select_all(
                "SELECT destination FROM federation_queue_pdus"
                " UNION SELECT destination FROM federation_queue_edus"
                " UNION SELECT destination FROM federation_destinations WHERE failure_count > 0"
            )
            return sorted({str(r[0]) for r in rows})

        return await self._db.run_interaction("federation_destinations_to_resume", txn_fn)

    async def get_pdus(self, destination: str, from_stream: int, limit: int) -> tuple[list[Pdu], bool]:
        """Up to ``limit`` queued PDUs from ``from_stream`` on, oldest first; and whether
        that was all of them."""
        return await self._db.run_interaction(
            "federation_get_queued_pdus", _select_pdus, destination, from_stream, limit
        )

    async def load(
        self,
        destination: str,
        *,
        txn_id_base: int,
        backoff: BackoffPolicy | None = None,
        max_pdus_in_memory: int = 1_000,
    ) -> DestinationQueue:
        """Rebuild the queue of ``destination`` as it was persisted (call ``tick`` next).

        Reads the oldest ``max_pdus_in_memory`` PDUs; the queue asks for the rest later.
        """

        def txn_fn(txn: Transaction) -> tuple[list[Pdu], bool, list[Edu], RetryState]:
            pdus, exhausted = _select_pdus(txn, destination, 0, max_pdus_in_memory)
            edus = [
                Edu(str(edu_type), json.loads(content), None if key is None else str(key), int(edu_id))
                for edu_id, edu_type, key, content in txn.select_all(
                    "SELECT edu_id, edu_type, edu_key, content FROM federation_queue_edus"
                    " WHERE destination = ? ORDER BY edu_id",
                    (destination,),
                )
            ]
            row = txn.select_one(
                "SELECT failure_count, retry_at_ms, last_delivered_stream FROM federation_destinations"
                " WHERE destination = ?",
                (destination,),
            )
            state = RetryState(0, 0, None) if row is None else RetryState(int(row[0]), int(row[1]), row[2])
            return pdus, exhausted, edus, state

        pdus, exhausted, edus, state = await self._db.run_interaction("federation_load_queue", txn_fn)
        return DestinationQueue.restore(
            destination,
            pdus=pdus,
            edus=edus,
            failure_count=state.failure_count,
            retry_at_ms=state.retry_at_ms,
            txn_id_base=txn_id_base,
            backoff=backoff,
            max_pdus_in_memory=max_pdus_in_memory,
            more_pdus_from=None if exhausted or not pdus else pdus[-1].stream + 1,
        )


def _select_pdus(txn: Transaction, destination: str, from_stream: int, limit: int) -> tuple[list[Pdu], bool]:
    """Queued PDUs with their JSON; one whose event is no longer in ``events`` is forgotten."""
    rows = txn.select_all(
        "SELECT q.stream_ordering, q.event_id, e.json FROM federation_queue_pdus AS q"
        " LEFT JOIN events AS e ON e.event_id = q.event_id"
        " WHERE q.destination = ? AND q.stream_ordering >= ? ORDER BY q.stream_ordering LIMIT ?",
        (destination, from_stream, limit + 1),
    )
    exhausted = len(rows) <= limit
    pdus, missing = [], []
    for stream, event_id, event_json in rows[:limit]:
        if event_json is None:
            missing.append((destination, stream))
        else:
            pdus.append(Pdu(int(stream), json.loads(event_json), str(event_id)))
    if missing:
        txn.execute_many("DELETE FROM federation_queue_pdus WHERE destination = ? AND stream_ordering = ?", missing)
    return pdus, exhausted
