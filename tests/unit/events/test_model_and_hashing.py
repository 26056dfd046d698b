"""The Event model, content/reference hashes and event IDs (checked against Synapse)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from _events_helpers import ALL_VERSIONS, examples, make_create, spec_signing_key, synapse_room_version
from hypothesis import given, settings
from hypothesis import strategies as st

from homeserver.core.errors import MatrixError
from homeserver.events.builder import build_event
from homeserver.events.hashing import add_content_hash, check_content_hash, compute_content_hash
from homeserver.events.model import Event, make_event_id
from homeserver.events.room_versions import RoomVersion, RoomVersions
from homeserver.events.signing import get_verify_key, verify_event_signature


def _message(**extra: Any) -> dict[str, Any]:
    return {
        "type": "m.room.message",
        "room_id": "!r:x",
        "sender": "@u:x",
        "content": {"body": "hi"},
        "prev_events": ["$p"],
        "auth_events": ["$a"],
        "depth": 2,
        "origin_server_ts": 7,
        "hashes": {"sha256": "h"},
        "signatures": {},
        **extra,
    }


def test_event_ids_use_the_right_alphabet() -> None:
    # Find an event whose hash has a "+" or "/" in standard base64: v3 keeps it, v4 maps it.
    for n in range(200):
        d = _message(depth=n)
        v3, v4 = make_event_id(RoomVersions.V3, d), make_event_id(RoomVersions.V4, d)
        if v3 != v4:
            assert set(v3) & set("+/") and not set(v4) & set("+/")
            assert v4 == v3.replace("+", "-").replace("/", "_")
            return
    pytest.fail("no hash with + or / found")


def test_v1_event_ids_come_from_the_event() -> None:
    assert make_event_id(RoomVersions.V1, _message(event_id="$abc:x")) == "$abc:x"
    with pytest.raises(MatrixError):
        make_event_id(RoomVersions.V1, _message())


def test_event_id_ignores_unsigned_signatures_and_redactable_content() -> None:
    rv = RoomVersions.V11
    base = make_event_id(rv, _message())
    assert make_event_id(rv, _message(unsigned={"age": 1}, signatures={"x": {"k": "s"}})) == base
    assert make_event_id(rv, _message(content={"body": "other"})) == base
    assert make_event_id(rv, _message(hashes={"sha256": "other"})) != base


def test_properties_and_original_dict() -> None:
    d = _message(state_key="", unsigned={"age": 1})
    event = Event(d, RoomVersions.V10)
    assert event.dict is d
    assert (event.type, event.sender, event.room_id, event.depth) == ("m.room.message", "@u:x", "!r:x", 2)
    assert event.prev_event_ids == ["$p"] and event.auth_event_ids == ["$a"]
    assert event.is_state() and event.state_key_tuple == ("m.room.message", "")
    assert event.unsigned == {"age": 1}
    pdu = event.get_pdu_json()
    assert pdu == d and pdu is not d and pdu["content"] is not d["content"]
    assert event == Event(copy.deepcopy(d), RoomVersions.V10) and len({event, Event(d, RoomVersions.V10)}) == 1


def test_redacts_moves_into_content_in_v11() -> None:
    d = _message(type="m.room.redaction", redacts="$old", content={"redacts": "$new"})
    assert Event(d, RoomVersions.V10).redacts == "$old"
    assert Event(d, RoomVersions.V11).redacts == "$new"
    assert Event(_message(), RoomVersions.V11).redacts is None


def test_v12_create_event_names_the_room() -> None:
    create = make_create(RoomVersions.V12)
    assert "room_id" not in create.dict
    assert create.room_id == "!" + create.event_id[1:]


def test_non_state_event_has_no_state_key_tuple() -> None:
    event = Event(_message(), RoomVersions.V10)
    assert not event.is_state() and event.state_key is None
    with pytest.raises(ValueError):
        _ = event.state_key_tuple


@pytest.mark.parametrize(
    "change",
    [
        {"type": 5},
        {"sender": None},
        {"content": []},
        {"depth": "1"},
        {"depth": True},
        {"origin_server_ts": 1.5},
        {"prev_events": "$p"},
        {"auth_events": [1]},
        {"state_key": 3},
        {"room_id": None},
        {"signatures": []},
    ],
)
def test_malformed_events_are_bad_json(change: dict[str, Any]) -> None:
    with pytest.raises(MatrixError) as e:
        Event(_message(**change), RoomVersions.V10)
    assert e.value.errcode == "M_BAD_JSON"


def test_content_hash_round_trip() -> None:
    d = _message()
    add_content_hash(d)
    assert check_content_hash(d)
    assert check_content_hash({**d, "unsigned": {"x": 1}, "signatures": {"y": {}}})
    assert not check_content_hash({**d, "content": {"body": "changed"}})
    assert not check_content_hash({**d, "hashes": {"sha256": "@@@"}})
    assert not check_content_hash({**d, "hashes": "nope"})
    assert compute_content_hash(d) == compute_content_hash({**d, "hashes": {}})


@pytest.mark.parametrize("rv", ALL_VERSIONS, ids=lambda v: f"v{v.identifier}")
def test_builder_produces_hashed_signed_events(rv: RoomVersion) -> None:
    key = spec_signing_key()
    common: dict[str, Any] = {
        "sender": "@a:x",
        "depth": 1,
        "origin_server_ts": 1,
        "server_name": "x",
        "signing_key": key,
    }
    create = build_event(
        rv,
        room_id=None if rv.room_id_from_create_event else "!r:x",
        type="m.room.create",
        state_key="",
        content={"room_version": rv.identifier},
        prev_event_ids=[],
        auth_event_ids=[],
        **common,
    )
    assert ("room_id" in create.dict) != rv.room_id_from_create_event
    redaction = build_event(
        rv,
        room_id=create.room_id,
        type="m.room.redaction",
        content={},
        redacts="$x",
        prev_event_ids=[create.event_id],
        auth_event_ids=[],
        unsigned={"age": 3},
        **common,
    )
    assert redaction.redacts == "$x"
    assert check_content_hash(redaction.dict)
    verify_event_signature(rv, redaction.dict, "x", get_verify_key(key))
    assert redaction.unsigned == {"age": 3}
    assert synapse_event_id(redaction) == redaction.event_id


def synapse_event_id(event: Event) -> str:
    from synapse.events import make_event_from_dict

    return str(make_event_from_dict(event.get_pdu_json(), synapse_room_version(event.room_version)).event_id)


# --- agreement with Synapse ----------------------------------------------------------------

json_leaf = st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=6)
json_value = st.recursive(
    json_leaf,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=6,
)


@st.composite
def events(draw: st.DrawFn) -> tuple[RoomVersion, dict[str, Any]]:
    rv = draw(st.sampled_from(ALL_VERSIONS))
    event_type = draw(st.sampled_from(["m.room.member", "m.room.create", "m.room.power_levels", "m.room.message", "x"]))
    d: dict[str, Any] = {
        "type": event_type,
        "sender": "@" + draw(st.text("abc", min_size=1, max_size=3)) + ":x",
        "content": draw(
            st.dictionaries(st.sampled_from(["membership", "creator", "users", "body", "k"]), json_value, max_size=3)
        ),
        "prev_events": draw(st.lists(st.text("$abc", min_size=1, max_size=4), max_size=3)),
        "auth_events": draw(st.lists(st.text("$abc", min_size=1, max_size=4), max_size=3)),
        "depth": draw(st.integers(0, 2**53 - 1)),
        "origin_server_ts": draw(st.integers(0, 2**53 - 1)),
        "hashes": {"sha256": draw(st.text("abcXYZ", max_size=6))},
        "signatures": {"x": {"ed25519:1": "c2ln"}},
    }
    is_create = event_type == "m.room.create"
    if is_create or draw(st.booleans()):
        d["state_key"] = draw(st.sampled_from(["", "", "x"]) | st.text(max_size=4))
    if not (is_create and rv.room_id_from_create_event and d.get("state_key") == ""):
        d["room_id"] = "!r:x"
    for extra in draw(st.lists(st.sampled_from(["origin", "membership", "redacts", "unsigned", "zzz"]), max_size=2)):
        d[extra] = draw(json_value) if extra != "unsigned" else {"age": 1}
    return rv, d


@settings(max_examples=examples(200), deadline=None)
@given(events())
def test_event_ids_and_content_hashes_match_synapse(case: tuple[RoomVersion, dict[str, Any]]) -> None:
    import hashlib

    from synapse.crypto.event_signing import compute_content_hash as synapse_content_hash
    from synapse.events import make_event_from_dict

    rv, d = case
    event = Event(d, rv)
    theirs = make_event_from_dict(copy.deepcopy(d), synapse_room_version(rv))
    assert event.event_id == theirs.event_id
    assert event.room_id == theirs.room_id
    assert compute_content_hash(d) == synapse_content_hash(d, hashlib.sha256)[1]
