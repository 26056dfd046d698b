"""Room version flags (checked against Synapse's table), power level readers, formats."""

from __future__ import annotations

from typing import Any

import pytest
from _events_helpers import ALL_VERSIONS, Room, make_create, make_event, synapse_room_version

from homeserver.core.errors import MatrixError
from homeserver.events.format import EventSizeError, check_event_format, servers_that_must_sign
from homeserver.events.model import Event
from homeserver.events.power_levels import (
    CREATOR_POWER_LEVEL,
    can_redact_others,
    can_send,
    get_creators,
    get_notification_level,
    get_required_level_for_event,
    get_user_power_level,
    is_valid_power_level,
    parse_power_level,
)
from homeserver.events.room_versions import (
    KNOWN_ROOM_VERSIONS,
    EventFormat,
    RoomVersion,
    RoomVersions,
    StateResVersion,
    get_room_version,
)

V = RoomVersions

# Our flag -> Synapse's attribute of the same meaning.
SYNAPSE_NAMES = {
    "enforce_key_validity": "enforce_key_validity",
    "special_case_aliases_auth": "special_case_aliases_auth",
    "strict_canonical_json": "strict_canonicaljson",
    "limit_notifications_power_levels": "limit_notifications_power_levels",
    "knock_join_rule": "knock_join_rule",
    "restricted_join_rule": "restricted_join_rule",
    "restricted_join_rule_fix": "restricted_join_rule_fix",
    "knock_restricted_join_rule": "knock_restricted_join_rule",
    "enforce_int_power_levels": "enforce_int_power_levels",
    "implicit_room_creator": "implicit_room_creator",
    "updated_redaction_rules": "updated_redaction_rules",
    "strict_event_byte_limits": "strict_event_byte_limits_room_versions",
    "privileged_creators": "msc4289_creator_power_enabled",
    "room_id_from_create_event": "msc4291_room_ids_as_hashes",
}


@pytest.mark.parametrize("rv", ALL_VERSIONS, ids=lambda v: f"v{v.identifier}")
def test_flags_match_synapse(rv: RoomVersion) -> None:
    theirs = synapse_room_version(rv)
    for ours_name, their_name in SYNAPSE_NAMES.items():
        assert getattr(rv, ours_name) == getattr(theirs, their_name), ours_name
    assert (rv.state_res is StateResVersion.V2_1) == (rv.identifier == "12")
    assert rv.event_format is (EventFormat.V3 if rv.identifier == "3" else EventFormat.V4)


def test_get_room_version() -> None:
    assert get_room_version("12") is V.V12
    assert set(KNOWN_ROOM_VERSIONS) == {str(n) for n in range(3, 13)}
    for unsupported in ("1", "2", "13", "org.matrix.msc1234", ""):
        with pytest.raises(MatrixError) as e:
            get_room_version(unsupported)
        assert (e.value.code, e.value.errcode) == (400, "M_UNSUPPORTED_ROOM_VERSION")
    assert V.V12.msc4291_room_ids_as_hashes and V.V12.msc4289_privileged_creators and V.V11.msc2176_redaction_rules


# --- power levels ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (50, 50),
        (-3, -3),
        ("50", 50),
        (" +100 ", 100),
        ("0050", 50),
        ("-1", -1),
        (50.9, 50),
        (-1.5, -1),
        ("1_0", None),
        ("٣", None),
        ("5.0", None),
        ("", None),
        (True, None),
        (None, None),
        ([], None),
        (float("inf"), None),
    ],
)
def test_parse_power_level(value: Any, expected: int | None) -> None:
    assert parse_power_level(value) == expected


def test_valid_power_levels_per_version() -> None:
    assert is_valid_power_level("50", V.V9) and not is_valid_power_level("50", V.V10)
    assert is_valid_power_level(1.5, V.V5) and not is_valid_power_level(1.5, V.V6)
    assert not is_valid_power_level(True, V.V3) and is_valid_power_level(7, V.V12)


