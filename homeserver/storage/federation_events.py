"""Graph walks over stored events for the federation servlets: auth chains, backfill and
the events between two sets of events (``/get_missing_events``).

Each walk runs in one database transaction, one small indexed query per step, and is
bounded by the caller's limit.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection

from homeserver.storage.database import Database, Transaction

_CHUNK = 200


def _in(values: Collection[str]) -> str:
    return ",".join("?" * len(values))


def _depths_txn(txn: Transaction, room_id: str, event_ids: Collection[str]) -> dict[str, int]:
    """Depths of those of ``event_ids`` stored in ``room_id`` (outliers included)."""
    ids = list(event_ids)
    out: dict[str, int] = {}
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        for event_id, depth in txn.select_all(
            f"SELECT event_id, depth FROM events WHERE room_id = ? AND event_id IN ({_in(chunk)})",
            (room_id, *chunk),
        ):
            out[str(event_id)] = int(depth)
    return out


def _prev_ids_txn(txn: Transaction, event_ids: Collection[str]) -> dict[str, list[str]]:
    ids = list(event_ids)
    out: dict[str, list[str]] = {e: [] for e in ids}
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        for event_id, prev_id in txn.select_all(
            f"SELECT event_id, prev_event_id FROM event_edges WHERE event_id IN ({_in(chunk)})", chunk
        ):
            out[str(event_id)].append(str(prev_id))
    return out


class FederationEventStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def auth_chain_ids(self, event_ids: Collection[str]) -> set[str]:
        """Every event reachable from ``event_ids`` through auth events (themselves excluded,
        unless one is in another's chain)."""

        def txn_fn(txn: Transaction) -> set[str]:
            chain: set[str] = set()
            frontier = set(event_ids)
            while frontier:
                ids = list(frontier)
                frontier = set()
                for start in range(0, len(ids), _CHUNK):
                    chunk = ids[start : start + _CHUNK]
                    for (auth_id,) in txn.select_all(
                        f"SELECT auth_id FROM event_auth WHERE event_id IN ({_in(chunk)})", chunk
                    ):
                        if auth_id not in chain:
                            chain.add(str(auth_id))
                            frontier.add(str(auth_id))
            return chain

        if not event_ids:
            return set()
        return await self._db.run_interaction("auth_chain_ids", txn_fn)

    async def backfill_ids(self, room_id: str, from_ids: Collection[str], limit: int) -> list[str]:
        """Up to ``limit`` events of ``room_id`` from ``from_ids`` (included) backwards
        through prev_events, deepest first, as Synapse answers ``/backfill``."""

        def txn_fn(txn: Transaction) -> list[str]:
            found: list[str] = []
            seen: set[str] = set()
            queue: list[tuple[int, str]] = []
            for event_id, depth in _depths_txn(txn, room_id, from_ids).items():
                heapq.heappush(queue, (-depth, event_id))
            while queue and len(found) < limit:
                _, event_id = heapq.heappop(queue)
                if event_id in seen:
                    continue
                seen.add(event_id)
                found.append(event_id)
                prevs = [p for p in _prev_ids_txn(txn, [event_id])[event_id] if p not in seen]
                for prev_id, depth in _depths_txn(txn, room_id, prevs).items():
                    heapq.heappush(queue, (-depth, prev_id))
            return found

        if limit <= 0 or not from_ids:
            return []
        return await self._db.run_interaction("backfill_ids", txn_fn)

    async def missing_event_ids(
        self, room_id: str, *, earliest: Collection[str], latest: Collection[str], limit: int, min_depth: int
    ) -> list[str]:
        """The events between ``earliest`` and ``latest`` (both excluded): walking back from
        ``latest`` through prev_events, nearest first, stopping at ``earliest`` and below
        ``min_depth``; up to ``limit``, returned oldest first."""

        def txn_fn(txn: Transaction) -> list[str]:
            stop = set(earliest)
            seen = set(latest) | stop
            queue: list[tuple[int, str]] = []
            depths: dict[str, int] = {}

            def push_prevs(event_ids: list[str]) -> None:
                prevs = {p for ps in _prev_ids_txn(txn, event_ids).values() for p in ps if p not in seen}
                for prev_id, depth in _depths_txn(txn, room_id, prevs).items():
                    if depth >= min_depth:
                        seen.add(prev_id)
                        depths[prev_id] = depth
                        heapq.heappush(queue, (-depth, prev_id))

            push_prevs(list(latest))
            found: list[str] = []
            while queue and len(found) < limit:
                _, event_id = heapq.heappop(queue)
                found.append(event_id)
                push_prevs([event_id])
            found.sort(key=lambda e: depths[e])
            return found

        if limit <= 0 or not latest:
            return []
        return await self._db.run_interaction("missing_event_ids", txn_fn)
