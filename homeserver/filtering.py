"""Filters (spec "Filtering", the ``Filter``/``RoomEventFilter``/``EventFilter`` schemas).

:func:`parse_filter` checks a filter's JSON and returns an immutable :class:`Filter`;
:func:`parse_room_event_filter` does the same for the bare ``RoomEventFilter`` taken by
``/messages`` and ``/context``.  Errors name the field path (``room.timeline.limit``):
``M_BAD_JSON`` for a value of the wrong type, ``M_INVALID_PARAM`` for a wrong value.

Semantics, as in the spec (and Synapse):

* a positive list (``types``, ``senders``, ``rooms``) that is absent lets everything
  through, an empty one lets nothing through; a negative list (``not_*``) wins over the
  positive one;
* ``types`` and ``not_types`` entries may use ``*`` for any run of characters;
* ``contains_url`` keeps only events with (true) or without (false) a string
  ``content.url``;
* ``limit`` defaults to :data:`DEFAULT_LIMIT` and is capped at :data:`MAX_LIMIT` (the
  requested value is kept for :meth:`Filter.to_json`).  ``0`` is accepted, as Synapse
  does, although the spec asks for a positive number;
* lazy-loading is read from ``room.state`` (where clients put it for ``/sync``).

Filters keep which keys the client sent and any keys this server does not know, so that
``to_json()`` gives back the uploaded filter (clients compare it with their own copy).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, TypeVar

from homeserver.core.errors import Codes, MatrixError
from homeserver.push.paths import split_dotted_path

DEFAULT_LIMIT = 10
MAX_LIMIT = 1000
EVENT_FORMATS = ("client", "federation")

_E = TypeVar("_E", bound=Mapping[str, Any])


# -- matching helpers ----------------------------------------------------------------


@lru_cache(maxsize=1024)
def _wildcard_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def type_matches(pattern: str, event_type: object) -> bool:
    """Whether ``event_type`` matches a ``types`` entry (``*`` is a wildcard, case-sensitive)."""
    if not isinstance(event_type, str):
        return False
    if "*" not in pattern:
        return pattern == event_type
    return _wildcard_regex(pattern).fullmatch(event_type) is not None


def _event_sender(event: Mapping[str, Any]) -> object:
    sender = event.get("sender")
    if sender is None:
        # Legacy presence events carried the user in content.user_id.
        content = event.get("content")
        if isinstance(content, Mapping):
            sender = content.get("user_id")
    return sender


# -- the filter objects --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventFilter:
    """``EventFilter``: used for ``presence`` and the global ``account_data``."""

    requested_limit: int | None = None
    types: tuple[str, ...] | None = None
    not_types: tuple[str, ...] = ()
    senders: tuple[str, ...] | None = None
    not_senders: tuple[str, ...] = ()
    # The keys the client sent, and the ones this server does not know: for to_json().
    explicit: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def limit(self) -> int:
        """The number of events to return: the requested one, capped, or the default."""
        return self.limit_or(DEFAULT_LIMIT)

    def limit_or(self, default: int) -> int:
        """The requested limit capped at :data:`MAX_LIMIT`, or ``default`` if none was given."""
        if self.requested_limit is None:
            return default
        return min(self.requested_limit, MAX_LIMIT)

    def matches(self, event: Mapping[str, Any], *, room_id: str | None = None) -> bool:
        """Whether ``event`` (a client-format event or account-data/ephemeral object) passes.

        ``room_id`` is ignored here; see :meth:`RoomEventFilter.matches`.
        """
        sender = _event_sender(event)
        if sender in self.not_senders:
            return False
        if self.senders is not None and sender not in self.senders:
            return False
        event_type = event.get("type")
        if any(type_matches(pattern, event_type) for pattern in self.not_types):
            return False
        if self.types is not None and not any(type_matches(pattern, event_type) for pattern in self.types):
            return False
        return True

    def filter_events(self, events: Iterable[_E], *, room_id: str | None = None) -> list[_E]:
        """The events that pass, in order (the limit is not applied)."""
        return [event for event in events if self.matches(event, room_id=room_id)]

    def blocks_all(self) -> bool:
        """True if no event can pass, so the caller may skip the work entirely."""
        return self.types == () or self.senders == () or "*" in self.not_types

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = dict(self.extra)
        if self.requested_limit is not None:
            body["limit"] = self.requested_limit
        for key in ("types", "senders"):
            value = getattr(self, key)
            if value is not None:
                body[key] = list(value)
        for key in ("not_types", "not_senders"):
            value = getattr(self, key)
            if value or key in self.explicit:
                body[key] = list(value)
        return body


@dataclass(frozen=True, slots=True)
class RoomEventFilter(EventFilter):
    """``RoomEventFilter``: the ``timeline``, ``state``, ``ephemeral`` and room ``account_data``."""

    rooms: tuple[str, ...] | None = None
    not_rooms: tuple[str, ...] = ()
    contains_url: bool | None = None
    lazy_load_members: bool = False
    include_redundant_members: bool = False
    unread_thread_notifications: bool = False

    def room_included(self, room_id: str) -> bool:
        """Whether this filter's ``rooms``/``not_rooms`` let ``room_id`` through."""
        if room_id in self.not_rooms:
            return False
        return self.rooms is None or room_id in self.rooms

    def matches(self, event: Mapping[str, Any], *, room_id: str | None = None) -> bool:
        """Whether ``event`` passes; ``room_id`` stands in for events without a ``room_id``
        (events in ``/sync`` format, ephemeral events)."""
        room = room_id if room_id is not None else event.get("room_id")
        if room in self.not_rooms:
            return False
        if self.rooms is not None and room not in self.rooms:
            return False
        if self.contains_url is not None:
            content = event.get("content")
            has_url = isinstance(content, Mapping) and isinstance(content.get("url"), str)
            if has_url != self.contains_url:
                return False
        return EventFilter.matches(self, event)

    def blocks_all(self) -> bool:
        return EventFilter.blocks_all(self) or self.rooms == ()

    def to_json(self) -> dict[str, Any]:
        body = EventFilter.to_json(self)
        if self.rooms is not None:
            body["rooms"] = list(self.rooms)
        if self.not_rooms or "not_rooms" in self.explicit:
            body["not_rooms"] = list(self.not_rooms)
        if self.contains_url is not None:
            body["contains_url"] = self.contains_url
        for key in ("lazy_load_members", "include_redundant_members", "unread_thread_notifications"):
            if getattr(self, key) or key in self.explicit:
                body[key] = getattr(self, key)
        return body


