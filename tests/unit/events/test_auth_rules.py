"""Hand-written authorisation cases: the classic attacks and each version difference."""

from __future__ import annotations

from typing import Any

import pytest
from _events_helpers import ALL_VERSIONS, Room, make_create, make_event, spec_signing_key, synapse_allows

from homeserver.events.auth import (
    AuthError,
    auth_types_for_event,
    check_auth_events_selection,
    check_auth_rules,
)
from homeserver.events.model import Event
from homeserver.events.room_versions import RoomVersion, RoomVersions
from homeserver.events.signing import encode_verify_key_base64, get_verify_key, sign_json

V = RoomVersions
ALICE, BOB, CAROL, MALLORY = "@alice:a.test", "@bob:b.test", "@carol:a.test", "@mallory:c.test"
versions = pytest.mark.parametrize("rv", ALL_VERSIONS, ids=lambda v: f"v{v.identifier}")


def allowed(room: Room, event: Event, *, synapse_agrees: bool = True) -> bool:
    """Our decision; also asserts that Synapse decides the same (where it checks the
    same thing in the same place: pass ``synapse_agrees=False`` otherwise)."""
    try:
        check_auth_rules(room.rv, event, room.state)
        ours = True
    except AuthError:
        ours = False
    if synapse_agrees:
        theirs, why = synapse_allows(event, room.state)
        assert ours == theirs, f"Synapse says {theirs} ({why})"
    return ours


def joined_room(rv: RoomVersion, **levels: Any) -> Room:
    """Alice created it and has 100; Bob has 50; Carol 0; all joined; public."""
    room = Room(rv)
    room.member(ALICE, "join")
    users = {BOB: 50, CAROL: 0}
    if not rv.privileged_creators:
        users[ALICE] = 100
    room.power_levels(users=users, **levels)
    room.join_rules("public")
    room.member(BOB, "join")
    room.member(CAROL, "join")
    return room


# --- banned users ------------------------------------------------------------------------


@versions
def test_banned_user_cannot_rejoin_or_forge_membership(rv: RoomVersion) -> None:
    room = joined_room(rv)
    room.member(MALLORY, "ban")
    join = {"membership": "join"}
    assert not allowed(room, room.event("m.room.member", MALLORY, join, state_key=MALLORY))
    # Pretending to be the creator's first join: only the creator may take that path.
    assert not allowed(
        room, room.event("m.room.member", MALLORY, join, state_key=MALLORY, prev_events=[room.create.event_id])
    )
    # Unbanning oneself, or getting an accomplice with no power to do it.
    assert not allowed(room, room.event("m.room.member", MALLORY, {"membership": "leave"}, state_key=MALLORY))
    assert not allowed(room, room.event("m.room.member", CAROL, {"membership": "leave"}, state_key=MALLORY))
    assert not allowed(room, room.event("m.room.member", CAROL, {"membership": "invite"}, state_key=MALLORY))
    # Messages from a banned user, and joins sent on someone else's behalf.
    assert not allowed(room, room.event("m.room.message", MALLORY, {"body": "hi"}))
    assert not allowed(room, room.event("m.room.member", CAROL, join, state_key=MALLORY))
    # Only someone with the ban level (and above the target) may unban.
    assert allowed(room, room.event("m.room.member", ALICE, {"membership": "leave"}, state_key=MALLORY))


@versions
def test_kick_and_ban_need_power_over_the_target(rv: RoomVersion) -> None:
    room = joined_room(rv)
    assert allowed(room, room.event("m.room.member", BOB, {"membership": "ban"}, state_key=CAROL))
    assert allowed(room, room.event("m.room.member", BOB, {"membership": "leave"}, state_key=CAROL))
    assert not allowed(room, room.event("m.room.member", BOB, {"membership": "ban"}, state_key=ALICE))
    assert not allowed(room, room.event("m.room.member", CAROL, {"membership": "leave"}, state_key=BOB))


# --- power level escalation -------------------------------------------------------------


