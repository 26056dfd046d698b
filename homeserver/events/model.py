"""The event model: a typed, read-only view over the event dict as received.

The dict given to :class:`Event` is kept as-is and is what hashes and signatures are
computed over; the model never re-serialises itself.  Construction checks the types of
the fields the properties expose (so a property never lies about its type) but not the
size limits or identifier grammar: see :func:`homeserver.events.format.check_event_format`.
"""

from __future__ import annotations

import builtins
import copy
import sys
from collections.abc import Mapping
from typing import Any

from unpaddedbase64 import encode_base64

from homeserver.core.errors import Codes, MatrixError
from homeserver.events.hashing import compute_reference_hash
from homeserver.events.room_versions import EventFormat, RoomVersion


class EventFormatError(MatrixError):
    """An event dict that does not have the shape of an event (400 M_BAD_JSON)."""

    def __init__(self, msg: str) -> None:
        super().__init__(400, Codes.BAD_JSON, msg)


def make_event_id(room_version: RoomVersion, event_dict: Mapping[str, Any]) -> str:
    """The event ID of ``event_dict``: "$" + base64 of its reference hash (v3+).

    v3 uses standard base64 and v4+ the URL-safe alphabet.  v1/v2 event IDs are chosen
    by the sender and carried in the event, so this returns the dict's ``event_id``.
    """
    if room_version.event_format == EventFormat.V1:
        event_id = event_dict.get("event_id")
        if not isinstance(event_id, str):
            raise EventFormatError("event has no event_id")
        return event_id
    digest = compute_reference_hash(room_version, event_dict)
    encoded = encode_base64(digest, urlsafe=room_version.event_format >= EventFormat.V4)
    return "$" + encoded


def room_id_for_create_event_id(event_id: str) -> str:
    """The v12 room ID of the room created by the event ``event_id``."""
    return "!" + event_id[1:]


# Top-level values many events repeat: one string object is kept for all of them.
_SHARED_VALUES = frozenset(("room_id", "sender", "type", "origin", "state_key"))
_SHARED_LISTS = frozenset(("auth_events", "prev_events"))


def share_strings(event_dict: dict[str, Any], _depth: int = 0) -> dict[str, Any]:
    """The same event dict, with the strings events repeat shared between events.

    ``json.loads`` makes new string objects for every key and value of every event it
    parses, so each cached event carries its own copies of "auth_events", its room ID, its
    sender, the IDs it cites...  Interning them (keys at the top three levels, the room,
    sender, type, origin and state key, the cited event IDs) takes about 40% off the memory
    of an event read from the database (4.0 KB -> 2.4 KB for a short message), for about
    12 us per event.  The result is equal to the input; only object identity changes.
    """
    intern = sys.intern
    out: dict[str, Any] = {}
    for key, value in event_dict.items():
        kind = type(value)
        if kind is str:
            if _depth == 0 and key in _SHARED_VALUES:
                value = intern(value)
        elif kind is dict:
            if _depth < 2:
                value = share_strings(value, _depth + 1)
        elif kind is list and _depth == 0 and key in _SHARED_LISTS:
            value = [intern(v) if type(v) is str else v for v in value]
        out[intern(key) if type(key) is str else key] = value
    return out


