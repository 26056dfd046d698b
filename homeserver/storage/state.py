"""State groups: the room state after each event, stored as chains of deltas.

A group is a delta against ``prev_group``; every ``SNAPSHOT_INTERVAL`` deltas a full
snapshot starts a new chain, so reading any state costs at most that many small reads and
storage grows with the number of state changes only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from homeserver.storage.database import Database, Row, Transaction

StateKey = tuple[str, str]
StateMap = dict[StateKey, str]
StateDelta = Mapping[StateKey, "str | None"]

SNAPSHOT_INTERVAL = 50
# The cache is bounded by the total number of state entries it holds (big rooms weigh
# more), and by a number of groups.
_CACHE_MAX_ENTRIES = 1_000_000
_CACHE_MAX_GROUPS = 20_000
_EVENT_GROUP_CACHE_SIZE = 200_000
_CHAIN_LENGTH_CACHE_SIZE = 10_000


# SQLite before 3.32 allows 999 bound parameters a statement: multi-row inserts stay below.
_MAX_PARAMS = 900


def insert_rows_txn(txn: Transaction, head: str, rows: Sequence[Sequence[Any]], tail: str = "") -> None:
    """``head`` (``INSERT INTO t (a, b)``) ``VALUES (?, ?), (?, ?), ...`` ``tail`` for all
    ``rows``, a few hundred rows a statement: one round trip where ``execute_many`` makes
    one a row (psycopg2 runs ``executemany`` row by row)."""
    if not rows:
        return
    width = len(rows[0])
    per = max(1, _MAX_PARAMS // width)
    one = "(" + ",".join("?" * width) + ")"
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        params = [value for row in chunk for value in row]
        txn.execute(f"{head} VALUES {','.join([one] * len(chunk))} {tail}", params)


class StatementBatch(Transaction):
    """A transaction whose writes are sent together: on PostgreSQL, statements queue up
    (psycopg2 binds parameters on the client) and go as one round trip when a read, the
    end of the batch or a rowcount needs them; on SQLite (in process) they run at once.
    Any failing statement fails the transaction, as before."""

    def __init__(self, txn: Transaction) -> None:  # wraps txn: no cursor of its own
        self.engine = txn.engine
        self.after_commit = txn.after_commit
        self._txn = txn
        self._queued: list[str] = []
        self._params: list[Any] = []
        self._batching = txn.engine.name == "postgres"

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        if not self._batching:
            self._txn.execute(sql, params)
            return
        self._queued.append(sql)
        self._params.extend(params)

    def flush(self) -> None:
        if self._queued:
            sql, params = ";\n".join(self._queued), self._params
            self._queued, self._params = [], []
            self._txn.execute(sql, params)

    def execute_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.flush()
        self._txn.execute_many(sql, rows)

    def fetchone(self) -> Row | None:
        return self._txn.fetchone()

    def fetchall(self) -> list[Row]:
        return self._txn.fetchall()

    @property
    def rowcount(self) -> int:
        self.flush()
        return self._txn.rowcount

    def select_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        self.flush()
        return self._txn.select_one(sql, params)

    def select_all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self.flush()
        return self._txn.select_all(sql, params)


class StateGroupCache:
    """Bounded LRU of group -> full state; entries are never mutated once cached.

    Also holds what event persistence and state reads share: event -> state group after
    it (immutable once written) and the chain length of recent groups.
    """

    def __init__(self, max_entries: int = _CACHE_MAX_ENTRIES, max_groups: int = _CACHE_MAX_GROUPS) -> None:
        self._max_entries = max_entries
        self._max_groups = max_groups
        self._entries: OrderedDict[int, StateMap] = OrderedDict()
        self._weight = 0
        self.event_groups: OrderedDict[str, int] = OrderedDict()
        self.chain_lengths: OrderedDict[int, int] = OrderedDict()

    def note_event_groups(self, groups: Mapping[str, int]) -> None:
        """Remember event -> group (call only once the rows are committed)."""
        for event_id, group in groups.items():
            self.event_groups[event_id] = group
        while len(self.event_groups) > _EVENT_GROUP_CACHE_SIZE:
            self.event_groups.popitem(last=False)

    def note_chain_length(self, group: int, length: int) -> None:
        self.chain_lengths[group] = length
        while len(self.chain_lengths) > _CHAIN_LENGTH_CACHE_SIZE:
            self.chain_lengths.popitem(last=False)

    def get(self, group: int) -> StateMap | None:
        state = self._entries.get(group)
        if state is not None:
            self._entries.move_to_end(group)
        return state

    def put(self, group: int, state: StateMap) -> None:
        previous = self._entries.pop(group, None)
        if previous is not None:
            self._weight -= len(previous)
        self._entries[group] = state
        self._weight += len(state)
        while self._entries and (self._weight > self._max_entries or len(self._entries) > self._max_groups):
            _, evicted = self._entries.popitem(last=False)
            self._weight -= len(evicted)


def load_state_group_txn(txn: Transaction, group: int, cache: StateGroupCache) -> StateMap:
    """The full state of ``group``, walking its delta chain back to a snapshot or a cached group."""
    chain: list[int] = []
    base: StateMap = {}
    current: int | None = group
    while current is not None:
        cached = cache.get(current)
        if cached is not None:
            base = cached
            break
        chain.append(current)
        row = txn.select_one("SELECT prev_group FROM state_groups WHERE id = ?", (current,))
        if row is None:
            raise KeyError(f"unknown state group {current}")
        current = None if row[0] is None else int(row[0])
    state = dict(base)
    for g in reversed(chain):
        for type_, state_key, event_id in txn.select_all(
            "SELECT type, state_key, event_id FROM state_group_entries WHERE state_group = ?", (g,)
        ):
            if event_id is None:
                state.pop((type_, state_key), None)
            else:
                state[(type_, state_key)] = event_id
    # Only the group asked for is cached: caching every group of the chain would keep up
    # to SNAPSHOT_INTERVAL near-copies of a big room's state.
    cache.put(group, state)
    return state


def create_state_group_txn(
    txn: Transaction,
    group_id: int,
    room_id: str,
    prev_group: int | None,
    delta: StateDelta,
    cache: StateGroupCache,
) -> StateMap:
    """Store a new group as ``prev_group`` + ``delta`` (a snapshot when the chain is long).

    Returns the group's full state.
    """
    if prev_group is None:
        full = {k: v for k, v in delta.items() if v is not None}
        chain_length = 0
        entries: Mapping[StateKey, str | None] = full
    else:
        prev_length = cache.chain_lengths.get(prev_group)
        if prev_length is None:
            row = txn.select_one("SELECT chain_length FROM state_groups WHERE id = ?", (prev_group,))
            if row is None:
                raise KeyError(f"unknown state group {prev_group}")
            prev_length = int(row[0])
        full = dict(load_state_group_txn(txn, prev_group, cache))
        for key, event_id in delta.items():
            if event_id is None:
                full.pop(key, None)
            else:
                full[key] = event_id
        if prev_length + 1 >= SNAPSHOT_INTERVAL:
            prev_group, chain_length, entries = None, 0, full
        else:
            chain_length, entries = prev_length + 1, delta
    txn.execute(
        "INSERT INTO state_groups (id, room_id, prev_group, chain_length) VALUES (?, ?, ?, ?)",
        (group_id, room_id, prev_group, chain_length),
    )
    insert_rows_txn(
        txn,
        "INSERT INTO state_group_entries (state_group, type, state_key, event_id)",
        [(group_id, k[0], k[1], v) for k, v in entries.items()],
    )
    # Cached before commit, as the group's state is: a rolled-back group ID is reused by
    # the next persist, which overwrites both.
    cache.put(group_id, full)
    cache.note_chain_length(group_id, chain_length)
    return full


class StateRepository:
    """Reads of state groups (writes happen inside event persistence)."""

    def __init__(self, db: Database, cache: StateGroupCache) -> None:
        self._db = db
        self.cache = cache
        # event -> state group after it: immutable once written, so safe to keep (event
        # persistence adds the groups it writes).
        self._event_groups = cache.event_groups

    async def get_state(self, group: int) -> StateMap:
        cached = self.cache.get(group)
        if cached is not None:
            return cached
        return await self._db.run_interaction("load_state_group", load_state_group_txn, group, self.cache)

    async def get_states(self, groups: Collection[int]) -> dict[int, StateMap]:
        """:meth:`get_state` for many groups, the uncached ones loaded in one transaction."""
        out: dict[int, StateMap] = {}
        missing = []
        for group in groups:
            cached = self.cache.get(group)
            if cached is not None:
                out[group] = cached
            else:
                missing.append(group)
        if missing:

            def txn_fn(txn: Transaction) -> dict[int, StateMap]:
                return {group: load_state_group_txn(txn, group, self.cache) for group in missing}

            out.update(await self._db.run_interaction("load_state_groups", txn_fn))
        return out

    async def get_groups_for_events(self, event_ids: list[str]) -> dict[str, int]:
        known = {e: self._event_groups[e] for e in event_ids if e in self._event_groups}
        missing = [e for e in event_ids if e not in known]
        if missing:
            fetched = await self._fetch_groups_for_events(missing)
            self.cache.note_event_groups(fetched)
            known.update(fetched)
        return known

    async def _fetch_groups_for_events(self, event_ids: list[str]) -> dict[str, int]:
        def txn_fn(txn: Transaction) -> dict[str, int]:
            out: dict[str, int] = {}
            for chunk_start in range(0, len(event_ids), 200):
                chunk = event_ids[chunk_start : chunk_start + 200]
                marks = ",".join("?" * len(chunk))
                for event_id, group in txn.select_all(
                    f"SELECT event_id, state_group FROM event_state_groups WHERE event_id IN ({marks})", chunk
                ):
                    out[str(event_id)] = int(group)
            return out

        if not event_ids:
            return {}
        return await self._db.run_interaction("get_state_groups", txn_fn)

    async def get_state_after_event(self, event_id: str) -> StateMap | None:
        groups = await self.get_groups_for_events([event_id])
        if event_id not in groups:
            return None
        return await self.get_state(groups[event_id])