@dataclass(frozen=True, slots=True)
class RoomFilter:
    """``RoomFilter``: which rooms, and a filter per section of each room."""

    rooms: tuple[str, ...] | None = None
    not_rooms: tuple[str, ...] = ()
    include_leave: bool = False
    timeline: RoomEventFilter = RoomEventFilter()
    state: RoomEventFilter = RoomEventFilter()
    ephemeral: RoomEventFilter = RoomEventFilter()
    account_data: RoomEventFilter = RoomEventFilter()
    explicit: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def room_included(self, room_id: str) -> bool:
        """Whether ``room_id`` passes ``rooms``/``not_rooms`` (applied before the sections)."""
        if room_id in self.not_rooms:
            return False
        return self.rooms is None or room_id in self.rooms

    def blocks_all_rooms(self) -> bool:
        return self.rooms == ()

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = dict(self.extra)
        if self.rooms is not None:
            body["rooms"] = list(self.rooms)
        if self.not_rooms or "not_rooms" in self.explicit:
            body["not_rooms"] = list(self.not_rooms)
        if self.include_leave or "include_leave" in self.explicit:
            body["include_leave"] = self.include_leave
        for key in ("timeline", "state", "ephemeral", "account_data"):
            section = getattr(self, key).to_json()
            if section or key in self.explicit:
                body[key] = section
        return body