def _require(event_dict: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = event_dict.get(key)
    # bool is an int in Python but never a valid depth or timestamp.
    if not isinstance(value, kind) or isinstance(value, bool):
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise EventFormatError(f"event field {key!r} must be of type {name}")
    return value


def _require_id_list(event_dict: Mapping[str, Any], key: str) -> list[str]:
    value = event_dict.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise EventFormatError(f"event field {key!r} must be a list of event IDs")
    return value


def _is_create_event(event_dict: Mapping[str, Any]) -> bool:
    # Only the state event (m.room.create, "") creates a room; Synapse agrees.
    return event_dict.get("type") == "m.room.create" and event_dict.get("state_key") == ""


class Event:
    """An immutable typed view over an event dict of a given room version.

    Do not mutate ``event.dict`` or the mappings the properties return: they are the
    original data the event's hashes, signatures and ID were computed from.
    """

    __slots__ = (
        "_dict",
        "room_version",
        "_event_id",
        "_room_id",
        "_prev_event_ids",
        "_auth_event_ids",
    )

    def __init__(
        self,
        event_dict: dict[str, Any],
        room_version: RoomVersion,
        event_id: str | None = None,
    ) -> None:
        if not isinstance(event_dict, dict):
            raise EventFormatError("event must be a JSON object")
        self._dict = event_dict
        self.room_version = room_version

        _require(event_dict, "type", str)
        _require(event_dict, "sender", str)
        _require(event_dict, "content", dict)
        _require(event_dict, "origin_server_ts", int)
        _require(event_dict, "depth", int)
        if "state_key" in event_dict:
            _require(event_dict, "state_key", str)
        for key in ("hashes", "signatures", "unsigned"):
            if key in event_dict:
                _require(event_dict, key, dict)
        self._prev_event_ids = _require_id_list(event_dict, "prev_events")
        self._auth_event_ids = _require_id_list(event_dict, "auth_events")

        self._event_id = event_id if event_id is not None else make_event_id(room_version, event_dict)

        if room_version.room_id_from_create_event and _is_create_event(event_dict):
            # The create event names no room: the room is named after it.  A room_id on
            # it is an auth failure (rule 1.2), reported there, not a format error.
            self._room_id = room_id_for_create_event_id(self._event_id)
        else:
            self._room_id = _require(event_dict, "room_id", str)

    # Identity: events are equal when their IDs are, so they can key dicts and sets.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and other._event_id == self._event_id

    def __hash__(self) -> int:
        return hash(self._event_id)

    def __repr__(self) -> str:
        state = f", state_key={self.state_key!r}" if self.is_state() else ""
        return f"<Event {self._event_id} type={self.type!r}{state} sender={self.sender!r}>"

    @property
    def dict(self) -> dict[str, Any]:
        """The original event dict (do not mutate)."""
        return self._dict

    @property
    def event_id(self) -> str:
        return self._event_id

    @property
    def room_id(self) -> str:
        return self._room_id

    @property
    def type(self) -> str:
        value: str = self._dict["type"]
        return value

    @property
    def state_key(self) -> str | None:
        value: str | None = self._dict.get("state_key")
        return value

    @property
    def sender(self) -> str:
        value: str = self._dict["sender"]
        return value

    @property
    def origin_server_ts(self) -> int:
        value: int = self._dict["origin_server_ts"]
        return value

    @property
    def depth(self) -> int:
        value: int = self._dict["depth"]
        return value

    @property
    def content(self) -> Mapping[str, Any]:
        value: Mapping[str, Any] = self._dict["content"]
        return value

    @property
    def prev_event_ids(self) -> list[str]:
        return self._prev_event_ids

    @property
    def auth_event_ids(self) -> list[str]:
        return self._auth_event_ids

    @property
    def hashes(self) -> Mapping[str, Any]:
        value: Mapping[str, Any] = self._dict.get("hashes", {})
        return value

    @property
    def signatures(self) -> Mapping[str, Any]:
        value: Mapping[str, Any] = self._dict.get("signatures", {})
        return value

    @property
    def unsigned(self) -> Mapping[str, Any]:
        value: Mapping[str, Any] = self._dict.get("unsigned", {})
        return value

    @property
    def redacts(self) -> str | None:
        """The event a redaction redacts: ``content.redacts`` from v11, top-level before.

        None for other event types and for malformed values.
        """
        if self.type != "m.room.redaction":
            return None
        source = self.content if self.room_version.updated_redaction_rules else self._dict
        value = source.get("redacts")
        return value if isinstance(value, str) else None

    @property
    def membership(self) -> str | None:
        """``content.membership`` of m.room.member events, if it is a string."""
        if self.type != "m.room.member":
            return None
        value = self.content.get("membership")
        return value if isinstance(value, str) else None

    def is_state(self) -> bool:
        return "state_key" in self._dict

    @property
    def state_key_tuple(self) -> tuple[str, str]:
        """``(type, state_key)``; raises ValueError for non-state events."""
        state_key = self.state_key
        if state_key is None:
            raise ValueError(f"{self._event_id} is not a state event")
        return (self.type, state_key)

    def get_pdu_json(self) -> builtins.dict[str, Any]:
        """A deep copy of the event as sent over federation."""
        return copy.deepcopy(self._dict)
