"""The authorisation rules of every supported room version, as one readable function.

The numbering in comments follows the room version 12 page (content/rooms/v12.md);
earlier versions differ only where a :class:`RoomVersion` flag says so, and the comment
says which version introduced the difference.  Two functions split the work the way
the spec's "checks performed on receipt of a PDU" do:

- :func:`check_auth_events_selection` - rules 3.x (v12) / 2.x (v3-v11): is the event's
  own ``auth_events`` list well formed?  Needs the list itself.
- :func:`check_auth_rules` - every other rule, against a map of state (the event's auth
  events, or the state before it, or the current state).  Used by state resolution too.

Neither function does I/O.  Whether auth events were themselves rejected (rule 3.3) and
whether signatures verify are the caller's business.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from signedjson.key import decode_verify_key_bytes
from unpaddedbase64 import decode_base64

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import InvalidID, UserID
from homeserver.events.format import check_event_format
from homeserver.events.model import Event, room_id_for_create_event_id
from homeserver.events.power_levels import (
    get_ban_level,
    get_creators,
    get_invite_level,
    get_kick_level,
    get_required_level_for_event,
    get_user_power_level,
    is_valid_power_level,
    parse_power_level,
)
from homeserver.events.room_versions import RECOGNISED_ROOM_VERSIONS, RoomVersion
from homeserver.events.signing import SignatureError, verify_json

__all__ = [
    "AuthError",
    "auth_types_for_event",
    "auth_types_from_fields",
    "check_auth_events_selection",
    "check_auth_rules",
    "check_event_format",
]

StateKey = tuple[str, str]
CREATE_KEY: StateKey = ("m.room.create", "")
POWER_LEVELS_KEY: StateKey = ("m.room.power_levels", "")
JOIN_RULES_KEY: StateKey = ("m.room.join_rules", "")

_POWER_LEVEL_NAMES = ("users_default", "events_default", "state_default", "ban", "redact", "kick", "invite")


class AuthError(MatrixError):
    """The event is not allowed by the authorisation rules (403 M_FORBIDDEN)."""

    def __init__(self, msg: str) -> None:
        super().__init__(403, Codes.FORBIDDEN, msg)


def _domain(user_or_room_id: str) -> str:
    """The server part of an ID ("@a:b" -> "b"); AuthError when there is none."""
    _, sep, domain = user_or_room_id.partition(":")
    if not sep:
        raise AuthError(f"{user_or_room_id!r} has no server name")
    return domain


def _is_valid_user_id(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        UserID.parse(value)
    except InvalidID:
        return False
    return True


# --- auth events selection ----------------------------------------------------------------


def auth_types_from_fields(
    room_version: RoomVersion,
    event_type: str,
    sender: str,
    state_key: str | None,
    content: Mapping[str, Any],
) -> set[StateKey]:
    """The state keys an event's ``auth_events`` may be drawn from (spec: server-server
    API, "Auth events selection"), for an event that may not be built yet."""
    if event_type == "m.room.create":
        return set()
    types: set[StateKey] = {POWER_LEVELS_KEY, ("m.room.member", sender)}
    # v12: the create event is implied by the room ID and must not be listed.
    if not room_version.room_id_from_create_event:
        types.add(CREATE_KEY)
    if event_type == "m.room.member" and state_key is not None:
        membership = content.get("membership")
        types.add(("m.room.member", state_key))
        if membership in ("join", "invite", "knock"):
            types.add(JOIN_RULES_KEY)
        if membership == "invite":
            token = _third_party_invite_token(content)
            if token is not None:
                types.add(("m.room.third_party_invite", token))
        if membership == "join" and room_version.restricted_join_rule:
            authoriser = content.get("join_authorised_via_users_server")
            if isinstance(authoriser, str):
                types.add(("m.room.member", authoriser))
    return types


def auth_types_for_event(room_version: RoomVersion, event: Event) -> set[StateKey]:
    """The state keys ``event``'s ``auth_events`` may be drawn from."""
    return auth_types_from_fields(room_version, event.type, event.sender, event.state_key, event.content)


def _third_party_invite_token(content: Mapping[str, Any]) -> str | None:
    invite = content.get("third_party_invite")
    signed = invite.get("signed") if isinstance(invite, Mapping) else None
    token = signed.get("token") if isinstance(signed, Mapping) else None
    return token if isinstance(token, str) else None


