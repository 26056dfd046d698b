"""State groups: the room state after each event, stored as chains of deltas.

A group is a delta against ``prev_group``; every ``SNAPSHOT_INTERVAL`` deltas a full
snapshot starts a new chain, so reading any state costs at most that many small reads and
storage grows with the number of state changes only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Mapping

from homeserver.storage.database import Database, Transaction

StateKey = tuple[str, str]
StateMap = dict[StateKey, str]
StateDelta = Mapping[StateKey, "str | None"]

SNAPSHOT_INTERVAL = 50
# The cache is bounded by the total number of state entries it holds (big rooms weigh
# more), and by a number of groups.
_CACHE_MAX_ENTRIES = 1_000_000
_CACHE_MAX_GROUPS = 20_000
_EVENT_GROUP_CACHE_SIZE = 200_000


class StateGroupCache:
    """Bounded LRU of group -> full state; entries are never mutated once cached."""

    def __init__(self, max_entries: int = _CACHE_MAX_ENTRIES, max_groups: int = _CACHE_MAX_GROUPS) -> None:
        self._max_entries = max_entries
        self._max_groups = max_groups
        self._entries: OrderedDict[int, StateMap] = OrderedDict()
        self._weight = 0

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
        row = txn.select_one("SELECT chain_length FROM state_groups WHERE id = ?", (prev_group,))
        if row is None:
            raise KeyError(f"unknown state group {prev_group}")
        full = dict(load_state_group_txn(txn, prev_group, cache))
        for key, event_id in delta.items():
            if event_id is None:
                full.pop(key, None)
            else:
                full[key] = event_id
        if int(row[0]) + 1 >= SNAPSHOT_INTERVAL:
            prev_group, chain_length, entries = None, 0, full
        else:
            chain_length, entries = int(row[0]) + 1, delta
    txn.execute(
        "INSERT INTO state_groups (id, room_id, prev_group, chain_length) VALUES (?, ?, ?, ?)",
        (group_id, room_id, prev_group, chain_length),
    )
    txn.execute_many(
        "INSERT INTO state_group_entries (state_group, type, state_key, event_id) VALUES (?, ?, ?, ?)",
        [(group_id, k[0], k[1], v) for k, v in entries.items()],
    )
    cache.put(group_id, full)
    return full


class StateRepository:
    """Reads of state groups (writes happen inside event persistence)."""

    def __init__(self, db: Database, cache: StateGroupCache) -> None:
        self._db = db
        self.cache = cache
        # event -> state group after it: immutable once written, so safe to keep.
        self._event_groups: OrderedDict[str, int] = OrderedDict()

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
            for event_id, group in fetched.items():
                self._event_groups[event_id] = group
            while len(self._event_groups) > _EVENT_GROUP_CACHE_SIZE:
                self._event_groups.popitem(last=False)
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
