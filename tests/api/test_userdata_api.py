"""Profiles, account data, tags, typing, receipts, presence, directory: over HTTP, both engines."""

from __future__ import annotations

import pytest_twisted

from tests.api.conftest import HSFixture
from tests.api.test_rooms_api import V3, create_room, send_text, user


@pytest_twisted.ensureDeferred
async def test_profile_propagates_to_rooms(server: HSFixture) -> None:
    alice = await user(server, "alice")
    room_id = await create_room(alice)
    assert (await alice.put(f"{V3}/profile/@alice:test.local/displayname", {"displayname": "Alice D."})).code == 200
    assert (await alice.get(f"{V3}/profile/@alice:test.local")).body == {"displayname": "Alice D."}
    member = (await alice.get(f"{V3}/rooms/{room_id}/state/m.room.member/@alice:test.local")).body
    assert member["displayname"] == "Alice D."
    bob = await user(server, "bob")
    denied = await bob.put(f"{V3}/profile/@alice:test.local/displayname", {"displayname": "pwned"})
    assert denied.code == 403
    bad = await alice.put(f"{V3}/profile/@alice:test.local/displayname", {"displayname": 42})
    assert (bad.code, bad.body["errcode"]) == (400, "M_BAD_JSON")
    assert (await alice.get(f"{V3}/profile/@nobody:test.local")).code == 404


@pytest_twisted.ensureDeferred
async def test_account_data_and_tags_in_sync(server: HSFixture) -> None:
    alice = await user(server, "alice")
    room_id = await create_room(alice)
    since = (await alice.get(f"{V3}/sync")).body["next_batch"]
    assert (await alice.put(f"{V3}/user/@alice:test.local/account_data/org.example.prefs", {"theme": "dark"})).code == 200
    assert (await alice.put(f"{V3}/user/@alice:test.local/rooms/{room_id}/tags/m.favourite", {"order": 0.5})).code == 200
    sync = (await alice.get(f"{V3}/sync?since={since}")).body
    assert {"type": "org.example.prefs", "content": {"theme": "dark"}} in sync["account_data"]["events"]
    room_data = sync["rooms"]["join"][room_id]["account_data"]["events"]
    assert {"type": "m.tag", "content": {"tags": {"m.favourite": {"order": 0.5}}}} in room_data
    tags = (await alice.get(f"{V3}/user/@alice:test.local/rooms/{room_id}/tags")).body
    assert tags == {"tags": {"m.favourite": {"order": 0.5}}}
    assert (await alice.delete(f"{V3}/user/@alice:test.local/rooms/{room_id}/tags/m.favourite")).code == 200
    got = await alice.get(f"{V3}/user/@alice:test.local/account_data/org.example.prefs")
    assert got.body == {"theme": "dark"}
    missing = await alice.get(f"{V3}/user/@alice:test.local/account_data/nothing")
    assert (missing.code, missing.body["errcode"]) == (404, "M_NOT_FOUND")
    bob = await user(server, "bob")
    assert (await bob.get(f"{V3}/user/@alice:test.local/account_data/org.example.prefs")).code == 403
    not_object = await alice.put(f"{V3}/user/@alice:test.local/account_data/x", [1])
    assert (not_object.code, not_object.body["errcode"]) == (400, "M_BAD_JSON")


@pytest_twisted.ensureDeferred
async def test_typing_receipts_and_unread_counts(server: HSFixture) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room_id = await create_room(alice, preset="public_chat")
    await bob.post(f"{V3}/join/{room_id}", {})
    since = (await bob.get(f"{V3}/sync")).body["next_batch"]
    assert (await alice.put(f"{V3}/rooms/{room_id}/typing/@alice:test.local", {"typing": True, "timeout": 10000})).code == 200
    sync = (await bob.get(f"{V3}/sync?since={since}")).body
    ephemeral = sync["rooms"]["join"][room_id]["ephemeral"]["events"]
    assert {"type": "m.typing", "content": {"user_ids": ["@alice:test.local"]}} in ephemeral
    since = sync["next_batch"]

    first = await send_text(alice, room_id, "one")
    await send_text(alice, room_id, "two")
    sync = (await bob.get(f"{V3}/sync?since={since}")).body
    assert sync["rooms"]["join"][room_id]["unread_notifications"]["notification_count"] == 2
    since = sync["next_batch"]
    assert (await bob.post(f"{V3}/rooms/{room_id}/receipt/m.read/{first}", {})).code == 200
    sync = (await alice.get(f"{V3}/sync?since={since}")).body
    receipts = [e for e in sync["rooms"]["join"][room_id]["ephemeral"]["events"] if e["type"] == "m.receipt"]
    assert "@bob:test.local" in receipts[0]["content"][first]["m.read"]
    bob_sync = (await bob.get(f"{V3}/sync?since={since}")).body
    assert bob_sync["rooms"]["join"][room_id]["unread_notifications"]["notification_count"] == 1
    bad = await bob.post(f"{V3}/rooms/{room_id}/receipt/m.nope/{first}", {})
    assert bad.code == 400
    unknown = await bob.post(f"{V3}/rooms/{room_id}/receipt/m.read/$nope", {})
    assert unknown.code == 404
    not_typing_member = await (await user(server, "carol")).put(
        f"{V3}/rooms/{room_id}/typing/@carol:test.local", {"typing": True}
    )
    assert not_typing_member.code == 403


