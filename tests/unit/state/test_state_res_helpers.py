"""The building blocks of state resolution, on small graphs of stand-in events."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from state_res_testlib import run_sync

from homeserver.events.room_versions import RoomVersions
from homeserver.state.auth_chain import (
    InMemoryStateStore,
    auth_chain,
    auth_chain_difference,
    conflicted_subgraph,
    fetch_conflicted_subgraph,
)
from homeserver.state.event_index import EventIndex
from homeserver.state.interfaces import StateEvent, StateKey
from homeserver.state.power import (
    CREATOR_POWER,
    auth_event_ids_of,
    is_power_event,
)
from homeserver.state.resolution import resolve_state
from homeserver.state.v2 import (
    iterative_auth_checks,
    mainline_sort,
    reverse_topological_power_sort,
    separate_conflicted,
)

ROOM = "!room:example.org"


@dataclass
class FakeEvent:
    """Just the fields state resolution reads (satisfies ``StateEvent``)."""

    event_id: str
    type: str = "m.room.topic"
    state_key: str | None = ""
    sender: str = "@alice:example.org"
    content: Mapping[str, Any] = field(default_factory=dict)
    auth_event_ids: Sequence[str] = ()
    origin_server_ts: int = 0
    room_id: str = ROOM


def events_of(*events: FakeEvent) -> dict[str, StateEvent]:
    return {e.event_id: e for e in events}


def chain_lookup(edges: dict[str, list[str]]) -> Any:
    return lambda event_id: edges.get(event_id, ())


# -- separate_conflicted ---------------------------------------------------------------


def test_separate_conflicted() -> None:
    a: dict[StateKey, str] = {("t", ""): "$1", ("m", "@a"): "$2", ("only_a", ""): "$3"}
    b: dict[StateKey, str] = {("t", ""): "$1", ("m", "@a"): "$4", ("only_b", ""): "$5"}
    unconflicted, conflicted = separate_conflicted([a, b])
    assert unconflicted == {("t", ""): "$1"}
    # A key some sets lack is conflicted even if the others agree on it.
    assert conflicted == {("m", "@a"): {"$2", "$4"}, ("only_a", ""): {"$3"}, ("only_b", ""): {"$5"}}


def test_separate_conflicted_three_sets_and_none() -> None:
    a: dict[StateKey, str] = {("k", ""): "$1"}
    b: dict[StateKey, str] = {}
    c: dict[StateKey, str] = {("k", ""): "$2", ("j", ""): "$3"}
    assert separate_conflicted([a, b, c]) == ({}, {("k", ""): {"$1", "$2"}, ("j", ""): {"$3"}})
    assert separate_conflicted([]) == ({}, {})
    assert separate_conflicted([a]) == (a, {})


# -- auth chains -------------------------------------------------------------------------


#   A <- B <- C <- D <- E      (E cites D, ..., B cites A)
#         \<- X                (X cites B)
LINE = {"B": ["A"], "C": ["B"], "D": ["C"], "E": ["D"], "X": ["B"]}


def test_auth_chain() -> None:
    assert auth_chain(["D"], chain_lookup(LINE)) == {"A", "B", "C"}
    assert auth_chain(["D", "C"], chain_lookup(LINE)) == {"A", "B", "C"}


def test_auth_chain_difference_includes_the_state_events() -> None:
    # Chains (including the sets' own events): {A..E} and {A, B, X}.
    assert auth_chain_difference([{"E"}, {"X"}], chain_lookup(LINE)) == {"C", "D", "E", "X"}
    assert auth_chain_difference([{"E", "X"}, {"X", "E"}], chain_lookup(LINE)) == set()
    # D is in the second set and in the first set's chain: not different.
    assert auth_chain_difference([{"E"}, {"D"}], chain_lookup(LINE)) == {"E"}
    assert auth_chain_difference([{"E"}, {"D"}, {"B"}], chain_lookup(LINE)) == {"C", "D", "E"}
    assert auth_chain_difference([{"E"}], chain_lookup(LINE)) == set()


def test_conflicted_subgraph_is_the_paths_between_conflicted_events() -> None:
    lookup = chain_lookup(LINE)
    # B and D are conflicted: C lies between them; A, E and X do not.
    assert conflicted_subgraph({"B", "D"}, lookup) == {"B", "C", "D"}
    assert conflicted_subgraph({"X", "E"}, lookup) == {"X", "E"}
    assert conflicted_subgraph({"A", "E", "X"}, lookup) == {"A", "B", "C", "D", "E", "X"}


@st.composite
def random_dags(draw: st.DrawFn) -> dict[str, list[str]]:
    """Event i cites a random few of the events before it."""
    size = draw(st.integers(min_value=1, max_value=30))
    return {
        f"${i}": [f"${j}" for j in draw(st.lists(st.integers(0, i - 1), max_size=3, unique=True))] if i else []
        for i in range(size)
    }


def naive_chains(edges: dict[str, list[str]]) -> dict[str, set[str]]:
    """Each event's auth chain, straight from the definition (events are numbered
    in topological order)."""
    chains: dict[str, set[str]] = {}
    for event_id in sorted(edges, key=lambda e: int(e[1:])):
        chains[event_id] = set().union(*({a} | chains[a] for a in edges[event_id]))
    return chains


@settings(max_examples=100, deadline=None)
@given(data=st.data(), edges=random_dags())
def test_walks_match_naive_definitions(data: st.DataObject, edges: dict[str, list[str]]) -> None:
    ids = sorted(edges)
    chain_of = naive_chains(edges)
    sets = data.draw(st.lists(st.sets(st.sampled_from(ids), min_size=1), min_size=2, max_size=4))
    chains = [s.union(*(chain_of[e] for e in s)) for s in sets]
    expected = chains[0].union(*chains[1:]) - chains[0].intersection(*chains[1:])
    assert auth_chain_difference(sets, chain_lookup(edges)) == expected

    conflicted = data.draw(st.sets(st.sampled_from(ids), min_size=1))
    below = conflicted.union(*(chain_of[c] for c in conflicted))
    expected = {e for e in below if e in conflicted or chain_of[e] & conflicted}
    assert conflicted_subgraph(conflicted, chain_lookup(edges)) == expected
    events = events_of(*(FakeEvent(e, auth_event_ids=edges[e]) for e in ids))
    assert run_sync(fetch_conflicted_subgraph(InMemoryStateStore(events).get_events, conflicted)) == expected


def test_fetch_conflicted_subgraph_matches_the_pure_one() -> None:
    events = events_of(*(FakeEvent(e, auth_event_ids=LINE.get(e, [])) for e in "ABCDEX"))
    store = InMemoryStateStore(events)
    assert run_sync(fetch_conflicted_subgraph(store.get_events, {"B", "D"})) == {"B", "C", "D"}


def test_in_memory_store() -> None:
    events = events_of(*(FakeEvent(e, auth_event_ids=LINE.get(e, [])) for e in "ABCDEX"))
    store = InMemoryStateStore(events, rejected=["C"])
    assert set(run_sync(store.get_events(["A", "nope"]))) == {"A"}
    assert run_sync(store.get_auth_chain_difference(ROOM, [{"E"}, {"X"}])) == {"C", "D", "E", "X"}
    assert run_sync(store.get_conflicted_subgraph(ROOM, {"B", "D"})) == {"B", "C", "D"}
    assert run_sync(store.get_rejected_event_ids(["B", "C"])) == {"C"}


def test_v12_create_event_is_an_implicit_auth_event() -> None:
    room_id = "!CREATEHASH"  # v12: no server part, named after the create event
    create = FakeEvent("$CREATEHASH", type="m.room.create", room_id=room_id)
    member = FakeEvent("$M", type="m.room.member", state_key="@a:x", room_id=room_id)
    assert list(auth_event_ids_of(RoomVersions.V12, member)) == ["$CREATEHASH"]
    assert list(auth_event_ids_of(RoomVersions.V11, member)) == []
    assert list(auth_event_ids_of(RoomVersions.V12, create)) == []
    store = InMemoryStateStore(events_of(create, member))
    assert list(store.auth_ids("$M")) == ["$CREATEHASH"]


# -- power -------------------------------------------------------------------------------


def power_room(
    version: Any, users: dict[str, Any] | None, *, creator: str = "@c:x", **create_content: Any
) -> tuple[dict[str, StateEvent], str]:
    content = dict(create_content)
    if not version.implicit_room_creator:
        content.setdefault("creator", creator)
    room_id = "!CREATE" if version.room_id_from_create_event else ROOM
    create = FakeEvent("$CREATE", type="m.room.create", sender=creator, content=content, room_id=room_id)
    events: dict[str, StateEvent] = {"$CREATE": create}
    auth = [] if version.room_id_from_create_event else ["$CREATE"]
    if users is not None:
        pl_content = {"users": users, "users_default": 5}
        events["$PL"] = FakeEvent(
            "$PL", type="m.room.power_levels", content=pl_content, auth_event_ids=auth, room_id=room_id
        )
        auth = [*auth, "$PL"]
    return events, room_id


def power_of(version: Any, events: dict[str, StateEvent], room_id: str, sender: str) -> float:
    auth = [e for e in ("$CREATE", "$PL") if e in events and not (version.room_id_from_create_event and e == "$CREATE")]
    event = FakeEvent("$E", sender=sender, auth_event_ids=auth, room_id=room_id)
    return EventIndex(version, {**events, "$E": event}).sender_power("$E")


def test_sender_power_level_from_power_levels() -> None:
    events, room_id = power_room(RoomVersions.V11, {"@a:x": 50, "@c:x": 100})
    assert power_of(RoomVersions.V11, events, room_id, "@a:x") == 50
    assert power_of(RoomVersions.V11, events, room_id, "@c:x") == 100
    assert power_of(RoomVersions.V11, events, room_id, "@nobody:x") == 5  # users_default


def test_sender_power_level_without_power_levels() -> None:
    for version in (RoomVersions.V10, RoomVersions.V11):
        events, room_id = power_room(version, None)
        assert power_of(version, events, room_id, "@c:x") == 100
        assert power_of(version, events, room_id, "@a:x") == 0


def test_sender_power_level_stringy_levels_before_v10() -> None:
    events, room_id = power_room(RoomVersions.V9, {"@a:x": "42", "@b:x": "junk"})
    assert power_of(RoomVersions.V9, events, room_id, "@a:x") == 42
    assert power_of(RoomVersions.V9, events, room_id, "@b:x") == 0


def test_v12_creators_have_infinite_power() -> None:
    version = RoomVersions.V12
    events, room_id = power_room(version, {"@a:x": 100}, additional_creators=["@d:x"])
    assert power_of(version, events, room_id, "@c:x") == CREATOR_POWER
    assert power_of(version, events, room_id, "@d:x") == CREATOR_POWER
    assert power_of(version, events, room_id, "@a:x") == 100
    # additional_creators mean nothing before v12.
    events, room_id = power_room(RoomVersions.V11, {"@a:x": 100}, additional_creators=["@d:x"])
    assert power_of(RoomVersions.V11, events, room_id, "@d:x") == 5


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (FakeEvent("$", type="m.room.power_levels"), True),
        (FakeEvent("$", type="m.room.join_rules"), True),
        (FakeEvent("$", type="m.room.create"), True),
        (FakeEvent("$", type="m.room.topic"), False),
        (FakeEvent("$", type="m.room.member", state_key="@b:x", content={"membership": "ban"}), True),
        (FakeEvent("$", type="m.room.member", state_key="@b:x", content={"membership": "leave"}), True),
        (FakeEvent("$", type="m.room.member", state_key="@alice:example.org", content={"membership": "leave"}), False),
        (FakeEvent("$", type="m.room.member", state_key="@b:x", content={"membership": "invite"}), False),
        (FakeEvent("$", type="m.room.power_levels", state_key=None), False),
    ],
)
def test_is_power_event(event: FakeEvent, expected: bool) -> None:
    assert is_power_event(event) is expected


# -- orderings ---------------------------------------------------------------------------


def test_reverse_topological_power_sort() -> None:
    version = RoomVersions.V11
    events, _ = power_room(version, {"@hi:x": 100, "@mid:x": 50})
    auth = ["$CREATE", "$PL"]

    def ev(event_id: str, sender: str, ts: int, extra_auth: Collection[str] = ()) -> FakeEvent:
        event = FakeEvent(event_id, sender=sender, origin_server_ts=ts, auth_event_ids=[*auth, *extra_auth])
        events[event_id] = event
        return event

    ev("$low", "@low:x", 1)
    ev("$mid", "@mid:x", 5)
    ev("$hi", "@hi:x", 9)
    ev("$hi_same_ts_b", "@hi:x", 9)
    ev("$after_low", "@hi:x", 0, ["$low"])  # must follow $low whatever its power
    full = {"$low", "$mid", "$hi", "$hi_same_ts_b", "$after_low"}
    order = reverse_topological_power_sort(version, ["$after_low", "$mid", "$hi", "$hi_same_ts_b"], full, events)
    # Higher power first, then earlier ts, then event ID; $low is pulled in as an
    # auth ancestor of $after_low and comes before it.
    assert order == ["$hi", "$hi_same_ts_b", "$mid", "$low", "$after_low"]


def test_mainline_sort() -> None:
    version = RoomVersions.V11
    create = FakeEvent("$C", type="m.room.create", content={})
    pls = {"$P1": ["$C"], "$P2": ["$C", "$P1"], "$P3": ["$C", "$P2"], "$Q": ["$C", "$P1"]}
    events: dict[str, StateEvent] = {"$C": create}
    for pl, auth in pls.items():
        events[pl] = FakeEvent(pl, type="m.room.power_levels", auth_event_ids=auth)
    topics = {
        "$t_p3": ("$P3", 1),
        "$t_p1_late": ("$P1", 50),
        "$t_p1_early": ("$P1", 10),
        "$t_q": ("$Q", 5),  # $Q branches off the mainline at $P1
        "$t_none": (None, 99),  # no power levels: before everything
    }
    for topic, (topic_pl, ts) in topics.items():
        auth = ["$C"] + ([topic_pl] if topic_pl else [])
        events[topic] = FakeEvent(topic, auth_event_ids=auth, origin_server_ts=ts)
    order = mainline_sort(version, list(topics), "$P3", events)
    assert order == ["$t_none", "$t_q", "$t_p1_early", "$t_p1_late", "$t_p3"]
    # Without resolved power levels every event has the same position.
    assert mainline_sort(version, list(topics), None, events) == [
        "$t_p3",
        "$t_q",
        "$t_p1_early",
        "$t_p1_late",
        "$t_none",
    ]


def test_iterative_auth_checks_applies_in_order_and_falls_back_to_auth_events() -> None:
    version = RoomVersions.V11
    events = events_of(
        FakeEvent("$M", type="m.room.member", state_key="@a:x"),
        FakeEvent("$M2", type="m.room.member", state_key="@a:x"),
        FakeEvent("$T1", auth_event_ids=["$M"]),
        FakeEvent("$T2", auth_event_ids=["$M"], content={"deny": True}),
        FakeEvent("$T3", auth_event_ids=["$M", "$REJ"]),
        FakeEvent("$REJ", type="m.room.name"),
    )
    seen: list[tuple[str, dict[StateKey, str]]] = []

    def auth_check(rv: Any, event: Any, auth_events: Mapping[StateKey, Any]) -> None:
        seen.append((event.event_id, {k: v.event_id for k, v in auth_events.items()}))
        if event.content.get("deny"):
            raise ValueError("denied")

    def auth_types(rv: Any, event: Any) -> set[StateKey]:
        return {("m.room.member", "@a:x"), ("m.room.name", "")}

    state = iterative_auth_checks(
        version,
        ["$T1", "$T2", "$T3"],
        {("m.room.member", "@a:x"): "$M2"},
        events,
        auth_check=auth_check,
        auth_types=auth_types,
        rejected={"$REJ"},
    )
    assert state == {("m.room.member", "@a:x"): "$M2", ("m.room.topic", ""): "$T3"}
    # The state's membership beats the event's own; rejected auth events are skipped.
    assert seen == [
        ("$T1", {("m.room.member", "@a:x"): "$M2"}),
        ("$T2", {("m.room.member", "@a:x"): "$M2"}),
        ("$T3", {("m.room.member", "@a:x"): "$M2"}),
    ]


# -- resolve_state -----------------------------------------------------------------------


class ExplodingStore:
    async def get_events(self, event_ids: Collection[str]) -> dict[str, StateEvent]:
        raise AssertionError("not needed")

    async def get_auth_chain_difference(self, room_id: str, state_sets: list[set[str]]) -> set[str]:
        raise AssertionError("not needed")

    async def get_conflicted_subgraph(self, room_id: str, conflicted_event_ids: set[str]) -> set[str]:
        raise AssertionError("not needed")


def test_resolve_state_without_conflicts_needs_no_store() -> None:
    state: dict[StateKey, str] = {("a", ""): "$1", ("b", ""): "$2"}
    result = run_sync(
        resolve_state(
            RoomVersions.V12,
            ROOM,
            [state, dict(state)],
            ExplodingStore(),
            auth_check=lambda *a: None,
            auth_types=lambda *a: set(),
        )
    )
    assert result == state


def test_resolve_state_refuses_events_of_other_rooms() -> None:
    events = events_of(FakeEvent("$1"), FakeEvent("$2", room_id="!other:example.org"))
    with pytest.raises(ValueError, match="other"):
        run_sync(
            resolve_state(
                RoomVersions.V11,
                ROOM,
                [{("m.room.topic", ""): "$1"}, {("m.room.topic", ""): "$2"}],
                InMemoryStateStore(events),
                auth_check=lambda *a: None,
                auth_types=lambda *a: set(),
            )
        )
