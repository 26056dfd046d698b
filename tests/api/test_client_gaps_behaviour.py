"""Behaviour aligned on the spec and Synapse: leaving twice, unknown rooms answer 403."""

from __future__ import annotations

import pytest_twisted

from tests.api.conftest import HSFixture
from tests.api.test_rooms_api import V3, create_room, user


@pytest_twisted.ensureDeferred
async def test_leaving_a_room_already_left_answers_200(server: HSFixture) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room_id = await create_room(alice, preset="public_chat")
    assert (await bob.post(f"{V3}/join/{room_id}", {})).code == 200
    assert (await bob.post(f"{V3}/rooms/{room_id}/leave", {})).code == 200
    before = await alice.get(f"{V3}/rooms/{room_id}/messages?dir=b&limit=50")
    again = await bob.post(f"{V3}/rooms/{room_id}/leave", {})
    assert (again.code, again.body) == (200, {})
    after = await alice.get(f"{V3}/rooms/{room_id}/messages?dir=b&limit=50")
    assert len(after.body["chunk"]) == len(before.body["chunk"])  # no second leave event
    # never having been in the room is still refused; so is leaving after a kick
    carol = await user(server, "carol")
    never = await carol.post(f"{V3}/rooms/{room_id}/leave", {})
    assert (never.code, never.body["errcode"]) == (403, "M_FORBIDDEN")
    assert (await carol.post(f"{V3}/join/{room_id}", {})).code == 200
    kicked = await alice.post(f"{V3}/rooms/{room_id}/kick", {"user_id": "@carol:test.local"})
    assert kicked.code == 200
    assert (await carol.post(f"{V3}/rooms/{room_id}/leave", {})).code == 403


@pytest_twisted.ensureDeferred
async def test_unknown_room_answers_403_on_reads_and_sends(server: HSFixture) -> None:
    alice = await user(server, "alice")
    unknown = "!nope:test.local"
    for resp in (
        await alice.get(f"{V3}/rooms/{unknown}/messages?dir=b"),
        await alice.get(f"{V3}/rooms/{unknown}/state"),
        await alice.get(f"{V3}/rooms/{unknown}/state/m.room.name"),
        await alice.get(f"{V3}/rooms/{unknown}/members"),
        await alice.get(f"{V3}/rooms/{unknown}/joined_members"),
        await alice.put(f"{V3}/rooms/{unknown}/send/m.room.message/t1", {"msgtype": "m.text", "body": "x"}),
        await alice.put(f"{V3}/rooms/{unknown}/state/m.room.name", {"name": "x"}),
    ):
        assert (resp.code, resp.body["errcode"]) == (403, "M_FORBIDDEN"), resp.body
    # a missing state event of a room one is in is still 404
    room_id = await create_room(alice)
    missing = await alice.get(f"{V3}/rooms/{room_id}/state/m.room.topic")
    assert (missing.code, missing.body["errcode"]) == (404, "M_NOT_FOUND")
