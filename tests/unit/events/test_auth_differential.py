"""Auth decisions agree with Synapse's on generated rooms and events, for every version.

Each example is a room state (create event, maybe power levels and join rules, some
memberships, maybe a third-party invite) and one event to authorise against it.  The
generator draws from small sets of users and levels so that interesting cases (equal
levels, the creator's first join, unbanning...) come up often.

The oracle is Synapse's state-dependent rules (``check_state_dependent_auth_rules``) and
its create-event checks.  The rules Synapse applies elsewhere (auth event rooms, the v12
room ID, signature presence) are covered by test_auth_rules.py instead, so generated
events always satisfy them.
"""

from __future__ import annotations

from typing import Any

import pytest
from _events_helpers import ALL_VERSIONS, Room, examples, spec_signing_key, synapse_allows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homeserver.events.auth import AuthError, check_auth_rules
from homeserver.events.model import Event
from homeserver.events.room_versions import RoomVersion
from homeserver.events.signing import encode_verify_key_base64, get_verify_key, sign_json

ALICE = "@alice:a.test"  # always the creator
USERS = [ALICE, "@bob:b.test", "@carol:a.test", "@dave:c.test"]
MEMBERSHIPS = [None, "join", "join", "invite", "leave", "ban", "knock"]
JOIN_RULES = ["public", "invite", "knock", "restricted", "knock_restricted", "private"]
INT_LEVELS = [-1, 0, 1, 49, 50, 51, 99, 100]
STRINGY_LEVELS = ["50", " 50 ", "+100", "0100", "-1", "0"]
NAMED = ["users_default", "events_default", "state_default", "ban", "kick", "redact", "invite"]
EVENT_TYPES = ["m.room.message", "m.room.topic", "m.room.power_levels", "m.room.name", "com.example"]

IDENTITY_KEY = spec_signing_key()
IDENTITY_PUBLIC_KEY = encode_verify_key_base64(get_verify_key(IDENTITY_KEY))


def levels(rv: RoomVersion, *, allow_invalid: bool = False) -> st.SearchStrategy[Any]:
    choices: st.SearchStrategy[Any] = st.sampled_from(INT_LEVELS)
    if not rv.enforce_int_power_levels:
        choices = choices | st.sampled_from(STRINGY_LEVELS)
    elif allow_invalid:
        choices = choices | st.sampled_from(["50", True, None])
    return choices


@st.composite
def power_levels_content(draw: st.DrawFn, rv: RoomVersion) -> dict[str, Any]:
    content: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(NAMED), unique=True, max_size=4)):
        content[name] = draw(levels(rv))
    users = draw(st.dictionaries(st.sampled_from(USERS), levels(rv), max_size=4))
    if rv.privileged_creators:
        users.pop(ALICE, None)  # creators in `users` make the event invalid: no such state
    elif draw(st.integers(0, 3)):
        users[ALICE] = 100  # usually, the creator keeps their power
    content["users"] = users
    if draw(st.booleans()):
        content["events"] = draw(st.dictionaries(st.sampled_from(EVENT_TYPES), levels(rv), max_size=3))
    if draw(st.booleans()):
        content["notifications"] = {"room": draw(levels(rv))}
    return content


@st.composite
def edited_power_levels(draw: st.DrawFn, rv: RoomVersion, old: dict[str, Any]) -> dict[str, Any]:
    """A new power levels content: usually a few edits of the old one, to hit both sides."""
    if not old or draw(st.integers(0, 4)) == 0:
        new = draw(power_levels_content(rv))
    else:
        new = {k: dict(v) if isinstance(v, dict) else v for k, v in old.items()}
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["named", "users", "events", "notifications", "bad_user"]))
        value = draw(levels(rv, allow_invalid=True))
        if where == "named":
            name = draw(st.sampled_from(NAMED))
            if draw(st.booleans()):
                new.pop(name, None)
            else:
                new[name] = value
        elif where == "bad_user":
            new.setdefault("users", {})[draw(st.sampled_from(["notauser", "@nocolon"]))] = 0
        else:
            sub = new.setdefault(where, {})
            key = draw(st.sampled_from(USERS if where == "users" else EVENT_TYPES + ["room"]))
            if draw(st.booleans()):
                sub.pop(key, None)
            else:
                sub[key] = value
    return new


def third_party_invite_content(draw: st.DrawFn, target: str) -> dict[str, Any]:
    signed: dict[str, Any] = {
        "mxid": draw(st.sampled_from([target, target, "@zed:c.test"])),
        "token": draw(st.sampled_from(["tok", "tok", "nope"])),
    }
    if draw(st.booleans()):
        signed = sign_json(signed, "id.test", IDENTITY_KEY)
    if draw(st.integers(0, 5)) == 0:
        signed.pop(draw(st.sampled_from(["mxid", "token"])))
    return {"membership": "invite", "third_party_invite": {"display_name": "x", "signed": signed}}


