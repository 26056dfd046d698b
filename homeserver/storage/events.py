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
from homeserver.events.model import Event, share_strings
from homeserver.events.room_versions import get_room_version
from homeserver.storage.database import Database, Transaction
from homeserver.storage.event_rows import EVENT_ROW_INSERT, event_row, store_derived_txn, update_current_state_txn
from homeserver.storage.state import (
    StateDelta,
    StateGroupCache,
    StateKey,
    StateMap,
    StatementBatch,
    create_state_group_txn,
    insert_rows_txn,
    load_state_group_txn,
)
from homeserver.storage.stream_changes import StreamChanges
from homeserver.storage.write_log import WriteLog

_EVENT_CACHE_SIZE = 20_000
# Current state and forward extremities of recently used rooms, kept in memory and
# updated by every write (all writes of those tables are in this module).  Bounded by
# state entries in total: a big room weighs its size.
_CURRENT_STATE_CACHE_ENTRIES = 500_000
_EXTREMITIES_CACHE_ROOMS = 10_000
_CHUNK = 200
_EVENT_COLUMNS = (
    "e.event_id, e.stream_ordering, e.json, e.outlier, e.rejected_reason, e.redacted_by, e.replaces_state,"
    " r.room_version"
)


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
class ReceivedLookup:
    """What :meth:`EventRepository.lookup_received` found, as of write ``position``:
    event ID -> (the stored event or None, whether stored timeline events cite it)."""

    position: int
    found: dict[str, tuple[StoredEvent | None, bool]]


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


