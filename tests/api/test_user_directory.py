"""The user directory over HTTP (POST /user_directory/search), one server; both engines.
Across federation: test_user_directory_federation.py."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest_twisted

from tests.api.conftest import Client, HSFixture
from tests.api.helpers import password_auth, register

V3 = "/_matrix/client/v3"
SEARCH = f"{V3}/user_directory/search"
# (tests register more users than the default registration rate allows)
MANY = {"rc_registration": {"per_second": 100, "burst_count": 100}}


async def user(server: HSFixture, localpart: str, display_name: str | None = None) -> tuple[Client, str]:
    client = server.new_client()
    body = await register(client, localpart)
    client.token = body["access_token"]
    user_id = str(body["user_id"])
    if display_name is not None:
        resp = await client.put(f"{V3}/profile/{quote(user_id)}/displayname", {"displayname": display_name})
        assert resp.code == 200, resp.body
    return client, user_id


async def search(client: Client, term: str, limit: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"search_term": term}
    if limit is not None:
        body["limit"] = limit
    resp = await client.post(SEARCH, body)
    assert resp.code == 200, resp.body
    return dict(resp.body)


async def found(client: Client, term: str) -> list[str]:
    return [r["user_id"] for r in (await search(client, term))["results"]]


async def room_with(owner: Client, guests: list[tuple[Client, str]], **options: Any) -> str:
    resp = await owner.post(f"{V3}/createRoom", {"invite": [g[1] for g in guests], **options})
    assert resp.code == 200, resp.body
    room_id = str(resp.body["room_id"])
    for client, _ in guests:
        assert (await client.post(f"{V3}/join/{quote(room_id)}", {})).code == 200
    return room_id


@pytest_twisted.ensureDeferred
async def test_words_case_accents_ranking_and_limit(make_server: Any) -> None:
    server = make_server(**MANY)
    alice, _ = await user(server, "alice")
    jean = await user(server, "jean.dupont", "Jean Dupont")
    jeanne = await user(server, "jeanne", "Jeanne Martin")
    helene = await user(server, "helene", "Hélène Dupont-Moretti")
    await room_with(alice, [jean, jeanne, helene])

    # exact words rank before prefixes; names and localparts alike, whatever the case
    assert await found(alice, "JEAN") == [jean[1], jeanne[1]]
    assert await found(alice, "dupont") == [helene[1], jean[1]]  # equal matches: by name
    assert await found(alice, "helene") == [helene[1]]  # accents are ignored both ways
    assert await found(alice, "HÉLÈ") == [helene[1]]
    assert await found(alice, "moretti") == [helene[1]]  # a hyphen separates words
    assert await found(alice, "jean dup") == [jean[1]]  # every word must match
    assert await found(alice, "@jean.dupont:test.local") == [jean[1]]  # a full user ID
    assert await found(alice, "alice") == []  # never oneself
    assert await found(alice, "zorro") == []
    assert await search(alice, "!!! ::") == {"results": [], "limited": False}  # no word at all

    body = await search(alice, "jean")
    assert body == {
        "results": [
            {"user_id": jean[1], "display_name": "Jean Dupont"},
            {"user_id": jeanne[1], "display_name": "Jeanne Martin"},
        ],
        "limited": False,
    }
    assert await search(alice, "jean", limit=1) == {
        "results": [{"user_id": jean[1], "display_name": "Jean Dupont"}],
        "limited": True,
    }
    assert await search(alice, "jean", limit=0) == {"results": [], "limited": True}
    assert (await search(alice, "test", limit=1000))["results"]  # capped at 50, not refused


@pytest_twisted.ensureDeferred
async def test_bad_input(server: HSFixture) -> None:
    """Tried: limit as a string, a float and negative; search_term missing, null, a number;
    a body that is not an object."""
    alice, _ = await user(server, "alice")
    for body, errcode, field in (
        ({"search_term": "a", "limit": "5"}, "M_BAD_JSON", "limit"),
        ({"search_term": "a", "limit": 2.5}, "M_BAD_JSON", "limit"),
        ({"search_term": "a", "limit": -1}, "M_INVALID_PARAM", "limit"),
        ({"limit": 5}, "M_MISSING_PARAM", "search_term"),
        ({"search_term": None}, "M_MISSING_PARAM", "search_term"),
        ({"search_term": 5}, "M_BAD_JSON", "search_term"),
    ):
        resp = await alice.post(SEARCH, body)
        assert (resp.code, resp.body["errcode"]) == (400, errcode), (body, resp.body)
        assert field in resp.body["error"], (body, resp.body)
    resp = await alice.post(SEARCH, ["search_term"])
    assert (resp.code, resp.body["errcode"]) == (400, "M_BAD_JSON")
    assert (await server.new_client().post(SEARCH, {"search_term": "a"})).code == 401


@pytest_twisted.ensureDeferred
async def test_who_is_visible_follows_rooms_and_profiles(make_server: Any) -> None:
    server = make_server(**MANY)
    alice, _ = await user(server, "alice")
    bob = await user(server, "bob", "Bob Public")
    carol = await user(server, "carol")
    dave = await user(server, "dave", "Dave Oldname")

    # bob is in a public room (join rule public) alice is not in: found; not once it closes
    assert await found(alice, "bob") == []
    public = await room_with(carol[0], [bob], preset="public_chat")
    assert await found(alice, "public") == [bob[1]]
    closed = await carol[0].put(f"{V3}/rooms/{quote(public)}/state/m.room.join_rules/", {"join_rule": "invite"})
    assert closed.code == 200, closed.body
    assert await found(alice, "public") == []
    # ... or world-readable history
    readable = {"history_visibility": "world_readable"}
    assert (await carol[0].put(f"{V3}/rooms/{quote(public)}/state/m.room.history_visibility/", readable)).code == 200
    assert await found(alice, "public") == [bob[1]]

    # dave shares a private room with alice: found, by his new name once he changes it
    private = await room_with(alice, [dave])
    assert await found(alice, "oldname") == [dave[1]]
    assert await found(carol[0], "oldname") == []  # carol shares nothing with dave
    assert (
        await dave[0].put(f"{V3}/profile/{quote(dave[1])}/displayname", {"displayname": "Dave Newname"})
    ).code == 200
    assert await found(alice, "oldname") == []
    assert (await search(alice, "newname"))["results"] == [{"user_id": dave[1], "display_name": "Dave Newname"}]
    # gone once he leaves
    assert (await dave[0].post(f"{V3}/rooms/{quote(private)}/leave", {})).code == 200
    assert await found(alice, "dave") == []


@pytest_twisted.ensureDeferred
async def test_search_all_users_and_deactivation(make_server: Any) -> None:
    server = make_server(user_directory={"search_all_users": True})
    alice, _ = await user(server, "alice")
    erin_client, erin = await user(server, "erin", "Erin Seule")  # in no room at all
    assert await found(alice, "seule") == [erin]
    first = await erin_client.post(f"{V3}/account/deactivate", {})
    auth = password_auth(erin, "correct horse battery", first.body["session"])
    assert (await erin_client.post(f"{V3}/account/deactivate", {"auth": auth})).code == 200
    assert await found(alice, "seule") == []


@pytest_twisted.ensureDeferred
async def test_directory_built_for_a_database_that_predates_it(make_server: Any) -> None:
    """A database whose directory tables are empty (as after migration 0022 on an existing
    server) is indexed once, at first use: local users, rooms and their publicity."""
    first = make_server(**MANY)
    alice, _ = await user(first, "alice")
    bob = await user(first, "bob", "Bob Ancien")
    carol = await user(first, "carol", "Carol Publique")
    await room_with(alice, [bob])
    await room_with(bob[0], [carol], preset="public_chat")

    def forget(txn: Any) -> None:
        for table in ("user_directory", "user_directory_search", "user_directory_rooms"):
            txn.execute(f"DELETE FROM {table}")
        txn.execute("UPDATE user_directory_state SET populated = 0")

    await first.hs.db.run_interaction("forget_directory", forget)
    second = make_server()  # same database
    alice2 = second.new_client()
    alice2.token = alice.token
    assert await found(alice2, "ancien") == [bob[1]]
    assert await found(alice2, "publique") == [carol[1]]
    rows = await second.hs.db.run_interaction(
        "directory_rows", lambda txn: txn.select_all("SELECT populated FROM user_directory_state")
    )
    assert [tuple(r) for r in rows] == [(1,)]


@pytest_twisted.ensureDeferred
async def test_disabled_directory_finds_nobody(make_server: Any) -> None:
    """user_directory.enabled: false -> every search answers no one (as Synapse)."""
    server = make_server(user_directory={"enabled": False, "search_all_users": True})
    alice, _ = await user(server, "alice")
    await user(server, "bob")
    assert await search(alice, "bob") == {"results": [], "limited": False}
