"""State resolution v2 (room versions 2-11) and v2.1 (room version 12), the pure part.

Follows the spec's room v2 and v12 "State resolution" sections step by step.  Every
function here is synchronous and works over events already in memory;
:mod:`homeserver.state.resolution` gathers them from a store first.

Where Synapse (and ruma) depart from the spec text in ways that change outcomes for
degenerate inputs, we follow them so that every server converges on the same state;
each such place says so.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Collection, Iterable, Mapping, Sequence

from homeserver.events.room_versions import RoomVersion, StateResVersion
from homeserver.state.event_index import EventIndex
from homeserver.state.interfaces import (
    POWER_LEVELS_KEY,
    AuthCheck,
    AuthTypes,
    StateEvent,
    StateKey,
    StateMap,
)
from homeserver.state.power import is_power_event

logger = logging.getLogger(__name__)


def separate_conflicted(
    state_sets: Sequence[StateMap],
) -> tuple[dict[StateKey, str], dict[StateKey, set[str]]]:
    """Split the state sets into the *unconflicted state map* and the conflicted state.

    A key is unconflicted when every state set has it with the same event; a key
    some sets lack is conflicted.  Returns (unconflicted map, key -> conflicted
    event IDs).
    """
    unconflicted: dict[StateKey, str] = {}
    conflicted: dict[StateKey, set[str]] = {}
    if not state_sets:
        return unconflicted, conflicted
    first, rest = state_sets[0], state_sets[1:]
    # A plain loop allocates nothing per key (set operations on item views would
    # build a tuple per entry and wake the garbage collector on big rooms).
    if len(rest) == 1:
        second = rest[0]
        for key, event_id in first.items():
            if second.get(key) == event_id:
                unconflicted[key] = event_id
    else:
        for key, event_id in first.items():
            for other in rest:
                if other.get(key) != event_id:
                    break
            else:
                unconflicted[key] = event_id
    for state_set in state_sets:
        for key in state_set.keys() - unconflicted.keys():
            conflicted.setdefault(key, set()).add(state_set[key])
    return unconflicted, conflicted


def reverse_topological_power_sort(
    room_version: RoomVersion,
    event_ids: Iterable[str],
    full_conflicted_set: Collection[str],
    events: Mapping[str, StateEvent],
) -> list[str]:
    """Step 1's ordering: the events plus their auth ancestors in the full
    conflicted set, in *reverse topological power ordering*.

    Kahn's algorithm over the auth DAG, always taking the smallest ready event by
    (sender power descending, origin_server_ts, event_id): a heap keeps that choice
    O(log n).

    The ancestors are found by walking auth edges only *through* events of the full
    conflicted set, as Synapse and ruma do (the spec's "auth chain of P which also
    belong to the full conflicted set" could reach further through unconflicted
    events; in practice v2.1's conflicted subgraph fills that gap).
    """
    index = EventIndex.of(room_version, events)
    # event -> its auth events within the graph
    edges: dict[str, set[str]] = {}
    stack = list(event_ids)
    while stack:
        event_id = stack.pop()
        if event_id in edges or event_id not in index:
            continue
        inside = {a for a in index.auth_ids(event_id) if a in full_conflicted_set and a in index}
        edges[event_id] = inside
        stack.extend(a for a in inside if a not in edges)

    def order_key(event_id: str) -> tuple[float, int, str]:
        return (-index.sender_power(event_id), index[event_id].origin_server_ts, event_id)

    cited_by: dict[str, list[str]] = {}
    waiting_on: dict[str, int] = {}
    ready: list[tuple[tuple[float, int, str], str]] = []
    for event_id, auth_ids in edges.items():
        waiting_on[event_id] = len(auth_ids)
        for auth_id in auth_ids:
            cited_by.setdefault(auth_id, []).append(event_id)
        if not auth_ids:
            ready.append((order_key(event_id), event_id))
    heapq.heapify(ready)

    ordered: list[str] = []
    while ready:
        _, event_id = heapq.heappop(ready)
        ordered.append(event_id)
        for child in cited_by.get(event_id, ()):
            waiting_on[child] -= 1
            if waiting_on[child] == 0:
                heapq.heappush(ready, (order_key(child), child))
    return ordered


def mainline_sort(
    room_version: RoomVersion,
    event_ids: Iterable[str],
    resolved_power_levels_id: str | None,
    events: Mapping[str, StateEvent],
) -> list[str]:
    """Step 3's ordering: the *mainline ordering* based on the resolved power levels.

    The mainline is the resolved power levels event followed by the power levels
    event of each one's auth events.  An event's position is that of the first
    mainline event on its own chain of power-levels auth events; events based on an
    earlier mainline event (or none) come first, then by origin_server_ts, event_id.
    """
    index = EventIndex.of(room_version, events)
    mainline: list[str] = []
    power_levels_id = resolved_power_levels_id
    while power_levels_id is not None and power_levels_id not in mainline:
        mainline.append(power_levels_id)
        power_levels_id = index.power_levels_auth(power_levels_id)
    # Sort weight: the root of the mainline (the oldest) is 1 and the resolved power
    # levels len(mainline); an event whose chain never meets the mainline is 0, the
    # "infinite position" that sorts first.
    weight: dict[str, int] = {event_id: len(mainline) - i for i, event_id in enumerate(mainline)}

    def chain_weight(event_id: str) -> int:
        # Walk the event's chain of power-levels auth events to the mainline (the
        # event itself is not a candidate: the spec starts from its auth events),
        # remembering the answer for every power levels event passed on the way:
        # sibling events share those chains.
        passed: dict[str, None] = {}  # ordered set; also stops on a (forged) cycle
        found = 0
        current = index.power_levels_auth(event_id)
        while current is not None and current not in passed:
            known = weight.get(current)
            if known is not None:
                found = known
                break
            passed[current] = None
            current = index.power_levels_auth(current)
        for passed_id in passed:
            weight[passed_id] = found
        return found

    keyed = [
        (chain_weight(event_id), event.origin_server_ts, event_id)
        for event_id in event_ids
        if (event := index.get(event_id)) is not None
    ]
    keyed.sort()
    return [event_id for _, _, event_id in keyed]


def iterative_auth_checks(
    room_version: RoomVersion,
    event_ids: Iterable[str],
    base_state: StateMap,
    events: Mapping[str, StateEvent],
    *,
    auth_check: AuthCheck,
    auth_types: AuthTypes,
    rejected: Collection[str] = frozenset(),
) -> dict[StateKey, str]:
    """The *iterative auth checks algorithm*: apply each event, in order, to the state
    if the authorisation rules allow it against that state.

    Keys the rules need but the state lacks fall back to the event's own auth events,
    except those rejected on receipt ("Rejected auth events are deliberately
    excluded", spec room v2).  The event itself is checked even if it was rejected
    on receipt: the spec resolves such events "as usual" (Synapse never re-admits
    them, a known deviation: matrix-org/synapse#13797).

    ``auth_check`` raising anything rejects the event: state resolution runs on
    remote input and must reach an answer whatever a malformed event contains.

    Returns a new state map: ``base_state`` with the events that passed applied.
    Raises ``ValueError`` if an event the state names is not available.
    """
    index = EventIndex.of(room_version, events)
    state = dict(base_state)
    for event_id in event_ids:
        key = index.key(event_id)
        if key is None:
            continue
        event = index[event_id]

        auth_events: dict[StateKey, StateEvent] = {}
        for auth_id in index.auth_ids(event_id):
            if auth_id not in rejected:
                auth_key = index.key(auth_id)
                if auth_key is not None:
                    auth_events[auth_key] = index[auth_id]
        for auth_key in index.auth_types(event_id, auth_types):
            state_event_id = state.get(auth_key)
            if state_event_id is not None:
                state_event = index.get(state_event_id)
                if state_event is None:
                    # Silently falling back to the event's own auth events here would
                    # resolve differently from servers that have the event.
                    raise ValueError(f"state res: state event {state_event_id} is not available")
                auth_events[auth_key] = state_event

        try:
            auth_check(room_version, event, auth_events)
        except Exception as e:
            logger.debug("state res: %s not allowed: %s", event_id, e)
            continue
        state[key] = event_id
    return state


def resolve_conflicted_set(
    room_version: RoomVersion,
    full_conflicted_set: Collection[str],
    unconflicted: StateMap,
    events: Mapping[str, StateEvent],
    *,
    auth_check: AuthCheck,
    auth_types: AuthTypes,
    rejected: Collection[str] = frozenset(),
) -> dict[StateKey, str]:
    """Steps 1-5 of the algorithm, given the full conflicted set (every ID in it must
    be in ``events``, as must the events the algorithm reaches from them) and the
    unconflicted state map."""
    index = EventIndex.of(room_version, events)
    full = set(full_conflicted_set)

    # 1. The power events and their auth ancestors in the full conflicted set, in
    #    reverse topological power ordering.
    power_events = [e for e in full if is_power_event(index[e])]
    sorted_power_events = reverse_topological_power_sort(room_version, power_events, full, index)

    # 2. Iterative auth checks from the unconflicted state map (v2) or, in room
    #    version 12, from an empty map: the unconflicted state no longer vouches for
    #    the conflicted events, which stops "state resets" to stale unconflicted
    #    power levels.
    base: StateMap = unconflicted if room_version.state_res != StateResVersion.V2_1 else {}
    partial = iterative_auth_checks(
        room_version,
        sorted_power_events,
        base,
        index,
        auth_check=auth_check,
        auth_types=auth_types,
        rejected=rejected,
    )

    # 3. The remaining events in mainline order of the partially resolved power levels.
    done = set(sorted_power_events)
    leftover = mainline_sort(room_version, (e for e in full if e not in done), partial.get(POWER_LEVELS_KEY), index)

    # 4. Iterative auth checks on top of the partial state.
    resolved = iterative_auth_checks(
        room_version,
        leftover,
        partial,
        index,
        auth_check=auth_check,
        auth_types=auth_types,
        rejected=rejected,
    )

    # 5. The unconflicted state map wins over anything resolved.
    resolved.update(unconflicted)
    return resolved
