"""Rooms, messaging and /sync over the HTTP API, on both engines."""

from __future__ import annotations

import time
from typing import Any

import pytest_twisted
from twisted.internet import defer, reactor, task

from tests.api.conftest import Client, HSFixture
from tests.api.helpers import register

V3 = "/_matrix/client/v3"


async def user(server: HSFixture, name: str) -> Client:
    client = server.new_client()
    client.token = (await register(client, name))["access_token"]
    return client


async def create_room(client: Client, **body: Any) -> str:
    resp = await client.post(f"{V3}/createRoom", body)
    assert resp.code == 200, resp.body
    return str(resp.body["room_id"])


async def send_text(client: Client, room_id: str, text: str, txn: str | None = None) -> str:
    txn = txn or f"t{time.monotonic_ns()}"
    resp = await client.put(f"{V3}/rooms/{room_id}/send/m.room.message/{txn}", {"msgtype": "m.text", "body": text})
    assert resp.code == 200, resp.body
    return str(resp.body["event_id"])


@pytest_twisted.ensureDeferred
async def test_create_room_chat_and_sync(server: HSFixture) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room_id = await create_room(alice, name="Cabinet", topic="Réunion", invite=["@bob:test.local"], preset="private_chat")

    # Bob sees the invite in his initial sync, with stripped state naming the room.
    sync = (await bob.get(f"{V3}/sync")).body
    invite = sync["rooms"]["invite"][room_id]["invite_state"]["events"]
    assert {"type": "m.room.name", "state_key": "", "content": {"name": "Cabinet"}, "sender": "@alice:test.local"} in invite
    since = sync["next_batch"]

    assert (await bob.post(f"{V3}/join/{room_id}", {})).code == 200
    event_id = await send_text(alice, room_id, "Bonjour")

    sync = (await bob.get(f"{V3}/sync?since={since}")).body
    joined = sync["rooms"]["join"][room_id]
    bodies = [e["content"].get("body") for e in joined["timeline"]["events"] if e["type"] == "m.room.message"]
    assert bodies == ["Bonjour"]
    assert room_id not in sync["rooms"]["invite"]
    msg = next(e for e in joined["timeline"]["events"] if e["event_id"] == event_id)
    assert msg["sender"] == "@alice:test.local" and "hashes" not in msg and "signatures" not in msg

    state = {(e["type"], e["state_key"]): e for e in (await alice.get(f"{V3}/rooms/{room_id}/state")).body}
    assert state[("m.room.topic", "")]["content"] == {"topic": "Réunion"}
    assert state[("m.room.member", "@bob:test.local")]["content"]["membership"] == "join"
    assert (await alice.get(f"{V3}/joined_rooms")).body == {"joined_rooms": [room_id]}
    joined_members = (await bob.get(f"{V3}/rooms/{room_id}/joined_members")).body["joined"]
    assert set(joined_members) == {"@alice:test.local", "@bob:test.local"}


@pytest_twisted.ensureDeferred
async def test_send_is_idempotent_per_txn(server: HSFixture) -> None:
    alice = await user(server, "alice")
    room_id = await create_room(alice)
    first = await send_text(alice, room_id, "once", txn="abc")
    again = await send_text(alice, room_id, "once", txn="abc")
    assert first == again
    sync = (await alice.get(f"{V3}/sync")).body
    timeline = sync["rooms"]["join"][room_id]["timeline"]["events"]
    mine = [e for e in timeline if e["event_id"] == first]
    assert len(mine) == 1 and mine[0]["unsigned"]["transaction_id"] == "abc"


@pytest_twisted.ensureDeferred
async def test_long_poll_wakes_on_new_message(server: HSFixture) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room_id = await create_room(alice, preset="public_chat")
    assert (await bob.post(f"{V3}/join/{room_id}", {})).code == 200
    since = (await bob.get(f"{V3}/sync")).body["next_batch"]

    started = time.monotonic()
    waiting = defer.ensureDeferred(bob.get(f"{V3}/sync?since={since}&timeout=20000"))
    await task.deferLater(reactor, 0.3, lambda: None)
    assert not waiting.called
    await send_text(alice, room_id, "wake up")
    resp = await waiting
    assert time.monotonic() - started < 5
    events = resp.body["rooms"]["join"][room_id]["timeline"]["events"]
    assert [e["content"]["body"] for e in events] == ["wake up"]


@pytest_twisted.ensureDeferred
async def test_sync_timeout_returns_empty(server: HSFixture) -> None:
    alice = await user(server, "alice")
    since = (await alice.get(f"{V3}/sync")).body["next_batch"]
    started = time.monotonic()
    resp = await alice.get(f"{V3}/sync?since={since}&timeout=300")
    assert resp.code == 200 and resp.body["rooms"]["join"] == {}
    assert time.monotonic() - started >= 0.25