def check_auth_events_selection(
    room_version: RoomVersion, event: Event, auth_events: Iterable[Event]
) -> dict[StateKey, Event]:
    """Check the event's ``auth_events`` (the events its IDs name) and return them as a
    state map, ready for :func:`check_auth_rules`.

    Rules 3.1, 3.2, 3.4 and 3.5 of v12 (2.1, 2.2, 2.4, 2.5 of v3-v11).  Rule 3.3 (no
    rejected auth events) is the caller's: pass only events that were accepted.  For
    v12 the create event is not among the auth events; the caller adds it to the map
    (it is named by the room ID) before calling :func:`check_auth_rules`.
    """
    if event.type == "m.room.create":
        return {}
    expected = auth_types_for_event(room_version, event)
    selected: dict[StateKey, Event] = {}
    for auth_event in auth_events:
        # 3.5: auth events from another room would let power granted there be used here.
        if auth_event.room_id != event.room_id:
            raise AuthError(
                f"auth event {auth_event.event_id} belongs to room {auth_event.room_id}, not {event.room_id}"
            )
        if not auth_event.is_state():
            raise AuthError(f"auth event {auth_event.event_id} is not a state event")
        key = auth_event.state_key_tuple
        # 3.1
        if key in selected:
            raise AuthError(f"duplicate auth events for {key}")
        # 3.2
        if key not in expected:
            raise AuthError(f"auth event {auth_event.event_id} for {key} is not one the event may cite")
        selected[key] = auth_event
    # v3-v11 rule 2.4.
    if not room_version.room_id_from_create_event and CREATE_KEY not in selected:
        raise AuthError("no m.room.create event among the auth events")
    return selected


# --- the rules ----------------------------------------------------------------------------


class _State:
    """The state map an event is checked against, read defensively: every event used is
    checked to be in the event's room and filed under its own (type, state_key)."""

    def __init__(self, room_version: RoomVersion, event: Event, state: Mapping[StateKey, Event]) -> None:
        self.room_version = room_version
        self.event = event
        self._state = state
        create = self.get(CREATE_KEY)
        if create is None:
            raise AuthError("no m.room.create event in the auth state")
        self.create = create
        self.power_levels = self.get(POWER_LEVELS_KEY)
        self.pl_content: Mapping[str, Any] = self.power_levels.content if self.power_levels else {}

    def get(self, key: StateKey) -> Event | None:
        found = self._state.get(key)
        if found is None:
            return None
        if found.room_id != self.event.room_id:
            raise AuthError(f"state event {found.event_id} belongs to room {found.room_id}, not {self.event.room_id}")
        if not found.is_state() or found.state_key_tuple != key:
            raise AuthError(f"state event {found.event_id} is filed under the wrong key {key}")
        return found

    def membership(self, user_id: str) -> str | None:
        member = self.get(("m.room.member", user_id))
        return member.membership if member is not None else None

    def level(self, user_id: str) -> int:
        return get_user_power_level(user_id, self.create, self.power_levels, self.room_version)

    def join_rule(self) -> object:
        """The join rule; a room without one (or with no ``join_rule``) is invite-only."""
        join_rules = self.get(JOIN_RULES_KEY)
        if join_rules is None:
            return "invite"
        return join_rules.content.get("join_rule", "invite")


def check_auth_rules(room_version: RoomVersion, event: Event, auth_events: Mapping[StateKey, Event]) -> None:
    """Raise :class:`AuthError` unless ``event`` is allowed given the state ``auth_events``.

    ``auth_events`` maps (type, state_key) to accepted events and must contain the room's
    create event (in v12, the event the room ID names).  It may be the event's own auth
    events, the state before the event or the current state: the rules are the same.
    """
    # 1. Create events are checked on their own.
    if event.type == "m.room.create":
        _check_create(room_version, event)
        return

    state = _State(room_version, event, auth_events)

    # 2. (v12) The room ID must name the (accepted) create event.
    if room_version.room_id_from_create_event:
        if event.room_id != room_id_for_create_event_id(state.create.event_id):
            raise AuthError(f"room ID {event.room_id} does not name create event {state.create.event_id}")

    # 4. Non-federating rooms refuse events from other servers.
    if not _federates(state) and _domain(event.sender) != _domain(state.create.sender):
        raise AuthError("room is not federated and the sender is on another server")

    # v3-v5 rule 4: aliases are scoped to the sender's server, whatever the power levels.
    if room_version.special_case_aliases_auth and event.type == "m.room.aliases":
        if not event.state_key:
            raise AuthError("m.room.aliases must have a server name as state key")
        if event.state_key != _domain(event.sender):
            raise AuthError("m.room.aliases state key does not match the sender's server")
        return

    # 5. Membership events have rules of their own.
    if event.type == "m.room.member":
        _check_membership(room_version, event, state)
        return

    # 6.
    if state.membership(event.sender) != "join":
        raise AuthError(f"{event.sender} is not joined to the room")

    sender_level = state.level(event.sender)

    # 7.
    if event.type == "m.room.third_party_invite":
        if sender_level < get_invite_level(state.pl_content):
            raise AuthError(f"{event.sender} does not have the invite level")
        return

    # 8.
    required = get_required_level_for_event(event.type, event.state_key, state.pl_content)
    if sender_level < required:
        raise AuthError(f"{event.type} needs power level {required}; {event.sender} has {sender_level}")

    # 9. State keys naming a user belong to that user.
    if event.state_key is not None and event.state_key.startswith("@") and event.state_key != event.sender:
        raise AuthError("state keys starting with @ may only be set by that user")

    # 10.
    if event.type == "m.room.power_levels":
        _check_power_levels(room_version, event, state, sender_level)

    # 11. Allowed.  (The redact level is not an auth rule: see "Handling redactions".)


