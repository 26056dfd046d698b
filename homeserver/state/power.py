"""Per-event facts for state resolution: implied auth events, power events, power.

Power is judged from an event's own auth events (never the room state), as the
orderings in the spec do: "when looking at their respective auth_events"; see
:meth:`homeserver.state.event_index.EventIndex.sender_power`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from homeserver.events.room_versions import RoomVersion
from homeserver.state.interfaces import CREATE, JOIN_RULES, MEMBER, POWER_LEVELS, StateEvent

# Room version 12: creators outrank every level a power_levels event can grant.
CREATOR_POWER: float = math.inf


def create_event_id_for_room(room_id: str) -> str:
    """Room version 12: the create event's ID is the room ID with "$" for "!"."""
    return "$" + room_id[1:]


def auth_event_ids_of(room_version: RoomVersion, event: StateEvent) -> Sequence[str]:
    """The event's auth events, with the v12 create event made explicit.

    From room version 12 the create event is implied by the room ID and never
    listed in ``auth_events``; every rule and walk here treats it as listed.
    """
    auth_ids = event.auth_event_ids
    if room_version.room_id_from_create_event and event.type != CREATE:
        create_id = create_event_id_for_room(event.room_id)
        if create_id not in auth_ids:
            return (*auth_ids, create_id)
    return auth_ids


def is_power_event(event: StateEvent) -> bool:
    """Whether the event is a *power event* of state resolution v2.

    The spec: power levels, join rules, and memberships of `leave` or `ban` sent by
    someone other than the target ("events that might remove someone's ability to
    do something in the room").  Like Synapse (and ruma) we also count the create
    event and match power levels and join rules only with the empty state key, so
    that degenerate inputs resolve the same on every server; in a well-formed room
    the create event is never conflicted, so this changes nothing there.
    """
    state_key = event.state_key
    if state_key is None:
        return False
    if state_key == "" and event.type in (POWER_LEVELS, JOIN_RULES, CREATE):
        return True
    if event.type == MEMBER:
        membership = event.content.get("membership")
        return membership in ("leave", "ban") and event.sender != event.state_key
    return False


def is_creator(room_version: RoomVersion, create: StateEvent, user_id: str) -> bool:
    """Whether ``user_id`` is a room creator per the create event.

    v11+: the create event's sender; v12 adds ``content.additional_creators``;
    before v11: ``content.creator``.
    """
    if room_version.implicit_room_creator:
        if create.sender == user_id:
            return True
    elif create.content.get("creator") == user_id:
        return True
    if room_version.privileged_creators:
        additional = create.content.get("additional_creators")
        return isinstance(additional, list) and user_id in additional
    return False


def _as_level(value: Any, default: int) -> int:
    """A power level as an int.

    v10+ rooms only admit JSON integers; older ones also allow numeric strings
    (the "stringy power levels" of the spec).  Anything unparseable counts as the
    default rather than failing the whole resolution.
    """
    if isinstance(value, int):
        return int(value)
    if isinstance(value, (str, float)):
        try:
            return int(value)
        except (ValueError, OverflowError):
            return default
    return default


def user_power_level(
    room_version: RoomVersion,
    user_id: str,
    create: StateEvent | None,
    power_levels: StateEvent | None,
) -> float:
    """A user's power given the create and power levels events (either may be absent).

    Room v12: creators have infinite power.  Without a power levels event the creator
    has 100 and everyone else 0 (the auth rules' defaults).
    """
    if room_version.privileged_creators and create is not None:
        if is_creator(room_version, create, user_id):
            return CREATOR_POWER

    if power_levels is None:
        if create is not None and is_creator(room_version, create, user_id):
            return 100
        return 0

    users = power_levels.content.get("users")
    level = users.get(user_id) if isinstance(users, Mapping) else None
    if level is None:
        level = power_levels.content.get("users_default")
    return 0 if level is None else _as_level(level, 0)
