"""Events: persisting them with their graph edges, state and memberships; reading them back.

All writes of room events go through :meth:`EventRepository.persist_event`, serialised by a
lock so stream orderings and state group IDs are allocated in commit order.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from homeserver.core.json import encode_canonical_json
from homeserver.events.model import Event
from homeserver.events.room_versions import get_room_version
from homeserver.storage.database import Database, Transaction
from homeserver.storage.search import SEARCHABLE, index_event_txn
from homeserver.storage.state import (
    StateDelta,
    StateGroupCache,
    StateKey,
    StateMap,
    create_state_group_txn,
    load_state_group_txn,
)

_EVENT_CACHE_SIZE = 20_000

# The values of the ``events.outlier`` column.  Only TIMELINE events are read by the
# timeline queries (they all filter on ``outlier = 0``).
TIMELINE = 0
# Known but not part of the room's graph as we see it: auth events and state fetched
# over federation, out-of-band memberships (invites to rooms we are not in).
OUTLIER = 1
# Received and part of the graph, with a state group, but never shown to clients nor
# used as forward extremities: soft-failed events and events rejected on the state
# before them.
HIDDEN = 2


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event with what we know about it locally."""

    event: Event
    stream_ordering: int
    outlier: bool
    rejected_reason: str | None
    redacted_by: str | None
    replaces_state: str | None
    # Soft-failed or rejected after state checks: stored with a state group, never shown.
    hidden: bool = False


@dataclass(frozen=True, slots=True)
class StateBefore:
    """The state before a new event: an existing group, or one to create as a delta."""

    group: int | None = None
    base_group: int | None = None
    delta: StateDelta | None = None


@dataclass(frozen=True, slots=True)
class TxnIdInfo:
    user_id: str
    device_id: str
    txn_id: str


@dataclass(frozen=True, slots=True)
class PersistResult:
    stream_ordering: int
    state_group_after: int
    state_after: StateMap


def _relation(event: Event) -> tuple[str, str, str | None] | None:
    relates = event.content.get("m.relates_to")
    if not isinstance(relates, dict):
        return None
    rel_type, target = relates.get("rel_type"), relates.get("event_id")
    if not isinstance(rel_type, str) or not isinstance(target, str):
        return None
    key = relates.get("key") if rel_type == "m.annotation" else None
    return target, rel_type, key if isinstance(key, str) else None


