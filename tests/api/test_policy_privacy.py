"""Profile and user directory privacy over HTTP; both engines."""

from __future__ import annotations

from typing import Any

import pytest_twisted

from tests.api.conftest import Client, HSFixture
from tests.api.helpers import register

V3 = "/_matrix/client/v3"


async def user(server: HSFixture, name: str) -> tuple[Client, str]:
    client = server.new_client()
    body = await register(client, name)
    client.token = body["access_token"]
    user_id = str(body["user_id"])
    assert (await client.put(f"{V3}/profile/{user_id}/displayname", {"displayname": name.title()})).code == 200
    return client, user_id


async def search(client: Client, term: str) -> list[str]:
    resp = await client.post(f"{V3}/user_directory/search", {"search_term": term})
    assert resp.code == 200, resp.body
    return [r["user_id"] for r in resp.body["results"]]


@pytest_twisted.ensureDeferred
async def test_hide_profile_account_data_hides_from_search(make_server: Any) -> None:
    """Tried: searching for a user who set im.vector.hide_profile {"hide_profile": true}."""
    server = make_server(user_directory={"search_all_users": True})
    alice, _ = await user(server, "alice")
    bob, bob_id = await user(server, "bobby")
    assert await search(alice, "bobby") == [bob_id]
    put = await bob.put(f"{V3}/user/{bob_id}/account_data/im.vector.hide_profile", {"hide_profile": True})
    assert put.code == 200
    assert await search(alice, "bobby") == []
    await bob.put(f"{V3}/user/{bob_id}/account_data/im.vector.hide_profile", {"hide_profile": False})
    assert await search(alice, "bobby") == [bob_id]


@pytest_twisted.ensureDeferred
async def test_directory_limited_to_shared_rooms_unless_configured(make_server: Any) -> None:
    """Tried: finding a user one shares no room with (default: not found)."""
    server = make_server()
    alice, _ = await user(server, "alice")
    carol, carol_id = await user(server, "carol")
    assert await search(alice, "carol") == []
    room = (await alice.post(f"{V3}/createRoom", {"invite": [carol_id]})).body["room_id"]
    assert (await carol.post(f"{V3}/join/{room}", {})).code == 200
    assert await search(alice, "carol") == [carol_id]


@pytest_twisted.ensureDeferred
async def test_profile_requests_limited_to_users_sharing_a_room(make_server: Any) -> None:
    """Tried: reading the profile (and its displayname) of a user sharing no room."""
    server = make_server(require_auth_for_profile_requests=True, limit_profile_requests_to_users_who_share_rooms=True)
    alice, alice_id = await user(server, "alice")
    dave, dave_id = await user(server, "dave")
    for path in (f"/profile/{dave_id}", f"/profile/{dave_id}/displayname"):
        refused = await alice.get(f"{V3}{path}")
        assert refused.code == 403 and "share a room" in refused.body["error"], path
    assert (await alice.get(f"{V3}/profile/{alice_id}")).code == 200  # one's own
    assert (await server.new_client().get(f"{V3}/profile/{dave_id}")).code == 401  # no token
    room = (await alice.post(f"{V3}/createRoom", {"invite": [dave_id]})).body["room_id"]
    assert (await dave.post(f"{V3}/join/{room}", {})).code == 200
    assert (await alice.get(f"{V3}/profile/{dave_id}")).code == 200
