"""The auth order the ingest pipeline checks outliers in (homeserver.federation.ingest)."""

from __future__ import annotations

import random

from homeserver.events.builder import build_event
from homeserver.events.model import Event
from homeserver.events.room_versions import get_room_version
from homeserver.events.signing import generate_signing_key
from homeserver.federation.ingest import auth_order

V10 = get_room_version("10")
KEY = generate_signing_key("k")


def _event(type_: str, auth: list[Event], depth: int, state_key: str | None = "") -> Event:
    return build_event(
        V10,
        room_id="!r:a.test",
        type=type_,
        sender="@u:a.test",
        content={"n": depth},
        state_key=state_key,
        prev_event_ids=[],
        auth_event_ids=[a.event_id for a in auth],
        depth=depth,
        origin_server_ts=1000 + depth,
        server_name="a.test",
        signing_key=KEY,
    )


def test_every_event_comes_after_its_auth_events() -> None:
    create = _event("m.room.create", [], 1)
    member = _event("m.room.member", [create], 2, "@u:a.test")
    power = _event("m.room.power_levels", [create, member], 3)
    rules = _event("m.room.join_rules", [create, member, power], 4)
    other = _event("m.room.member", [create, power, rules], 5, "@v:a.test")
    events = [create, member, power, rules, other]
    for seed in range(20):
        shuffled = events[:]
        random.Random(seed).shuffle(shuffled)
        ordered = auth_order(V10, {e.event_id: e for e in shuffled})
        assert ordered == events


def test_auth_events_outside_the_batch_do_not_hold_events_back() -> None:
    create = _event("m.room.create", [], 1)
    member = _event("m.room.member", [create], 2, "@u:a.test")
    power = _event("m.room.power_levels", [create, member], 3)
    ordered = auth_order(V10, {e.event_id: e for e in (power, member)})
    assert ordered == [member, power]


def test_ties_break_by_depth_then_id() -> None:
    create = _event("m.room.create", [], 1)
    a = _event("m.room.topic", [create], 7)
    b = _event("m.room.name", [create], 3)
    ordered = auth_order(V10, {e.event_id: e for e in (a, b, create)})
    assert ordered == [create, b, a]
