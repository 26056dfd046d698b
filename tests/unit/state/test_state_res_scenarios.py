"""Hand-built room DAGs with a known right answer, in the spirit of the spec's
state resolution rationale and Synapse's tests/state/test_v2.py (re-derived, not
copied).  Each scenario runs with our auth rules, on v11 (state res v2) and v12
(v2.1), and on v9 (creator named in the create event's content), and is also
checked against Synapse's resolver.

Notation in comments: ``A -> B`` means B comes after A (B's prev_events include A).
"""

from __future__ import annotations

from typing import Any

import pytest
from state_res_testlib import ALICE, BOB, CAROL, DAVE, EVE, JR, MEMBER, PL, TOPIC, Room, run_sync

from homeserver.state.auth_chain import InMemoryStateStore
from homeserver.state.resolution import resolve_state

VERSIONS = ["9", "11", "12"]


def basic_room(version: str, **kwargs: Any) -> Room:
    """Alice creates the room (admin), Bob is a moderator (50), Carol a member.

    CREATE -> IMA -> IPL -> IJR(public) -> IMB -> IMC
    """
    room = Room(version, **kwargs)
    room.add("IMA", MEMBER, ALICE, {"membership": "join"}, state_key=ALICE, prev=["CREATE"])
    room.add("IPL", PL, ALICE, {"users": levels(room, {ALICE: 100, BOB: 50})}, state_key="", prev=["IMA"])
    room.add("IJR", JR, ALICE, {"join_rule": "public"}, state_key="", prev=["IPL"])
    room.add("IMB", MEMBER, BOB, {"membership": "join"}, state_key=BOB, prev=["IJR"])
    room.add("IMC", MEMBER, CAROL, {"membership": "join"}, state_key=CAROL, prev=["IMB"])
    return room


def levels(room: Room, users: dict[str, int]) -> dict[str, int]:
    """A ``users`` map for the room version: v12 creators may not be listed."""
    if room.rv.privileged_creators:
        return {u: level for u, level in users.items() if u != ALICE}
    return users


def check_against_synapse(room: Room, *names: str) -> dict[tuple[str, str], str]:
    """Resolve the states after ``names`` with both resolvers; return ours, named."""
    state_sets = [room.state_after[n] for n in names]
    ours: dict[tuple[str, str], str] = room.names(room.resolve(state_sets))
    assert ours == room.names(room.resolve_with_synapse(state_sets))
    return ours


@pytest.mark.parametrize("version", VERSIONS)
def test_ban_beats_concurrent_power_change_by_banned_user(version: str) -> None:
    # IMC -> MB (Alice bans Bob)
    # IMC -> PB (Bob, still a moderator on his fork, raises Carol to 50)
    room = basic_room(version)
    room.add("MB", MEMBER, ALICE, {"membership": "ban"}, state_key=BOB, prev=["IMC"])
    room.add("PB", PL, BOB, {"users": levels(room, {ALICE: 100, BOB: 50, CAROL: 50})}, state_key="", prev=["IMC"])
    state = check_against_synapse(room, "MB", "PB")
    # Alice outranks Bob, so her ban is applied first and Bob's change no longer passes.
    assert state[(MEMBER, BOB)] == "MB"
    assert state[(PL, "")] == "IPL"


@pytest.mark.parametrize("version", VERSIONS)
def test_power_escalation_by_demoted_user_loses(version: str) -> None:
    # IMC -> PA (Alice demotes Bob to 0)
    # IMC -> PB (Bob makes Carol a moderator) -> TB (Bob sets the topic, needs 50)
    room = basic_room(version)
    room.add(
        "PA",
        PL,
        ALICE,
        {"users": levels(room, {ALICE: 100}), "events": {TOPIC: 50}},
        state_key="",
        prev=["IMC"],
    )
    room.add(
        "PB",
        PL,
        BOB,
        {"users": levels(room, {ALICE: 100, BOB: 50, CAROL: 50}), "events": {TOPIC: 50}},
        state_key="",
        prev=["IMC"],
        ts=99_999,  # later than anything: the timestamp must not help
    )
    room.add("TB", TOPIC, BOB, {"topic": "Bob's"}, state_key="", prev=["PB"])
    room.add("TC", TOPIC, CAROL, {"topic": "Carol's"}, state_key="", prev=["TB"])
    state = check_against_synapse(room, "PA", "TC")
    assert state[(PL, "")] == "PA"
    # Neither Bob's topic nor the one Carol set with the power Bob gave her survives.
    assert (TOPIC, "") not in state