@dataclass(frozen=True, slots=True)
class Filter:
    """A whole filter, as uploaded to ``POST /user/{userId}/filter`` or given to ``/sync``."""

    event_fields: tuple[str, ...] | None = None
    event_format: str = "client"
    presence: EventFilter = EventFilter()
    account_data: EventFilter = EventFilter()
    room: RoomFilter = RoomFilter()
    explicit: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def include_leave(self) -> bool:
        return self.room.include_leave

    @property
    def lazy_load_members(self) -> bool:
        """Lazy-loading for ``/sync``, read from ``room.state`` (as Synapse and clients do)."""
        return self.room.state.lazy_load_members

    @property
    def include_redundant_members(self) -> bool:
        return self.room.state.include_redundant_members

    @property
    def unread_thread_notifications(self) -> bool:
        return self.room.timeline.unread_thread_notifications

    def room_included(self, room_id: str) -> bool:
        return self.room.room_included(room_id)

    def project(self, event: Mapping[str, Any]) -> Mapping[str, Any]:
        """Keep only ``event_fields`` (the event itself when absent or empty).

        Paths are dot-separated with ``\\.`` escapes; absent ones are skipped; a path to
        an object keeps the whole object.  The result shares sub-objects with ``event``,
        so serialise it rather than mutate it.
        """
        if not self.event_fields:
            # An empty list keeps everything too, as in Synapse: an event with no
            # fields at all is of no use to anyone.
            return event
        return _project(event, _field_tree(self.event_fields))

    def to_json(self) -> dict[str, Any]:
        """The filter as uploaded (for ``GET /user/{userId}/filter/{filterId}``)."""
        body: dict[str, Any] = dict(self.extra)
        if self.event_fields is not None:
            body["event_fields"] = list(self.event_fields)
        if self.event_format != "client" or "event_format" in self.explicit:
            body["event_format"] = self.event_format
        for key in ("presence", "account_data", "room"):
            section = getattr(self, key).to_json()
            if section or key in self.explicit:
                body[key] = section
        return body


DEFAULT_FILTER = Filter()

# A tree of requested paths: a leaf (None) keeps the whole value.
_FieldTree = dict[str, "_FieldTree | None"]


@lru_cache(maxsize=256)
def _field_tree(paths: tuple[str, ...]) -> _FieldTree:
    tree: _FieldTree = {}
    for path in paths:
        node: _FieldTree | None = tree
        parts = split_dotted_path(path)
        for index, part in enumerate(parts):
            assert node is not None
            if index == len(parts) - 1:
                node[part] = None
                break
            child = node.get(part, {})
            if child is None:
                break  # a shorter path already keeps the whole value
            node[part] = child
            node = child
    return tree


def _project(value: Mapping[str, Any], tree: _FieldTree) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, subtree in tree.items():
        if name not in value:
            continue
        item = value[name]
        if subtree is None:
            out[name] = item
        elif isinstance(item, Mapping):
            projected = _project(item, subtree)
            if projected:
                out[name] = projected
    return out


# -- parsing -------------------------------------------------------------------------


def _bad_json(path: str, expected: str) -> MatrixError:
    return MatrixError(400, Codes.BAD_JSON, f"{path} must be {expected}")


def _invalid(path: str, problem: str) -> MatrixError:
    return MatrixError(400, Codes.INVALID_PARAM, f"{path} {problem}")


class _Reader:
    """Reads one JSON object of a filter, remembering which keys it consumed."""

    def __init__(self, value: object, path: str) -> None:
        if not isinstance(value, Mapping):
            raise _bad_json(path or "filter", "an object")
        self.data: Mapping[str, Any] = value
        self.path = path
        self.known: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str) -> Any:
        """The value, or None if absent or null (null is treated as absent)."""
        self.known.add(key)
        return self.data.get(key)

    def bool(self, key: str) -> bool | None:
        value = self.get(key)
        if value is not None and not isinstance(value, bool):
            raise _bad_json(self.name(key), "a boolean")
        return value

    def str_list(self, key: str, sigil: str | None = None, what: str = "") -> tuple[str, ...] | None:
        value = self.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise _bad_json(self.name(key), "a list of strings")
        if sigil is not None:
            for index, item in enumerate(value):
                if not item.startswith(sigil) or len(item) < 2:
                    raise _invalid(f"{self.name(key)}[{index}]", f"must be a {what} starting with {sigil!r}")
        return tuple(value)

    def limit(self) -> int | None:
        value = self.get("limit")
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad_json(self.name("limit"), "an integer")
        if value < 0:
            raise _invalid(self.name("limit"), "must not be negative")
        return value

    def explicit(self) -> frozenset[str]:
        return frozenset(key for key in self.known if self.data.get(key) is not None)

    def extra(self) -> dict[str, Any]:
        return {key: value for key, value in self.data.items() if key not in self.known}


