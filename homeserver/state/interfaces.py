"""The types state resolution works over: state maps, events, the store and auth hooks.

State resolution only reads a handful of event fields, so it takes any object with
them (:class:`StateEvent`): our :class:`homeserver.events.model.Event` satisfies it,
and tests wrap Synapse's events in a few lines to run both implementations side by side.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from homeserver.events.room_versions import RoomVersion

# (event type, state key)
StateKey = tuple[str, str]

# (event type, state key) -> event ID: the state of a room at some point.
StateMap = Mapping[StateKey, str]

CREATE = "m.room.create"
MEMBER = "m.room.member"
POWER_LEVELS = "m.room.power_levels"
JOIN_RULES = "m.room.join_rules"

CREATE_KEY: StateKey = (CREATE, "")
POWER_LEVELS_KEY: StateKey = (POWER_LEVELS, "")
JOIN_RULES_KEY: StateKey = (JOIN_RULES, "")


class StateEvent(Protocol):
    """The fields of an event that state resolution reads.

    ``auth_event_ids`` is the event's ``auth_events`` as sent.  In room version 12 the
    create event is implied by the room ID rather than listed; the resolver adds it
    itself (see :func:`homeserver.state.power.auth_event_ids_of`), so an implementation
    may list it or not.
    """

    @property
    def event_id(self) -> str: ...

    @property
    def room_id(self) -> str: ...

    @property
    def type(self) -> str: ...

    @property
    def state_key(self) -> str | None: ...

    @property
    def sender(self) -> str: ...

    @property
    def origin_server_ts(self) -> int: ...

    @property
    def content(self) -> Mapping[str, Any]: ...

    @property
    def auth_event_ids(self) -> Sequence[str]: ...


class StateResolutionStore(Protocol):
    """Where the resolver gets events and auth-chain facts from.

    The storage layer implements this over the database (ideally with an auth chain
    index); :class:`homeserver.state.auth_chain.InMemoryStateStore` implements it over
    a dict of events.
    """

    async def get_events(self, event_ids: Collection[str]) -> dict[str, StateEvent]:
        """The events with the given IDs that exist, including rejected ones.

        Missing events are omitted from the result, not reported as errors.
        """
        ...

    async def get_auth_chain_difference(self, room_id: str, state_sets: list[set[str]]) -> set[str]:
        """The auth difference of the state sets (each given as its event IDs).

        Each state set's full auth chain includes the state events themselves (as
        Synapse's does): the result is the union of those chains minus their
        intersection.
        """
        ...

    async def get_conflicted_subgraph(self, room_id: str, conflicted_event_ids: set[str]) -> set[str]:
        """Room version 12: every event on an ``auth_events`` path between two
        conflicted events, the conflicted events included.

        Stores without an index can delegate to
        :func:`homeserver.state.auth_chain.fetch_conflicted_subgraph`.
        """
        ...


@runtime_checkable
class RejectionAwareStore(Protocol):
    """Optionally, a store can say which events were rejected when received.

    Rejected events are never used as *auth events* during the iterative auth checks
    (spec, room v2 "Rejected events"); a store without this method is taken to have
    no rejected events in play.
    """

    async def get_rejected_event_ids(self, event_ids: Collection[str]) -> set[str]:
        """The subset of ``event_ids`` that were rejected on receipt."""
        ...


class AuthCheck(Protocol):
    """The authorisation rules: return to allow the event, raise to reject it.

    ``auth_events`` holds the state the event is checked against, by (type, state_key).
    Default: :func:`homeserver.events.auth.check_auth_rules`.
    """

    def __call__(
        self,
        room_version: RoomVersion,
        event: Any,
        auth_events: Mapping[StateKey, Any],
        /,
    ) -> None: ...


class AuthTypes(Protocol):
    """The (type, state_key) pairs the auth rules may consult for an event.

    Default: :func:`homeserver.events.auth.auth_types_for_event`.
    """

    def __call__(self, room_version: RoomVersion, event: Any, /) -> Collection[StateKey]: ...