class EventRepository:
    def __init__(
        self,
        db: Database,
        state_cache: StateGroupCache,
        event_cache_size: int = _EVENT_CACHE_SIZE,
        changes: StreamChanges | None = None,
    ) -> None:
        self._db = db
        # Where the live stream last changed, per room and per user (read by /sync).
        self._changes = changes
        self._state_cache = state_cache
        self._lock = defer.DeferredLock()
        self._events: OrderedDict[str, StoredEvent] = OrderedDict()
        self._event_cache_size = max(1, event_cache_size)
        self._room_versions: dict[str, str] = {}
        self._max_stream: int | None = None
        self._max_group: int | None = None
        # Outliers and backfilled events take negative stream orderings, counting down,
        # so they never appear in the live stream /sync reads.
        self._min_stream: int | None = None
        # room -> current state / forward extremities, as committed.  A read fills the
        # cache only if no write to the room committed while it ran (the room's write
        # generation did not move): a read racing a write never caches stale rows.
        self._current_state: OrderedDict[str, StateMap] = OrderedDict()
        self._current_state_weight = 0
        self._extremities: OrderedDict[str, frozenset[str]] = OrderedDict()
        self._room_generation: dict[str, int] = {}
        # Events written recently, and events recently cited as a prev event by a stored
        # timeline event: a read that raced a write of one of them does not cache its
        # (older) copy, and what a caller found earlier is checked before it is trusted.
        self._writes = WriteLog(max(self._event_cache_size, _EVENT_CACHE_SIZE))

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

        max_stream, max_group, min_stream = await self._db.run_interaction("load_positions", txn_fn)
        if self._max_stream is None:  # two first callers may both have read: keep the first
            self._max_stream, self._max_group, self._min_stream = max_stream, max_group, min_stream
            if self._changes is not None:
                self._changes.start(max_stream)

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
        absent_since: int | None = None,
    ) -> PersistResult:
        """Store a new timeline event and everything derived from it, in one transaction.

        ``current_state_delta`` (None: unchanged) updates the room's current state and
        memberships; ``new_extremities`` (None: computed as "this event replaces its
        prev_events") sets the room's forward extremities.

        Received events only: ``hidden`` stores a soft-failed (or, with
        ``rejected_reason``, a rejected) event with its state group but out of the
        timeline, leaving extremities alone; ``backfilled`` gives the event a negative
        stream ordering (it is history, not news) and leaves extremities alone too.  An
        outlier copy of the event, if stored earlier, is replaced (``absent_since``: the
        :meth:`write_position` at which the caller found the event not stored at all; if
        this repository wrote no copy of it since, there is nothing to replace).
        """
        async with self._lock:
            if self._max_stream is None or self._max_group is None or self._min_stream is None:
                await self._load_positions()
            assert self._max_stream is not None and self._max_group is not None and self._min_stream is not None
            stream = self._min_stream - 1 if backfilled else self._max_stream + 1
            next_group = self._max_group + 1
            update_extremities = not (hidden or backfilled)
            known_new = absent_since is not None and not self._writes.changed_since(
                ("w", event.event_id), absent_since
            )
            result, used_groups, replaces = await self._db.run_interaction(
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
                update_extremities,
                self._known_member_events(event, current_state_delta),
                known_new,
            )
            if backfilled:
                self._min_stream = stream
            else:
                self._note_changes(event, stream, timeline=not hidden, membership=rejected_reason is None and not hidden)
                self._max_stream = stream
            self._max_group += used_groups
            # Committed: bring the in-memory copies up to date (nothing awaited in between).
            self._state_cache.note_event_groups({event.event_id: result.state_group_after})
            self._after_room_write(event, current_state_delta, new_extremities, update_extremities)
            self._remember_written(
                [StoredEvent(event, stream, False, rejected_reason, None, replaces, hidden=hidden)],
                cites=event.prev_event_ids,
            )
        return result

    # -- in-memory copies ----------------------------------------------------------------

    def _note_changes(self, event: Event, stream: int, *, timeline: bool, membership: bool) -> None:
        """Tell the change log what a live-stream write at ``stream`` touched, exactly as
        the rows read by ``rooms_with_events_between`` (a timeline event) and by the
        ``membership_history`` queries (a membership change) see it."""
        if self._changes is None:
            return
        entities: list[tuple[str, str]] = []
        if timeline:
            entities.append(("events", event.room_id))
        if membership and event.type == "m.room.member" and event.state_key is not None:
            entities += [("membership", event.state_key), ("members", "*")]
        self._changes.note(entities, stream)

    def _known_member_events(
        self, event: Event, delta: Mapping[StateKey, str | None] | None
    ) -> dict[str, tuple[Mapping[str, Any], str]]:
        """(content, sender) of the membership events a current-state delta sets that are
        in memory, so the transaction reads only the others."""
        out: dict[str, tuple[Mapping[str, Any], str]] = {}
        for key, event_id in (delta or {}).items():
            if key[0] != "m.room.member" or event_id is None:
                continue
            found = event if event_id == event.event_id else None
            if found is None:
                hit = self._events.get(event_id)
                found = hit.event if hit is not None else None
            if found is not None:
                out[event_id] = (found.content, found.sender)
        return out

    def _after_room_write(
        self,
        event: Event,
        delta: Mapping[StateKey, str | None] | None,
        new_extremities: Collection[str] | None,
        update_extremities: bool,
    ) -> None:
        room_id = event.room_id
        if not delta and not update_extremities:
            return
        self._room_generation[room_id] = self._room_generation.get(room_id, 0) + 1
        state = self._current_state.get(room_id)
        if delta and state is not None:
            before = len(state)
            for key, event_id in delta.items():
                if event_id is None:
                    state.pop(key, None)
                else:
                    state[key] = event_id
            self._current_state_weight += len(state) - before
        if update_extremities:
            if new_extremities is not None:
                self._set_extremities(room_id, frozenset(new_extremities))
            else:
                known = self._extremities.get(room_id)
                if known is not None:
                    self._set_extremities(room_id, (known - set(event.prev_event_ids)) | {event.event_id})

    def _set_extremities(self, room_id: str, extremities: frozenset[str]) -> None:
        self._extremities[room_id] = extremities
        self._extremities.move_to_end(room_id)
        while len(self._extremities) > _EXTREMITIES_CACHE_ROOMS:
            self._extremities.popitem(last=False)

    def _set_current_state(self, room_id: str, state: StateMap) -> None:
        previous = self._current_state.pop(room_id, None)
        if previous is not None:
            self._current_state_weight -= len(previous)
        self._current_state[room_id] = state
        self._current_state_weight += len(state)
        while self._current_state and self._current_state_weight > _CURRENT_STATE_CACHE_ENTRIES:
            _, evicted = self._current_state.popitem(last=False)
            self._current_state_weight -= len(evicted)

    def write_position(self) -> int:
        """The position of the last event write, for :meth:`persist_event`'s ``absent_since``."""
        return self._writes.position

    def cited_since(self, event_id: str, position: int) -> bool:
        """Whether a timeline event citing ``event_id`` may have been written after ``position``."""
        return self._writes.changed_since(("c", event_id), position)

    def _remember_written(self, stored: Sequence[StoredEvent], cites: Collection[str] = ()) -> None:
        """Cache events as just committed (events are read back soon after they are
        written: to send them to other servers, to check the events that cite them).
        ``cites``: the prev events of a timeline event among them."""
        self._writes.note([*(("w", s.event.event_id) for s in stored), *(("c", p) for p in cites)])
        for item in stored:
            self._events[item.event.event_id] = item
            self._events.move_to_end(item.event.event_id)
        self._trim_event_cache()

    def _forget_written(self, event_ids: Collection[str]) -> None:
        self._writes.note([("w", e) for e in event_ids])
        for event_id in event_ids:
            self._events.pop(event_id, None)

    def _trim_event_cache(self) -> None:
        while len(self._events) > self._event_cache_size:
            self._events.popitem(last=False)

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
        known_members: Mapping[str, tuple[Mapping[str, Any], str]] | None = None,
        known_new: bool = False,
    ) -> tuple[PersistResult, int, str | None]:
        groups_used = 0
        room_id = event.room_id
        # The writes go as one round trip on PostgreSQL (reads flush what is queued).
        txn = StatementBatch(txn)
        # An event first fetched as an outlier (an auth event, say) joins the graph now.
        if not known_new:
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
        insert_rows_txn(
            txn,
            "INSERT INTO event_edges (event_id, prev_event_id)",
            [(event.event_id, p) for p in dict.fromkeys(event.prev_event_ids)],
        )
        insert_rows_txn(
            txn,
            "INSERT INTO event_auth (event_id, auth_id)",
            [(event.event_id, a) for a in dict.fromkeys(event.auth_event_ids)],
        )
        txn.execute(
            "INSERT INTO event_state_groups (event_id, state_group) VALUES (?, ?)", (event.event_id, after_group)
        )
        # Forward extremities.
        if not update_extremities:
            pass
        elif new_extremities is None:
            prevs = list(dict.fromkeys(event.prev_event_ids))
            if prevs:
                txn.execute(
                    f"DELETE FROM forward_extremities WHERE room_id = ? AND event_id IN ({','.join('?' * len(prevs))})",
                    (room_id, *prevs),
                )
            txn.execute(
                "INSERT INTO forward_extremities (room_id, event_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (room_id, event.event_id),
            )
        else:
            txn.execute("DELETE FROM forward_extremities WHERE room_id = ?", (room_id,))
            insert_rows_txn(
                txn,
                "INSERT INTO forward_extremities (room_id, event_id)",
                [(room_id, e) for e in dict.fromkeys(new_extremities)],
            )
        if txn_id is not None:
            txn.execute(
                "INSERT INTO event_txn_ids (user_id, device_id, txn_id, event_id, created_ts) VALUES (?, ?, ?, ?, ?)",
                (txn_id.user_id, txn_id.device_id, txn_id.txn_id, event.event_id, received_ts),
            )
        if rejected_reason is None and outlier == TIMELINE:
            store_derived_txn(txn, event, stream)
            if event.type == "m.room.member" and event.state_key is not None:
                txn.execute(
                    "INSERT INTO membership_history (stream_ordering, room_id, user_id, membership, event_id)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (stream, room_id, event.state_key, str(event.content.get("membership")), event.event_id),
                )
        if current_state_delta:
            update_current_state_txn(txn, room_id, current_state_delta, stream, known_members or {})
        txn.flush()
        return PersistResult(stream, after_group, state_after), groups_used, replaces

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
            written = await self._db.run_interaction(
                "persist_outliers", self._persist_outliers_txn, items, first, received_ts
            )
            self._min_stream = first - len(items) + 1
            self._remember_written(written)

    def _persist_outliers_txn(
        self, txn: Transaction, items: Sequence[tuple[Event, str | None]], first: int, received_ts: int
    ) -> list[StoredEvent]:
        """Bulk: one query for which are stored already, a few multi-row inserts."""
        wanted: dict[str, tuple[int, Event, str | None]] = {}
        for offset, (event, rejected_reason) in enumerate(items):
            wanted.setdefault(event.event_id, (first - offset, event, rejected_reason))
        ids = list(wanted)
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            for (event_id,) in txn.select_all(
                f"SELECT event_id FROM events WHERE event_id IN ({','.join('?' * len(chunk))})", chunk
            ):
                wanted.pop(str(event_id), None)
        rows = []
        edges: list[tuple[str, str]] = []
        auth: list[tuple[str, str]] = []
        written = []
        for stream, event, rejected_reason in wanted.values():
            rows.append(event_row(event, stream, received_ts, OUTLIER, rejected_reason))
            edges.extend((event.event_id, p) for p in dict.fromkeys(event.prev_event_ids))
            auth.extend((event.event_id, a) for a in dict.fromkeys(event.auth_event_ids))
            written.append(StoredEvent(event, stream, True, rejected_reason, None, None))
        insert_rows_txn(txn, EVENT_ROW_INSERT, rows)
        insert_rows_txn(txn, "INSERT INTO event_edges (event_id, prev_event_id)", edges, "ON CONFLICT DO NOTHING")
        insert_rows_txn(txn, "INSERT INTO event_auth (event_id, auth_id)", auth, "ON CONFLICT DO NOTHING")
        return written

    def _insert_event_row_txn(
        self, txn: Transaction, event: Event, stream: int, received_ts: int, outlier: int, rejected_reason: str | None
    ) -> None:
        insert_rows_txn(txn, EVENT_ROW_INSERT, [event_row(event, stream, received_ts, outlier, rejected_reason)])
        insert_rows_txn(
            txn,
            "INSERT INTO event_edges (event_id, prev_event_id)",
            [(event.event_id, p) for p in dict.fromkeys(event.prev_event_ids)],
            "ON CONFLICT DO NOTHING",
        )
        insert_rows_txn(
            txn,
            "INSERT INTO event_auth (event_id, auth_id)",
            [(event.event_id, a) for a in dict.fromkeys(event.auth_event_ids)],
            "ON CONFLICT DO NOTHING",
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
            self._note_changes(event, stream, timeline=False, membership=True)
            self._max_stream = stream
        self._forget_written([event.event_id])
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
        self._forget_written([event_id])

    # -- reading -----------------------------------------------------------------------

    def _row_to_stored(self, row: tuple[Any, ...]) -> StoredEvent:
        event_id, stream, json_text, outlier, rejected, redacted_by, replaces, room_version = row
        version = get_room_version(str(room_version))
        event = Event(share_strings(json.loads(json_text)), version, event_id=str(event_id))
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
            since = self._writes.position
            fetched = await self._db.run_interaction("get_events", self._get_events_txn, missing)
            for event_id, stored in fetched.items():
                out[event_id] = stored
                # Not cached when a write of the event committed while we read (ours may be
                # the older copy).
                if not self._writes.changed_since(("w", event_id), since):
                    self._events[event_id] = stored
            self._trim_event_cache()
        return out

    def _get_events_txn(self, txn: Transaction, event_ids: list[str]) -> dict[str, StoredEvent]:
        out: dict[str, StoredEvent] = {}
        for start in range(0, len(event_ids), 200):
            chunk = event_ids[start : start + 200]
            marks = ",".join("?" * len(chunk))
            for row in txn.select_all(
                f"SELECT {_EVENT_COLUMNS} FROM events AS e JOIN rooms AS r USING (room_id) WHERE e.event_id IN ({marks})",
                chunk,
            ):
                stored = self._row_to_stored(row)
                out[stored.event.event_id] = stored
        return out

    async def get_event(self, event_id: str) -> StoredEvent | None:
        return (await self.get_events([event_id])).get(event_id)

    async def get_forward_extremities(self, room_id: str) -> list[str]:
        cached = self._extremities.get(room_id)
        if cached is not None:
            self._extremities.move_to_end(room_id)
            return sorted(cached)
        generation = self._room_generation.get(room_id, 0)
        rows = await self._db.run_interaction(
            "get_forward_extremities",
            lambda txn: txn.select_all("SELECT event_id FROM forward_extremities WHERE room_id = ?", (room_id,)),
        )
        extremities = sorted(str(r[0]) for r in rows)
        if self._room_generation.get(room_id, 0) == generation:
            self._set_extremities(room_id, frozenset(extremities))
        return extremities

    @staticmethod
    def _has_timeline_children_txn(txn: Transaction, event_id: str) -> bool:
        row = txn.select_one(
            "SELECT 1 FROM event_edges AS g JOIN events AS e ON e.event_id = g.event_id"
            " WHERE g.prev_event_id = ? AND e.outlier <> ? LIMIT 1",
            (event_id, OUTLIER),
        )
        return row is not None

    async def has_timeline_children(self, event_id: str) -> bool:
        """Whether a stored (non-outlier) event already lists ``event_id`` as a prev event."""
        return await self._db.run_interaction("has_timeline_children", self._has_timeline_children_txn, event_id)

    async def lookup_received(self, event_ids: Collection[str]) -> ReceivedLookup:
        """For events just received (a transaction's PDUs), in one transaction: which are
        stored, and whether stored timeline events cite each as a prev event.  Answers
        hold at the returned position; :meth:`get_event_and_children` checks them."""
        position = self._writes.position
        wanted = [e for e in dict.fromkeys(event_ids)]
        found = await self._db.run_interaction("lookup_received", self._lookup_txn, wanted)
        return ReceivedLookup(position, found)

    def _lookup_txn(self, txn: Transaction, event_ids: list[str]) -> dict[str, tuple[StoredEvent | None, bool]]:
        stored = self._get_events_txn(txn, event_ids)
        cited: set[str] = set()
        for start in range(0, len(event_ids), _CHUNK):
            chunk = event_ids[start : start + _CHUNK]
            for (prev_id,) in txn.select_all(
                "SELECT DISTINCT g.prev_event_id FROM event_edges AS g JOIN events AS c ON c.event_id = g.event_id"
                f" WHERE g.prev_event_id IN ({','.join('?' * len(chunk))}) AND c.outlier <> ?",
                (*chunk, OUTLIER),
            ):
                cited.add(str(prev_id))
        out: dict[str, tuple[StoredEvent | None, bool]] = {}
        for event_id in event_ids:
            item = stored.get(event_id)
            out[event_id] = (item, (item is not None and not item.outlier) or event_id in cited)
        return out

    async def get_event_and_children(
        self, event_id: str, prefetched: ReceivedLookup | None = None
    ) -> tuple[StoredEvent | None, bool, int]:
        """:meth:`get_event` and, unless the event is a stored timeline event,
        :meth:`has_timeline_children`, and the write position at which both hold.  From
        memory, or from ``prefetched`` when no write since touched the event, or else in
        one statement."""
        position = self._writes.position
        hit = self._events.get(event_id)
        if hit is not None and not hit.outlier:
            return hit, True, position
        if prefetched is not None and event_id in prefetched.found:
            since = prefetched.position
            if not self._writes.changed_since(("w", event_id), since) and not self._writes.changed_since(
                ("c", event_id), since
            ):
                stored, has_children = prefetched.found[event_id]
                return stored, has_children, since
        found = await self._db.run_interaction("lookup_received", self._lookup_txn, [event_id])
        stored, has_children = found[event_id]
        return stored, has_children, position

    async def get_current_state_ids(self, room_id: str) -> StateMap:
        """The room's current state (a copy: callers may change it)."""
        cached = self._current_state.get(room_id)
        if cached is not None:
            self._current_state.move_to_end(room_id)
            return dict(cached)
        generation = self._room_generation.get(room_id, 0)
        rows = await self._db.run_interaction(
            "get_current_state",
            lambda txn: txn.select_all(
                "SELECT type, state_key, event_id FROM current_state WHERE room_id = ?", (room_id,)
            ),
        )
        state = {(str(t), str(k)): str(e) for t, k, e in rows}
        if self._room_generation.get(room_id, 0) == generation:
            self._set_current_state(room_id, dict(state))
        return state

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
