"""Client-Server API gaps found by differential testing against Synapse (see
tests/interop/test_conformance_client.py): TURN credentials, /notifications, search
context, the user directory for users without a profile, thread notification counts."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any
from urllib.parse import quote

import pytest_twisted

from tests.api.conftest import HSFixture
from tests.api.test_rooms_api import V3, create_room, send_text, user

ALICE, BOB = "@alice:test.local", "@bob:test.local"
THREADS_FILTER = quote(json.dumps({"room": {"timeline": {"unread_thread_notifications": True}}}))


@pytest_twisted.ensureDeferred
async def test_turn_server_without_and_with_shared_secret(make_server: Any) -> None:
    plain = make_server()
    alice = await user(plain, "alice")
    resp = await alice.get(f"{V3}/voip/turnServer")
    assert (resp.code, resp.body) == (200, {})  # no TURN configured, as Synapse answers
    assert (await plain.new_client().get(f"{V3}/voip/turnServer")).code == 401

    uris = ["turn:turn.example.com:3478?transport=udp", "turns:turn.example.com:5349"]
    # (the servers share one database: new users each time)
    server = make_server(turn_uris=uris, turn_shared_secret="s3cret", turn_user_lifetime="10m")
    carol = await user(server, "carol")
    body = (await carol.get(f"{V3}/voip/turnServer")).body
    assert body["uris"] == uris and body["ttl"] == 600
    expiry, _, user_id = body["username"].partition(":")
    assert user_id == "@carol:test.local" and int(expiry) > 0
    expected = base64.b64encode(hmac.new(b"s3cret", body["username"].encode(), hashlib.sha1).digest()).decode()
    assert body["password"] == expected

    fixed = make_server(turn_uris=uris, turn_username="calls", turn_password="pw")
    dave = await user(fixed, "dave")
    assert (await dave.get(f"{V3}/voip/turnServer")).body == {
        "username": "calls",
        "password": "pw",
        "ttl": 3600,
        "uris": uris,
    }


@pytest_twisted.ensureDeferred
async def test_notifications_lists_mentions_and_pages(server: HSFixture) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room_id = await create_room(alice, invite=[BOB])
    assert (await bob.post(f"{V3}/join/{room_id}", {})).code == 200
    plain = [await send_text(bob, room_id, f"message {i}") for i in range(3)]
    mention = await bob.put(
        f"{V3}/rooms/{room_id}/send/m.room.message/m1",
        {"msgtype": "m.text", "body": "alice: look", "m.mentions": {"user_ids": [ALICE]}},
    )
    body = (await alice.get(f"{V3}/notifications")).body
    got = body["notifications"]
    assert [n["event"]["event_id"] for n in got] == [mention.body["event_id"], *reversed(plain)]
    assert "next_token" not in body
    first = got[0]
    assert first["room_id"] == room_id and first["read"] is False and isinstance(first["ts"], int)
    assert first["actions"][0] == "notify" and {"set_tweak": "highlight"} in first["actions"]
    highlights = (await alice.get(f"{V3}/notifications?only=highlight")).body["notifications"]
    assert [n["event"]["event_id"] for n in highlights] == [mention.body["event_id"]]
    # Pages of two, then the rest; a read receipt marks what it covers as read.
    assert (await alice.post(f"{V3}/rooms/{room_id}/receipt/m.read/{plain[1]}", {})).code == 200
    page = (await alice.get(f"{V3}/notifications?limit=2")).body
    assert len(page["notifications"]) == 2 and page["next_token"]
    rest = (await alice.get(f"{V3}/notifications?limit=2&from={page['next_token']}")).body["notifications"]
    assert [n["event"]["event_id"] for n in rest] == [plain[1], plain[0]]
    assert all(n["read"] for n in rest) and not any(n["read"] for n in page["notifications"])
    bad = await alice.get(f"{V3}/notifications?from=nope")
    assert (bad.code, bad.body["errcode"]) == (400, "M_INVALID_PARAM")
    bad = await alice.get(f"{V3}/notifications?limit=x")
    assert (bad.code, bad.body["errcode"]) == (400, "M_INVALID_PARAM")


@pytest_twisted.ensureDeferred
async def test_search_returns_event_context_with_profiles(server: HSFixture) -> None:
    alice = await user(server, "alice")
    room_id = await create_room(alice)
    assert (await alice.put(f"{V3}/profile/{ALICE}/displayname", {"displayname": "Alice D."})).code == 200
    before = await send_text(alice, room_id, "first words")
    hit = await send_text(alice, room_id, "the needle is here")
    after = await send_text(alice, room_id, "last words")
    criteria: dict[str, Any] = {
        "search_term": "needle",
        "event_context": {"before_limit": 1, "after_limit": 1, "include_profile": True},
    }
    body = (await alice.post(f"{V3}/search", {"search_categories": {"room_events": criteria}})).body
    (result,) = body["search_categories"]["room_events"]["results"]
    assert result["result"]["event_id"] == hit
    context = result["context"]
    assert [e["event_id"] for e in context["events_before"]] == [before]
    assert [e["event_id"] for e in context["events_after"]] == [after]
    assert isinstance(context["start"], str) and isinstance(context["end"], str)
    assert context["profile_info"] == {ALICE: {"displayname": "Alice D.", "avatar_url": None}}
    # The tokens page on from the context, as /messages tokens.
    older = (await alice.get(f"{V3}/rooms/{room_id}/messages?dir=b&limit=1&from={quote(context['start'])}")).body
    assert older["chunk"] and older["chunk"][0]["event_id"] != before
    # Without event_context there is no context; a bad one is refused, naming the field.
    criteria.pop("event_context")
    body = (await alice.post(f"{V3}/search", {"search_categories": {"room_events": criteria}})).body
    assert "context" not in body["search_categories"]["room_events"]["results"][0]
    criteria["event_context"] = {"before_limit": "1"}
    bad = await alice.post(f"{V3}/search", {"search_categories": {"room_events": criteria}})
    assert (bad.code, bad.body["errcode"]) == (400, "M_INVALID_PARAM") and "before_limit" in bad.body["error"]


@pytest_twisted.ensureDeferred
async def test_user_directory_finds_users_without_a_profile(server: HSFixture) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room_id = await create_room(alice, invite=[BOB])
    assert (await bob.post(f"{V3}/join/{room_id}", {})).code == 200
    found = (await alice.post(f"{V3}/user_directory/search", {"search_term": "bob"})).body
    assert found == {"results": [{"user_id": BOB}], "limited": False}
    await user(server, "bobby")  # shares no room with alice: not found
    assert [
        r["user_id"] for r in (await alice.post(f"{V3}/user_directory/search", {"search_term": "bob"})).body["results"]
    ] == [BOB]


@pytest_twisted.ensureDeferred
async def test_unread_thread_notifications(server: HSFixture) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room_id = await create_room(alice, invite=[BOB])
    assert (await bob.post(f"{V3}/join/{room_id}", {})).code == 200
    root = await send_text(bob, room_id, "root")
    in_thread = []
    for i in range(2):
        resp = await bob.put(
            f"{V3}/rooms/{room_id}/send/m.room.message/th{i}",
            {"msgtype": "m.text", "body": f"reply {i}", "m.relates_to": {"rel_type": "m.thread", "event_id": root}},
        )
        in_thread.append(resp.body["event_id"])
    main = await send_text(bob, room_id, "main again")

    async def counts(filter_param: str = "") -> dict[str, Any]:
        room: dict[str, Any] = (await alice.get(f"{V3}/sync{filter_param}")).body["rooms"]["join"][room_id]
        return room

    room = await counts("?filter=" + THREADS_FILTER)
    assert room["unread_notifications"]["notification_count"] == 2  # root and "main again"
    assert room["unread_thread_notifications"] == {root: {"notification_count": 2, "highlight_count": 0}}
    assert (await counts())["unread_notifications"]["notification_count"] == 4
    assert "unread_thread_notifications" not in await counts()
    # Reading the main timeline leaves the thread unread, and the other way round.
    assert (await alice.post(f"{V3}/rooms/{room_id}/receipt/m.read/{main}", {"thread_id": "main"})).code == 200
    room = await counts("?filter=" + THREADS_FILTER)
    assert room["unread_notifications"]["notification_count"] == 0
    assert room["unread_thread_notifications"] == {root: {"notification_count": 2, "highlight_count": 0}}
    assert (await alice.post(f"{V3}/rooms/{room_id}/receipt/m.read/{in_thread[0]}", {"thread_id": root})).code == 200
    room = await counts("?filter=" + THREADS_FILTER)
    assert room["unread_thread_notifications"] == {root: {"notification_count": 1, "highlight_count": 0}}
    assert (await counts())["unread_notifications"]["notification_count"] == 1
    # An unthreaded receipt covers every thread.
    assert (await alice.post(f"{V3}/rooms/{room_id}/receipt/m.read/{main}", {})).code == 200
    room = await counts("?filter=" + THREADS_FILTER)
    assert room["unread_notifications"]["notification_count"] == 0 and room["unread_thread_notifications"] == {}
