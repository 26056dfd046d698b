"""Power levels: who may do what (spec: m.room.power_levels, and the auth rules' levels).

These are the readers used by the auth rules and, later, by services deciding what to
offer a user.  Reading is lenient (old room versions allow "50" and 50.5 as levels);
what a *new* power levels event may contain is checked by the auth rules, per version.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from homeserver.events.room_versions import RoomVersion

if TYPE_CHECKING:
    from homeserver.events.model import Event

# v12 room creators have "infinite" power.  Any value above the largest canonical JSON
# integer (2**53 - 1) compares as infinite against every level a v12 room can hold.
CREATOR_POWER_LEVEL = 2**53

DEFAULT_USERS_DEFAULT = 0
DEFAULT_EVENTS_DEFAULT = 0
DEFAULT_STATE_DEFAULT = 50
DEFAULT_INVITE_LEVEL = 0
DEFAULT_KICK_LEVEL = 50
DEFAULT_BAN_LEVEL = 50
DEFAULT_REDACT_LEVEL = 50
DEFAULT_NOTIFICATION_LEVEL = 50
# Without any m.room.power_levels event, the creator has 100 (v1-v11).
CREATOR_DEFAULT_LEVEL = 100

# Strings accepted as levels before v10: optional whitespace, optional sign, decimal
# digits (spec fragment "v1-stringy-power-levels").  Python's int() is laxer ("1_0",
# non-ASCII digits), hence the explicit grammar.
_STRINGY_LEVEL_RE = re.compile(r"^[ \t\n\r\f\v]*[+-]?[0-9]+[ \t\n\r\f\v]*$", re.ASCII)


def parse_power_level(value: object) -> int | None:
    """Read a power level as any room version may have stored it; None if invalid.

    Integers are taken as they are; strings in the old "stringy" format are parsed;
    finite floats (room versions 1-5 only) are truncated.  Booleans are not levels.
    """
    if type(value) is int:
        return value
    if isinstance(value, str):
        if _STRINGY_LEVEL_RE.match(value):
            return int(value.strip())
        return None
    if isinstance(value, float):
        return math.trunc(value) if math.isfinite(value) else None
    return None


def is_valid_power_level(value: object, room_version: RoomVersion) -> bool:
    """Whether a *new* power levels event may carry ``value`` as a level in this version."""
    if room_version.enforce_int_power_levels:
        return type(value) is int
    if isinstance(value, float) and room_version.strict_canonical_json:
        return False
    return parse_power_level(value) is not None


def _level(content: Mapping[str, Any], name: str, default: int) -> int:
    if name not in content:
        return default
    parsed = parse_power_level(content[name])
    return default if parsed is None else parsed


def _sub_mapping(content: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = content.get(name)
    return value if isinstance(value, Mapping) else {}


def get_named_level(power_levels_content: Mapping[str, Any], name: str, default: int) -> int:
    """The level ``name`` ("ban", "kick", ...) of a power levels content, or ``default``."""
    return _level(power_levels_content, name, default)


def get_invite_level(power_levels_content: Mapping[str, Any]) -> int:
    return _level(power_levels_content, "invite", DEFAULT_INVITE_LEVEL)


def get_kick_level(power_levels_content: Mapping[str, Any]) -> int:
    return _level(power_levels_content, "kick", DEFAULT_KICK_LEVEL)


def get_ban_level(power_levels_content: Mapping[str, Any]) -> int:
    return _level(power_levels_content, "ban", DEFAULT_BAN_LEVEL)


def get_redact_level(power_levels_content: Mapping[str, Any]) -> int:
    return _level(power_levels_content, "redact", DEFAULT_REDACT_LEVEL)


def get_notification_level(power_levels_content: Mapping[str, Any], key: str = "room") -> int:
    """The level needed to trigger notification ``key`` (``@room`` mentions: "room")."""
    return _level(_sub_mapping(power_levels_content, "notifications"), key, DEFAULT_NOTIFICATION_LEVEL)


def get_creators(create_event: Event, room_version: RoomVersion) -> frozenset[str]:
    """The room creators: the create event's sender (or, before v11, content.creator),
    plus in v12 the valid user IDs listed in ``content.additional_creators``."""
    if room_version.implicit_room_creator:
        creators = {create_event.sender}
    else:
        creator = create_event.content.get("creator")
        creators = {creator} if isinstance(creator, str) else set()
    if room_version.privileged_creators:
        additional = create_event.content.get("additional_creators")
        if isinstance(additional, list):
            creators.update(u for u in additional if isinstance(u, str))
    return frozenset(creators)


def get_user_power_level(
    user_id: str,
    create_event: Event,
    power_levels_event: Event | None,
    room_version: RoomVersion,
) -> int:
    """The power level of ``user_id`` given the room's create and power levels events.

    v12 creators have :data:`CREATOR_POWER_LEVEL` whatever the power levels say.  Without
    a power levels event, the creator has 100 and everyone else 0.
    """
    if room_version.privileged_creators and user_id in get_creators(create_event, room_version):
        return CREATOR_POWER_LEVEL
    if power_levels_event is None:
        if user_id in get_creators(create_event, room_version):
            return CREATOR_DEFAULT_LEVEL
        return DEFAULT_USERS_DEFAULT
    content = power_levels_event.content
    users_default = _level(content, "users_default", DEFAULT_USERS_DEFAULT)
    users = _sub_mapping(content, "users")
    if user_id in users:
        parsed = parse_power_level(users[user_id])
        if parsed is not None:
            return parsed
    return users_default


def get_required_level_for_event(
    event_type: str, state_key: str | None, power_levels_content: Mapping[str, Any]
) -> int:
    """The spec's *required power level* to send an event of this type.

    ``events[event_type]`` if set, else ``state_default`` for state events (those with
    a state key, even empty) and ``events_default`` for others.  Pass ``{}`` when the
    room has no power levels event.
    """
    events = _sub_mapping(power_levels_content, "events")
    if event_type in events:
        parsed = parse_power_level(events[event_type])
        if parsed is not None:
            return parsed
    if state_key is not None:
        return _level(power_levels_content, "state_default", DEFAULT_STATE_DEFAULT)
    return _level(power_levels_content, "events_default", DEFAULT_EVENTS_DEFAULT)


def can_send(
    user_id: str,
    event_type: str,
    state_key: str | None,
    create_event: Event,
    power_levels_event: Event | None,
    room_version: RoomVersion,
) -> bool:
    """Whether ``user_id`` has the power to send this event type (power only: not
    membership, and not the "state keys starting with @" rule)."""
    content = power_levels_event.content if power_levels_event is not None else {}
    required = get_required_level_for_event(event_type, state_key, content)
    return get_user_power_level(user_id, create_event, power_levels_event, room_version) >= required


def can_redact_others(
    user_id: str,
    create_event: Event,
    power_levels_event: Event | None,
    room_version: RoomVersion,
) -> bool:
    """Whether ``user_id`` may redact events sent by other users (the *redact level*)."""
    content = power_levels_event.content if power_levels_event is not None else {}
    level = get_user_power_level(user_id, create_event, power_levels_event, room_version)
    return level >= get_redact_level(content)