class EventRepository:
    def __init__(self, db: Database, state_cache: StateGroupCache) -> None:
        self._db = db
        self._state_cache = state_cache
        self._lock = defer.DeferredLock()
        self._events: OrderedDict[str, StoredEvent] = OrderedDict()
        self._room_versions: dict[str, str] = {}
        self._max_stream: int | None = None
        self._max_group: int | None = None
        # Outliers and backfilled events take negative stream orderings, counting down,
        # so they never appear in the live stream /sync reads.
        self._min_stream: int | None = None

    # -- positions -----------------------------------------------------------------------

    async def _load_positions(self) -> None:
        def txn_fn(txn: Transaction) -> tuple[int, int, int]:
            s = txn.select_one("SELECT MAX(stream_ordering), MIN(stream_ordering) FROM events")
            g = txn.select_one("SELECT MAX(id) FROM state_groups")
            return (
                int(s[0]) if s and s[0] is not None else 0,
                int(g[0]) if g and g[0] is not None else 0,
                min(int(s[1]), 0) if s and s[1] is not None else 0,
            )

        self._max_stream, self._max_group, self._min_stream = await self._db.run_interaction("load_positions", txn_fn)

    async def current_stream_ordering(self) -> int:
        if self._max_stream is None:
            await self._load_positions()
        assert self._max_stream is not None
        return self._max_stream

    # -- rooms -------------------------------------------------------------------------

    async def store_room(self, room_id: str, room_version: str, creator: str, now_ms: int) -> bool:
        def txn_fn(txn: Transaction) -> bool:
            txn.execute(
                "INSERT INTO rooms (room_id, room_version, creator, created_ts) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (room_id) DO NOTHING",
                (room_id, room_version, creator, now_ms),
            )
            return txn.rowcount == 1

        created = await self._db.run_interaction("store_room", txn_fn)
        self._room_versions[room_id] = room_version
        return created

    async def get_room_version_id(self, room_id: str) -> str | None:
        version = self._room_versions.get(room_id)
        if version is not None:
            return version
        row = await self._db.run_interaction(
            "get_room_version", lambda txn: txn.select_one("SELECT room_version FROM rooms WHERE room_id = ?", (room_id,))
        )
        if row is None:
            return None
        self._room_versions[room_id] = str(row[0])
        return str(row[0])

    # -- writing -----------------------------------------------------------------------

    async def persist_event(
        self,
        event: Event,
        *,
        state_before: StateBefore,
        received_ts: int,
        current_state_delta: Mapping[StateKey, str | None] | None,
        new_extremities: Collection[str] | None,
        txn_id: TxnIdInfo | None = None,
        rejected_reason: str | None = None,
        hidden: bool = False,
        backfilled: bool = False,
    ) -> PersistResult:
        """Store a new timeline event and everything derived from it, in one transaction.

        ``current_state_delta`` (None: unchanged) updates the room's current state and
        memberships; ``new_extremities`` (None: computed as "this event replaces its
        prev_events") sets the room's forward extremities.

        Received events only: ``hidden`` stores a soft-failed (or, with
        ``rejected_reason``, a rejected) event with its state group but out of the
        timeline, leaving extremities alone; ``backfilled`` gives the event a negative
        stream ordering (it is history, not news) and leaves extremities alone too.  An
        outlier copy of the event, if stored earlier, is replaced.
        """
        async with self._lock:
            if self._max_stream is None or self._max_group is None or self._min_stream is None:
                await self._load_positions()
            assert self._max_stream is not None and self._max_group is not None and self._min_stream is not None
            stream = self._min_stream - 1 if backfilled else self._max_stream + 1
            next_group = self._max_group + 1
            result, used_groups = await self._db.run_interaction(
                "persist_event",
                self._persist_txn,
                event,
                stream,
                next_group,
                state_before,
                received_ts,
                current_state_delta,
                new_extremities,
                txn_id,
                rejected_reason,
                HIDDEN if hidden else TIMELINE,
                not (hidden or backfilled),
            )
            if backfilled:
                self._min_stream = stream
            else:
                self._max_stream = stream
            self._max_group += used_groups
        self._events.pop(event.event_id, None)
        return result

    def _persist_txn(
        self,
        txn: Transaction,
        event: Event,
        stream: int,
        next_group: int,
        state_before: StateBefore,
        received_ts: int,
        current_state_delta: Mapping[StateKey, str | None] | None,
        new_extremities: Collection[str] | None,
        txn_id: TxnIdInfo | None,
        rejected_reason: str | None,
        outlier: int = TIMELINE,
        update_extremities: bool = True,
    ) -> tuple[PersistResult, int]:
        groups_used = 0
        room_id = event.room_id
        # An event first fetched as an outlier (an auth event, say) joins the graph now.
        txn.execute("DELETE FROM events WHERE event_id = ? AND outlier = ?", (event.event_id, OUTLIER))
        if txn.rowcount:
            txn.execute("DELETE FROM event_edges WHERE event_id = ?", (event.event_id,))
            txn.execute("DELETE FROM event_auth WHERE event_id = ?", (event.event_id,))
        # State before the event.
        if state_before.group is not None:
            before_group = state_before.group
            before_state = load_state_group_txn(txn, before_group, self._state_cache)
        else:
            before_group = next_group + groups_used
            before_state = create_state_group_txn(
                txn, before_group, room_id, state_before.base_group, state_before.delta or {}, self._state_cache
            )
            groups_used += 1
        replaces = before_state.get(event.state_key_tuple) if event.is_state() else None
        # State after it: a new group only if the event changes state.
        if event.is_state() and rejected_reason is None:
            after_group = next_group + groups_used
            state_after = create_state_group_txn(
                txn, after_group, room_id, before_group, {event.state_key_tuple: event.event_id}, self._state_cache
            )
            groups_used += 1
        else:
            after_group = before_group
            state_after = before_state

        txn.execute(
            "INSERT INTO events (stream_ordering, event_id, room_id, type, state_key, sender, depth,"
            " origin_server_ts, received_ts, json, outlier, rejected_reason, replaces_state)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                stream,
                event.event_id,
                room_id,
                event.type,
                event.state_key,
                event.sender,
                event.depth,
                event.origin_server_ts,
                received_ts,
                encode_canonical_json(event.dict).decode("utf-8"),
                outlier,
                rejected_reason,
                replaces,
            ),
        )
        txn.execute_many(
            "INSERT INTO event_edges (event_id, prev_event_id) VALUES (?, ?)",
            [(event.event_id, p) for p in dict.fromkeys(event.prev_event_ids)],
        )
        txn.execute_many(
            "INSERT INTO event_auth (event_id, auth_id) VALUES (?, ?)",
            [(event.event_id, a) for a in dict.fromkeys(event.auth_event_ids)],
        )
        txn.execute(
            "INSERT INTO event_state_groups (event_id, state_group) VALUES (?, ?)", (event.event_id, after_group)
        )
        # Forward extremities.
        if not update_extremities:
            pass
        elif new_extremities is None:
            for prev in event.prev_event_ids:
                txn.execute("DELETE FROM forward_extremities WHERE room_id = ? AND event_id = ?", (room_id, prev))
            txn.execute(
                "INSERT INTO forward_extremities (room_id, event_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (room_id, event.event_id),
            )
        else:
            txn.execute("DELETE FROM forward_extremities WHERE room_id = ?", (room_id,))
            txn.execute_many(
                "INSERT INTO forward_extremities (room_id, event_id) VALUES (?, ?)",
                [(room_id, e) for e in new_extremities],
            )
        if txn_id is not None:
            txn.execute(
                "INSERT INTO event_txn_ids (user_id, device_id, txn_id, event_id, created_ts) VALUES (?, ?, ?, ?, ?)",
                (txn_id.user_id, txn_id.device_id, txn_id.txn_id, event.event_id, received_ts),
            )
        if rejected_reason is None and outlier == TIMELINE:
            self._store_derived_txn(txn, event, stream)
            if event.type == "m.room.member" and event.state_key is not None:
                txn.execute(
                    "INSERT INTO membership_history (stream_ordering, room_id, user_id, membership, event_id)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (stream, room_id, event.state_key, str(event.content.get("membership")), event.event_id),
                )
        if current_state_delta:
            self._update_current_state_txn(txn, room_id, current_state_delta, stream)
        return PersistResult(stream, after_group, state_after), groups_used

    def _store_derived_txn(self, txn: Transaction, event: Event, stream: int) -> None:
        relation = _relation(event)
        if relation is not None:
            target, rel_type, key = relation
            txn.execute(
                "INSERT INTO event_relations (event_id, relates_to_id, relation_type, aggregation_key, room_id,"
                " sender, type, stream_ordering) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (event.event_id, target, rel_type, key, event.room_id, event.sender, event.type, stream),
            )
        searchable = SEARCHABLE.get(event.type)
        if searchable is not None:
            value = event.content.get(searchable[1])
            if isinstance(value, str) and value:
                index_event_txn(txn, event.event_id, event.room_id, searchable[0], value, stream)
        if event.type == "m.room.redaction" and event.redacts:
            txn.execute(
                "INSERT INTO redactions (event_id, redacts) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (event.event_id, event.redacts),
            )

    def _update_current_state_txn(
        self, txn: Transaction, room_id: str, delta: Mapping[StateKey, str | None], stream: int
    ) -> None:
        for (type_, state_key), event_id in delta.items():
            if event_id is None:
                txn.execute(
                    "DELETE FROM current_state WHERE room_id = ? AND type = ? AND state_key = ?",
                    (room_id, type_, state_key),
                )
                if type_ == "m.room.member":
                    txn.execute("DELETE FROM room_memberships WHERE room_id = ? AND user_id = ?", (room_id, state_key))
                continue
            txn.execute(
                "INSERT INTO current_state (room_id, type, state_key, event_id) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (room_id, type, state_key) DO UPDATE SET event_id = excluded.event_id",
                (room_id, type_, state_key, event_id),
            )
            if type_ != "m.room.member":
                continue
            row = txn.select_one("SELECT json, sender FROM events WHERE event_id = ?", (event_id,))
            if row is None:
                continue
            content = json.loads(row[0]).get("content", {})
            displayname = content.get("displayname")
            avatar_url = content.get("avatar_url")
            txn.execute(
                "INSERT INTO room_memberships (room_id, user_id, membership, event_id, stream_ordering, sender,"
                " displayname, avatar_url, forgotten) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)"
                " ON CONFLICT (room_id, user_id) DO UPDATE SET membership = excluded.membership,"
                " event_id = excluded.event_id, stream_ordering = excluded.stream_ordering,"
                " sender = excluded.sender, displayname = excluded.displayname,"
                " avatar_url = excluded.avatar_url, forgotten = 0",
                (
                    room_id,
                    state_key,
                    str(content.get("membership")),
                    event_id,
                    stream,
                    str(row[1]),
                    displayname if isinstance(displayname, str) else None,
                    avatar_url if isinstance(avatar_url, str) else None,
                ),
            )

    async def persist_outliers(self, items: Sequence[tuple[Event, str | None]], received_ts: int) -> None:
        """Store events as outliers (``(event, rejected_reason)``, in the order given), with
        their graph edges and auth edges but no state and no place in the timeline.  Events
        already stored (in any form) are left alone."""
        if not items:
            return
        async with self._lock:
            if self._max_stream is None or self._min_stream is None:
                await self._load_positions()
            assert self._min_stream is not None
            first = self._min_stream - 1
            await self._db.run_interaction("persist_outliers", self._persist_outliers_txn, items, first, received_ts)
            self._min_stream = first - len(items) + 1
        for event, _ in items:
            self._events.pop(event.event_id, None)

    def _persist_outliers_txn(
        self, txn: Transaction, items: Sequence[tuple[Event, str | None]], first: int, received_ts: int
    ) -> None:
        for offset, (event, rejected_reason) in enumerate(items):
            if txn.select_one("SELECT 1 FROM events WHERE event_id = ?", (event.event_id,)) is not None:
                continue
            self._insert_event_row_txn(txn, event, first - offset, received_ts, OUTLIER, rejected_reason)

    def _insert_event_row_txn(
        self, txn: Transaction, event: Event, stream: int, received_ts: int, outlier: int, rejected_reason: str | None
    ) -> None:
        txn.execute(
            "INSERT INTO events (stream_ordering, event_id, room_id, type, state_key, sender, depth,"
            " origin_server_ts, received_ts, json, outlier, rejected_reason)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                stream,
                event.event_id,
                event.room_id,
                event.type,
                event.state_key,
                event.sender,
                event.depth,
                event.origin_server_ts,
                received_ts,
                encode_canonical_json(event.dict).decode("utf-8"),
                outlier,
                rejected_reason,
            ),
        )
        txn.execute_many(
            "INSERT INTO event_edges (event_id, prev_event_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
            [(event.event_id, p) for p in dict.fromkeys(event.prev_event_ids)],
        )
        txn.execute_many(
            "INSERT INTO event_auth (event_id, auth_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
            [(event.event_id, a) for a in dict.fromkeys(event.auth_event_ids)],
        )

    async def persist_out_of_band_membership(self, event: Event, received_ts: int) -> int:
        """Store a membership event of a room we are not in (an invite, a knock, the
        rejection of an invite): an outlier for the room's graph, but with a position in
        the stream and as its target's membership, so that /sync reports it.  Returns
        the stream ordering."""
        if event.type != "m.room.member" or event.state_key is None:
            raise ValueError(f"{event.event_id} is not a membership event")
        async with self._lock:
            if self._max_stream is None or self._min_stream is None:
                await self._load_positions()
            assert self._max_stream is not None
            stream = self._max_stream + 1
            await self._db.run_interaction(
                "persist_out_of_band_membership", self._out_of_band_txn, event, stream, received_ts
            )
            self._max_stream = stream
        self._events.pop(event.event_id, None)
        return stream

    def _out_of_band_txn(self, txn: Transaction, event: Event, stream: int, received_ts: int) -> None:
        assert event.state_key is not None
        # A newer copy (an invite re-sent with more stripped state) replaces an outlier one.
        txn.execute("DELETE FROM events WHERE event_id = ? AND outlier = ?", (event.event_id, OUTLIER))
        if txn.select_one("SELECT 1 FROM events WHERE event_id = ?", (event.event_id,)) is not None:
            raise ValueError(f"{event.event_id} is already part of the room's timeline")
        self._insert_event_row_txn(txn, event, stream, received_ts, OUTLIER, None)
        membership = str(event.content.get("membership"))
        displayname = event.content.get("displayname")
        avatar_url = event.content.get("avatar_url")
        txn.execute(
            "INSERT INTO room_memberships (room_id, user_id, membership, event_id, stream_ordering, sender,"
            " displayname, avatar_url, forgotten) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)"
            " ON CONFLICT (room_id, user_id) DO UPDATE SET membership = excluded.membership,"
            " event_id = excluded.event_id, stream_ordering = excluded.stream_ordering,"
            " sender = excluded.sender, displayname = excluded.displayname,"
            " avatar_url = excluded.avatar_url, forgotten = 0",
            (
                event.room_id,
                event.state_key,
                membership,
                event.event_id,
                stream,
                event.sender,
                displayname if isinstance(displayname, str) else None,
                avatar_url if isinstance(avatar_url, str) else None,
            ),
        )
        txn.execute(
            "INSERT INTO membership_history (stream_ordering, room_id, user_id, membership, event_id)"
            " VALUES (?, ?, ?, ?, ?)",
            (stream, event.room_id, event.state_key, membership, event.event_id),
        )

    async def mark_redacted(self, event_id: str, redaction_id: str) -> None:
        def txn_fn(txn: Transaction) -> None:
            txn.execute(
                "UPDATE events SET redacted_by = ? WHERE event_id = ? AND redacted_by IS NULL", (redaction_id, event_id)
            )
            # A redacted message must not be found by search any more.
            txn.execute("DELETE FROM event_search WHERE event_id = ?", (event_id,))

        await self._db.run_interaction("mark_redacted", txn_fn)
        self._events.pop(event_id, None)

    # -- reading -----------------------------------------------------------------------

    def _row_to_stored(self, row: tuple[Any, ...]) -> StoredEvent:
        event_id, stream, json_text, outlier, rejected, redacted_by, replaces, room_version = row
        version = get_room_version(str(room_version))
        event = Event(json.loads(json_text), version, event_id=str(event_id))
        return StoredEvent(
            event, int(stream), int(outlier) == OUTLIER, rejected, redacted_by, replaces, hidden=int(outlier) == HIDDEN
        )

    async def get_events(self, event_ids: Collection[str]) -> dict[str, StoredEvent]:
        """Events by ID (missing ones are left out), from the cache where possible."""
        out: dict[str, StoredEvent] = {}
        missing = []
        for event_id in event_ids:
            hit = self._events.get(event_id)
            if hit is not None:
                out[event_id] = hit
            else:
                missing.append(event_id)
        if missing:
            fetched = await self._db.run_interaction("get_events", self._get_events_txn, missing)
            for event_id, stored in fetched.items():
                self._events[event_id] = stored
                out[event_id] = stored
            while len(self._events) > _EVENT_CACHE_SIZE:
                self._events.popitem(last=False)
        return out

    def _get_events_txn(self, txn: Transaction, event_ids: list[str]) -> dict[str, StoredEvent]:
        out: dict[str, StoredEvent] = {}
        for start in range(0, len(event_ids), 200):
            chunk = event_ids[start : start + 200]
            marks = ",".join("?" * len(chunk))
            for row in txn.select_all(
                "SELECT e.event_id, e.stream_ordering, e.json, e.outlier, e.rejected_reason, e.redacted_by,"
                " e.replaces_state,"
                f" r.room_version FROM events AS e JOIN rooms AS r USING (room_id) WHERE e.event_id IN ({marks})",
                chunk,
            ):
                stored = self._row_to_stored(row)
                out[stored.event.event_id] = stored
        return out

    async def get_event(self, event_id: str) -> StoredEvent | None:
        return (await self.get_events([event_id])).get(event_id)

    async def get_forward_extremities(self, room_id: str) -> list[str]:
        rows = await self._db.run_interaction(
            "get_forward_extremities",
            lambda txn: txn.select_all("SELECT event_id FROM forward_extremities WHERE room_id = ?", (room_id,)),
        )
        return sorted(str(r[0]) for r in rows)

    async def has_timeline_children(self, event_id: str) -> bool:
        """Whether a stored (non-outlier) event already lists ``event_id`` as a prev event."""
        row = await self._db.run_interaction(
            "has_timeline_children",
            lambda txn: txn.select_one(
                "SELECT 1 FROM event_edges AS g JOIN events AS e ON e.event_id = g.event_id"
                " WHERE g.prev_event_id = ? AND e.outlier <> ? LIMIT 1",
                (event_id, OUTLIER),
            ),
        )
        return row is not None

    async def get_current_state_ids(self, room_id: str) -> StateMap:
        rows = await self._db.run_interaction(
            "get_current_state",
            lambda txn: txn.select_all(
                "SELECT type, state_key, event_id FROM current_state WHERE room_id = ?", (room_id,)
            ),
        )
        return {(str(t), str(k)): str(e) for t, k, e in rows}

    async def get_txn_ids(self, event_ids: Collection[str]) -> dict[str, tuple[str, str, str]]:
        """event_id -> (user_id, device_id, txn_id) for events sent with a transaction ID."""
        ids = list(event_ids)
        if not ids:
            return {}

        def txn_fn(txn: Transaction) -> dict[str, tuple[str, str, str]]:
            marks = ",".join("?" * len(ids))
            rows = txn.select_all(
                f"SELECT event_id, user_id, device_id, txn_id FROM event_txn_ids WHERE event_id IN ({marks})", ids
            )
            return {str(r[0]): (str(r[1]), str(r[2]), str(r[3])) for r in rows}

        return await self._db.run_interaction("get_txn_ids", txn_fn)

    async def get_event_id_for_txn(self, user_id: str, device_id: str, txn_id: str) -> str | None:
        row = await self._db.run_interaction(
            "get_txn_event",
            lambda txn: txn.select_one(
                "SELECT event_id FROM event_txn_ids WHERE user_id = ? AND device_id = ? AND txn_id = ?",
                (user_id, device_id, txn_id),
            ),
        )
        return None if row is None else str(row[0])