@pytest.mark.parametrize("version", VERSIONS)
def test_banned_users_forged_membership_loses(version: str) -> None:
    # IMC -> MB (Alice bans Bob)
    # IMC -> MB2 (Bob, unaware, updates his displayname: a join, sent later)
    room = basic_room(version)
    room.add("MB", MEMBER, ALICE, {"membership": "ban"}, state_key=BOB, prev=["IMC"], ts=5000)
    room.add("MB2", MEMBER, BOB, {"membership": "join", "displayname": "Bob"}, state_key=BOB, prev=["IMC"], ts=6000)
    state = check_against_synapse(room, "MB", "MB2")
    assert state[(MEMBER, BOB)] == "MB"
    # And the same with the state sets the other way round.
    assert room.resolve_names("MB2", "MB") == state


@pytest.mark.parametrize("version", VERSIONS)
def test_join_rule_change_beats_concurrent_join(version: str) -> None:
    # IMC -> JRI (Alice: invite only)
    # IMC -> ME (Eve joins while the room is still public)
    room = basic_room(version)
    room.add("JRI", JR, ALICE, {"join_rule": "invite"}, state_key="", prev=["IMC"])
    room.add("ME", MEMBER, EVE, {"membership": "join"}, state_key=EVE, prev=["IMC"])
    state = check_against_synapse(room, "JRI", "ME")
    assert state[(JR, "")] == "JRI"
    assert (MEMBER, EVE) not in state


@pytest.mark.parametrize("version", VERSIONS)
def test_topic_by_later_banned_user_is_dropped_not_reset(version: str) -> None:
    # IMC -> T1 (Alice) -> PA (Alice: topic needs 50) -> T2 (Bob) -> T3 (Alice)
    #                                                  \-> MB (Alice bans Bob)
    # Bob's ban is concurrent with T2 only; T3 came after T2 and survives.
    room = basic_room(version)
    room.add("T1", TOPIC, ALICE, {"topic": "1"}, state_key="", prev=["IMC"])
    room.add(
        "PA",
        PL,
        ALICE,
        {"users": levels(room, {ALICE: 100, BOB: 50}), "events": {TOPIC: 50}},
        state_key="",
        prev=["T1"],
    )
    room.add("T2", TOPIC, BOB, {"topic": "2"}, state_key="", prev=["PA"])
    room.add("MB", MEMBER, ALICE, {"membership": "ban"}, state_key=BOB, prev=["PA"])
    room.add("T3", TOPIC, ALICE, {"topic": "3"}, state_key="", prev=["T2"])
    state = check_against_synapse(room, "T3", "MB")
    assert state[(TOPIC, "")] == "T3"
    assert state[(MEMBER, BOB)] == "MB"
    # Without T3, Bob's concurrent topic loses to his ban: the topic stays T1.
    assert check_against_synapse(room, "T2", "MB")[(TOPIC, "")] == "T1"


@pytest.mark.parametrize("version", VERSIONS)
def test_mainline_ordering_prefers_later_power_levels(version: str) -> None:
    # IMC -> PA1 -> TA (Alice, ts 9000) ; PA1 -> PA2 -> TB (Bob, ts 2000)
    # TA is authorised by an older power levels event on the resolved mainline than
    # TB, so TB is applied after it and wins despite its earlier timestamp.
    room = basic_room(version)
    users = levels(room, {ALICE: 100, BOB: 50})
    room.add("PA1", PL, ALICE, {"users": users, "events": {TOPIC: 50}}, state_key="", prev=["IMC"])
    room.add("TA", TOPIC, ALICE, {"topic": "A"}, state_key="", prev=["PA1"], ts=9000)
    room.add("PA2", PL, ALICE, {"users": users, "events": {TOPIC: 10}}, state_key="", prev=["PA1"])
    room.add("TB", TOPIC, BOB, {"topic": "B"}, state_key="", prev=["PA2"], ts=2000)
    state = check_against_synapse(room, "TA", "TB")
    assert state[(PL, "")] == "PA2"
    assert state[(TOPIC, "")] == "TB"