@versions
def test_power_level_escalation(rv: RoomVersion) -> None:
    room = joined_room(rv, state_default=50)
    old = dict(room.state[("m.room.power_levels", "")].content)

    def pl_change(sender: str, **changes: Any) -> Event:
        content = {**old, **changes}
        return room.event("m.room.power_levels", sender, content, state_key="")

    users = old["users"]
    # Raising one's own level above one's own.
    assert not allowed(room, pl_change(BOB, users={**users, BOB: 51}))
    # Changing a peer at one's own level, or someone above.
    room.member(MALLORY, "join")
    with_peer = {**users, MALLORY: 50}
    room.power_levels(**{**old, "users": with_peer})
    assert not allowed(room, pl_change(BOB, users={**with_peer, MALLORY: 0}))
    assert not allowed(room, pl_change(BOB, users={k: v for k, v in with_peer.items() if k != MALLORY}))
    if not rv.privileged_creators:
        assert not allowed(room, pl_change(BOB, users={**with_peer, ALICE: 0}))
    # Raising thresholds above one's own level.
    assert not allowed(room, pl_change(BOB, users=with_peer, ban=51))
    assert not allowed(room, pl_change(BOB, users=with_peer, events={"m.room.name": 100}))
    # What Bob may do: promote Carol up to his own level, demote himself.
    assert allowed(room, pl_change(BOB, users={**with_peer, CAROL: 50}))
    assert allowed(room, pl_change(BOB, users={**with_peer, BOB: 10}))
    # Those with no state power cannot send power levels at all.
    assert not allowed(room, pl_change(CAROL, users=with_peer))


def test_v10_rejects_string_power_levels_that_v9_accepted() -> None:
    for rv, ok in ((V.V9, True), (V.V10, False), (V.V12, False)):
        room = joined_room(rv)
        for content in ({"ban": "50"}, {"users": {BOB: "50"}}, {"events": {"m.room.name": "50"}}):
            event = room.event("m.room.power_levels", ALICE, content, state_key="")
            assert allowed(room, event) is ok, (rv.identifier, content)
    room = joined_room(V.V10)
    for bad in ({"ban": True}, {"users": {BOB: 1.5}}, {"notifications": {"room": "50"}}, {"users": {"bob": 1}}):
        assert not allowed(room, room.event("m.room.power_levels", ALICE, bad, state_key=""))


def test_stringy_levels_are_read_by_value_before_v10() -> None:
    room = joined_room(V.V9)
    room.power_levels(users={ALICE: " +100 ", BOB: "0050"})
    # Bob is at 50: unchanged "0050" -> 50 is not a change; 51 would be.
    assert allowed(room, room.event("m.room.power_levels", BOB, {"users": {ALICE: "100", BOB: 50}}, state_key=""))
    assert not allowed(room, room.event("m.room.power_levels", BOB, {"users": {ALICE: 100, BOB: 51}}, state_key=""))


# --- auth events of another room -------------------------------------------------------


@versions
def test_auth_events_from_another_room_are_rejected(rv: RoomVersion) -> None:
    room, other = joined_room(rv), Room(rv, creator=MALLORY)
    # Mallory is all-powerful in her own room; she cites that power here.
    mallory_pl = other.power_levels(users={MALLORY: 100})
    mallory_join = other.member(MALLORY, "join")
    event = room.event("m.room.power_levels", MALLORY, {"users": {MALLORY: 100}}, state_key="")
    with pytest.raises(AuthError, match="belongs to room"):
        cited = [mallory_pl, mallory_join] + ([] if rv.room_id_from_create_event else [room.create])
        check_auth_events_selection(rv, event, cited)
    forged_state = {**room.state, ("m.room.power_levels", ""): mallory_pl, ("m.room.member", MALLORY): mallory_join}
    with pytest.raises(AuthError, match="belongs to room"):
        check_auth_rules(rv, event, forged_state)
    # A create event of another room.
    with pytest.raises(AuthError):
        check_auth_rules(rv, room.event("m.room.message", ALICE), {**room.state, ("m.room.create", ""): other.create})


def test_state_filed_under_the_wrong_key_is_rejected() -> None:
    room = joined_room(V.V11)
    state = {**room.state, ("m.room.member", CAROL): room.state[("m.room.member", ALICE)]}
    with pytest.raises(AuthError, match="wrong key"):
        check_auth_rules(V.V11, room.event("m.room.message", CAROL), state)


# --- auth events selection -----------------------------------------------------------------


@versions
def test_auth_events_selection(rv: RoomVersion) -> None:
    room = joined_room(rv)
    pl, create = room.state[("m.room.power_levels", "")], room.create
    join = room.event("m.room.member", MALLORY, {"membership": "join"}, state_key=MALLORY)
    expected = {("m.room.power_levels", ""), ("m.room.member", MALLORY), ("m.room.join_rules", "")}
    if not rv.room_id_from_create_event:
        expected.add(("m.room.create", ""))
    assert auth_types_for_event(rv, join) == expected
    cited = [pl, room.state[("m.room.join_rules", "")]] + ([] if rv.room_id_from_create_event else [create])
    assert set(check_auth_events_selection(rv, join, cited)) == expected - {("m.room.member", MALLORY)}
    with pytest.raises(AuthError, match="duplicate"):
        check_auth_events_selection(rv, join, [*cited, pl])
    with pytest.raises(AuthError, match="may not cite|not one"):
        check_auth_events_selection(rv, join, [*cited, room.state[("m.room.member", BOB)]])
    if rv.room_id_from_create_event:
        # v12: the create event is implied by the room ID and must not be cited.
        with pytest.raises(AuthError):
            check_auth_events_selection(rv, join, [*cited, create])
    else:
        with pytest.raises(AuthError, match="no m.room.create"):
            check_auth_events_selection(rv, join, [pl])