def _federates(state: _State) -> bool:
    # Synapse treats any m.federate other than `true` as "do not federate", the fail-safe
    # reading of a malformed value; we agree with it so our views of state agree.
    return state.create.content.get("m.federate", True) is True


def _check_create(room_version: RoomVersion, event: Event) -> None:
    content = event.content
    # 1.1
    if event.prev_event_ids:
        raise AuthError("m.room.create must not have prev_events")
    # 1.2
    if room_version.room_id_from_create_event:
        if "room_id" in event.dict:
            raise AuthError("m.room.create must not have a room_id in this room version")
    elif _domain(event.room_id) != _domain(event.sender):
        raise AuthError("m.room.create room_id is not on the sender's server")
    # 1.3 (absent means "1", which is recognised)
    named_version = content.get("room_version", "1")
    if not isinstance(named_version, str) or named_version not in RECOGNISED_ROOM_VERSIONS:
        raise AuthError(f"m.room.create names an unknown room version {content['room_version']!r}")
    # v1-v10 rule 1.4
    if not room_version.implicit_room_creator and "creator" not in content:
        raise AuthError("m.room.create has no creator")
    # 1.4 (v12)
    if room_version.privileged_creators and "additional_creators" in content:
        additional = content["additional_creators"]
        if not isinstance(additional, list) or not all(_is_valid_user_id(u) for u in additional):
            raise AuthError("additional_creators must be a list of user IDs")


