"""More room features over HTTP: relations and threads, /context, /members, knocking, upgrades."""

from __future__ import annotations

import pytest_twisted

from tests.api.conftest import HSFixture
from tests.api.test_rooms_api import V3, create_room, send_text, user

V1 = "/_matrix/client/v1"


@pytest_twisted.ensureDeferred
async def test_edits_reactions_threads(server: HSFixture) -> None:
    alice = await user(server, "alice")
    room_id = await create_room(alice)
    root = await send_text(alice, room_id, "original")
    edit = await alice.put(
        f"{V3}/rooms/{room_id}/send/m.room.message/e1",
        {"msgtype": "m.text", "body": "* edited", "m.new_content": {"msgtype": "m.text", "body": "edited"},
         "m.relates_to": {"rel_type": "m.replace", "event_id": root}},
    )
    react = await alice.put(
        f"{V3}/rooms/{room_id}/send/m.reaction/r1",
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": root, "key": "👍"}},
    )
    reply = await alice.put(
        f"{V3}/rooms/{room_id}/send/m.room.message/t1",
        {"msgtype": "m.text", "body": "in thread", "m.relates_to": {"rel_type": "m.thread", "event_id": root}},
    )
    assert edit.code == react.code == reply.code == 200
    event = (await alice.get(f"{V3}/rooms/{room_id}/event/{root}")).body
    relations = event["unsigned"]["m.relations"]
    assert relations["m.replace"]["event_id"] == edit.body["event_id"]
    assert relations["m.thread"]["count"] == 1 and relations["m.thread"]["current_user_participated"] is True
    annotations = (await alice.get(f"{V1}/rooms/{room_id}/relations/{root}/m.annotation")).body["chunk"]
    assert [e["event_id"] for e in annotations] == [react.body["event_id"]]
    everything = (await alice.get(f"{V1}/rooms/{room_id}/relations/{root}")).body["chunk"]
    assert len(everything) == 3
    threads = (await alice.get(f"{V1}/rooms/{room_id}/threads")).body["chunk"]
    assert [t["event_id"] for t in threads] == [root]
    assert (await alice.get(f"{V1}/rooms/{room_id}/relations/$unknown")).code == 404


@pytest_twisted.ensureDeferred
async def test_context_and_members(server: HSFixture) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room_id = await create_room(alice, preset="public_chat")
    await bob.post(f"{V3}/join/{room_id}", {})
    ids = [await send_text(alice, room_id, f"n{i}") for i in range(6)]
    ctx = (await alice.get(f"{V3}/rooms/{room_id}/context/{ids[3]}?limit=4")).body
    assert ctx["event"]["event_id"] == ids[3]
    assert [e["event_id"] for e in ctx["events_before"]] == [ids[2], ids[1]]
    assert [e["event_id"] for e in ctx["events_after"]] == [ids[4], ids[5]]
    assert any(e["type"] == "m.room.create" for e in ctx["state"])
    await bob.post(f"{V3}/rooms/{room_id}/leave", {})
    members = (await alice.get(f"{V3}/rooms/{room_id}/members")).body["chunk"]
    assert {m["state_key"]: m["content"]["membership"] for m in members} == {
        "@alice:test.local": "join", "@bob:test.local": "leave"
    }
    joined = (await alice.get(f"{V3}/rooms/{room_id}/members?membership=join")).body["chunk"]
    assert [m["state_key"] for m in joined] == ["@alice:test.local"]
    not_leave = (await alice.get(f"{V3}/rooms/{room_id}/members?not_membership=leave")).body["chunk"]
    assert [m["state_key"] for m in not_leave] == ["@alice:test.local"]
    # Lazy-loaded members in /messages: only the senders of the page.
    flt = '{"lazy_load_members":true}'
    page = (await alice.get(f"{V3}/rooms/{room_id}/messages?dir=b&limit=2&from={ctx['end']}&filter={flt}")).body
    assert {e["sender"] for e in page["chunk"]} == {"@alice:test.local"}
    assert [m["state_key"] for m in page["state"]] == ["@alice:test.local"]