def test_auth_types_for_restricted_joins_and_third_party_invites() -> None:
    content = {"membership": "join", "join_authorised_via_users_server": BOB}
    for rv, cites_bob in ((V.V7, False), (V.V8, True)):
        event = make_event(
            rv, type="m.room.member", sender=CAROL, state_key=CAROL, room_id="!r:a.test", content=content
        )
        assert (("m.room.member", BOB) in auth_types_for_event(rv, event)) is cites_bob
    invite = make_event(
        V.V10,
        type="m.room.member",
        sender=ALICE,
        state_key=CAROL,
        room_id="!r:a.test",
        content={"membership": "invite", "third_party_invite": {"signed": {"token": "tok"}}},
    )
    assert ("m.room.third_party_invite", "tok") in auth_types_for_event(V.V10, invite)


# --- create events and room versions ---------------------------------------------------


@versions
def test_create_event_rules(rv: RoomVersion) -> None:
    check_auth_rules(rv, make_create(rv), {})

    def create_with(**fields: Any) -> Event:
        base = make_create(rv).dict
        return Event({**base, **fields}, rv)

    content = make_create(rv).dict["content"]
    bad = [
        create_with(prev_events=["$x"]),
        create_with(content={**content, "room_version": "999"}),
        create_with(content={**content, "room_version": ["12"]}),
        create_with(content={**content, "room_version": 12}),
    ]
    if rv.room_id_from_create_event:
        bad.append(create_with(room_id="!whatever"))
    else:
        bad.append(create_with(room_id="!room:elsewhere.test"))
    if not rv.implicit_room_creator:
        bad.append(create_with(content={"room_version": rv.identifier}))
    for event in bad:
        with pytest.raises(AuthError):
            check_auth_rules(rv, event, {})


def test_v12_additional_creators() -> None:
    rv = V.V12
    for creators in (["@bob:b.test"], []):
        check_auth_rules(rv, make_create(rv, additional_creators=creators), {})
    bad_creators: list[object] = ["@bob:b.test", ["bob"], [5], ["@bob:b.test:99999"]]
    for bad in bad_creators:
        with pytest.raises(AuthError):
            check_auth_rules(rv, make_create(rv, additional_creators=bad), {})
    # Additional creators cannot be listed in power levels, nor kicked, even by the creator.
    room = Room(rv, additional_creators=[BOB])
    room.member(ALICE, "join")
    room.member(BOB, "join")
    assert not allowed(room, room.event("m.room.power_levels", ALICE, {"users": {BOB: 0}}, state_key=""))
    assert not allowed(room, room.event("m.room.member", ALICE, {"membership": "leave"}, state_key=BOB))
    assert allowed(room, room.event("m.room.power_levels", BOB, {"users": {CAROL: 100}}, state_key=""))


def test_v12_room_id_must_name_the_create_event() -> None:
    room = joined_room(V.V12)
    other = Room(V.V12, creator=ALICE)
    event = make_event(V.V12, type="m.room.message", sender=ALICE, room_id=other.room_id, content={})
    with pytest.raises(AuthError):
        check_auth_rules(V.V12, event, room.state)


def test_creator_first_join_and_only_then() -> None:
    for rv in ALL_VERSIONS:
        room = Room(rv)
        first = room.event(
            "m.room.member", ALICE, {"membership": "join"}, state_key=ALICE, prev_events=[room.create.event_id]
        )
        assert allowed(room, first)
        later = room.event("m.room.member", ALICE, {"membership": "join"}, state_key=ALICE)
        assert not allowed(room, later)  # no join rules: invite-only, and Alice is not invited


# --- join rules ------------------------------------------------------------------------------


def test_knock_and_restricted_rules_follow_the_version() -> None:
    for rv in ALL_VERSIONS:
        for rule, flag in (("knock", rv.knock_join_rule), ("knock_restricted", rv.knock_restricted_join_rule)):
            room = joined_room(rv)
            room.join_rules(rule)
            knock = room.event("m.room.member", MALLORY, {"membership": "knock"}, state_key=MALLORY)
            assert allowed(room, knock) is flag, (rv.identifier, rule)