@pytest.mark.parametrize("version", VERSIONS)
def test_offtopic_power_levels(version: str) -> None:
    # Power level changes that are irrelevant to the topic interleave with topic
    # changes on two forks; the topic resolves by the mainline, not timestamps.
    # IMC -> PA (Bob 50) -> PB (Bob, Carol 50) -> PC (Carol, Dave 10) -> TC (Carol)
    #    \-> TA (Alice, sent last)
    room = basic_room(version)
    room.add("MD", MEMBER, DAVE, {"membership": "join"}, state_key=DAVE, prev=["IMC"])
    room.add("PB", PL, BOB, {"users": levels(room, {ALICE: 100, BOB: 50, CAROL: 50})}, state_key="", prev=["MD"])
    room.add(
        "PC",
        PL,
        CAROL,
        {"users": levels(room, {ALICE: 100, BOB: 50, CAROL: 50, DAVE: 10})},
        state_key="",
        prev=["PB"],
    )
    room.add("TC", TOPIC, CAROL, {"topic": "C"}, state_key="", prev=["PC"], ts=3000)
    room.add("TA", TOPIC, ALICE, {"topic": "A"}, state_key="", prev=["MD"], ts=9000)
    state = check_against_synapse(room, "TC", "TA")
    assert state[(PL, "")] == "PC"
    assert state[(TOPIC, "")] == "TC"


@pytest.mark.parametrize("version", VERSIONS)
def test_no_conflict_is_a_plain_union(version: str) -> None:
    room = basic_room(version)
    room.add("T1", TOPIC, ALICE, {"topic": "1"}, state_key="", prev=["IMC"])
    assert room.resolve_names("T1", "T1") == room.names(room.state_after["T1"])


# -- room version 12: the v2.1 changes (MSC4297) --------------------------------------


def problem_a_room(version: str) -> Room:
    """MSC4297 "problem A": a stale join rules entry plus an unconflicted leave.

    IMC -> JR1 (Alice: invite) -> JR2 (Alice: public) -> LA (Alice leaves)
    Both state sets are "after LA", but one came from a faulty partial sync and
    still names JR1.
    """
    room = basic_room(version)
    room.add("JR1", JR, ALICE, {"join_rule": "invite"}, state_key="", prev=["IMC"])
    room.add("JR2", JR, ALICE, {"join_rule": "public"}, state_key="", prev=["JR1"])
    # In v12 Alice is a creator; it is her leaving that matters, not her level.
    room.add("LA", MEMBER, ALICE, {"membership": "leave"}, state_key=ALICE, prev=["JR2"])
    return room


def test_v12_no_state_reset_from_stale_join_rules() -> None:
    room = problem_a_room("12")
    good = room.state_after["LA"]
    stale = dict(good)
    stale[(JR, "")] = room.id("JR1")
    resolved = room.names(room.resolve([good, stale]))
    assert resolved == room.names(room.resolve_with_synapse([good, stale]))
    # Replayed on their own auth events, both join rules pass; JR2 came later.
    assert resolved[(JR, "")] == "JR2"


def test_v11_stale_join_rules_reset_as_v2_specifies() -> None:
    # The same input on v11 shows the reset v2.1 fixes: both join rules are checked
    # against the unconflicted state, where Alice has left, and both fail.
    room = problem_a_room("11")
    good = room.state_after["LA"]
    stale = dict(good)
    stale[(JR, "")] = room.id("JR1")
    resolved = room.names(room.resolve([good, stale]))
    assert resolved == room.names(room.resolve_with_synapse([good, stale]))
    assert (JR, "") not in resolved