@pytest_twisted.ensureDeferred
async def test_presence_and_directory(server: HSFixture) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room_id = await create_room(alice, preset="public_chat", room_alias_name="accueil", name="Accueil", visibility="public")
    assert (await bob.post(f"{V3}/join/%23accueil:test.local", {})).code == 200
    assert (await alice.put(f"{V3}/presence/@alice:test.local/status", {"presence": "online", "status_msg": "En réunion"})).code == 200
    status = (await bob.get(f"{V3}/presence/@alice:test.local/status")).body
    assert status["presence"] == "online" and status["status_msg"] == "En réunion"
    assert (await alice.get(f"{V3}/directory/room/%23accueil:test.local")).body["room_id"] == room_id
    rooms = (await bob.get(f"{V3}/publicRooms")).body
    assert rooms["chunk"][0]["room_id"] == room_id and rooms["chunk"][0]["num_joined_members"] == 2
    found = (await bob.post(f"{V3}/publicRooms", {"filter": {"generic_search_term": "accu"}})).body
    assert [r["room_id"] for r in found["chunk"]] == [room_id]
    await alice.put(f"{V3}/profile/@alice:test.local/displayname", {"displayname": "Alice Martin"})
    users = (await bob.post(f"{V3}/user_directory/search", {"search_term": "martin"})).body
    assert users["results"][0]["user_id"] == "@alice:test.local"
    taken = await alice.post(f"{V3}/createRoom", {"room_alias_name": "accueil"})
    assert (taken.code, taken.body["errcode"]) == (400, "M_ROOM_IN_USE")
    assert (await bob.put(f"{V3}/directory/list/room/{room_id}", {"visibility": "private"})).code == 403
    assert (await alice.put(f"{V3}/directory/list/room/{room_id}", {"visibility": "private"})).code == 200
    assert (await bob.get(f"{V3}/publicRooms")).body["chunk"] == []


@pytest_twisted.ensureDeferred
async def test_push_rules_api_and_mentions(server: HSFixture) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    rules = (await bob.get(f"{V3}/pushrules/")).body["global"]
    assert rules["override"][0]["rule_id"] == ".m.rule.master"
    assert any(r["rule_id"] == ".m.rule.message" for r in rules["underride"])
    # Bob mutes one room with a room rule; a keyword content rule highlights.
    room_id = await create_room(alice, preset="public_chat")
    other = await create_room(alice, preset="public_chat")
    await bob.post(f"{V3}/join/{room_id}", {})
    await bob.post(f"{V3}/join/{other}", {})
    assert (await bob.put(f"{V3}/pushrules/global/room/{other}", {"actions": []})).code == 200
    assert (await bob.put(f"{V3}/pushrules/global/content/budget", {"pattern": "budget", "actions": ["notify", {"set_tweak": "highlight"}]})).code == 200
    initial = (await bob.get(f"{V3}/sync")).body
    pushed = [e for e in initial["account_data"]["events"] if e["type"] == "m.push_rules"]
    assert any(r["rule_id"] == "budget" for r in pushed[0]["content"]["global"]["content"])
    since = initial["next_batch"]
    await send_text(alice, room_id, "le budget arrive")
    await send_text(alice, other, "muted room")
    sync = (await bob.get(f"{V3}/sync?since={since}")).body
    assert sync["rooms"]["join"][room_id]["unread_notifications"] == {"notification_count": 1, "highlight_count": 1}
    assert sync["rooms"]["join"][other]["unread_notifications"]["notification_count"] == 0
    # Disabling a server-default rule; bad input is refused.
    assert (await bob.put(f"{V3}/pushrules/global/underride/.m.rule.message/enabled", {"enabled": False})).code == 200
    got = (await bob.get(f"{V3}/pushrules/global/underride/.m.rule.message/enabled")).body
    assert got == {"enabled": False}
    reserved = await bob.put(f"{V3}/pushrules/global/override/.mine", {"actions": [], "conditions": []})
    assert (reserved.code, reserved.body["errcode"]) == (400, "M_INVALID_PARAM")
    no_pattern = await bob.put(f"{V3}/pushrules/global/content/x", {"actions": []})
    assert (no_pattern.code, no_pattern.body["errcode"]) == (400, "M_MISSING_PARAM")
    assert (await bob.delete(f"{V3}/pushrules/global/content/budget")).code == 200
    assert (await bob.get(f"{V3}/pushrules/global/content/budget")).code == 404
