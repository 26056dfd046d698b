"""Redaction: examples from the algorithm text, and agreement with Synapse."""

from __future__ import annotations

from typing import Any

import pytest
from _events_helpers import ALL_VERSIONS, examples, synapse_room_version
from hypothesis import given, settings
from hypothesis import strategies as st

from homeserver.events.redaction import redact_event_dict
from homeserver.events.room_versions import RoomVersion, RoomVersions

V = RoomVersions


def _event(type_: str, content: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "type": type_,
        "room_id": "!r:x",
        "sender": "@u:x",
        "state_key": "",
        "content": content,
        "hashes": {"sha256": "h"},
        "signatures": {"x": {"ed25519:1": "s"}},
        "depth": 1,
        "prev_events": ["$p"],
        "auth_events": ["$a"],
        "origin_server_ts": 1,
        "unsigned": {"age": 5},
        **extra,
    }


KEPT_TOP_LEVEL = {
    "type",
    "room_id",
    "sender",
    "state_key",
    "content",
    "hashes",
    "signatures",
    "depth",
    "prev_events",
    "auth_events",
    "origin_server_ts",
}


@pytest.mark.parametrize(
    ("rv", "type_", "content", "expected_content"),
    [
        # Messages lose their whole content in every version.
        (V.V3, "m.room.message", {"body": "secret"}, {}),
        (V.V12, "m.room.message", {"body": "secret"}, {}),
        # Membership: `join_authorised_via_users_server` is kept from v9 (not v8).
        (
            V.V8,
            "m.room.member",
            {"membership": "join", "join_authorised_via_users_server": "@a:x", "displayname": "A"},
            {"membership": "join"},
        ),
        (
            V.V9,
            "m.room.member",
            {"membership": "join", "join_authorised_via_users_server": "@a:x", "displayname": "A"},
            {"membership": "join", "join_authorised_via_users_server": "@a:x"},
        ),
        # v11 keeps the signed part of a third-party invite.
        (
            V.V10,
            "m.room.member",
            {"membership": "invite", "third_party_invite": {"display_name": "d", "signed": {"token": "t"}}},
            {"membership": "invite"},
        ),
        (
            V.V11,
            "m.room.member",
            {"membership": "invite", "third_party_invite": {"display_name": "d", "signed": {"token": "t"}}},
            {"membership": "invite", "third_party_invite": {"signed": {"token": "t"}}},
        ),
        # Create: only `creator` before v11, everything from v11.
        (V.V10, "m.room.create", {"creator": "@u:x", "room_version": "10", "m.federate": False}, {"creator": "@u:x"}),
        (
            V.V11,
            "m.room.create",
            {"room_version": "11", "m.federate": False},
            {"room_version": "11", "m.federate": False},
        ),
        (
            V.V12,
            "m.room.create",
            {"room_version": "12", "additional_creators": ["@b:y"]},
            {"room_version": "12", "additional_creators": ["@b:y"]},
        ),
        # Join rules: `allow` from v8.
        (V.V7, "m.room.join_rules", {"join_rule": "restricted", "allow": []}, {"join_rule": "restricted"}),
        (V.V8, "m.room.join_rules", {"join_rule": "restricted", "allow": []}, {"join_rule": "restricted", "allow": []}),
        # Power levels: `invite` from v11; `notifications` never.
        (
            V.V10,
            "m.room.power_levels",
            {"ban": 50, "invite": 0, "notifications": {"room": 50}, "users": {}},
            {"ban": 50, "users": {}},
        ),
        (
            V.V11,
            "m.room.power_levels",
            {"ban": 50, "invite": 0, "notifications": {"room": 50}, "users": {}},
            {"ban": 50, "invite": 0, "users": {}},
        ),
        # Aliases are protected only while they have their own auth rule (v1-v5).
        (V.V5, "m.room.aliases", {"aliases": ["#a:x"]}, {"aliases": ["#a:x"]}),
        (V.V6, "m.room.aliases", {"aliases": ["#a:x"]}, {}),
        (V.V6, "m.room.history_visibility", {"history_visibility": "shared", "x": 1}, {"history_visibility": "shared"}),
        # Redactions keep `content.redacts` from v11.
        (V.V10, "m.room.redaction", {"redacts": "$e"}, {}),
        (V.V11, "m.room.redaction", {"redacts": "$e", "reason": "spam"}, {"redacts": "$e"}),
    ],
)
def test_redaction_examples(
    rv: RoomVersion, type_: str, content: dict[str, Any], expected_content: dict[str, Any]
) -> None:
    event = _event(type_, content, origin="x", membership="join", prev_state=[], redacts="$e", extra="gone")
    before = repr(event)
    redacted = redact_event_dict(rv, event)
    assert redacted["content"] == expected_content
    expected_keys = set(KEPT_TOP_LEVEL)
    if not rv.updated_redaction_rules:
        expected_keys |= {"origin", "membership", "prev_state"}
    if rv.room_id_from_create_event and type_ == "m.room.create":
        expected_keys.discard("room_id")  # v12 create events have none (see redaction.py)
    assert set(redacted) == expected_keys
    assert repr(event) == before, "the input must not be modified"