@st.composite
def scenarios(draw: st.DrawFn, rv: RoomVersion) -> tuple[Room, Event]:
    create_content: dict[str, Any] = {}
    federate = draw(st.sampled_from([None, None, True, False]))
    if federate is not None:
        create_content["m.federate"] = federate
    if rv.privileged_creators and draw(st.booleans()):
        create_content["additional_creators"] = draw(
            st.sampled_from([[], ["@bob:b.test"], ["@dave:c.test", "@carol:a.test"]])
        )
    room = Room(rv, ALICE, **create_content)

    old_pl: dict[str, Any] = {}
    if draw(st.integers(0, 4)):
        old_pl = draw(power_levels_content(rv))
        room.power_levels(**old_pl)
    if draw(st.integers(0, 4)):
        room.join_rules(draw(st.sampled_from(JOIN_RULES)))
    for user in USERS:
        membership = draw(st.sampled_from(MEMBERSHIPS)) if user != ALICE or draw(st.integers(0, 4)) == 0 else "join"
        if membership is not None:
            room.member(user, membership)
    if draw(st.booleans()):
        tpi_sender = draw(st.sampled_from(USERS))
        room.set(
            "m.room.third_party_invite",
            "tok",
            {"display_name": "x", "public_key": IDENTITY_PUBLIC_KEY},
            sender=tpi_sender,
        )

    sender = draw(st.sampled_from([ALICE, *USERS]))  # the creator twice: more allowed cases
    kind = draw(st.sampled_from(["member", "member", "member", "power_levels", "other", "create"]))
    if kind == "member":
        target = sender if draw(st.booleans()) else draw(st.sampled_from(USERS))
        membership = draw(st.sampled_from(["join", "join", "invite", "leave", "ban", "knock", "foo"]))
        content: dict[str, Any] = {"membership": membership}
        if membership == "join" and draw(st.booleans()):
            content["join_authorised_via_users_server"] = draw(st.sampled_from(USERS))
        if membership == "invite" and draw(st.integers(0, 3)) == 0:
            content = third_party_invite_content(draw, target)
        prev = [room.create.event_id] if draw(st.integers(0, 3)) == 0 else ["$previous"]
        event = room.event("m.room.member", sender, content, state_key=target, prev_events=prev)
    elif kind == "power_levels":
        event = room.event("m.room.power_levels", sender, draw(edited_power_levels(rv, old_pl)), state_key="")
    elif kind == "other":
        event_type = draw(
            st.sampled_from(
                EVENT_TYPES + ["m.room.third_party_invite", "m.room.redaction", "m.room.aliases", "m.room.join_rules"]
            )
        )
        state_key = draw(st.sampled_from([None, "", "", sender, "@carol:a.test", "a.test", "b.test"]))
        fields: dict[str, Any] = {} if state_key is None else {"state_key": state_key}
        if event_type == "m.room.redaction":
            fields["redacts"] = "$target"
        event = room.event(event_type, sender, {"join_rule": "public"}, **fields)
    else:
        event = draw(create_events(rv, sender))
    return room, event


@st.composite
def create_events(draw: st.DrawFn, rv: RoomVersion, sender: str) -> Event:
    content: dict[str, Any] = {}
    version = draw(st.sampled_from([None, rv.identifier, "1", "6", "999", 5]))
    if version is not None:
        content["room_version"] = version
    if not rv.implicit_room_creator and draw(st.integers(0, 4)):
        content["creator"] = sender
    if rv.privileged_creators and draw(st.booleans()):
        content["additional_creators"] = draw(
            st.sampled_from([[], ["@bob:b.test"], "@bob:b.test", ["bob"], [5], ["@bob:b.test", "@x:[::1]:8448"]])
        )
    fields: dict[str, Any] = {"state_key": "", "prev_events": draw(st.sampled_from([[], [], ["$x"]]))}
    room = Room(rv)
    event = room.event("m.room.create", sender, content, **fields)
    if rv.room_id_from_create_event:
        # The v12 create event has no room_id (unless it is a bad one).
        d = {k: v for k, v in event.dict.items() if k != "room_id"}
        if draw(st.integers(0, 4)) == 0:
            d["room_id"] = "!bad"
    else:
        d = {**event.dict, "room_id": "!new:" + draw(st.sampled_from(["a.test", "b.test"]))}
    return Event(d, rv)


def ours_allows(rv: RoomVersion, event: Event, room: Room) -> tuple[bool, str]:
    try:
        check_auth_rules(rv, event, room.state)
    except AuthError as e:
        return False, e.msg
    return True, ""


@pytest.mark.parametrize("rv", ALL_VERSIONS, ids=lambda v: f"v{v.identifier}")
def test_auth_decisions_match_synapse(rv: RoomVersion) -> None:
    @settings(
        max_examples=examples(200 if rv.identifier in ("6", "10", "11", "12") else 100),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(scenarios(rv))
    def check(case: tuple[Room, Event]) -> None:
        room, event = case
        ours, our_reason = ours_allows(rv, event, room)
        theirs, their_reason = synapse_allows(event, room.state)
        assert ours == theirs, f"ours: {ours} ({our_reason}); Synapse: {theirs} ({their_reason})"

    check()