def _event_filter_fields(reader: _Reader) -> dict[str, Any]:
    return {
        "requested_limit": reader.limit(),
        "types": reader.str_list("types"),
        "not_types": reader.str_list("not_types") or (),
        "senders": reader.str_list("senders", "@", "user ID"),
        "not_senders": reader.str_list("not_senders", "@", "user ID") or (),
    }


def _parse_event_filter(value: object, path: str) -> EventFilter:
    if value is None:
        return EventFilter()
    reader = _Reader(value, path)
    fields = _event_filter_fields(reader)
    return EventFilter(**fields, explicit=reader.explicit(), extra=reader.extra())


def _parse_room_event_filter(value: object, path: str) -> RoomEventFilter:
    if value is None:
        return RoomEventFilter()
    reader = _Reader(value, path)
    fields = _event_filter_fields(reader)
    return RoomEventFilter(
        **fields,
        rooms=reader.str_list("rooms", "!", "room ID"),
        not_rooms=reader.str_list("not_rooms", "!", "room ID") or (),
        contains_url=reader.bool("contains_url"),
        lazy_load_members=bool(reader.bool("lazy_load_members")),
        include_redundant_members=bool(reader.bool("include_redundant_members")),
        unread_thread_notifications=bool(reader.bool("unread_thread_notifications")),
        explicit=reader.explicit(),
        extra=reader.extra(),
    )


def _parse_room_filter(value: object, path: str) -> RoomFilter:
    if value is None:
        return RoomFilter()
    reader = _Reader(value, path)
    return RoomFilter(
        rooms=reader.str_list("rooms", "!", "room ID"),
        not_rooms=reader.str_list("not_rooms", "!", "room ID") or (),
        include_leave=bool(reader.bool("include_leave")),
        timeline=_parse_room_event_filter(reader.get("timeline"), reader.name("timeline")),
        state=_parse_room_event_filter(reader.get("state"), reader.name("state")),
        ephemeral=_parse_room_event_filter(reader.get("ephemeral"), reader.name("ephemeral")),
        account_data=_parse_room_event_filter(reader.get("account_data"), reader.name("account_data")),
        explicit=reader.explicit(),
        extra=reader.extra(),
    )


def parse_filter(value: object) -> Filter:
    """Check a filter's JSON (already decoded) and build the :class:`Filter`.

    Raises :class:`MatrixError` 400 naming the offending field, e.g.
    ``room.timeline.limit must be an integer``.
    """
    reader = _Reader(value, "")
    event_format = reader.get("event_format")
    if event_format is None:
        event_format = "client"
    elif not isinstance(event_format, str):
        raise _bad_json("event_format", "a string")
    elif event_format not in EVENT_FORMATS:
        raise _invalid("event_format", "must be 'client' or 'federation'")
    return Filter(
        event_fields=reader.str_list("event_fields"),
        event_format=event_format,
        presence=_parse_event_filter(reader.get("presence"), "presence"),
        account_data=_parse_event_filter(reader.get("account_data"), "account_data"),
        room=_parse_room_filter(reader.get("room"), "room"),
        explicit=reader.explicit(),
        extra=reader.extra(),
    )


def parse_room_event_filter(value: object, path: str = "filter") -> RoomEventFilter:
    """Check a bare ``RoomEventFilter`` (the ``filter`` parameter of ``/messages``, ``/context``).

    ``path`` prefixes field names in errors.  ``None`` gives the empty filter.
    """
    if value is None:
        return RoomEventFilter()
    return _parse_room_event_filter(value, path)
