"""Differential tests: random room DAGs resolved by us and by Synapse must agree.

Each example grows a room from a common start (creator, a few joined users, power
levels, public join rule) by adding events on random forks and merging random sets
of earlier events: power level changes, joins, leaves, kicks, bans, invites, join
rule and topic changes, from random senders.  Events the auth rules refuse against
the state before them are skipped, so every DAG is one honest servers could build;
conflicts arise from the forks.  At every merge, and for a final random set of
events, our resolution must equal Synapse's (``synapse.state.v2``).

"synapse" auth runs our algorithm with Synapse's auth rules (the algorithm alone);
"ours" runs it with ``homeserver.events.auth`` (the whole stack).
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from state_res_testlib import ALICE, BOB, CAROL, DAVE, EVE, JR, MEMBER, PL, TOPIC, USERS, Room

LEVELS = (0, 10, 50, 75, 100)
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# The stale-views test is cheaper per example and the one that tells v2 from v2.1.
STALE_SETTINGS = settings(SETTINGS, max_examples=100)


def _power_levels(data: st.DataObject, room: Room) -> dict[str, Any]:
    users = {}
    for user in data.draw(st.lists(st.sampled_from(USERS), max_size=4, unique=True), label="users"):
        if room.rv.privileged_creators and user == ALICE:
            continue  # v12 creators cannot be listed
        users[user] = data.draw(st.sampled_from(LEVELS))
    content: dict[str, Any] = {"users": users}
    for name in ("ban", "kick", "state_default", "users_default"):
        if data.draw(st.booleans()):
            content[name] = data.draw(st.sampled_from(LEVELS))
    if data.draw(st.booleans()):
        content["events"] = {TOPIC: data.draw(st.sampled_from(LEVELS))}
    return content


def _start(version: str, auth: str, data: st.DataObject) -> Room:
    v12 = version == "12"
    extra = [EVE] if v12 and data.draw(st.booleans(), label="eve is creator") else []
    room = Room(version, auth=auth, additional_creators=extra)
    room.add("IMA", MEMBER, ALICE, {"membership": "join"}, state_key=ALICE, prev=["CREATE"])
    users = {BOB: 50, CAROL: 50} if v12 else {ALICE: 100, BOB: 50, CAROL: 50}
    room.add("IPL", PL, ALICE, {"users": users}, state_key="", prev=["IMA"])
    room.add("IJR", JR, ALICE, {"join_rule": "public"}, state_key="", prev=["IPL"])
    prev = "IJR"
    for user, name in ((BOB, "IMB"), (CAROL, "IMC"), (DAVE, "IMD")):
        room.add(name, MEMBER, user, {"membership": "join"}, state_key=user, prev=[prev])
        prev = name
    return room


def _random_event(data: st.DataObject, room: Room) -> tuple[str, str, dict[str, Any], str]:
    """(type, sender, content, state_key) of a random state event."""
    kind = data.draw(st.sampled_from(["pl", "member", "member", "jr", "topic"]), label="kind")
    sender = data.draw(st.sampled_from(USERS), label="sender")
    if kind == "pl":
        return PL, sender, _power_levels(data, room), ""
    if kind == "jr":
        return JR, sender, {"join_rule": data.draw(st.sampled_from(["public", "invite"]))}, ""
    if kind == "topic":
        return TOPIC, sender, {"topic": data.draw(st.sampled_from("abc"))}, ""
    membership = data.draw(st.sampled_from(["join", "leave", "ban", "invite", "leave"]))
    target = sender if membership == "join" else data.draw(st.sampled_from(USERS), label="target")
    return MEMBER, sender, {"membership": membership}, target


def _assert_same(room: Room, prev: list[str]) -> None:
    state_sets = [room.state_after[p] for p in prev]
    ours = room.resolve(state_sets)
    theirs = room.resolve_with_synapse(state_sets)
    assert room.names(ours) == room.names(theirs), f"resolving after {prev}"
    # The order of the state sets must not matter.
    assert room.resolve(state_sets[::-1]) == ours


def _make_stale(data: st.DataObject, room: Room, names: list[str]) -> None:
    """Replace one entry of the state after some event by an older event for the same
    key, as a server does after a faulty or partial /state_ids sync: the inputs that
    the v2.1 changes (MSC4297) are about."""
    name = data.draw(st.sampled_from(names), label="stale event")
    state = room.state_after[name]
    by_key: dict[tuple[str, str], list[str]] = {}
    for event_id, event in room.ours.items():
        if event.state_key is not None and event_id != state.get((event.type, event.state_key)):
            by_key.setdefault((event.type, event.state_key), []).append(event_id)
    keys = sorted(k for k in state if k in by_key and k[0] != "m.room.create")
    if keys:
        key = data.draw(st.sampled_from(keys), label="stale key")
        state[key] = data.draw(st.sampled_from(sorted(by_key[key])), label="stale value")


def _grow_and_compare(version: str, auth: str, data: st.DataObject) -> None:
    room = _start(version, auth, data)
    names = ["IJR", "IMB", "IMC", "IMD"]
    steps = data.draw(st.integers(min_value=4, max_value=24), label="steps")
    for step in range(steps):
        if data.draw(st.integers(0, 2), label="stale?") == 0:
            _make_stale(data, room, names)
        if data.draw(st.booleans(), label="merge"):
            # Merge two or three events from anywhere in the room's history: stale
            # forks are where conflicts and auth differences come from.
            prev = data.draw(st.lists(st.sampled_from(names), min_size=2, max_size=3, unique=True), label="prev")
        else:
            prev = [data.draw(st.sampled_from(names[-6:]), label="extend")]
        if len(prev) > 1:
            _assert_same(room, prev)
        event_type, sender, content, state_key = _random_event(data, room)
        # Coarse timestamps so that ties (broken by event ID) happen.
        ts = 1000 + 10 * data.draw(st.integers(min_value=0, max_value=steps))
        name = f"E{step}"
        if room.try_add(name, event_type, sender, content, state_key=state_key, prev=prev, ts=ts):
            names.append(name)
    final = data.draw(st.lists(st.sampled_from(names), min_size=2, max_size=4, unique=True))
    _assert_same(room, final)


def _stale_views_compare(version: str, auth: str, data: st.DataObject) -> None:
    """A linear history, then several views of its latest state, each with a few keys
    set back to older events: what servers hold after partial syncs.  Resolving
    such views is where v2.1 departs from v2."""
    room = _start(version, auth, data)
    names = ["IJR", "IMB", "IMC", "IMD"]
    for step in range(data.draw(st.integers(min_value=3, max_value=20), label="steps")):
        event_type, sender, content, state_key = _random_event(data, room)
        ts = 1000 + 10 * data.draw(st.integers(min_value=0, max_value=20))
        if room.try_add(f"E{step}", event_type, sender, content, state_key=state_key, prev=[names[-1]], ts=ts):
            names.append(f"E{step}")
    history: dict[tuple[str, str], list[str]] = {}
    for event_id, event in room.ours.items():
        if event.state_key is not None and event.type != "m.room.create":
            history.setdefault((event.type, event.state_key), []).append(event_id)
    views = []
    for _ in range(data.draw(st.integers(min_value=2, max_value=3), label="views")):
        view = dict(room.state_after[data.draw(st.sampled_from(names[-3:]), label="view of")])
        keys = sorted(k for k in view if len(history.get(k, ())) > 1)
        if keys:
            for key in data.draw(st.lists(st.sampled_from(keys), max_size=3, unique=True)):
                view[key] = data.draw(st.sampled_from(sorted(history[key])), label="stale")
        views.append(view)
    ours = room.resolve(views)
    assert room.names(ours) == room.names(room.resolve_with_synapse(views))
    assert room.resolve(views[::-1]) == ours


def _differential_test(version: str, auth: str) -> Any:
    # One @given function per case: pytest-twisted wraps a hypothesis test's inner
    # function in place, so parametrizing one @given function would wrap it twice.
    @SETTINGS
    @given(data=st.data())
    def test(data: st.DataObject) -> None:
        _grow_and_compare(version, auth, data)

    test.__name__ = f"test_v{version}_{auth}_auth_matches_synapse"
    return test


def _stale_views_test(version: str, auth: str) -> Any:
    @STALE_SETTINGS
    @given(data=st.data())
    def test(data: st.DataObject) -> None:
        _stale_views_compare(version, auth, data)

    test.__name__ = f"test_v{version}_{auth}_auth_stale_views_match_synapse"
    return test


test_v10_synapse_auth_matches_synapse = _differential_test("10", "synapse")
test_v11_synapse_auth_matches_synapse = _differential_test("11", "synapse")
test_v12_synapse_auth_matches_synapse = _differential_test("12", "synapse")
test_v10_our_auth_matches_synapse = _differential_test("10", "ours")
test_v11_our_auth_matches_synapse = _differential_test("11", "ours")
test_v12_our_auth_matches_synapse = _differential_test("12", "ours")
test_v11_our_auth_stale_views_match_synapse = _stale_views_test("11", "ours")
test_v12_synapse_auth_stale_views_match_synapse = _stale_views_test("12", "synapse")
test_v12_our_auth_stale_views_match_synapse = _stale_views_test("12", "ours")