def test_redaction_is_idempotent() -> None:
    event = _event("m.room.member", {"membership": "join", "displayname": "x"})
    for rv in ALL_VERSIONS:
        once = redact_event_dict(rv, event)
        assert redact_event_dict(rv, once) == once


# --- agreement with Synapse ----------------------------------------------------------------

json_leaf = st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=6)
json_value = st.recursive(
    json_leaf,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=6,
)
TYPES = [
    "m.room.member",
    "m.room.create",
    "m.room.join_rules",
    "m.room.power_levels",
    "m.room.history_visibility",
    "m.room.aliases",
    "m.room.redaction",
    "m.room.message",
    "m.x",
]
CONTENT_KEYS = [
    "membership",
    "join_authorised_via_users_server",
    "third_party_invite",
    "creator",
    "room_version",
    "join_rule",
    "allow",
    "ban",
    "events",
    "events_default",
    "invite",
    "kick",
    "redact",
    "state_default",
    "users",
    "users_default",
    "notifications",
    "history_visibility",
    "aliases",
    "redacts",
    "body",
]
TOP_KEYS = [
    "event_id",
    "room_id",
    "sender",
    "state_key",
    "hashes",
    "signatures",
    "depth",
    "prev_events",
    "auth_events",
    "origin_server_ts",
    "origin",
    "membership",
    "prev_state",
    "redacts",
    "unsigned",
    "other",
]
third_party_invite = st.one_of(
    json_value,
    st.dictionaries(st.sampled_from(["signed", "display_name"]), json_value, max_size=2),
)


@st.composite
def redactable(draw: st.DrawFn) -> tuple[RoomVersion, dict[str, Any]]:
    rv = draw(st.sampled_from(ALL_VERSIONS))
    content = draw(st.dictionaries(st.sampled_from(CONTENT_KEYS), json_value, max_size=5))
    if draw(st.booleans()):
        content["third_party_invite"] = draw(third_party_invite)
    event = draw(st.dictionaries(st.sampled_from(TOP_KEYS), json_value, max_size=8))
    if draw(st.booleans()):
        event["room_id"] = "!r:x"
    event["type"] = draw(st.sampled_from(TYPES))
    event["content"] = content
    return rv, event


@settings(max_examples=examples(200), deadline=None)
@given(redactable())
def test_redaction_matches_synapse(case: tuple[RoomVersion, dict[str, Any]]) -> None:
    from synapse.synapse_rust.events import redact_event_dict as synapse_redact

    rv, event = case
    ours = redact_event_dict(rv, event)
    theirs = synapse_redact(synapse_room_version(rv), event)
    # Synapse keeps a few `unsigned` fields for its own bookkeeping; they are outside the
    # protocol (never hashed or signed), so compare without `unsigned`.
    theirs.pop("unsigned", None)
    assert ours == theirs
