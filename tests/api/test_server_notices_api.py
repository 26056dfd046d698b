"""Server notices over the HTTP API (Synapse's admin API and behaviour), on both engines."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import defer

from tests.api.conftest import Client, HSFixture
from tests.api.test_policy_validity import admin_client
from tests.api.test_rooms_api import V3, create_room, user

NOTICE = "/_synapse/admin/v1/send_server_notice"
SYSTEM = "@notices:test.local"
ALICE, BOB = "@alice:test.local", "@bob:test.local"
NOTICES: dict[str, Any] = {
    "system_mxid_localpart": "notices",
    "system_mxid_display_name": "Avis du ministère",
    "room_topic": "Informations de l'administrateur",
}


def text(body: str) -> dict[str, Any]:
    return {"msgtype": "m.text", "body": body}


async def send_notice(admin: Client, user_id: str, body: str) -> str:
    resp = await admin.post(NOTICE, {"user_id": user_id, "content": text(body)})
    assert resp.code == 200, resp.body
    return str(resp.body["event_id"])


async def invited_room(client: Client) -> str:
    """The one room the user is invited to, from /sync."""
    (room_id,) = (await client.get(f"{V3}/sync?timeout=0")).body["rooms"]["invite"]
    return str(room_id)


async def timeline(client: Client, room_id: str) -> list[dict[str, Any]]:
    page = await client.get(f"{V3}/rooms/{room_id}/messages?dir=b&limit=50")
    assert page.code == 200, page.body
    return list(reversed(page.body["chunk"]))


@pytest_twisted.ensureDeferred
async def test_notice_reaches_the_user_through_sync_in_a_tagged_room_that_is_reused(
    make_server: Any,
) -> None:
    # Synapse never encrypts the notices room, whatever this says
    server: HSFixture = make_server(server_notices=NOTICES, encryption_enabled_by_default_for_room_type="all")
    admin = await admin_client(server)
    alice = await user(server, "alice")
    first = await send_notice(admin, ALICE, "Maintenance ce soir")

    sync = (await alice.get(f"{V3}/sync?timeout=0")).body
    (room_id,) = sync["rooms"]["invite"]
    stripped = {e["type"]: e for e in sync["rooms"]["invite"][room_id]["invite_state"]["events"]}
    assert stripped["m.room.name"]["content"] == {"name": "Server Notices"}
    assert stripped["m.room.member"]["sender"] == SYSTEM
    assert (await alice.post(f"{V3}/join/{room_id}", {})).code == 200

    sync = (await alice.get(f"{V3}/sync?timeout=0")).body
    joined = sync["rooms"]["join"][room_id]
    assert [e for e in joined["timeline"]["events"] if e["event_id"] == first][0]["content"] == text(
        "Maintenance ce soir"
    )
    tags = [e for e in joined["account_data"]["events"] if e["type"] == "m.tag"]
    assert tags == [{"type": "m.tag", "content": {"tags": {"m.server_notice": {}}}}]
    since = sync["next_batch"]

    # The second notice goes to the same room, and wakes the user's /sync.
    second = await send_notice(admin, ALICE, "C'est fini")
    sync = (await alice.get(f"{V3}/sync?timeout=0&since={since}")).body
    assert [e["event_id"] for e in sync["rooms"]["join"][room_id]["timeline"]["events"]] == [second]
    assert (await alice.get(f"{V3}/joined_rooms")).body["joined_rooms"] == [room_id]

    # The room as Synapse makes it: private, named, the system user's profile, users at -10.
    state = {(e["type"], e["state_key"]): e["content"] for e in (await alice.get(f"{V3}/rooms/{room_id}/state")).body}
    assert state[("m.room.topic", "")] == {"topic": NOTICES["room_topic"]}
    assert state[("m.room.join_rules", "")] == {"join_rule": "invite"}
    assert state[("m.room.member", SYSTEM)]["displayname"] == "Avis du ministère"
    assert state[("m.room.power_levels", "")]["users_default"] == -10
    assert ("m.room.encryption", "") not in state


@pytest_twisted.ensureDeferred
async def test_the_user_can_neither_send_invite_nor_reject_but_may_leave(make_server: Any) -> None:
    server: HSFixture = make_server(server_notices=NOTICES)
    admin = await admin_client(server)
    alice = await user(server, "alice")
    await user(server, "bob")
    await send_notice(admin, ALICE, "one")
    room_id = await invited_room(alice)

    rejected = await alice.post(f"{V3}/rooms/{room_id}/leave", {})
    assert (rejected.code, rejected.body["errcode"]) == (403, "M_CANNOT_LEAVE_SERVER_NOTICE_ROOM")
    assert (await alice.post(f"{V3}/join/{room_id}", {})).code == 200
    sent = await alice.put(f"{V3}/rooms/{room_id}/send/m.room.message/t1", text("hello?"))
    assert (sent.code, sent.body["errcode"]) == (403, "M_FORBIDDEN")
    invited = await alice.post(f"{V3}/rooms/{room_id}/invite", {"user_id": BOB})
    assert (invited.code, invited.body["errcode"]) == (403, "M_FORBIDDEN")
    # nobody may invite the system user anywhere
    own_room = await create_room(alice)
    refused = await alice.post(f"{V3}/rooms/{own_room}/invite", {"user_id": SYSTEM})
    assert (refused.code, refused.body["errcode"]) == (403, "M_FORBIDDEN")

    # Leaving a joined notices room is allowed; the next notice opens a new room.
    assert (await alice.post(f"{V3}/rooms/{room_id}/leave", {})).code == 200
    event_id = await send_notice(admin, ALICE, "two")
    new_room = await invited_room(alice)
    assert new_room != room_id
    assert (await alice.post(f"{V3}/join/{new_room}", {})).code == 200
    assert event_id in [e["event_id"] for e in await timeline(alice, new_room)]


@pytest_twisted.ensureDeferred
async def test_auto_join_and_configuration_changes_reach_the_existing_room(
    make_server: Any, database_config: Any
) -> None:
    server: HSFixture = make_server(server_notices={**NOTICES, "auto_join": True})
    admin = await admin_client(server)
    alice = await user(server, "alice")
    first = await send_notice(admin, ALICE, "joined at once")
    sync = (await alice.get(f"{V3}/sync?timeout=0")).body
    assert sync["rooms"].get("invite", {}) == {}
    (room_id,) = sync["rooms"]["join"]
    assert first in [e["event_id"] for e in sync["rooms"]["join"][room_id]["timeline"]["events"]]

    # Restarted with another name, topic and display name: the next notice updates the room.
    changed = {
        **NOTICES,
        "auto_join": True,
        "room_name": "Avis",
        "room_topic": None,
        "system_mxid_display_name": "Le ministère",
    }
    restarted: HSFixture = make_server(server_notices=changed)
    restarted.client.token = admin.token
    alice.base_url = restarted.client.base_url
    await send_notice(restarted.client, ALICE, "renamed")
    state = {(e["type"], e["state_key"]): e["content"] for e in (await alice.get(f"{V3}/rooms/{room_id}/state")).body}
    assert state[("m.room.name", "")] == {"name": "Avis"}
    assert state[("m.room.topic", "")] == {"topic": ""}
    assert state[("m.room.member", SYSTEM)]["displayname"] == "Le ministère"
    assert (await alice.get(f"{V3}/joined_rooms")).body["joined_rooms"] == [room_id]


@pytest_twisted.ensureDeferred
async def test_concurrent_first_notices_share_one_room(make_server: Any) -> None:
    server: HSFixture = make_server(server_notices=NOTICES)
    admin = await admin_client(server)
    alice = await user(server, "alice")
    sent = await defer.gatherResults(
        [defer.ensureDeferred(send_notice(admin, ALICE, f"n{i}")) for i in range(3)], consumeErrors=True
    )
    room_id = await invited_room(alice)
    assert (await alice.post(f"{V3}/join/{room_id}", {})).code == 200
    assert set(sent) <= {e["event_id"] for e in await timeline(alice, room_id)}


@pytest_twisted.ensureDeferred
async def test_put_with_a_transaction_id_sends_once(make_server: Any) -> None:
    server: HSFixture = make_server(server_notices=NOTICES)
    admin = await admin_client(server)
    alice = await user(server, "alice")
    body = {"user_id": ALICE, "content": text("once")}
    first = await admin.put(f"{NOTICE}/txn1", body)
    again = await admin.put(f"{NOTICE}/txn1", body)
    assert first.code == again.code == 200 and first.body == again.body
    other = await admin.put(f"{NOTICE}/txn2", body)
    assert other.code == 200 and other.body["event_id"] != first.body["event_id"]
    # a state event, as Synapse allows with type and state_key
    state = await admin.post(
        NOTICE, {"user_id": ALICE, "type": "org.example.policy", "state_key": "", "content": {"v": 1}}
    )
    assert state.code == 200, state.body
    room_id = await invited_room(alice)
    assert (await alice.post(f"{V3}/join/{room_id}", {})).code == 200
    bodies = [e["content"].get("body") for e in await timeline(alice, room_id) if e["type"] == "m.room.message"]
    assert bodies == ["once", "once"]
    policy = await alice.get(f"{V3}/rooms/{room_id}/state/org.example.policy/")
    assert policy.body == {"v": 1}


@pytest_twisted.ensureDeferred
async def test_bad_requests_are_refused_and_change_nothing(make_server: Any) -> None:
    """Tried: no token, a non-admin, a body that is not JSON, missing user_id, missing content,
    content a string, user_id a number, an invalid user ID, a remote user, an unknown user,
    the system user itself, type a number; then the system user's ID at registration."""
    server: HSFixture = make_server(server_notices=NOTICES)
    admin = await admin_client(server)
    alice = await user(server, "alice")
    no_token = await server.new_client().post(NOTICE, {"user_id": ALICE, "content": text("x")})
    assert (no_token.code, no_token.body["errcode"]) == (401, "M_MISSING_TOKEN")
    not_admin = await alice.post(NOTICE, {"user_id": ALICE, "content": text("x")})
    assert (not_admin.code, not_admin.body["errcode"]) == (403, "M_FORBIDDEN")
    not_json = await admin.request("POST", NOTICE, raw=b"{nope")
    assert (not_json.code, not_json.body["errcode"]) == (400, "M_NOT_JSON")
    cases: list[tuple[dict[str, Any], int, str, str]] = [
        ({"content": text("x")}, 400, "M_MISSING_PARAM", "user_id"),
        ({"user_id": ALICE}, 400, "M_MISSING_PARAM", "content"),
        ({"user_id": ALICE, "content": "hello"}, 400, "M_BAD_JSON", "content"),
        ({"user_id": 5, "content": text("x")}, 400, "M_BAD_JSON", "user_id"),
        ({"user_id": "alice", "content": text("x")}, 400, "M_INVALID_PARAM", "user_id"),
        ({"user_id": "@alice:elsewhere.example", "content": text("x")}, 400, "M_INVALID_PARAM", "user_id"),
        ({"user_id": "@nobody:test.local", "content": text("x")}, 404, "M_NOT_FOUND", "user_id"),
        ({"user_id": SYSTEM, "content": text("x")}, 400, "M_INVALID_PARAM", "user_id"),
        ({"user_id": ALICE, "content": text("x"), "type": 5}, 400, "M_BAD_JSON", "type"),
    ]
    for body, code, errcode, field in cases:
        resp = await admin.post(NOTICE, body)
        assert (resp.code, resp.body["errcode"]) == (code, errcode), (body, resp.body)
        assert field in resp.body["error"], (body, resp.body)
    # nothing was created: no invite for alice, no room for the system user
    sync = (await alice.get(f"{V3}/sync?timeout=0")).body
    assert sync.get("rooms", {}).get("invite", {}) == {}
    assert (await alice.get(f"{V3}/joined_rooms")).body["joined_rooms"] == []
    # the system user's ID is reserved
    taken = await server.new_client().get(f"{V3}/register/available?username=notices")
    assert (taken.code, taken.body["errcode"]) == (400, "M_EXCLUSIVE")


@pytest_twisted.ensureDeferred
async def test_without_the_section_the_api_says_it_is_off(server: HSFixture) -> None:
    admin = await admin_client(server)
    await user(server, "alice")
    resp = await admin.post(NOTICE, {"user_id": ALICE, "content": text("x")})
    assert (resp.code, resp.body["errcode"]) == (400, "M_UNKNOWN")
    assert "server_notices" in resp.body["error"]
    not_admin = await server.new_client().post(NOTICE, {"user_id": ALICE, "content": text("x")})
    assert not_admin.code == 401
