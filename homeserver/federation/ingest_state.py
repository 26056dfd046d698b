"""State helpers of the ingest pipeline: resolving state maps held as event IDs against
the stored events, and loading the few state events the auth rules look at."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from homeserver.events.auth import CREATE_KEY, auth_types_for_event
from homeserver.events.model import Event
from homeserver.events.room_versions import RoomVersion
from homeserver.state.auth_chain import InMemoryStateStore
from homeserver.state.resolution import resolve_state
from homeserver.storage.events import EventRepository, StateBefore
from homeserver.storage.state import StateKey, StateMap


def state_delta(base: Mapping[StateKey, str], target: Mapping[StateKey, str]) -> dict[StateKey, str | None]:
    """What turns ``base`` into ``target`` (None removes a key).

    Called for every received event with the room's whole state: equal maps (a message
    extending the room) are recognised without a Python loop over thousands of members."""
    if base == target:  # the common case, compared in C
        return {}
    delta: dict[StateKey, str | None] = {k: v for k, v in target.items() if base.get(k) != v}
    delta.update({k: None for k in base if k not in target})
    return delta


def state_before_ref(
    base_group: int | None, base: Mapping[StateKey, str], state: Mapping[StateKey, str]
) -> StateBefore:
    """How to store ``state`` as a new group: a delta against ``base_group`` (whose state is
    ``base``), or a full snapshot when there is none."""
    if base_group is None:
        return StateBefore(base_group=None, delta=dict(state))
    return StateBefore(base_group=base_group, delta=state_delta(base, state))


class StateResolver:
    """Resolves state maps of event IDs, loading the events and their auth chains."""

    def __init__(self, events: EventRepository) -> None:
        self._events = events

    async def resolve(self, room_version: RoomVersion, room_id: str, state_sets: Sequence[StateMap]) -> StateMap:
        distinct = list({tuple(sorted(s.items())): s for s in state_sets}.values())
        if not distinct:
            return {}
        if len(distinct) == 1:
            return dict(distinct[0])
        loaded: dict[str, Event] = {}
        rejected: set[str] = set()
        frontier = {e for s in distinct for e in s.values()}
        asked: set[str] = set()
        while frontier:
            asked |= frontier
            fetched = await self._events.get_events(list(frontier))
            next_frontier: set[str] = set()
            for event_id, stored in fetched.items():
                loaded[event_id] = stored.event
                if stored.rejected_reason is not None:
                    rejected.add(event_id)
                next_frontier.update(stored.event.auth_event_ids)
            frontier = next_frontier - asked
        store = InMemoryStateStore(loaded, rejected=rejected)
        return await resolve_state(room_version, room_id, distinct, store)

    async def auth_state(
        self, room_version: RoomVersion, event: Event, state_ids: Mapping[StateKey, str]
    ) -> dict[StateKey, Event]:
        """The events of ``state_ids`` the auth rules consult for ``event``."""
        keys = auth_types_for_event(room_version, event) | {CREATE_KEY}
        ids = {k: state_ids[k] for k in keys if k in state_ids}
        fetched = await self._events.get_events(list(ids.values()))
        return {k: fetched[e].event for k, e in ids.items() if e in fetched}
