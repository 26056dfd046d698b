"""Spaces: GET /_matrix/client/v1/rooms/{roomId}/hierarchy (differential gap with Synapse)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest_twisted

from tests.api.conftest import Client, HSFixture
from tests.api.test_federation_keys import cleanups, start_peers
from tests.api.test_rooms_api import V3, create_room, user

__all__ = ["cleanups"]  # the fixture, for the federation test

V1 = "/_matrix/client/v1"
SERVER = "test.local"


async def add_child(space_owner: Client, space_id: str, child_id: str, **content: Any) -> None:
    body = {"via": [SERVER], **content}
    resp = await space_owner.put(f"{V3}/rooms/{space_id}/state/m.space.child/{child_id}", body)
    assert resp.code == 200, resp.body


async def hierarchy(client: Client, room_id: str, query: str = "") -> Any:
    return await client.get(f"{V1}/rooms/{room_id}/hierarchy{query}")


@pytest_twisted.ensureDeferred
async def test_hierarchy_lists_visible_children_in_order(server: HSFixture) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    space = await create_room(alice, preset="public_chat", name="Ministry", creation_content={"type": "m.space"})
    public = await create_room(alice, preset="public_chat", name="Public", topic="open to all")
    private = await create_room(alice, preset="private_chat", name="Private")
    sub_space = await create_room(alice, preset="public_chat", creation_content={"type": "m.space"})
    deep = await create_room(alice, preset="public_chat", name="Deep")
    await add_child(alice, space, public, order="b")
    await add_child(alice, space, private, order="a")
    await add_child(alice, space, sub_space, order="c", suggested=True)
    await add_child(alice, sub_space, deep)
    # a removed child (empty via) and a remote room we know nothing of are not listed
    removed = await create_room(alice, preset="public_chat")
    assert (await alice.put(f"{V3}/rooms/{space}/state/m.space.child/{removed}", {"via": []})).code == 200
    await add_child(alice, space, "!unknown:elsewhere.example")

    # Alice is in every room: all of them, breadth first, children by their order string
    resp = await hierarchy(alice, space)
    assert resp.code == 200, resp.body
    ids = [r["room_id"] for r in resp.body["rooms"]]
    assert ids == [space, private, public, sub_space, deep]
    assert "next_batch" not in resp.body
    root = resp.body["rooms"][0]
    assert root["room_type"] == "m.space" and root["name"] == "Ministry" and root["join_rule"] == "public"
    assert root["num_joined_members"] == 1 and root["world_readable"] is False
    children = {c["state_key"]: c for c in root["children_state"]}
    assert set(children) == {public, private, sub_space, "!unknown:elsewhere.example"}
    assert children[public]["content"] == {"via": [SERVER], "order": "b"}
    assert isinstance(children[public]["origin_server_ts"], int) and children[public]["sender"] == "@alice:test.local"
    by_id = {r["room_id"]: r for r in resp.body["rooms"]}
    assert by_id[public]["topic"] == "open to all" and by_id[public]["children_state"] == []

    # Bob, in none of them, sees the public rooms but not the invite-only one
    resp = await hierarchy(bob, space)
    assert [r["room_id"] for r in resp.body["rooms"]] == [space, public, sub_space, deep]

    # max_depth and suggested_only
    resp = await hierarchy(alice, space, "?max_depth=1")
    assert [r["room_id"] for r in resp.body["rooms"]] == [space, private, public, sub_space]
    resp = await hierarchy(alice, space, "?max_depth=0")
    assert [r["room_id"] for r in resp.body["rooms"]] == [space]
    # (at every level: deep is not a suggested child of sub_space)
    resp = await hierarchy(alice, space, "?suggested_only=true")
    assert [r["room_id"] for r in resp.body["rooms"]] == [space, sub_space]


@pytest_twisted.ensureDeferred
async def test_hierarchy_pages_with_from_token(server: HSFixture) -> None:
    alice = await user(server, "alice")
    space = await create_room(alice, preset="public_chat", creation_content={"type": "m.space"})
    rooms = []
    for i in range(5):
        room = await create_room(alice, preset="public_chat")
        await add_child(alice, space, room, order=f"{i:02d}")
        rooms.append(room)
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        query = "?limit=2" + (f"&from={token}" if token else "")
        resp = await hierarchy(alice, space, query)
        assert resp.code == 200, resp.body
        assert len(resp.body["rooms"]) <= 2
        seen += [r["room_id"] for r in resp.body["rooms"]]
        pages += 1
        token = resp.body.get("next_batch")
        if token is None:
            break
    assert seen == [space, *rooms] and pages == 3
    # a token used with other parameters, and a garbage token, are refused
    first = await hierarchy(alice, space, "?limit=2")
    changed = await hierarchy(alice, space, f"?limit=2&max_depth=3&from={first.body['next_batch']}")
    assert (changed.code, changed.body["errcode"]) == (400, "M_INVALID_PARAM")
    garbage = await hierarchy(alice, space, "?from=%21%21")
    assert (garbage.code, garbage.body["errcode"]) == (400, "M_INVALID_PARAM")


@pytest_twisted.ensureDeferred
async def test_hierarchy_refuses_hidden_and_bad_input(server: HSFixture) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    private_space = await create_room(alice, preset="private_chat", creation_content={"type": "m.space"})
    resp = await hierarchy(bob, private_space)
    assert (resp.code, resp.body["errcode"]) == (403, "M_FORBIDDEN")
    resp = await hierarchy(alice, "!nowhere:test.local")
    assert (resp.code, resp.body["errcode"]) == (403, "M_FORBIDDEN")
    for query, name in (
        ("?limit=0", "limit"),
        ("?limit=x", "limit"),
        ("?max_depth=-1", "max_depth"),
        ("?suggested_only=maybe", "suggested_only"),
    ):
        resp = await hierarchy(alice, private_space, query)
        assert (resp.code, resp.body["errcode"]) == (400, "M_INVALID_PARAM"), query
        assert name in resp.body["error"]
    assert (await server.new_client().get(f"{V1}/rooms/{private_space}/hierarchy")).code == 401
    # world-readable history lets a non-member see a room
    world = await create_room(alice, preset="private_chat", creation_content={"type": "m.space"})
    put = await alice.put(
        f"{V3}/rooms/{world}/state/m.room.history_visibility", {"history_visibility": "world_readable"}
    )
    assert put.code == 200
    resp = await hierarchy(bob, world)
    assert resp.code == 200 and resp.body["rooms"][0]["world_readable"] is True


@pytest_twisted.ensureDeferred
async def test_federation_hierarchy_answers_signed_requests(
    make_server: Any, database_config: Any, tmp_path: Any, cleanups: Any
) -> None:
    peers = start_peers(make_server, database_config, tmp_path, cleanups, {"a.test": ["b.test"], "b.test": ["a.test"]})
    a, b = peers["a.test"], peers["b.test"]
    alice = await user(a.fx, "alice")
    space = await create_room(alice, preset="public_chat", name="Espace", creation_content={"type": "m.space"})
    public = await create_room(alice, preset="public_chat", name="Public")
    private = await create_room(alice, preset="private_chat")
    for child in (public, private):
        resp = await alice.put(f"{V3}/rooms/{space}/state/m.space.child/{child}", {"via": ["a.test"]})
        assert resp.code == 200, resp.body

    code, body = await b.federation.client.request("GET", "a.test", f"/_matrix/federation/v1/hierarchy/{quote(space)}")
    parsed = json.loads(body)
    assert code == 200, parsed
    assert parsed["room"]["room_id"] == space and parsed["room"]["name"] == "Espace"
    assert len(parsed["room"]["children_state"]) == 2
    assert [c["room_id"] for c in parsed["children"]] == [public]
    assert parsed["inaccessible_children"] == [private]
    code, body = await b.federation.client.request(
        "GET", "a.test", f"/_matrix/federation/v1/hierarchy/{quote(private)}"
    )
    assert (code, json.loads(body)["errcode"]) == (404, "M_NOT_FOUND")