@pytest_twisted.ensureDeferred
async def test_messages_pagination_and_limited_sync(server: HSFixture) -> None:
    alice = await user(server, "alice")
    room_id = await create_room(alice)
    since = (await alice.get(f"{V3}/sync")).body["next_batch"]
    sent = [await send_text(alice, room_id, f"m{i}") for i in range(15)]

    sync = (await alice.get(f"{V3}/sync?since={since}&filter=" + '{"room":{"timeline":{"limit":5}}}')).body
    timeline = sync["rooms"]["join"][room_id]["timeline"]
    assert timeline["limited"] is True
    assert [e["event_id"] for e in timeline["events"]] == sent[-5:]

    seen: list[str] = []
    token = timeline["prev_batch"]
    for _ in range(10):
        page = (await alice.get(f"{V3}/rooms/{room_id}/messages?dir=b&limit=4&from={token}")).body
        seen.extend(e["event_id"] for e in page["chunk"] if e["type"] == "m.room.message")
        if "end" not in page:
            break
        token = page["end"]
    assert list(reversed(seen)) == sent[:-5]

    forward = (await alice.get(f"{V3}/rooms/{room_id}/messages?dir=f&limit=100")).body
    types = [e["type"] for e in forward["chunk"]]
    assert types[0] == "m.room.create" and types[-1] == "m.room.message"


@pytest_twisted.ensureDeferred
async def test_redaction(server: HSFixture) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room_id = await create_room(alice, preset="public_chat")
    await bob.post(f"{V3}/join/{room_id}", {})
    target = await send_text(bob, room_id, "oops")
    # Bob can't redact Alice's messages; Alice (power 100) can redact Bob's.
    alice_msg = await send_text(alice, room_id, "mine")
    denied = await bob.put(f"{V3}/rooms/{room_id}/redact/{alice_msg}/r1", {})
    assert (denied.code, denied.body["errcode"]) == (403, "M_FORBIDDEN")
    ok = await alice.put(f"{V3}/rooms/{room_id}/redact/{target}/r2", {"reason": "spam"})
    assert ok.code == 200
    event = (await bob.get(f"{V3}/rooms/{room_id}/event/{target}")).body
    assert event["content"] == {}
    assert event["unsigned"]["redacted_because"]["content"]["reason"] == "spam"


@pytest_twisted.ensureDeferred
async def test_membership_kick_ban_leave_forget(server: HSFixture) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room_id = await create_room(alice, preset="public_chat")
    await bob.post(f"{V3}/rooms/{room_id}/join", {})
    kick = await alice.post(f"{V3}/rooms/{room_id}/kick", {"user_id": "@bob:test.local", "reason": "bye"})
    assert kick.code == 200
    assert (await bob.get(f"{V3}/rooms/{room_id}/joined_members")).code == 403
    await bob.post(f"{V3}/join/{room_id}", {})
    ban = await alice.post(f"{V3}/rooms/{room_id}/ban", {"user_id": "@bob:test.local"})
    assert ban.code == 200
    rejoin = await bob.post(f"{V3}/join/{room_id}", {})
    assert (rejoin.code, rejoin.body["errcode"]) == (403, "M_FORBIDDEN")
    assert (await alice.post(f"{V3}/rooms/{room_id}/unban", {"user_id": "@bob:test.local"})).code == 200
    assert (await bob.post(f"{V3}/join/{room_id}", {})).code == 200
    assert (await bob.post(f"{V3}/rooms/{room_id}/leave", {})).code == 200
    assert (await bob.post(f"{V3}/rooms/{room_id}/forget", {})).code == 200
    # Bob can't kick Alice (no power) even after joining again.
    await bob.post(f"{V3}/join/{room_id}", {})
    denied = await bob.post(f"{V3}/rooms/{room_id}/kick", {"user_id": "@alice:test.local"})
    assert denied.code == 403


@pytest_twisted.ensureDeferred
async def test_private_room_refuses_uninvited(server: HSFixture) -> None:
    alice = await user(server, "alice")
    eve = await user(server, "eve")
    room_id = await create_room(alice, preset="private_chat")
    resp = await eve.post(f"{V3}/join/{room_id}", {})
    assert (resp.code, resp.body["errcode"]) == (403, "M_FORBIDDEN")
    resp = await eve.put(f"{V3}/rooms/{room_id}/send/m.room.message/x", {"body": "hi", "msgtype": "m.text"})
    assert resp.code == 403
    # Eve can't read the room either.
    assert (await eve.get(f"{V3}/rooms/{room_id}/messages?dir=b")).code == 403
    assert (await eve.get(f"{V3}/rooms/{room_id}/state")).code == 403