def test_restricted_join_needs_a_joined_authoriser_with_invite_power() -> None:
    rv = V.V10
    room = joined_room(rv, invite=50)
    room.join_rules("restricted", allow=[{"type": "m.room_membership", "room_id": "!other:a.test"}])

    def join(authoriser: str | None, signed_by: tuple[str, ...] = ("c.test", "a.test", "b.test")) -> Event:
        content: dict[str, Any] = {"membership": "join"}
        if authoriser:
            content["join_authorised_via_users_server"] = authoriser
        sigs = {s: {"ed25519:1": "c2ln"} for s in signed_by}
        return room.event("m.room.member", MALLORY, content, state_key=MALLORY, signatures=sigs)

    assert allowed(room, join(BOB))
    assert not allowed(room, join(None))
    assert not allowed(room, join(CAROL))  # joined but below the invite level
    assert not allowed(room, join("@zed:b.test"))  # not in the room
    # b.test did not sign (Synapse checks this on receipt, not in its auth rules)
    assert not allowed(room, join(BOB, signed_by=("c.test",)), synapse_agrees=False)
    assert not allowed(room, room.event("m.room.member", MALLORY, {"membership": "join"}, state_key=MALLORY))


def test_non_federated_rooms_refuse_other_servers() -> None:
    room = Room(V.V11, ALICE, **{"m.federate": False})
    room.member(ALICE, "join")
    room.join_rules("public")
    assert allowed(room, room.event("m.room.member", CAROL, {"membership": "join"}, state_key=CAROL))
    assert not allowed(room, room.event("m.room.member", MALLORY, {"membership": "join"}, state_key=MALLORY))
    assert not allowed(room, room.event("m.room.member", ALICE, {"membership": "invite"}, state_key=MALLORY))


# --- third-party invites -------------------------------------------------------------------


def test_third_party_invites() -> None:
    rv = V.V11
    identity_key = spec_signing_key()
    room = joined_room(rv)
    room.set(
        "m.room.third_party_invite",
        "tok",
        {"display_name": "x", "public_keys": [{"public_key": encode_verify_key_base64(get_verify_key(identity_key))}]},
        sender=BOB,
    )

    def invite(
        sender: str = BOB, mxid: str = MALLORY, token: str = "tok", sign: bool = True, tamper: bool = False
    ) -> Event:
        signed: dict[str, Any] = {"mxid": mxid, "token": token, "sender": sender}
        if sign:
            signed = sign_json(signed, "id.test", identity_key)
        if tamper:
            signed["token"] = "tok"
            signed["sender"] = ALICE
        content = {"membership": "invite", "third_party_invite": {"display_name": "x", "signed": signed}}
        return room.event("m.room.member", sender, content, state_key=MALLORY)

    assert allowed(room, invite())
    assert not allowed(room, invite(sign=False))
    assert not allowed(room, invite(mxid=CAROL))
    assert not allowed(room, invite(token="other"))
    assert not allowed(room, invite(sender=ALICE))  # the m.room.third_party_invite was Bob's
    assert not allowed(room, invite(token="tik", tamper=True))
    room.member(MALLORY, "ban")
    assert not allowed(room, invite())


# --- other events -------------------------------------------------------------------------------


@versions
def test_other_events(rv: RoomVersion) -> None:
    room = joined_room(rv)
    assert allowed(room, room.event("m.room.message", CAROL, {"body": "hi"}))
    assert not allowed(room, room.event("m.room.message", MALLORY, {"body": "not joined"}))
    assert not allowed(room, room.event("m.room.topic", CAROL, {"topic": "x"}, state_key=""))
    assert allowed(room, room.event("m.room.topic", BOB, {"topic": "x"}, state_key=""))
    # State keys naming a user belong to that user.
    assert allowed(room, room.event("com.example", BOB, {}, state_key=BOB))
    assert not allowed(room, room.event("com.example", BOB, {}, state_key=CAROL))
    # Third-party invite state needs the invite level (0 here), not state_default.
    assert allowed(room, room.event("m.room.third_party_invite", CAROL, {}, state_key="t"))
    # Redactions are ordinary events to the auth rules.
    assert allowed(room, room.event("m.room.redaction", CAROL, {"redacts": "$x"}, redacts="$x"))


def test_aliases_special_case_until_v6() -> None:
    for rv in (V.V5, V.V6):
        room = joined_room(rv)
        mine = room.event("m.room.aliases", CAROL, {"aliases": []}, state_key="a.test")
        theirs = room.event("m.room.aliases", CAROL, {"aliases": []}, state_key="b.test")
        # v5: scoped to the sender's server, whatever the power; v6: ordinary state (50).
        assert allowed(room, mine) is (rv is V.V5)
        assert not allowed(room, theirs)
