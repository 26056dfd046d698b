"""Auth chains: the auth difference, the v12 conflicted subgraph, an in-memory store.

All walks follow ``auth_events`` edges through a ``get_auth_ids`` function, so they
work over any event source; events it does not know simply end the walk.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence

from homeserver.state.interfaces import StateEvent
from homeserver.state.power import create_event_id_for_room

GetAuthIds = Callable[[str], Iterable[str]]


def auth_chain(event_ids: Iterable[str], get_auth_ids: GetAuthIds) -> set[str]:
    """The union of the auth chains of the events: everything reachable through
    ``auth_events`` links (the starting events only if one reaches another)."""
    chain: set[str] = set()
    stack = [a for e in event_ids for a in get_auth_ids(e)]
    while stack:
        event_id = stack.pop()
        if event_id not in chain:
            chain.add(event_id)
            stack.extend(get_auth_ids(event_id))
    return chain


def auth_chain_difference(state_sets: Sequence[Collection[str]], get_auth_ids: GetAuthIds) -> set[str]:
    """The *auth difference*: events in some but not all of the sets' full auth chains.

    A state set's full auth chain here includes the state events themselves, as
    Synapse computes it.  (With the spec's strict wording an unconflicted event that
    no other event in one set cites would count as "different"; it is the same event
    in every set, so it belongs in neither the difference nor the resolution work.)
    """
    if len(state_sets) < 2:
        return set()
    sets = [s if isinstance(s, (set, frozenset)) else set(s) for s in state_sets]
    # Events in every set, and everything they cite, are in every chain: one plain
    # walk marks them, and the walks below stop there.  This is most of the room.
    # (Breadth first, a generation at a time, so the set operations run in C.)
    in_all: set[str] = set(sets[0]).intersection(*sets[1:])
    generation: set[str] = in_all
    while generation:
        cited: set[str] = set()
        for event_id in generation:
            cited.update(get_auth_ids(event_id))
        generation = cited - in_all
        in_all |= generation
    # The rest carry a bitmask of the sets that reach them; an event is revisited only
    # when its mask grows, so this costs at most (number of sets) x (events reached).
    reached_by: dict[str, int] = {}
    for index, state_set in enumerate(sets):
        bit = 1 << index
        for event_id in state_set:
            if event_id not in in_all:
                reached_by[event_id] = reached_by.get(event_id, 0) | bit
    stack = list(reached_by)
    while stack:
        event_id = stack.pop()
        mask = reached_by[event_id]
        for auth_id in get_auth_ids(event_id):
            if auth_id in in_all:
                continue
            old = reached_by.get(auth_id, 0)
            if old | mask != old:
                reached_by[auth_id] = old | mask
                stack.append(auth_id)
    everyone = (1 << len(sets)) - 1
    return {event_id for event_id, mask in reached_by.items() if mask != everyone}


def conflicted_subgraph(conflicted_ids: Collection[str], get_auth_ids: GetAuthIds) -> set[str]:
    """Room version 12's *conflicted state subgraph*.

    The union of all ``auth_events`` paths between pairs of conflicted events,
    endpoints included: the events that are both in the auth chain of some
    conflicted event and have some conflicted event in their own auth chain.  The
    conflicted events themselves are always included (they are in the full
    conflicted set regardless).
    """
    conflicted = set(conflicted_ids)
    # Backwards: the conflicted events and everything in their auth chains, noting
    # the reversed edges as we go so the forward pass stays inside this set.
    cited_by: dict[str, list[str]] = {}
    seen = set(conflicted)
    stack = list(conflicted)
    while stack:
        event_id = stack.pop()
        for auth_id in get_auth_ids(event_id):
            cited_by.setdefault(auth_id, []).append(event_id)
            if auth_id not in seen:
                seen.add(auth_id)
                stack.append(auth_id)
    # Forwards from the conflicted events, within the backwards set: what we reach
    # lies on a path from one conflicted event down to another.
    subgraph = set(conflicted)
    stack = [e for e in conflicted if e in cited_by]
    while stack:
        event_id = stack.pop()
        for child in cited_by.get(event_id, ()):
            if child not in subgraph:
                subgraph.add(child)
                stack.append(child)
    return subgraph


async def fetch_conflicted_subgraph(
    get_events: Callable[[Collection[str]], Awaitable[Mapping[str, StateEvent]]],
    conflicted_ids: Collection[str],
) -> set[str]:
    """:func:`conflicted_subgraph` for a store without an auth chain index.

    Fetches the conflicted events' auth chains one generation per call (so the number
    of calls is the depth of the chain, not its size).  Good enough for small rooms
    and tests; a database should answer from its auth chain index instead.
    """
    auth_ids: dict[str, list[str]] = {}
    frontier = set(conflicted_ids)
    while frontier:
        fetched = await get_events(frontier)
        next_frontier: set[str] = set()
        for event_id in frontier:
            event = fetched.get(event_id)
            ids = list(_effective_auth_ids(event)) if event is not None else []
            auth_ids[event_id] = ids
            next_frontier.update(ids)
        frontier = next_frontier - auth_ids.keys()
    return conflicted_subgraph(conflicted_ids, lambda e: auth_ids.get(e, ()))


def _effective_auth_ids(event: StateEvent, event_id: str | None = None) -> Sequence[str]:
    """``auth_event_ids`` plus the create event a v12 room ID implies.

    Without the room version at hand we recognise v12 rooms by their IDs: a v12
    room ID has no server part (no ":"), and its create event's ID is derived from it
    (so the create event is the one event that does not imply itself).
    """
    auth_ids = event.auth_event_ids
    room_id = event.room_id
    if ":" not in room_id:
        create_id = create_event_id_for_room(room_id)
        if create_id not in auth_ids and create_id != (event_id or event.event_id):
            return (*auth_ids, create_id)
    return auth_ids


class InMemoryStateStore:
    """A :class:`~homeserver.state.interfaces.StateResolutionStore` over a dict.

    For tests, benchmarks and callers that hold every event involved in memory
    (e.g. a room join's state and auth chain).  The dict is read, not copied, so
    events added to it later are seen; the store caches each event's auth IDs.
    """

    def __init__(self, events: Mapping[str, StateEvent], *, rejected: Collection[str] = ()) -> None:
        self._events = events
        self._rejected = frozenset(rejected)
        self._auth_ids: dict[str, Sequence[str]] = {}

    def auth_ids(self, event_id: str) -> Sequence[str]:
        """The event's auth event IDs (v12 create included); () if unknown."""
        cached = self._auth_ids.get(event_id)
        if cached is None:
            event = self._events.get(event_id)
            if event is None:
                return ()
            cached = self._auth_ids[event_id] = _effective_auth_ids(event, event_id)
        return cached

    async def get_events(self, event_ids: Collection[str]) -> dict[str, StateEvent]:
        events = self._events
        return {e: events[e] for e in event_ids if e in events}

    async def get_auth_chain_difference(self, room_id: str, state_sets: list[set[str]]) -> set[str]:
        return auth_chain_difference(state_sets, self.auth_ids)

    async def get_conflicted_subgraph(self, room_id: str, conflicted_event_ids: set[str]) -> set[str]:
        return conflicted_subgraph(conflicted_event_ids, self.auth_ids)

    async def get_rejected_event_ids(self, event_ids: Collection[str]) -> set[str]:
        rejected = self._rejected
        return {e for e in event_ids if e in rejected} if rejected else set()
