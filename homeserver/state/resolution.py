"""State resolution: the entry point, ``resolve_state``.

Gathers from the store everything the algorithm will look at, in a few batched
calls, then runs the pure algorithm of :mod:`homeserver.state.v2` over it.  The
algorithm itself never awaits: a resolution is a bounded piece of CPU work (well
under a second for a 10,000-state room with 1,000 conflicts) rather than hundreds
of tiny store round trips.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

from homeserver.events.room_versions import RoomVersion, StateResVersion
from homeserver.state.auth_chain import (
    InMemoryStateStore,
    auth_chain_difference,
    conflicted_subgraph,
    fetch_conflicted_subgraph,
)
from homeserver.state.event_index import EventIndex
from homeserver.state.interfaces import (
    POWER_LEVELS_KEY,
    AuthCheck,
    AuthTypes,
    RejectionAwareStore,
    StateEvent,
    StateKey,
    StateMap,
    StateResolutionStore,
)
from homeserver.state.power import is_power_event
from homeserver.state.v2 import (
    iterative_auth_checks,
    mainline_sort,
    resolve_conflicted_set,
    reverse_topological_power_sort,
    separate_conflicted,
)

__all__ = [
    "StateKey",
    "StateMap",
    "StateEvent",
    "StateResolutionStore",
    "EventIndex",
    "RejectionAwareStore",
    "InMemoryStateStore",
    "resolve_state",
    "separate_conflicted",
    "reverse_topological_power_sort",
    "mainline_sort",
    "iterative_auth_checks",
    "resolve_conflicted_set",
    "auth_chain_difference",
    "conflicted_subgraph",
    "fetch_conflicted_subgraph",
    "is_power_event",
]


async def resolve_state(
    room_version: RoomVersion,
    room_id: str,
    state_sets: Sequence[StateMap],
    store: StateResolutionStore,
    *,
    auth_check: AuthCheck | None = None,
    auth_types: AuthTypes | None = None,
) -> dict[StateKey, str]:
    """Resolve the room states ``state_sets`` into one, per the room version's
    algorithm: state resolution v2 (v3-v11) or its revision v2.1 (v12).

    ``auth_check`` and ``auth_types`` default to the authorisation rules of
    :mod:`homeserver.events.auth`; tests substitute others (e.g. Synapse's) to check
    the algorithm in isolation.

    Raises ``ValueError`` if the store returns an event of another room.
    """
    if room_version.state_res not in (StateResVersion.V2, StateResVersion.V2_1):
        raise ValueError(f"room version {room_version.identifier} uses {room_version.state_res}")
    if auth_check is None or auth_types is None:
        from homeserver.events import auth as event_auth

        auth_check = auth_check or event_auth.check_auth_rules
        auth_types = auth_types or event_auth.auth_types_for_event

    unconflicted, conflicted = separate_conflicted(state_sets)
    if not conflicted:
        return dict(unconflicted)
    conflicted_ids: set[str] = set().union(*conflicted.values())

    # The full conflicted set: conflicted state, auth difference and (v2.1) the
    # conflicted state subgraph.
    full = await store.get_auth_chain_difference(room_id, [set(state_set.values()) for state_set in state_sets])
    full |= conflicted_ids
    is_v21 = room_version.state_res == StateResVersion.V2_1
    if is_v21:
        full |= await store.get_conflicted_subgraph(room_id, conflicted_ids)

    events = _EventCache(store, room_id)
    await events.load(full)
    # Events the store cannot produce cannot take part (as in Synapse).
    full = {e for e in full if e in events.loaded}

    index = EventIndex(room_version, events.loaded)
    base: StateMap = {} if is_v21 else unconflicted
    await _prefetch(index, full, base, events, auth_types)

    rejected: Collection[str] = ()
    if isinstance(store, RejectionAwareStore):
        rejected = await store.get_rejected_event_ids(list(events.loaded))

    return resolve_conflicted_set(
        room_version,
        full,
        unconflicted,
        index,
        auth_check=auth_check,
        auth_types=auth_types,
        rejected=rejected,
    )


class _EventCache:
    """The events fetched so far, fetched in batches and checked to be in the room."""

    def __init__(self, store: StateResolutionStore, room_id: str) -> None:
        self._store = store
        self._room_id = room_id
        self.loaded: dict[str, StateEvent] = {}
        self._asked: set[str] = set()

    async def load(self, event_ids: Iterable[str]) -> None:
        wanted = {e for e in event_ids if e not in self._asked}
        if not wanted:
            return
        self._asked |= wanted
        fetched = await self._store.get_events(wanted)
        for event_id, event in fetched.items():
            # A state set naming another room's events would let that room's
            # power levels decide this one's state.
            if event.room_id != self._room_id:
                raise ValueError(f"state res for {self._room_id}: {event_id} is in {event.room_id}")
        self.loaded.update(fetched)


async def _prefetch(
    index: EventIndex,
    full: set[str],
    base: StateMap,
    events: _EventCache,
    auth_types: AuthTypes,
) -> None:
    """Load every event the algorithm will look up, in as few store calls as we can.

    - the auth events of the full conflicted set (sender power, auth fallback);
    - the base-state events the auth rules consult, and the base power levels;
    - for the mainline ordering, the chains of power-levels auth events from every
      power levels event that might end up resolved and from every event to be
      mainline-sorted, one generation per store call.
    """
    await events.load(a for e in full for a in index.auth_ids(e))

    keys: set[StateKey] = {POWER_LEVELS_KEY}
    for event_id in full:
        keys.update(index.auth_types(event_id, auth_types))
    await events.load(base[k] for k in keys if k in base)

    # Candidates for the resolved power levels: the base one and every conflicted
    # one (all power levels events are power events, so they are all in step 2).
    chain_from = {e for e in full if index.key(e) == POWER_LEVELS_KEY}
    if POWER_LEVELS_KEY in base:
        chain_from.add(base[POWER_LEVELS_KEY])
    for event_id in full:
        power_levels_id = index.power_levels_auth(event_id)
        if power_levels_id is not None:
            chain_from.add(power_levels_id)
    expanded = set(full)
    frontier = {e for e in chain_from if e in index} - expanded
    while frontier:
        expanded |= frontier
        await events.load(a for e in frontier for a in index.auth_ids(e))
        next_frontier: set[str] = set()
        for event_id in frontier:
            power_levels_id = index.power_levels_auth(event_id)
            if power_levels_id is not None and power_levels_id not in expanded:
                next_frontier.add(power_levels_id)
        frontier = next_frontier