def problem_b_room(version: str) -> tuple[Room, dict[Any, str], dict[Any, str]]:
    """MSC4297 "problem B": Alice promotes Bob, Bob promotes Carol; one state set
    names the original power levels (stale) but holds Carol's later topic, so both
    auth chains contain Bob's promotion and the auth difference misses it.

    IMC -> P0 (Alice; Bob 0) -> PB (Alice; Bob 50) -> PC (Bob; Carol 50) -> TC (Carol)
    """
    room = basic_room(version)
    room.add("P0", PL, ALICE, {"users": levels(room, {ALICE: 100}), "events": {TOPIC: 50}}, state_key="", prev=["IMC"])
    room.add(
        "PB",
        PL,
        ALICE,
        {"users": levels(room, {ALICE: 100, BOB: 50}), "events": {TOPIC: 50}},
        state_key="",
        prev=["P0"],
    )
    room.add(
        "PC",
        PL,
        BOB,
        {"users": levels(room, {ALICE: 100, BOB: 50, CAROL: 50}), "events": {TOPIC: 50}},
        state_key="",
        prev=["PB"],
    )
    room.add("TC", TOPIC, CAROL, {"topic": "C"}, state_key="", prev=["PC"])
    good = room.state_after["TC"]
    stale = dict(good)
    stale[(PL, "")] = room.id("P0")
    return room, good, stale


def test_v12_conflicted_subgraph_replays_intermediate_promotion() -> None:
    room, good, stale = problem_b_room("12")
    resolved = room.names(room.resolve([good, stale]))
    assert resolved == room.names(room.resolve_with_synapse([good, stale]))
    # PB lies between the conflicted P0 and PC, so it is replayed and PC passes.
    assert resolved[(PL, "")] == "PC"


def test_v11_misses_intermediate_promotion() -> None:
    room, good, stale = problem_b_room("11")
    resolved = room.names(room.resolve([good, stale]))
    assert resolved == room.names(room.resolve_with_synapse([good, stale]))
    # v2 does not replay PB, so Bob's PC fails against P0: the power levels reset.
    assert resolved[(PL, "")] == "P0"


def test_v12_additional_creator_outranks_any_power_level() -> None:
    # Eve is an additional creator: infinite power, so her concurrent demotion of
    # Bob is ordered (and applied) before Bob's own change, which then fails.
    room = Room("12", additional_creators=[EVE])
    room.add("IMA", MEMBER, ALICE, {"membership": "join"}, state_key=ALICE, prev=["CREATE"])
    room.add("IPL", PL, ALICE, {"users": {BOB: 99}}, state_key="", prev=["IMA"])
    room.add("IJR", JR, ALICE, {"join_rule": "public"}, state_key="", prev=["IPL"])
    room.add("IME", MEMBER, EVE, {"membership": "join"}, state_key=EVE, prev=["IJR"])
    room.add("IMB", MEMBER, BOB, {"membership": "join"}, state_key=BOB, prev=["IME"])
    room.add("PE", PL, EVE, {"users": {}}, state_key="", prev=["IMB"], ts=9000)
    room.add("PB", PL, BOB, {"users": {BOB: 99, CAROL: 99}}, state_key="", prev=["IMB"], ts=1000)
    state = check_against_synapse(room, "PE", "PB")
    assert state[(PL, "")] == "PE"


# -- rejected events -------------------------------------------------------------------


def test_rejected_auth_event_is_not_used_as_fallback() -> None:
    # Bob's topic cites IMB; if IMB was rejected on receipt it cannot vouch for Bob's
    # membership during the replay, so the topic fails (Bob is not joined).
    room = basic_room("12")
    room.add("TB", TOPIC, BOB, {"topic": "B"}, state_key="", prev=["IMC"])
    room.add("TA", TOPIC, ALICE, {"topic": "A"}, state_key="", prev=["IMC"], ts=1)
    states = [room.state_after["TB"], room.state_after["TA"]]
    assert room.names(room.resolve(states))[(TOPIC, "")] == "TB"
    without_imb = room.names(room.resolve(states, rejected=[room.id("IMB")]))
    assert without_imb[(TOPIC, "")] == "TA"


@pytest.mark.parametrize("version", VERSIONS)
def test_default_auth_rules_are_ours(version: str) -> None:
    room = basic_room(version)
    room.add("MB", MEMBER, ALICE, {"membership": "ban"}, state_key=BOB, prev=["IMC"])
    room.add("TB", TOPIC, BOB, {"topic": "Bob's"}, state_key="", prev=["IMC"])
    state_sets = [room.state_after["MB"], room.state_after["TB"]]
    default = run_sync(resolve_state(room.rv, room.room_id, state_sets, InMemoryStateStore(room.ours)))
    assert default == room.resolve(state_sets)
    assert room.names(default)[(MEMBER, BOB)] == "MB"
    assert (TOPIC, "") not in default