@pytest_twisted.ensureDeferred
async def test_bad_room_input(server: HSFixture) -> None:
    """Bad input tried: unknown rooms, bad versions, presets, oversized events, bad state keys,
    bogus since tokens, filters that are not JSON, floats in content."""
    alice = await user(server, "alice")
    room_id = await create_room(alice)
    cases = [
        (await alice.post(f"{V3}/createRoom", {"room_version": "999"}), 400, "M_UNSUPPORTED_ROOM_VERSION"),
        (await alice.post(f"{V3}/createRoom", {"preset": "party"}), 400, "M_INVALID_PARAM"),
        (await alice.post(f"{V3}/createRoom", {"invite": ["not-a-user"]}), 400, "M_INVALID_PARAM"),
        (await alice.post(f"{V3}/createRoom", {"initial_state": [{"type": "x"}]}), 400, "M_MISSING_PARAM"),
        # an unknown room answers as one the user is not in (spec and Synapse: 403)
        (await alice.put(f"{V3}/rooms/!nope:test.local/send/m.room.message/1", {"body": "x"}), 403, "M_FORBIDDEN"),
        (await alice.get(f"{V3}/sync?since=garbage"), 400, "M_INVALID_PARAM"),
        (await alice.get(f"{V3}/sync?filter=%7Bnot-json"), 400, "M_NOT_JSON"),
        (await alice.get(f"{V3}/rooms/{room_id}/messages?from=zzz"), 400, "M_INVALID_PARAM"),
        (await alice.get(f"{V3}/rooms/{room_id}/messages?dir=x"), 400, "M_INVALID_PARAM"),
        (await alice.put(f"{V3}/rooms/{room_id}/send/m.room.message/big", {"body": "x" * 70000}), 413, None),
        (await alice.put(f"{V3}/rooms/{room_id}/send/m.room.message/f", {"body": "x", "n": 1.5}), 400, "M_BAD_JSON"),
        (await alice.put(f"{V3}/rooms/{room_id}/state/m.room.name/@bob:test.local", {"name": "x"}), 403, "M_FORBIDDEN"),
        (await alice.put(f"{V3}/rooms/{room_id}/state/m.room.create", {}), 403, "M_FORBIDDEN"),
    ]
    for resp, code, errcode in cases:
        assert resp.code == code, (resp.code, resp.body)
        if errcode:
            assert resp.body["errcode"] == errcode, resp.body
    # None of it changed the room: still only Alice's room with its initial events.
    assert (await alice.get(f"{V3}/joined_rooms")).body == {"joined_rooms": [room_id]}
    msgs = (await alice.get(f"{V3}/rooms/{room_id}/messages?dir=b&limit=50")).body["chunk"]
    assert not any(e["type"] == "m.room.message" for e in msgs)


@pytest_twisted.ensureDeferred
async def test_search_messages(server: HSFixture) -> None:
    alice = await user(server, "alice")
    eve = await user(server, "eve")
    room_id = await create_room(alice, name="Préfecture")
    await send_text(alice, room_id, "Réunion de crise demain matin")
    secret = await send_text(alice, room_id, "le budget est confidentiel")
    await send_text(alice, room_id, "autre chose")
    body = {"search_categories": {"room_events": {"search_term": "budget", "order_by": "recent"}}}
    found = (await alice.post(f"{V3}/search", body)).body["search_categories"]["room_events"]
    assert [r["result"]["event_id"] for r in found["results"]] == [secret]
    assert found["count"] == 1
    # Prefix and accent-insensitive word match on SQLite and PostgreSQL alike.
    prefix = {"search_categories": {"room_events": {"search_term": "réun"}}}
    assert len((await alice.post(f"{V3}/search", prefix)).body["search_categories"]["room_events"]["results"]) == 1
    # Someone outside the room finds nothing; a redacted message is no longer found.
    assert (await eve.post(f"{V3}/search", body)).body["search_categories"]["room_events"]["results"] == []
    await alice.put(f"{V3}/rooms/{room_id}/redact/{secret}/r1", {})
    assert (await alice.post(f"{V3}/search", body)).body["search_categories"]["room_events"]["results"] == []
    bad = await alice.post(f"{V3}/search", {"search_categories": {"room_events": {"search_term": "x", "order_by": "size"}}})
    assert (bad.code, bad.body["errcode"]) == (400, "M_INVALID_PARAM")