def _check_membership(room_version: RoomVersion, event: Event, state: _State) -> None:
    target = event.state_key
    membership = event.content.get("membership")
    # 5.1
    if target is None or "membership" not in event.content:
        raise AuthError("membership events need a state_key and content.membership")

    # 5.2 (v8+) The authorising server must have signed.  Here we check that a signature
    # is present; it is verified with the other signatures when the event is received.
    if room_version.restricted_join_rule and "join_authorised_via_users_server" in event.content:
        authoriser = event.content["join_authorised_via_users_server"]
        if not isinstance(authoriser, str) or ":" not in authoriser:
            raise AuthError("join_authorised_via_users_server is not a user ID")
        if _domain(authoriser) not in event.signatures:
            raise AuthError("the join is not signed by the authorising user's server")

    # 5.3.1 The creator's own join, straight after the create event.
    if membership == "join" and event.prev_event_ids == [state.create.event_id]:
        creator: object = (
            state.create.sender if room_version.implicit_room_creator else state.create.content.get("creator")
        )
        if target == creator:
            return

    # Beyond the spec's rule 4, and like Synapse: in a non-federated room no user of
    # another server may become a member, whoever sends the event.
    if not _federates(state) and _domain(target) != _domain(state.create.sender):
        raise AuthError("room is not federated and the target is on another server")

    sender_membership = state.membership(event.sender)
    target_membership = state.membership(target)
    sender = event.sender

    if membership == "join":
        # 5.3.2
        if sender != target:
            raise AuthError("cannot join on behalf of another user")
        # 5.3.3
        if sender_membership == "ban":
            raise AuthError(f"{sender} is banned from the room")
        join_rule = state.join_rule()
        # 5.3.4
        if join_rule == "invite" or (room_version.knock_join_rule and join_rule == "knock"):
            if sender_membership in ("invite", "join"):
                return
            raise AuthError(f"{sender} is not invited to this room")
        # 5.3.5
        if (room_version.restricted_join_rule and join_rule == "restricted") or (
            room_version.knock_restricted_join_rule and join_rule == "knock_restricted"
        ):
            if sender_membership in ("invite", "join"):
                return
            authoriser = event.content.get("join_authorised_via_users_server")
            if not isinstance(authoriser, str):
                raise AuthError("restricted join without join_authorised_via_users_server")
            if state.membership(authoriser) != "join":
                raise AuthError(f"authorising user {authoriser} is not joined to the room")
            if state.level(authoriser) < get_invite_level(state.pl_content):
                raise AuthError(f"authorising user {authoriser} cannot invite")
            return
        # 5.3.6
        if join_rule == "public":
            return
        # 5.3.7
        raise AuthError(f"cannot join a room whose join rule is {join_rule!r}")

    if membership == "invite":
        # 5.4.1
        if "third_party_invite" in event.content:
            if target_membership == "ban":
                raise AuthError(f"{target} is banned from the room")
            _check_third_party_invite(event, state)
            return
        # 5.4.2
        if sender_membership != "join":
            raise AuthError(f"{sender} is not joined to the room")
        # 5.4.3
        if target_membership in ("join", "ban"):
            raise AuthError(f"{target} is {target_membership} and cannot be invited")
        # 5.4.4, 5.4.5
        if state.level(sender) < get_invite_level(state.pl_content):
            raise AuthError(f"{sender} does not have the invite level")
        return

    if membership == "leave":
        # 5.5.1 Leaving, rejecting an invite, or (v7+) withdrawing a knock.
        if sender == target:
            allowed = {"invite", "join"} | ({"knock"} if room_version.knock_join_rule else set())
            if sender_membership in allowed:
                return
            raise AuthError(f"{sender} cannot leave from membership {sender_membership!r}")
        # 5.5.2
        if sender_membership != "join":
            raise AuthError(f"{sender} is not joined to the room")
        sender_level = state.level(sender)
        # 5.5.3 Unbanning needs the ban level (and, below, the kick level).
        if target_membership == "ban" and sender_level < get_ban_level(state.pl_content):
            raise AuthError(f"{sender} does not have the ban level needed to unban")
        # 5.5.4
        if sender_level >= get_kick_level(state.pl_content) and state.level(target) < sender_level:
            return
        # 5.5.5
        raise AuthError(f"{sender} may not kick {target}")

    if membership == "ban":
        # 5.6.1
        if sender_membership != "join":
            raise AuthError(f"{sender} is not joined to the room")
        sender_level = state.level(sender)
        # 5.6.2
        if sender_level >= get_ban_level(state.pl_content) and state.level(target) < sender_level:
            return
        # 5.6.3
        raise AuthError(f"{sender} may not ban {target}")

    if membership == "knock" and room_version.knock_join_rule:
        join_rule = state.join_rule()
        # 5.7.1
        if join_rule != "knock" and not (room_version.knock_restricted_join_rule and join_rule == "knock_restricted"):
            raise AuthError(f"cannot knock on a room whose join rule is {join_rule!r}")
        # 5.7.2
        if sender != target:
            raise AuthError("cannot knock on behalf of another user")
        # 5.7.3, 5.7.4
        if sender_membership not in ("ban", "invite", "join"):
            return
        raise AuthError(f"{sender} cannot knock from membership {sender_membership!r}")

    # 5.8
    raise AuthError(f"unknown membership {membership!r}")


def _check_third_party_invite(event: Event, state: _State) -> None:
    """Rules 5.4.1.2 to 5.4.1.8: the invite carries a signature by an identity server key
    that the matching m.room.third_party_invite (sent by the same user) vouches for."""
    invite = event.content["third_party_invite"]
    # 5.4.1.2
    signed = invite.get("signed") if isinstance(invite, Mapping) else None
    if not isinstance(signed, Mapping):
        raise AuthError("third_party_invite has no signed object")
    # 5.4.1.3
    mxid, token = signed.get("mxid"), signed.get("token")
    if not isinstance(mxid, str) or not isinstance(token, str):
        raise AuthError("third_party_invite.signed needs mxid and token")
    # 5.4.1.4
    if mxid != event.state_key:
        raise AuthError("third_party_invite is for another user")
    # 5.4.1.5
    tpi = state.get(("m.room.third_party_invite", token))
    if tpi is None:
        raise AuthError("no m.room.third_party_invite matches the token")
    # 5.4.1.6
    if tpi.sender != event.sender:
        raise AuthError("the third-party invite was sent by someone else")
    # 5.4.1.7
    signatures = signed.get("signatures")
    if isinstance(signatures, Mapping):
        for public_key in _third_party_public_keys(tpi.content):
            for server_name, server_sigs in signatures.items():
                if not isinstance(server_sigs, Mapping):
                    continue
                for key_name in server_sigs:
                    if not isinstance(key_name, str) or not key_name.startswith("ed25519:"):
                        continue
                    try:
                        verify_key = decode_verify_key_bytes(key_name, decode_base64(public_key))
                        verify_json(signed, server_name, verify_key)
                    except (SignatureError, ValueError, TypeError):
                        continue
                    except Exception:  # nacl rejects malformed keys with its own errors
                        continue
                    return
    # 5.4.1.8
    raise AuthError("no valid signature on the third-party invite")


