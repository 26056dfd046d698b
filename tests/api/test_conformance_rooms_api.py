"""Client-API answers found to differ by tests/interop/test_conformance_client.py, fixed:
createRoom's invalid power levels (the spec's 400 M_INVALID_ROOM_STATE, nothing created)
and /members?at= (the membership at a /sync or /messages token)."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted

from tests.api.conftest import Client, HSFixture
from tests.api.test_rooms_api import V3, create_room, send_text, user

ALICE, BOB, CAROL = "@alice:test.local", "@bob:test.local", "@carol:test.local"


async def joined_rooms(client: Client) -> list[str]:
    return list((await client.get(f"{V3}/joined_rooms")).body["joined_rooms"])


@pytest.mark.parametrize(
    ("body", "named"),
    [
        # v12: creators have unlimited power and must not appear in users (Synapse: 400 too)
        ({"room_version": "12", "power_level_content_override": {"users": {ALICE: 100}}}, ALICE),
        (
            {
                "room_version": "12",
                "creation_content": {"additional_creators": [BOB]},
                "power_level_content_override": {"users": {BOB: 50}},
            },
            BOB,
        ),
        # v11: the override leaves the creator at 0, below what the initial state needs
        ({"room_version": "11", "power_level_content_override": {"users": {BOB: 100}}}, "m.room.join_rules"),
        (
            {"room_version": "11", "name": "x", "power_level_content_override": {"events": {"m.room.name": 101}}},
            "m.room.name",
        ),
        ({"room_version": "11", "invite": [BOB], "power_level_content_override": {"invite": 101}}, "inviting"),
        # invalid content: a users key that is no user ID, a level that is no integer (v10+)
        ({"room_version": "11", "power_level_content_override": {"users": {"bob": 10}}}, "'bob'"),
        ({"room_version": "11", "power_level_content_override": {"ban": "50"}}, "ban"),
        ({"room_version": "11", "power_level_content_override": {"events": {"m.room.name": "5"}}}, "events"),
        ({"room_version": "11", "power_level_content_override": {"users": []}}, "users"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_create_room_with_invalid_power_levels_is_refused_before_anything_exists(
    server: HSFixture, body: dict[str, Any], named: str
) -> None:
    alice = await user(server, "alice")
    await user(server, "bob")
    resp = await alice.post(f"{V3}/createRoom", body)
    assert (resp.code, resp.body["errcode"]) == (400, "M_INVALID_ROOM_STATE"), resp.body
    assert named in resp.body["error"]
    assert await joined_rooms(alice) == []  # no half-created room left behind


@pytest_twisted.ensureDeferred
async def test_create_room_with_valid_overrides_still_works(server: HSFixture) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    v12 = await create_room(alice, room_version="12", power_level_content_override={"users": {BOB: 50}})
    v11 = await create_room(
        alice,
        room_version="11",
        name="n",
        invite=[BOB],
        power_level_content_override={"users": {ALICE: 100, BOB: 50}, "events": {"m.room.name": 100}},
    )
    pl = (await alice.get(f"{V3}/rooms/{v12}/state/m.room.power_levels/")).body
    assert pl["users"] == {BOB: 50}
    pl = (await alice.get(f"{V3}/rooms/{v11}/state/m.room.power_levels/")).body
    assert pl["users"] == {ALICE: 100, BOB: 50} and pl["events"] == {"m.room.name": 100}
    # initial_state replacing the power levels: left to the auth rules, as before
    replaced = await create_room(
        alice,
        room_version="11",
        initial_state=[{"type": "m.room.power_levels", "content": {"users": {ALICE: 100}, "state_default": 50}}],
    )
    assert replaced in await joined_rooms(alice)
    assert (await bob.post(f"{V3}/join/{v11}", {})).code == 200


def _members(body: Any) -> dict[str, tuple[str, str | None]]:
    return {m["state_key"]: (m["content"]["membership"], m["content"].get("displayname")) for m in body["chunk"]}


@pytest_twisted.ensureDeferred
async def test_members_at_a_sync_or_messages_token(server: HSFixture) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    carol = await user(server, "carol")
    room_id = await create_room(alice, preset="public_chat")
    assert (await bob.post(f"{V3}/join/{room_id}", {})).code == 200
    await send_text(alice, room_id, "before")
    synced = (await alice.get(f"{V3}/sync?timeout=0")).body
    since = synced["next_batch"]
    page = (await alice.get(f"{V3}/rooms/{room_id}/messages?dir=b&limit=1&from={since}")).body
    assert page["end"].startswith("t")
    # after the tokens: alice renames, bob leaves, carol joins
    await alice.put(f"{V3}/profile/{ALICE}/displayname", {"displayname": "Alice"})
    assert (await bob.post(f"{V3}/rooms/{room_id}/leave", {})).code == 200
    assert (await carol.post(f"{V3}/join/{room_id}", {})).code == 200
    await send_text(alice, room_id, "after")

    then = {ALICE: ("join", None), BOB: ("join", None)}
    now = {ALICE: ("join", "Alice"), BOB: ("leave", None), CAROL: ("join", None)}
    assert _members((await alice.get(f"{V3}/rooms/{room_id}/members")).body) == now
    for token in (since, page["end"]):  # a /sync token, a /messages token
        at = await alice.get(f"{V3}/rooms/{room_id}/members?at={token}")
        assert at.code == 200, at.body
        assert _members(at.body) == then, token
    # with the membership filters
    joined = await alice.get(f"{V3}/rooms/{room_id}/members?at={since}&not_membership=leave")
    assert set(_members(joined.body)) == {ALICE, BOB}
    # the prev_content clients read from unsigned is there, as at the current state
    (renamed,) = [
        m for m in (await alice.get(f"{V3}/rooms/{room_id}/members")).body["chunk"] if m["state_key"] == ALICE
    ]
    assert renamed["unsigned"]["prev_content"] == {"membership": "join"}
    # before the room's first event there is no state
    (first,) = (await alice.get(f"{V3}/rooms/{room_id}/messages?dir=f&limit=1")).body["chunk"]
    assert first["type"] == "m.room.create"
    start = (await alice.get(f"{V3}/rooms/{room_id}/messages?dir=f&limit=1")).body["start"]
    assert (await alice.get(f"{V3}/rooms/{room_id}/members?at={start}")).body["chunk"] == []
    # that start token (before everything) is a token /messages itself takes back
    again = await alice.get(f"{V3}/rooms/{room_id}/messages?dir=f&limit=1&from={start}")
    assert again.code == 200 and [e["event_id"] for e in again.body["chunk"]] == [first["event_id"]]


@pytest_twisted.ensureDeferred
async def test_members_at_a_token_after_leaving_shows_the_room_as_left(server: HSFixture) -> None:
    """A former member asking for a later point sees the members when they left."""
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    dave = await user(server, "dave")
    room_id = await create_room(alice, preset="public_chat")
    assert (await bob.post(f"{V3}/join/{room_id}", {})).code == 200
    assert (await bob.post(f"{V3}/rooms/{room_id}/leave", {})).code == 200
    await alice.put(f"{V3}/profile/{ALICE}/displayname", {"displayname": "Alice"})
    latest = (await alice.get(f"{V3}/sync?timeout=0")).body["next_batch"]
    expected = {ALICE: ("join", None), BOB: ("leave", None)}
    assert _members((await bob.get(f"{V3}/rooms/{room_id}/members")).body) == expected
    assert _members((await bob.get(f"{V3}/rooms/{room_id}/members?at={latest}")).body) == expected
    assert _members((await alice.get(f"{V3}/rooms/{room_id}/members?at={latest}")).body)[ALICE] == ("join", "Alice")
    # a stranger still gets nothing
    refused = await dave.get(f"{V3}/rooms/{room_id}/members?at={latest}")
    assert (refused.code, refused.body["errcode"]) == (403, "M_FORBIDDEN")


@pytest.mark.parametrize("token", ["garbage", "t1-x", "s-5", "t1-99999999999999999999", "s99999999999999999999"])
@pytest_twisted.ensureDeferred
async def test_members_at_a_bad_token_is_400_naming_at(server: HSFixture, token: str) -> None:
    alice = await user(server, "alice")
    room_id = await create_room(alice)
    resp = await alice.get(f"{V3}/rooms/{room_id}/members?at={token}")
    assert (resp.code, resp.body["errcode"]) == (400, "M_INVALID_PARAM")
    assert "at" in resp.body["error"]