@pytest_twisted.ensureDeferred
async def test_knock_and_accept(server: HSFixture) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room_id = await create_room(alice, initial_state=[{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}])
    knocked = await bob.post(f"{V3}/knock/{room_id}", {"reason": "let me in"})
    assert knocked.code == 200, knocked.body
    sync = (await bob.get(f"{V3}/sync")).body
    assert room_id in sync["rooms"]["knock"]
    assert (await alice.post(f"{V3}/rooms/{room_id}/invite", {"user_id": "@bob:test.local"})).code == 200
    assert (await bob.post(f"{V3}/join/{room_id}", {})).code == 200


@pytest_twisted.ensureDeferred
async def test_room_upgrade(server: HSFixture) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room_id = await create_room(alice, room_version="10", name="Old", preset="public_chat", room_alias_name="upg")
    await bob.post(f"{V3}/join/{room_id}", {})
    denied = await bob.post(f"{V3}/rooms/{room_id}/upgrade", {"new_version": "12"})
    assert denied.code == 403
    resp = await alice.post(f"{V3}/rooms/{room_id}/upgrade", {"new_version": "12"})
    assert resp.code == 200, resp.body
    new_room = resp.body["replacement_room"]
    tombstone = (await alice.get(f"{V3}/rooms/{room_id}/state/m.room.tombstone")).body
    assert tombstone["replacement_room"] == new_room
    create = (await alice.get(f"{V3}/rooms/{new_room}/state/m.room.create")).body
    assert create["predecessor"]["room_id"] == room_id and create["room_version"] == "12"
    assert (await alice.get(f"{V3}/rooms/{new_room}/state/m.room.name")).body == {"name": "Old"}
    assert (await alice.get(f"{V3}/directory/room/%23upg:test.local")).body["room_id"] == new_room
    # Bob follows the tombstone.
    assert (await bob.post(f"{V3}/join/{new_room}", {})).code == 200
    bad = await alice.post(f"{V3}/rooms/{new_room}/upgrade", {"new_version": "77"})
    assert (bad.code, bad.body["errcode"]) == (400, "M_UNSUPPORTED_ROOM_VERSION")


@pytest_twisted.ensureDeferred
async def test_upgrade_from_privileged_creators_to_older_version(server: HSFixture) -> None:
    """A v12 creator has no users entry: upgrading to v10 must give them an explicit level."""
    alice = await user(server, "alice")
    room_id = await create_room(alice, room_version="12", name="New")
    resp = await alice.post(f"{V3}/rooms/{room_id}/upgrade", {"new_version": "10"})
    assert resp.code == 200, resp.body
    new_room = resp.body["replacement_room"]
    levels = (await alice.get(f"{V3}/rooms/{new_room}/state/m.room.power_levels")).body
    assert levels["users"]["@alice:test.local"] >= 100
    renamed = await alice.put(f"{V3}/rooms/{new_room}/state/m.room.name", {"name": "Renamed"})
    assert renamed.code == 200, renamed.body


@pytest_twisted.ensureDeferred
async def test_deactivated_user_leaves_rooms(server: HSFixture) -> None:
    from tests.api.helpers import password_auth

    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room_id = await create_room(alice, preset="public_chat")
    await bob.post(f"{V3}/join/{room_id}", {})
    first = await bob.post(f"{V3}/account/deactivate", {})
    done = await bob.post(
        f"{V3}/account/deactivate", {"auth": password_auth("@bob:test.local", "correct horse battery", first.body["session"])}
    )
    assert done.code == 200
    joined = (await alice.get(f"{V3}/rooms/{room_id}/joined_members")).body["joined"]
    assert list(joined) == ["@alice:test.local"]


@pytest_twisted.ensureDeferred
async def test_concurrent_room_creation(server: HSFixture) -> None:
    """v12 room IDs hash the create event: rooms created in the same millisecond must not collide."""
    from twisted.internet import defer

    alice = await user(server, "alice")
    results = await defer.gatherResults(
        [defer.ensureDeferred(alice.post(f"{V3}/createRoom", {})) for _ in range(12)]
    )
    assert [r.code for r in results] == [200] * 12
    assert len({r.body["room_id"] for r in results}) == 12