def _third_party_public_keys(content: Mapping[str, Any]) -> list[str]:
    keys: list[str] = []
    if isinstance(content.get("public_key"), str):
        keys.append(content["public_key"])
    public_keys = content.get("public_keys")
    if isinstance(public_keys, list):
        for entry in public_keys:
            if isinstance(entry, Mapping) and isinstance(entry.get("public_key"), str):
                keys.append(entry["public_key"])
    return keys


def _check_power_levels(room_version: RoomVersion, event: Event, state: _State, sender_level: int) -> None:
    content = event.content
    # Not a spec rule: a power levels event that is not a state event means nothing, and
    # Synapse fails on one, so refusing it keeps our view of the room the same as its.
    if event.state_key is None:
        raise AuthError("m.room.power_levels must be a state event")
    # 10.1 (v10+ integers only; before, strings of digits too; v1-v5 floats as well).
    # Before v10 the spec only validates `users`; an unreadable level would make every
    # later check meaningless, so we refuse it in every version.
    for name in _POWER_LEVEL_NAMES:
        if name in content and not is_valid_power_level(content[name], room_version):
            raise AuthError(f"power level {name!r} is not an integer")
    # 10.2
    for name in ("events", "notifications"):
        if name in content:
            _check_level_map(room_version, content[name], name)
    # 10.3
    users = content.get("users", {})
    _check_level_map(room_version, users, "users")
    if not all(_is_valid_user_id(user_id) for user_id in users):
        raise AuthError("power levels `users` has a key that is not a user ID")
    # 10.4 (v12) Creators' power is not the power levels' to give or take.
    if room_version.privileged_creators:
        creators = get_creators(state.create, room_version)
        if any(user_id in creators for user_id in users):
            raise AuthError("room creators may not be listed in power levels `users`")

    # 10.5 "Previous" is read as "with the same state key", as Synapse does: a power
    # levels event with a non-empty state key grants nothing, so its content is only
    # checked for validity above.
    old = state.get(event.state_key_tuple)
    if old is None:
        return
    old_content = old.content

    # 10.6
    for name in _POWER_LEVEL_NAMES:
        _check_level_change(old_content, content, name, sender_level, peer_entry=False)

    # 10.7, 10.8 (v3-v5 did not check `notifications`).
    sub_maps = ["events"]
    if room_version.limit_notifications_power_levels:
        sub_maps.append("notifications")
    for name in sub_maps:
        old_map, new_map = _as_map(old_content.get(name)), _as_map(content.get(name))
        for key in set(old_map) | set(new_map):
            _check_level_change(old_map, new_map, key, sender_level, peer_entry=False)

    # 10.9, 10.10
    old_users, new_users = _as_map(old_content.get("users")), _as_map(users)
    for user_id in set(old_users) | set(new_users):
        _check_level_change(old_users, new_users, user_id, sender_level, peer_entry=user_id != event.sender)


def _as_map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _check_level_map(room_version: RoomVersion, value: object, name: str) -> None:
    if not isinstance(value, Mapping):
        raise AuthError(f"power levels {name!r} is not an object")
    for key, level in value.items():
        if not is_valid_power_level(level, room_version):
            raise AuthError(f"power levels {name}[{key!r}] is not an integer")


def _check_level_change(
    old_map: Mapping[str, Any],
    new_map: Mapping[str, Any],
    key: str,
    sender_level: int,
    *,
    peer_entry: bool,
) -> None:
    """Refuse an addition, change or removal of ``key`` the sender has no power to make.

    A *peer entry* (a ``users`` entry other than the sender's own) may not be touched
    when its current value is equal to the sender's level either: you cannot demote
    your peers.  Unchanged values (compared as levels, so "50" == 50) are fine.
    """
    old = parse_power_level(old_map[key]) if key in old_map else None
    new = parse_power_level(new_map[key]) if key in new_map else None
    if key in old_map and key in new_map and old == new:
        return
    if old is not None and (old > sender_level or (peer_entry and old == sender_level)):
        raise AuthError(f"cannot change {key!r} from {old}: not below the sender's level {sender_level}")
    if new is not None and new > sender_level:
        raise AuthError(f"cannot set {key!r} to {new}: above the sender's level {sender_level}")
