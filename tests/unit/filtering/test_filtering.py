"""Filters: parsing and validation, matching, event_fields projection, round trips."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from homeserver.core.errors import MatrixError
from homeserver.filtering import (
    DEFAULT_FILTER,
    DEFAULT_LIMIT,
    MAX_LIMIT,
    EventFilter,
    Filter,
    RoomEventFilter,
    parse_filter,
    parse_room_event_filter,
    type_matches,
)

SPEC_EXAMPLE: dict[str, Any] = {
    "room": {
        "state": {"types": ["m.room.*"], "not_rooms": ["!726s6s6q:example.com"]},
        "timeline": {
            "limit": 10,
            "types": ["m.room.message"],
            "not_rooms": ["!726s6s6q:example.com"],
            "not_senders": ["@spam:example.com"],
        },
        "ephemeral": {
            "types": ["m.receipt", "m.typing"],
            "not_rooms": ["!726s6s6q:example.com"],
            "not_senders": ["@spam:example.com"],
        },
    },
    "presence": {"types": ["m.presence"], "not_senders": ["@alice:example.com"]},
    "event_format": "client",
    "event_fields": ["type", "content", "sender"],
}

ROOM = "!room:example.com"
SPAM_ROOM = "!726s6s6q:example.com"


def ev(event_type: str = "m.room.message", sender: str = "@bob:example.com", **extra: Any) -> dict[str, Any]:
    return {"type": event_type, "sender": sender, "room_id": ROOM, "content": {"body": "hi"}, **extra}


def error(value: Any) -> MatrixError:
    with pytest.raises(MatrixError) as info:
        parse_filter(value)
    assert info.value.code == 400
    return info.value


# -- the spec example ------------------------------------------------------------------


def test_spec_example_parses_and_round_trips() -> None:
    f = parse_filter(copy.deepcopy(SPEC_EXAMPLE))
    assert f.to_json() == SPEC_EXAMPLE
    assert parse_filter(f.to_json()) == f
    assert f.event_format == "client"
    assert f.event_fields == ("type", "content", "sender")
    timeline = f.room.timeline
    assert timeline.limit == 10
    assert timeline.matches(ev())
    assert not timeline.matches(ev("m.room.member"))
    assert not timeline.matches(ev(sender="@spam:example.com"))
    assert not timeline.matches(ev(room_id=SPAM_ROOM))
    assert f.room.state.matches(ev("m.room.topic"))
    assert not f.room.state.matches(ev("org.example.state"))
    assert f.room.ephemeral.matches({"type": "m.typing", "content": {"user_ids": []}}, room_id=ROOM)
    assert not f.room.ephemeral.matches({"type": "m.typing", "content": {}}, room_id=SPAM_ROOM)
    assert f.presence.matches({"type": "m.presence", "sender": "@bob:example.com", "content": {}})
    assert not f.presence.matches({"type": "m.presence", "sender": "@alice:example.com", "content": {}})
    assert f.project(ev(unsigned={"age": 1})) == {
        "type": "m.room.message",
        "sender": "@bob:example.com",
        "content": {"body": "hi"},
    }


# -- defaults ------------------------------------------------------------------------


def test_default_filter() -> None:
    assert parse_filter({}) == DEFAULT_FILTER == Filter()
    assert DEFAULT_FILTER.to_json() == {}
    assert DEFAULT_FILTER.room.timeline.limit == DEFAULT_LIMIT == 10
    assert DEFAULT_FILTER.room.timeline.limit_or(20) == 20
    assert DEFAULT_FILTER.event_format == "client"
    assert not DEFAULT_FILTER.include_leave
    assert not DEFAULT_FILTER.lazy_load_members
    assert not DEFAULT_FILTER.include_redundant_members
    assert not DEFAULT_FILTER.unread_thread_notifications
    assert DEFAULT_FILTER.room_included(ROOM)
    event = ev()
    assert DEFAULT_FILTER.project(event) is event
    for section in (DEFAULT_FILTER.room.timeline, DEFAULT_FILTER.presence, DEFAULT_FILTER.room.account_data):
        assert section.matches(event) and not section.blocks_all()
    assert not DEFAULT_FILTER.room.blocks_all_rooms()


# -- every field -----------------------------------------------------------------------


def test_every_field() -> None:
    body = {
        "event_fields": ["content.body"],
        "event_format": "federation",
        "presence": {
            "limit": 3,
            "senders": ["@a:x"],
            "not_senders": ["@b:x"],
            "types": ["m.presence"],
            "not_types": [],
        },
        "account_data": {"types": ["m.*"], "not_types": ["m.push_rules"]},
        "room": {
            "rooms": ["!a:x", "!b:x"],
            "not_rooms": ["!b:x"],
            "include_leave": True,
            "timeline": {
                "limit": 50,
                "rooms": ["!a:x"],
                "not_rooms": [],
                "senders": ["@a:x"],
                "contains_url": False,
                "unread_thread_notifications": True,
            },
            "state": {"lazy_load_members": True, "include_redundant_members": True},
            "ephemeral": {"not_types": ["m.receipt"]},
            "account_data": {"types": ["m.tag"], "contains_url": True},
        },
    }
    f = parse_filter(copy.deepcopy(body))
    assert f.to_json() == body
    assert f.event_format == "federation"
    assert f.presence.limit == 3
    assert f.include_leave and f.lazy_load_members and f.include_redundant_members and f.unread_thread_notifications
    assert f.room_included("!a:x") and not f.room_included("!b:x") and not f.room_included("!c:x")
    assert f.account_data.matches({"type": "m.direct", "content": {}})
    assert not f.account_data.matches({"type": "m.push_rules", "content": {}})
    assert not f.account_data.matches({"type": "im.vector.setting", "content": {}})
    timeline = f.room.timeline
    assert timeline.room_included("!a:x") and not timeline.room_included("!b:x")
    assert timeline.matches(ev(sender="@a:x", room_id="!a:x"))
    assert not timeline.matches(ev(sender="@c:x", room_id="!a:x"))
    assert not timeline.matches({**ev(sender="@a:x", room_id="!a:x"), "content": {"url": "mxc://x/y"}})
    assert f.room.account_data.matches({"type": "m.tag", "content": {"url": "mxc://x/y"}}, room_id="!a:x")
    assert not f.room.account_data.matches({"type": "m.tag", "content": {"url": 5}}, room_id="!a:x")
    assert f.project(ev()) == {"content": {"body": "hi"}}


def test_false_and_empty_values_survive_the_round_trip() -> None:
    body = {
        "event_format": "client",
        "presence": {},
        "room": {"include_leave": False, "timeline": {"lazy_load_members": False, "not_types": [], "types": []}},
    }
    f = parse_filter(copy.deepcopy(body))
    assert f.to_json() == body
    assert f == parse_filter({"room": {"timeline": {"types": []}}})


def test_unknown_keys_are_kept() -> None:
    body = {
        "org.example.top": {"x": [1]},
        "room": {
            "org.example.room": 1,
            "timeline": {"org.matrix.labels": ["#fun"], "org.matrix.msc3773.unread_thread_notifications": True},
        },
        "presence": {"future": None},
    }
    assert parse_filter(copy.deepcopy(body)).to_json() == body


def test_null_is_treated_as_absent() -> None:
    f = parse_filter({"room": {"timeline": {"limit": None, "types": None}}, "event_format": None})
    assert f == DEFAULT_FILTER
    assert f.to_json() == {"room": {"timeline": {}}}


def test_limits() -> None:
    def timeline_limit(value: Any) -> int:
        return parse_filter({"room": {"timeline": {"limit": value}}}).room.timeline.limit

    assert timeline_limit(1) == 1
    assert timeline_limit(0) == 0  # Synapse accepts 0, some bots use it
    assert timeline_limit(20.0) == 20
    assert timeline_limit(MAX_LIMIT + 1) == MAX_LIMIT
    assert timeline_limit(2**70) == MAX_LIMIT
    big = parse_filter({"room": {"timeline": {"limit": 5000}}})
    assert big.to_json() == {"room": {"timeline": {"limit": 5000}}}
    assert big.room.timeline.requested_limit == 5000


# -- invalid filters -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "errcode", "message"),
    [
        ([], "M_BAD_JSON", "filter must be an object"),
        ("{}", "M_BAD_JSON", "filter must be an object"),
        (None, "M_BAD_JSON", "filter must be an object"),
        ({"room": []}, "M_BAD_JSON", "room must be an object"),
        ({"room": {"timeline": "x"}}, "M_BAD_JSON", "room.timeline must be an object"),
        ({"room": {"timeline": {"limit": "10"}}}, "M_BAD_JSON", "room.timeline.limit must be an integer"),
        ({"room": {"timeline": {"limit": 1.5}}}, "M_BAD_JSON", "room.timeline.limit must be an integer"),
        ({"room": {"timeline": {"limit": True}}}, "M_BAD_JSON", "room.timeline.limit must be an integer"),
        ({"room": {"timeline": {"limit": -1}}}, "M_INVALID_PARAM", "room.timeline.limit must not be negative"),
        ({"presence": {"limit": [1]}}, "M_BAD_JSON", "presence.limit must be an integer"),
        ({"room": {"state": {"types": "m.room.*"}}}, "M_BAD_JSON", "room.state.types must be a list of strings"),
        ({"room": {"state": {"not_types": [1]}}}, "M_BAD_JSON", "room.state.not_types must be a list of strings"),
        ({"room": {"ephemeral": {"senders": ["bob"]}}}, "M_INVALID_PARAM", "room.ephemeral.senders[0]"),
        ({"account_data": {"not_senders": ["@a:x", "@"]}}, "M_INVALID_PARAM", "account_data.not_senders[1]"),
        ({"room": {"rooms": ["#alias:x"]}}, "M_INVALID_PARAM", "room.rooms[0]"),
        ({"room": {"account_data": {"not_rooms": ["room"]}}}, "M_INVALID_PARAM", "room.account_data.not_rooms[0]"),
        ({"room": {"include_leave": "true"}}, "M_BAD_JSON", "room.include_leave must be a boolean"),
        ({"room": {"state": {"lazy_load_members": 1}}}, "M_BAD_JSON", "room.state.lazy_load_members must be a boolean"),
        ({"room": {"timeline": {"contains_url": "yes"}}}, "M_BAD_JSON", "room.timeline.contains_url"),
        ({"room": {"timeline": {"include_redundant_members": 0}}}, "M_BAD_JSON", "include_redundant_members"),
        ({"room": {"timeline": {"unread_thread_notifications": "1"}}}, "M_BAD_JSON", "unread_thread_notifications"),
        ({"event_format": "xml"}, "M_INVALID_PARAM", "event_format must be 'client' or 'federation'"),
        ({"event_format": 1}, "M_BAD_JSON", "event_format must be a string"),
        ({"event_fields": "type"}, "M_BAD_JSON", "event_fields must be a list of strings"),
        ({"event_fields": ["type", None]}, "M_BAD_JSON", "event_fields must be a list of strings"),
    ],
)
def test_invalid_filters(value: Any, errcode: str, message: str) -> None:
    err = error(value)
    assert err.errcode == errcode
    assert message in err.msg


def test_room_event_filter_for_messages() -> None:
    f = parse_room_event_filter({"types": ["m.room.message"], "lazy_load_members": True, "limit": 5})
    assert isinstance(f, RoomEventFilter) and f.lazy_load_members and f.limit == 5
    assert parse_room_event_filter(None) == RoomEventFilter()
    with pytest.raises(MatrixError) as info:
        parse_room_event_filter({"limit": "5"})
    assert "filter.limit must be an integer" in info.value.msg


# -- matching --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "event_type", "expected"),
    [
        ("m.room.*", "m.room.message", True),
        ("m.room.*", "m.room.", True),
        ("m.room.*", "m.roomy", False),
        ("m.*.message", "m.room.message", True),
        ("*", "anything", True),
        ("*.typing", "m.typing", True),
        ("m.room.message", "m.room.message", True),
        ("m.room.message", "M.ROOM.MESSAGE", False),  # types are case-sensitive
        ("m.room.?essage", "m.room.message", False),  # only * is a wildcard
        ("m.room.[a-z]*", "m.room.message", False),
        ("m.room.*", None, False),
    ],
)
def test_type_wildcards(pattern: str, event_type: Any, expected: bool) -> None:
    assert type_matches(pattern, event_type) is expected


def test_negative_lists_win_and_empty_lists_block() -> None:
    f = EventFilter(types=("m.*",), not_types=("m.room.member",))
    assert f.matches(ev()) and not f.matches(ev("m.room.member")) and not f.matches(ev("org.x"))
    assert EventFilter(not_types=("*",)).blocks_all()
    assert not EventFilter(not_types=("*",)).matches(ev())
    assert EventFilter(types=()).blocks_all() and not EventFilter(types=()).matches(ev())
    assert EventFilter(senders=()).blocks_all()
    assert RoomEventFilter(rooms=()).blocks_all() and not RoomEventFilter(rooms=()).matches(ev())
    assert not RoomEventFilter(rooms=("!a:x",), not_rooms=("!a:x",)).room_included("!a:x")
    assert parse_filter({"room": {"rooms": []}}).room.blocks_all_rooms()
    both = EventFilter(senders=("@a:x",), not_senders=("@a:x",))
    assert not both.matches(ev(sender="@a:x"))


def test_sender_less_events() -> None:
    account_data = {"type": "m.direct", "content": {}}
    assert EventFilter(not_senders=("@a:x",)).matches(account_data)
    assert not EventFilter(senders=("@a:x",)).matches(account_data)
    legacy_presence = {"type": "m.presence", "content": {"user_id": "@a:x"}}
    assert EventFilter(senders=("@a:x",)).matches(legacy_presence)


def test_room_id_argument_stands_in_for_the_event_room() -> None:
    f = RoomEventFilter(rooms=("!a:x",))
    receipt = {"type": "m.receipt", "content": {}}
    assert not f.matches(receipt)
    assert f.matches(receipt, room_id="!a:x")
    assert not f.matches({**receipt, "room_id": "!a:x"}, room_id="!b:x")
    assert EventFilter().matches(receipt, room_id="!anything")


def test_contains_url() -> None:
    with_url = ev(content={"url": "mxc://a/b"})
    without = ev()
    bad_url = ev(content={"url": 1})
    no_content = {"type": "x", "sender": "@a:x"}
    yes, no = RoomEventFilter(contains_url=True), RoomEventFilter(contains_url=False)
    assert yes.matches(with_url) and not yes.matches(without) and not yes.matches(bad_url)
    assert no.matches(without) and not no.matches(with_url) and no.matches(bad_url) and no.matches(no_content)


def test_filter_events_keeps_order_and_is_generic() -> None:
    events = [ev("m.room.message"), ev("m.room.member"), ev("m.room.message", sender="@c:x")]
    f = parse_filter({"room": {"timeline": {"types": ["m.room.message"]}}})
    assert f.room.timeline.filter_events(events) == [events[0], events[2]]
    assert f.presence.filter_events([]) == []


# -- event_fields projection ---------------------------------------------------------


def project(fields: list[str], event: dict[str, Any]) -> Any:
    return parse_filter({"event_fields": fields}).project(event)


def test_projection_paths() -> None:
    event = {
        "type": "m.room.message",
        "sender": "@a:x",
        "content": {"body": "hi", "m.relates_to": {"rel_type": "m.thread", "event_id": "$t"}, "a\\b": 1},
        "unsigned": {"age": 5},
    }
    assert project(["content.body"], event) == {"content": {"body": "hi"}}
    assert project(["content.m\\.relates_to.rel_type"], event) == {
        "content": {"m.relates_to": {"rel_type": "m.thread"}}
    }
    assert project(["content.m.relates_to"], event) == {}  # unescaped dot means nesting
    assert project(["content.a\\\\b"], event) == {"content": {"a\\b": 1}}
    assert project(["nope", "content.nope", "type.deeper"], event) == {}
    assert project(["content.body", "content"], event) == {"content": event["content"]}
    assert project(["content", "content.body"], event) == {"content": event["content"]}
    assert project(["unsigned.age", "type"], event) == {"unsigned": {"age": 5}, "type": "m.room.message"}
    assert project([], event) is event  # empty list: everything, as in Synapse


def test_projection_does_not_mutate_the_event() -> None:
    event = {"content": {"body": "hi", "x": 1}}
    before = copy.deepcopy(event)
    project(["content.body", "content.x"], event)
    assert event == before


# -- property tests ------------------------------------------------------------------

_types = st.lists(st.sampled_from(["m.room.message", "m.*", "*", "org.x"]), max_size=3)
_users = st.lists(st.sampled_from(["@a:x", "@b:y"]), max_size=2)
_rooms = st.lists(st.sampled_from(["!a:x", "!b"]), max_size=2)


def _optional(strategies: dict[str, Any]) -> Any:
    return st.fixed_dictionaries({}, optional=strategies)


_event_filter = _optional(
    {
        "limit": st.integers(0, 3000),
        "types": _types,
        "not_types": _types,
        "senders": _users,
        "not_senders": _users,
    }
)
_room_event_filter = _optional(
    {
        "limit": st.integers(0, 3000),
        "types": _types,
        "not_types": _types,
        "senders": _users,
        "rooms": _rooms,
        "not_rooms": _rooms,
        "contains_url": st.booleans(),
        "lazy_load_members": st.booleans(),
        "include_redundant_members": st.booleans(),
        "unread_thread_notifications": st.booleans(),
        "org.example.extra": st.integers(),
    }
)
_filter = _optional(
    {
        "event_fields": st.lists(st.sampled_from(["type", "content.body", "content.m\\.x"]), max_size=3),
        "event_format": st.sampled_from(["client", "federation"]),
        "presence": _event_filter,
        "account_data": _event_filter,
        "room": _optional(
            {
                "rooms": _rooms,
                "not_rooms": _rooms,
                "include_leave": st.booleans(),
                "timeline": _room_event_filter,
                "state": _room_event_filter,
                "ephemeral": _room_event_filter,
                "account_data": _room_event_filter,
            }
        ),
    }
)


@given(_filter)
def test_to_json_gives_back_the_uploaded_filter(body: dict[str, Any]) -> None:
    f = parse_filter(copy.deepcopy(body))
    assert f.to_json() == body
    assert parse_filter(f.to_json()) == f
    assert hash(f) == hash(parse_filter(f.to_json()))


@given(
    _room_event_filter, st.sampled_from(["m.room.message", "m.room.member", "org.x"]), st.sampled_from(["@a:x", "@b:y"])
)
def test_matching_agrees_with_the_definition(body: dict[str, Any], event_type: str, sender: str) -> None:
    f = parse_room_event_filter(body)
    event = {"type": event_type, "sender": sender, "room_id": "!a:x", "content": {}}
    expected = (
        (body.get("types") is None or any(type_matches(t, event_type) for t in body["types"]))
        and not any(type_matches(t, event_type) for t in body.get("not_types", []))
        and (body.get("senders") is None or sender in body["senders"])
        and (body.get("rooms") is None or "!a:x" in body["rooms"])
        and "!a:x" not in body.get("not_rooms", [])
        and body.get("contains_url") is not True
    )
    assert f.matches(event) is expected
    if f.blocks_all():
        assert not f.matches(event)
