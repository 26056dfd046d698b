"""Events by ID, with the per-event facts state resolution keeps asking for, cached.

A resolution looks at the same few events (the create event, the power levels, the
senders' memberships) thousands of times: as auth events of every conflicted
event, when ordering and when replaying.  :class:`EventIndex` computes each fact
once per event.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence

from homeserver.events.room_versions import RoomVersion
from homeserver.state.interfaces import CREATE, CREATE_KEY, POWER_LEVELS_KEY, StateEvent, StateKey
from homeserver.state.power import auth_event_ids_of, user_power_level

_MISSING: tuple[str, ...] = ()


class EventIndex(Mapping[str, StateEvent]):
    """A read-only view of ``events`` (which may grow) with cached per-event facts.

    Facts are only cached for events present, so an event loaded later is seen;
    but :meth:`power_levels_auth` and :meth:`sender_power` read the event's auth
    events, so ask only once those are loaded.
    """

    def __init__(self, room_version: RoomVersion, events: Mapping[str, StateEvent]) -> None:
        self.room_version = room_version
        self._events = events
        self._auth_ids: dict[str, Sequence[str]] = {}
        self._keys: dict[str, StateKey | None] = {}
        self._power_levels_auth: dict[str, str | None] = {}
        self._sender_power: dict[str, float] = {}
        self._auth_types: dict[str, Collection[StateKey]] = {}

    @classmethod
    def of(cls, room_version: RoomVersion, events: Mapping[str, StateEvent]) -> EventIndex:
        """``events`` itself if it is an index already, else a new index over it."""
        return events if isinstance(events, EventIndex) else cls(room_version, events)

    # -- Mapping ---------------------------------------------------------------------------

    def __getitem__(self, event_id: str) -> StateEvent:
        return self._events[event_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._events)

    def __len__(self) -> int:
        return len(self._events)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._events

    def get(self, event_id: str, default: StateEvent | None = None) -> StateEvent | None:  # type: ignore[override]
        return self._events.get(event_id, default)

    # -- facts -----------------------------------------------------------------------------

    def auth_ids(self, event_id: str) -> Sequence[str]:
        """The event's auth events, the v12 implied create event included."""
        cached = self._auth_ids.get(event_id)
        if cached is None:
            event = self._events.get(event_id)
            if event is None:
                return _MISSING
            cached = self._auth_ids[event_id] = auth_event_ids_of(self.room_version, event)
        return cached

    def key(self, event_id: str) -> StateKey | None:
        """(type, state_key) of the event; None for message events and unknown IDs."""
        try:
            return self._keys[event_id]
        except KeyError:
            event = self._events.get(event_id)
            if event is None:
                return None
            state_key = event.state_key
            key = None if state_key is None else (event.type, state_key)
            self._keys[event_id] = key
            return key

    def power_levels_auth(self, event_id: str) -> str | None:
        """The ``m.room.power_levels`` event among the event's auth events."""
        try:
            return self._power_levels_auth[event_id]
        except KeyError:
            if event_id not in self._events:
                return None
            found = None
            for auth_id in self.auth_ids(event_id):
                if self.key(auth_id) == POWER_LEVELS_KEY:
                    found = auth_id
                    break
            self._power_levels_auth[event_id] = found
            return found

    def sender_power(self, event_id: str) -> float:
        """The power of the event's sender, judged by the event's own auth events:
        the first comparison of the *reverse topological power ordering*."""
        cached = self._sender_power.get(event_id)
        if cached is None:
            event = self._events[event_id]
            create = event if event.type == CREATE else None
            power_levels = None
            for auth_id in self.auth_ids(event_id):
                key = self.key(auth_id)
                if key == POWER_LEVELS_KEY:
                    power_levels = self._events[auth_id]
                elif key == CREATE_KEY:
                    create = self._events[auth_id]
            cached = user_power_level(self.room_version, event.sender, create, power_levels)
            self._sender_power[event_id] = cached
        return cached

    def auth_types(
        self, event_id: str, auth_types: Callable[[RoomVersion, StateEvent], Collection[StateKey]]
    ) -> Collection[StateKey]:
        """``auth_types(room_version, event)``, once per event."""
        cached = self._auth_types.get(event_id)
        if cached is None:
            cached = self._auth_types[event_id] = auth_types(self.room_version, self._events[event_id])
        return cached
