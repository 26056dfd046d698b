"""/sync computes all joined rooms in one batch: same answers, a bounded number of queries."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest_twisted

from homeserver.storage.receipts import ReceiptRepository
from homeserver.storage.rooms import RoomRepository
from homeserver.storage.timeline import TimelineRepository
from tests.api.conftest import Client, HSFixture
from tests.api.test_rooms_api import V3, create_room, send_text, user


def count_transactions(server: HSFixture) -> list[str]:
    """Record the description of every database transaction the server runs from now on."""
    seen: list[str] = []
    db = server.hs.db
    original = db.run_interaction

    async def counting(desc: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(desc)
        return await original(desc, func, *args, **kwargs)

    db.run_interaction = counting  # type: ignore[method-assign]
    return seen


async def sync(client: Client, query: str = "") -> dict[str, Any]:
    resp = await client.get(f"{V3}/sync{query}")
    assert resp.code == 200, resp.body
    return dict(resp.body)


@pytest_twisted.ensureDeferred
async def test_initial_sync_of_many_rooms(server: HSFixture) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    carol = await user(server, "carol")
    rooms: list[str] = []
    sent: dict[str, list[str]] = {}
    for k in range(6):
        room_id = await create_room(alice, preset="public_chat", name=f"room {k}")
        rooms.append(room_id)
        assert (await bob.post(f"{V3}/join/{room_id}", {})).code == 200
        if k % 2:
            assert (await alice.post(f"{V3}/rooms/{room_id}/invite", {"user_id": "@carol:test.local"})).code == 200
        sent[room_id] = [await send_text(bob if i % 2 else alice, room_id, f"r{k} m{i}") for i in range(k * 2)]
    # Alice read the first message of room 5: only what follows counts as unread.
    assert (await alice.post(f"{V3}/rooms/{rooms[5]}/receipt/m.read/{sent[rooms[5]][1]}", {})).code == 200
    assert carol.token

    body = await sync(alice, "?filter=" + quote(json.dumps({"room": {"timeline": {"limit": 4}}})))
    joined = body["rooms"]["join"]
    assert set(joined) == set(rooms)
    rooms_repo = RoomRepository(server.hs.db)
    receipts_repo = ReceiptRepository(server.hs.db)
    for k, room_id in enumerate(rooms):
        room = joined[room_id]
        events = room["timeline"]["events"]
        ids = [e["event_id"] for e in events]
        messages = sent[room_id]
        if len(messages) >= 4:
            assert ids == messages[-4:]
            assert room["timeline"]["limited"] is True
        else:
            assert ids[len(ids) - len(messages) :] == messages and len(ids) == 4
        assert all(e["room_id"] == room_id and "signatures" not in e for e in events)
        own = [e for e in events if e["sender"] == "@alice:test.local" and e["type"] == "m.room.message"]
        assert all("transaction_id" in e["unsigned"] for e in own)
        # State is the state at the timeline's start, never repeating timeline events.
        state = {(e["type"], e["state_key"]): e for e in room["state"]["events"]}
        assert not set(ids) & {e["event_id"] for e in state.values()}
        assert ("m.room.create", "") in state
        if len(messages) >= 4:
            assert state[("m.room.name", "")]["content"] == {"name": f"room {k}"}
            assert state[("m.room.member", "@bob:test.local")]["content"]["membership"] == "join"
        # The summary and the unread counts match the per-room queries.
        members = await rooms_repo.members(room_id, ("join", "invite"))
        assert room["summary"] == {
            "m.heroes": sorted(m.user_id for m in members if m.user_id != "@alice:test.local")[:5],
            "m.joined_member_count": 2,
            "m.invited_member_count": k % 2,
        }
        notifications, highlights = await receipts_repo.unread_counts("@alice:test.local", room_id)
        assert room["unread_notifications"] == {"notification_count": notifications, "highlight_count": highlights}
    # Bob's messages after Alice's receipt in room 5 notify her; the ones before do not.
    unread_5 = joined[rooms[5]]["unread_notifications"]["notification_count"]
    assert unread_5 == sum(1 for i in range(2, 10) if i % 2)
    assert joined[rooms[3]]["summary"]["m.heroes"] == ["@bob:test.local", "@carol:test.local"]


@pytest_twisted.ensureDeferred
async def test_initial_sync_queries_do_not_grow_with_rooms(server: HSFixture) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")

    async def add_rooms(n: int) -> None:
        for _ in range(n):
            room_id = await create_room(alice, preset="public_chat")
            assert (await bob.post(f"{V3}/join/{room_id}", {})).code == 200
            await send_text(bob, room_id, "hello")

    await add_rooms(2)
    await sync(alice)  # warm the per-process caches the same way for both measurements
    seen = count_transactions(server)
    assert len((await sync(alice))["rooms"]["join"]) == 2
    few = len(seen)
    await add_rooms(10)
    await sync(alice)
    seen.clear()
    assert len((await sync(alice))["rooms"]["join"]) == 12
    assert len(seen) <= few, seen


@pytest_twisted.ensureDeferred
async def test_incremental_sync_of_several_rooms(server: HSFixture) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    rooms = [await create_room(alice, preset="public_chat") for _ in range(4)]
    for room_id in rooms:
        assert (await bob.post(f"{V3}/join/{room_id}", {})).code == 200
    since = (await sync(alice))["next_batch"]
    quiet_since = since
    first = [await send_text(bob, rooms[0], f"a{i}") for i in range(2)]
    many = [await send_text(bob, rooms[2], f"b{i}") for i in range(8)]
    assert (await alice.put(f"{V3}/rooms/{rooms[2]}/state/m.room.topic", {"topic": "new"})).code == 200
    many.append(await send_text(bob, rooms[2], "last"))

    body = await sync(alice, f"?since={since}&filter=" + quote(json.dumps({"room": {"timeline": {"limit": 3}}})))
    joined = body["rooms"]["join"]
    assert set(joined) == {rooms[0], rooms[2]}
    assert [e["event_id"] for e in joined[rooms[0]]["timeline"]["events"]] == first
    assert joined[rooms[0]]["timeline"]["limited"] is False
    assert joined[rooms[0]]["state"]["events"] == []
    assert "summary" not in joined[rooms[0]]
    limited = joined[rooms[2]]
    assert limited["timeline"]["limited"] is True
    assert [e["event_id"] for e in limited["timeline"]["events"]][-1] == many[-1]
    # The topic changed in the gap before the timeline: it is in the state section.
    timeline_types = [e["type"] for e in limited["timeline"]["events"]]
    if "m.room.topic" not in timeline_types:
        assert [e["content"] for e in limited["state"]["events"] if e["type"] == "m.room.topic"] == [{"topic": "new"}]
    assert limited["summary"]["m.joined_member_count"] == 2

    # A receipt alone brings a room into an incremental sync, with an empty timeline.
    since = body["next_batch"]
    assert (await alice.post(f"{V3}/rooms/{rooms[0]}/receipt/m.read/{first[-1]}", {})).code == 200
    body = await sync(alice, f"?since={since}")
    room = body["rooms"]["join"][rooms[0]]
    assert room["timeline"]["events"] == [] and room["timeline"]["prev_batch"]
    assert room["ephemeral"]["events"][0]["type"] == "m.receipt"
    assert room["unread_notifications"] == {"notification_count": 0, "highlight_count": 0}
    assert quiet_since != since


@pytest_twisted.ensureDeferred
async def test_batched_storage_reads(server: HSFixture) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    rooms = [await create_room(alice, preset="public_chat") for _ in range(3)]
    sent = {
        room_id: [await send_text(alice, room_id, f"{room_id} {i}") for i in range(k)]
        for k, room_id in enumerate(rooms)
    }
    assert (await bob.post(f"{V3}/join/{rooms[1]}", {})).code == 200
    timeline = TimelineRepository(server.hs.db)
    upto = 10**12  # after everything
    many = await timeline.recent_event_ids_many(
        {rooms[0]: None, rooms[1]: None, rooms[2]: None, "!unknown:test.local": None}, upto=upto, limit=2
    )
    for room_id in rooms:
        single = await timeline.recent_event_ids(room_id, after=None, upto=upto, limit=2)
        assert many[room_id] == single
        assert many[room_id][1] is True
    assert many["!unknown:test.local"] == ([], False)
    assert [e for e, _, _ in many[rooms[2]][0]] == sent[rooms[2]]
    # A lower bound per room, and an upper bound in the past.
    low = many[rooms[2]][0][0][1]
    bounded = await timeline.recent_event_ids_many({rooms[2]: low, rooms[0]: None}, upto=upto, limit=5)
    assert bounded[rooms[2]] == ([many[rooms[2]][0][1]], False)
    assert await timeline.recent_event_ids_many({}, upto=upto, limit=5) == {}

    summaries = await RoomRepository(server.hs.db).summaries(
        [*rooms, "!unknown:test.local"], "@alice:test.local", heroes=1
    )
    assert summaries[rooms[1]] == (["@bob:test.local"], 2, 0)
    assert summaries[rooms[0]] == ([], 1, 0)
    assert summaries["!unknown:test.local"] == ([], 0, 0)
    counts = await ReceiptRepository(server.hs.db).unread_counts_many(
        "@bob:test.local", [rooms[1], "!unknown:test.local"]
    )
    assert counts == {rooms[1]: (0, 0), "!unknown:test.local": (0, 0)}


@pytest_twisted.ensureDeferred
async def test_concurrent_initial_syncs_are_bounded(make_server: Any) -> None:
    """Many clients doing an initial /sync at once: at most CONCURRENT_FULL_SYNCS are
    computed together (each holds all its rooms while built); every one gets its answer,
    and incremental syncs are not held back."""
    from twisted.internet import defer

    from homeserver.services.sync import CONCURRENT_FULL_SYNCS

    server = make_server(rc_registration={"per_second": 100, "burst_count": 100})
    alice = await user(server, "alice")
    room_id = await create_room(alice, preset="public_chat", name="busy")
    await send_text(alice, room_id, "hello")
    clients = [alice]
    for k in range(9):
        c = await user(server, f"u{k}")
        assert (await c.post(f"{V3}/join/{room_id}", {})).code == 200
        clients.append(c)
    since = (await sync(alice))["next_batch"]

    service = server.hs.services.sync
    original = service._compute
    running = {"now": 0, "max": 0}

    async def slow_compute(req: Any, now: Any) -> Any:
        running["now"] += 1
        running["max"] = max(running["max"], running["now"])
        try:
            d: defer.Deferred[None] = defer.Deferred()
            from twisted.internet import reactor

            reactor.callLater(0.05, d.callback, None)  # type: ignore[attr-defined]
            await d
            return await original(req, now)
        finally:
            running["now"] -= 1

    service._compute = slow_compute  # type: ignore[method-assign]
    try:
        bodies = await defer.gatherResults([defer.ensureDeferred(sync(c)) for c in clients])
        assert running["max"] == CONCURRENT_FULL_SYNCS
        for body in bodies:
            assert room_id in body["rooms"]["join"]
        # incremental syncs are never queued behind the limit
        running["max"] = 0
        incremental = await defer.gatherResults(
            [defer.ensureDeferred(sync(alice, f"?since={since}&timeout=0")) for _ in range(8)]
        )
        assert running["max"] == 8
        assert all("next_batch" in b for b in incremental)
    finally:
        service._compute = original  # type: ignore[method-assign]


def _without_ages(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_ages(v) for k, v in value.items() if k != "age"}
    if isinstance(value, list):
        return [_without_ages(v) for v in value]
    return value


@pytest_twisted.ensureDeferred
async def test_initial_sync_in_batches_gives_the_same_answer(server: HSFixture, monkeypatch: Any) -> None:
    """Above ROOMS_PER_BATCH joined rooms, rooms are computed a batch at a time and each
    encoded at once; the response is the same as computing them all together."""
    import homeserver.services.sync as sync_module

    alice = await user(server, "alice")
    bob = await user(server, "bob")
    rooms = []
    for k in range(12):
        room_id = await create_room(alice, preset="public_chat", name=f"room {k}")
        assert (await bob.post(f"{V3}/join/{room_id}", {})).code == 200
        await send_text(alice, room_id, f"message {k} é")
        rooms.append(room_id)
    monkeypatch.setattr(sync_module, "ROOMS_PER_BATCH", 1000)
    together = await sync(bob)
    monkeypatch.setattr(sync_module, "ROOMS_PER_BATCH", 5)
    batched = await sync(bob)
    assert sorted(batched["rooms"]["join"]) == sorted(rooms)
    assert _without_ages(batched["rooms"]) == _without_ages(together["rooms"])
    for room_id in rooms:
        bodies = [e["content"].get("body") for e in batched["rooms"]["join"][room_id]["timeline"]["events"]]
        assert any(b and b.startswith("message") for b in bodies)


@pytest_twisted.ensureDeferred
async def test_incremental_sync_reads_only_what_moved(server: HSFixture) -> None:
    """An incremental /sync after one message asks the database only for that room's
    timeline and counts: membership, device-list and presence questions are answered
    from the in-memory change log when their streams did not move for this user."""
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    carol = await user(server, "carol")
    rooms = [await create_room(alice, preset="public_chat") for _ in range(3)]
    for room_id in rooms:
        assert (await bob.post(f"{V3}/join/{room_id}", {})).code == 200
    since = (await sync(bob))["next_batch"]
    await send_text(alice, rooms[0], "warm-up")
    since = (await sync(bob, f"?since={since}"))["next_batch"]
    # Carol's presence changes, but she shares no room with Bob.
    assert (await carol.put(f"{V3}/presence/@carol:test.local/status", {"presence": "online"})).code == 200
    event_id = await send_text(alice, rooms[1], "hello")
    seen = count_transactions(server)
    body = await sync(bob, f"?since={since}")
    assert list(body["rooms"]["join"]) == [rooms[1]]
    assert [e["event_id"] for e in body["rooms"]["join"][rooms[1]]["timeline"]["events"]] == [event_id]
    assert body["presence"]["events"] == [] and body["device_lists"] == {"changed": [], "left": []}
    skipped = {"rooms_with_events", "membership_changes", "member_changes_in_rooms", "shared_room_users"}
    assert not skipped & set(seen), seen
    assert len(seen) <= 6, seen

    # Bob's own membership change and a room-mate's presence are still reported.
    since = body["next_batch"]
    assert (await bob.post(f"{V3}/rooms/{rooms[2]}/leave", {})).code == 200
    assert (await alice.put(f"{V3}/presence/@alice:test.local/status", {"presence": "unavailable"})).code == 200
    body = await sync(bob, f"?since={since}")
    assert rooms[2] in body["rooms"]["leave"]
    assert [e["sender"] for e in body["presence"]["events"]] == ["@alice:test.local"]