def test_user_levels_and_creators() -> None:
    for rv in ALL_VERSIONS:
        create = make_create(
            rv, "@alice:a.test", **({"additional_creators": ["@bob:b.test"]} if rv.privileged_creators else {})
        )
        expected_creator = CREATOR_POWER_LEVEL if rv.privileged_creators else 100
        assert get_user_power_level("@alice:a.test", create, None, rv) == expected_creator
        assert get_user_power_level("@carol:a.test", create, None, rv) == 0
        room = Room(rv)
        pl = room.power_levels(users={"@carol:a.test": 20}, users_default=5)
        assert get_user_power_level("@carol:a.test", room.create, pl, rv) == 20
        assert get_user_power_level("@dave:c.test", room.create, pl, rv) == 5
        # Without a power levels event, only the creator is privileged (v1-v11: 100).
        assert get_user_power_level("@alice:a.test", room.create, pl, rv) == (
            CREATOR_POWER_LEVEL if rv.privileged_creators else 5
        )
    v12_create = make_create(V.V12, additional_creators=["@bob:b.test", 5])
    assert get_creators(v12_create, V.V12) == {"@alice:a.test", "@bob:b.test"}
    assert get_creators(make_create(V.V10, creator="@zed:z.test"), V.V10) == {"@zed:z.test"}


def test_required_levels_and_thresholds() -> None:
    content = {"events": {"m.room.name": 75}, "state_default": 40, "events_default": 10, "notifications": {"room": 20}}
    assert get_required_level_for_event("m.room.name", "", content) == 75
    assert get_required_level_for_event("m.room.topic", "", content) == 40
    assert get_required_level_for_event("m.room.message", None, content) == 10
    assert get_required_level_for_event("m.room.topic", "", {}) == 50
    assert get_required_level_for_event("m.room.message", None, {}) == 0
    assert get_notification_level(content) == 20 and get_notification_level({}) == 50
    room = Room(V.V11)
    pl = room.power_levels(users={"@alice:a.test": 100, "@carol:a.test": 40}, **content)
    assert can_send("@carol:a.test", "m.room.topic", "", room.create, pl, V.V11)
    assert not can_send("@carol:a.test", "m.room.name", "", room.create, pl, V.V11)
    assert not can_redact_others("@carol:a.test", room.create, pl, V.V11)
    assert can_redact_others("@alice:a.test", room.create, pl, V.V11)


# --- event format -------------------------------------------------------------------------


def _valid(rv: RoomVersion, **fields: Any) -> Event:
    base: dict[str, Any] = {"type": "m.room.message", "sender": "@u:a.test", "room_id": "!r:a.test"}
    base.update(fields)
    return make_event(rv, **base)


@pytest.mark.parametrize("rv", ALL_VERSIONS, ids=lambda v: f"v{v.identifier}")
def test_event_format_limits(rv: RoomVersion) -> None:
    check_event_format(rv, _valid(rv))
    check_event_format(rv, _valid(rv, content={"body": "x" * 60000}))
    with pytest.raises(EventSizeError):
        check_event_format(rv, _valid(rv, content={"body": "x" * 65536}))
    for field in ("sender", "room_id", "type", "state_key"):
        check_event_format(rv, _valid(rv, **{field: "@" + "x" * 250 + ":a.b"}))
        with pytest.raises(EventSizeError):
            check_event_format(rv, _valid(rv, **{field: "@" + "é" * 127 + ":a"}))  # 259 bytes
    bad: list[dict[str, Any]] = [{"hashes": {}}, {"signatures": {"a": []}}, {"depth": -1}, {"depth": 2**53}]
    if rv.strict_canonical_json:
        bad.append({"content": {"n": 2**53}})
    else:
        check_event_format(rv, _valid(rv, content={"n": 2**60, "f": 1.5}))
    for fields in bad:
        with pytest.raises(MatrixError):
            check_event_format(rv, _valid(rv, **fields))


def test_servers_that_must_sign() -> None:
    rv = V.V10
    join = _valid(
        rv,
        type="m.room.member",
        state_key="@u:a.test",
        content={"membership": "join", "join_authorised_via_users_server": "@x:b.test"},
    )
    assert servers_that_must_sign(rv, join) == {"a.test", "b.test"}
    assert servers_that_must_sign(V.V7, Event(join.dict, V.V7)) == {"a.test"}
    tpi = _valid(
        rv, type="m.room.member", state_key="@v:c.test", content={"membership": "invite", "third_party_invite": {}}
    )
    assert servers_that_must_sign(rv, tpi) == set()
