"""Reading the timeline: events by stream position (for /sync) and by topology (for /messages)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from homeserver.storage.database import Database, Transaction
from homeserver.storage.stream_changes import StreamChanges


@dataclass(frozen=True, slots=True, order=True)
class TopoKey:
    """A position in a room's topological order: (depth, stream_ordering)."""

    depth: int
    stream: int

    def to_token(self) -> str:
        return f"t{self.depth}-{self.stream}"


def _tuple_cmp(op: str) -> str:
    """SQL for ``(depth, stream_ordering) op (?, ?)`` with parameters (d, d, s)."""
    strict = op.rstrip("=")
    return f"(depth {strict} ? OR (depth = ? AND stream_ordering {op} ?))"


def _in_clause(values: Collection[str]) -> str:
    return ",".join("?" * len(values))


class TimelineRepository:
    def __init__(self, db: Database, changes: StreamChanges | None = None) -> None:
        self._db = db
        self._changes = changes

    async def rooms_with_events_between(self, room_ids: Collection[str], after: int, upto: int) -> set[str]:
        """Which of ``room_ids`` have timeline events with stream in (after, upto]."""
        if not room_ids or after >= upto:
            return set()
        ids = list(room_ids)
        if self._changes is not None:
            known = self._changes.changed([("events", r) for r in ids], after)
            if known is not None:
                # A room whose last event is at most ``upto`` has one in the range; one
                # whose last event is later may or may not: only those need the database.
                found = {key[1] for key, position in known.items() if position <= upto}
                unsure = [key[1] for key, position in known.items() if position > upto]
                if unsure:
                    found |= await self._rooms_with_events_db(unsure, after, upto)
                return found
        return await self._rooms_with_events_db(ids, after, upto)

    async def _rooms_with_events_db(self, ids: list[str], after: int, upto: int) -> set[str]:
        def txn_fn(txn: Transaction) -> set[str]:
            rows = txn.select_all(
                "SELECT DISTINCT room_id FROM events WHERE stream_ordering > ? AND stream_ordering <= ?"
                " AND outlier = 0",
                (after, upto),
            )
            wanted = set(ids)
            return {str(r[0]) for r in rows if r[0] in wanted}

        return await self._db.run_interaction("rooms_with_events", txn_fn)

    async def recent_event_ids(
        self, room_id: str, *, after: int | None, upto: int, limit: int
    ) -> tuple[list[tuple[str, int, int]], bool]:
        """The last ``limit`` events with stream in (after, upto], oldest first, and whether
        more were left out.  Each item is (event_id, stream, depth)."""

        def txn_fn(txn: Transaction) -> tuple[list[tuple[str, int, int]], bool]:
            rows = txn.select_all(
                "SELECT event_id, stream_ordering, depth FROM events WHERE room_id = ? AND stream_ordering > ?"
                " AND stream_ordering <= ? AND outlier = 0 ORDER BY stream_ordering DESC LIMIT ?",
                (room_id, after if after is not None else -1, upto, limit + 1),
            )
            limited = len(rows) > limit
            items = [(str(r[0]), int(r[1]), int(r[2])) for r in rows[:limit]]
            items.reverse()
            return items, limited

        return await self._db.run_interaction("recent_events", txn_fn)

    async def recent_event_ids_many(
        self, after: Mapping[str, int | None], *, upto: int, limit: int
    ) -> dict[str, tuple[list[tuple[str, int, int]], bool]]:
        """:meth:`recent_event_ids` for many rooms in one transaction: ``after`` maps each
        room to its lower bound (None: from the start).  Rooms without events map to ([], False).

        On PostgreSQL one query (a LATERAL join, each room using the (room_id, stream_ordering)
        index with its own LIMIT); on SQLite, which is in-process, one query per room.
        """
        if not after:
            return {}
        rooms = list(after.items())

        def txn_fn(txn: Transaction) -> dict[str, tuple[list[tuple[str, int, int]], bool]]:
            rows_by_room: dict[str, list[tuple[str, int, int]]] = {room_id: [] for room_id, _ in rooms}
            if txn.engine.name == "postgres":
                for start in range(0, len(rooms), 500):
                    chunk = rooms[start : start + 500]
                    for room_id, event_id, stream, depth in txn.select_all(
                        "SELECT r.room_id, e.event_id, e.stream_ordering, e.depth"
                        " FROM unnest(?::text[], ?::bigint[]) AS r(room_id, after_stream)"
                        " CROSS JOIN LATERAL (SELECT event_id, stream_ordering, depth FROM events"
                        " WHERE events.room_id = r.room_id AND stream_ordering > r.after_stream"
                        " AND stream_ordering <= ? AND outlier = 0 ORDER BY stream_ordering DESC LIMIT ?) AS e",
                        (
                            [room_id for room_id, _ in chunk],
                            [-1 if low is None else low for _, low in chunk],
                            upto,
                            limit + 1,
                        ),
                    ):
                        rows_by_room[str(room_id)].append((str(event_id), int(stream), int(depth)))
            else:
                for room_id, low in rooms:
                    for event_id, stream, depth in txn.select_all(
                        "SELECT event_id, stream_ordering, depth FROM events WHERE room_id = ? AND stream_ordering > ?"
                        " AND stream_ordering <= ? AND outlier = 0 ORDER BY stream_ordering DESC LIMIT ?",
                        (room_id, -1 if low is None else low, upto, limit + 1),
                    ):
                        rows_by_room[room_id].append((str(event_id), int(stream), int(depth)))
            out: dict[str, tuple[list[tuple[str, int, int]], bool]] = {}
            for room_id, items in rows_by_room.items():
                items.sort(key=lambda item: item[1])
                limited = len(items) > limit
                out[room_id] = (items[len(items) - limit :] if limited else items), limited
            return out

        return await self._db.run_interaction("recent_events_many", txn_fn)

    async def paginate(
        self,
        room_id: str,
        *,
        start: TopoKey,
        backwards: bool,
        limit: int,
        end: TopoKey | None = None,
    ) -> list[tuple[str, TopoKey]]:
        """Events strictly after ``start`` in the given direction (up to ``end``), in that order.

        Going backwards, ``start`` itself is excluded: a token points *between* events.
        """
        order = "DESC" if backwards else "ASC"
        where = "room_id = ? AND outlier = 0 AND " + _tuple_cmp("<" if backwards else ">")
        params: list[object] = [room_id, start.depth, start.depth, start.stream]
        if end is not None:
            where += " AND " + _tuple_cmp(">=" if backwards else "<")
            params += [end.depth, end.depth, end.stream]
        params.append(limit)

        def txn_fn(txn: Transaction) -> list[tuple[str, TopoKey]]:
            rows = txn.select_all(
                f"SELECT event_id, depth, stream_ordering FROM events WHERE {where}"
                f" ORDER BY depth {order}, stream_ordering {order} LIMIT ?",
                params,
            )
            return [(str(r[0]), TopoKey(int(r[1]), int(r[2]))) for r in rows]

        return await self._db.run_interaction("paginate", txn_fn)

    async def topo_key_for_stream(self, room_id: str, stream: int) -> TopoKey:
        """The topological position just after the last event of the room at ``stream``."""

        def txn_fn(txn: Transaction) -> TopoKey:
            row = txn.select_one(
                "SELECT depth, stream_ordering FROM events WHERE room_id = ? AND stream_ordering <= ?"
                " AND outlier = 0 ORDER BY stream_ordering DESC LIMIT 1",
                (room_id, stream),
            )
            if row is None:
                return TopoKey(0, 0)
            return TopoKey(int(row[0]), int(row[1]) + 1)

        return await self._db.run_interaction("topo_key_for_stream", txn_fn)

    async def relations(
        self, event_id: str, *, rel_type: str | None = None, event_type: str | None = None
    ) -> list[tuple[str, str, str | None, str, int]]:
        """Events relating to ``event_id``: (event_id, rel_type, key, sender, stream), newest last."""
        where, params = "r.relates_to_id = ?", [event_id]
        if rel_type is not None:
            where += " AND r.relation_type = ?"
            params.append(rel_type)
        if event_type is not None:
            where += " AND r.type = ?"
            params.append(event_type)

        def txn_fn(txn: Transaction) -> list[tuple[str, str, str | None, str, int]]:
            rows = txn.select_all(
                "SELECT r.event_id, r.relation_type, r.aggregation_key, r.sender, r.stream_ordering"
                " FROM event_relations AS r JOIN events AS e ON e.event_id = r.event_id"
                f" WHERE {where}"
                " AND e.redacted_by IS NULL AND e.rejected_reason IS NULL ORDER BY r.stream_ordering",
                params,
            )
            return [(str(a), str(b), None if c is None else str(c), str(d), int(e)) for a, b, c, d, e in rows]

        return await self._db.run_interaction("relations", txn_fn)

    async def relations_of_many(
        self, event_ids: Collection[str]
    ) -> dict[str, list[tuple[str, str, str | None, str, int]]]:
        """Like :meth:`relations` for many targets in one query (edits and threads of a page)."""
        ids = list(event_ids)
        if not ids:
            return {}

        def txn_fn(txn: Transaction) -> dict[str, list[tuple[str, str, str | None, str, int]]]:
            out: dict[str, list[tuple[str, str, str | None, str, int]]] = {}
            for start in range(0, len(ids), 200):
                chunk = ids[start : start + 200]
                rows = txn.select_all(
                    "SELECT r.relates_to_id, r.event_id, r.relation_type, r.aggregation_key, r.sender,"
                    " r.stream_ordering FROM event_relations AS r JOIN events AS e ON e.event_id = r.event_id"
                    f" WHERE r.relates_to_id IN ({_in_clause(chunk)}) AND r.relation_type IN"
                    " ('m.replace', 'm.thread', 'm.reference')"
                    " AND e.redacted_by IS NULL AND e.rejected_reason IS NULL ORDER BY r.stream_ordering",
                    chunk,
                )
                for target, a, b, c, d, e in rows:
                    out.setdefault(str(target), []).append(
                        (str(a), str(b), None if c is None else str(c), str(d), int(e))
                    )
            return out

        return await self._db.run_interaction("relations_of_many", txn_fn)

    async def thread_roots(self, room_id: str) -> list[str]:
        """Thread roots of the room, the most recently active first."""
        rows = await self._db.run_interaction(
            "thread_roots",
            lambda txn: txn.select_all(
                "SELECT relates_to_id, MAX(stream_ordering) AS latest FROM event_relations"
                " WHERE room_id = ? AND relation_type = 'm.thread' GROUP BY relates_to_id ORDER BY latest DESC",
                (room_id,),
            ),
        )
        return [str(r[0]) for r in rows]
