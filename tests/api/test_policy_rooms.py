"""Room access rules, invite rules and the directory over the real HTTP API (both engines).

The external server is e.example (``domains_forbidden_when_restricted``); each test names
the request it tried and checks the refusal a person would read."""

from __future__ import annotations

from typing import Any

import pytest_twisted

from tests.api.conftest import Client, HSFixture
from tests.api.helpers import register

V3 = "/_matrix/client/v3"
RULES = "im.vector.room.access_rules"
POLICY: dict[str, Any] = {
    "federation_domain_whitelist": ["e.example"],
    "government_policy": {
        "email_domains": {"test.local": ["agent.gouv.example"]},
        "external_server": "e.example",
        "room_access_rules": {"enabled": True, "domains_forbidden_when_restricted": ["e.example"]},
    },
}


async def user(server: HSFixture, name: str) -> Client:
    client = server.new_client()
    client.token = (await register(client, name))["access_token"]
    return client


async def create(client: Client, **body: Any) -> str:
    resp = await client.post(f"{V3}/createRoom", body)
    assert resp.code == 200, resp.body
    return str(resp.body["room_id"])


async def state(client: Client, room_id: str, type_: str) -> Any:
    resp = await client.get(f"{V3}/rooms/{room_id}/state/{type_}/")
    assert resp.code == 200, resp.body
    return resp.body


@pytest_twisted.ensureDeferred
async def test_new_rooms_get_a_rule_and_tchap_power_levels(make_server: Any) -> None:
    """Tried: createRoom with power_level_content_override {"invite": 0} (below Tchap's 50)."""
    server = make_server(**POLICY)
    alice = await user(server, "alice")
    room = await create(alice, name="Cabinet")
    assert await state(alice, room, RULES) == {"rule": "restricted"}
    pl = await state(alice, room, "m.room.power_levels")
    assert (pl["state_default"], pl["invite"]) == (100, 50)
    assert (await state(alice, room, "m.room.history_visibility"))["history_visibility"] == "invited"
    dm = await create(alice, is_direct=True, invite=["@bob:test.local"], preset="trusted_private_chat")
    assert await state(alice, dm, RULES) == {"rule": "direct"}
    bad = await alice.post(f"{V3}/createRoom", {"power_level_content_override": {"invite": 0}})
    assert bad.code == 400 and bad.body["errcode"] == "M_INVALID_PARAM"
    assert "invite" in bad.body["error"]


@pytest_twisted.ensureDeferred
async def test_restricted_room_keeps_external_users_out(make_server: Any) -> None:
    """Tried: inviting @ext:e.example into a restricted room, and at createRoom."""
    server = make_server(**POLICY)
    alice = await user(server, "alice")
    await user(server, "bob")
    room = await create(alice)
    refused = await alice.post(f"{V3}/rooms/{room}/invite", {"user_id": "@ext:e.example"})
    assert refused.code == 403 and refused.body["errcode"] == "M_FORBIDDEN"
    assert "external user" in refused.body["error"]
    ok = await alice.post(f"{V3}/rooms/{room}/invite", {"user_id": "@bob:test.local"})
    assert ok.code == 200, ok.body
    at_creation = await alice.post(f"{V3}/createRoom", {"invite": ["@ext:e.example"]})
    assert at_creation.code == 403 and "external user" in at_creation.body["error"]


@pytest_twisted.ensureDeferred
async def test_rule_change_publication_and_direct_rooms(make_server: Any) -> None:
    """Tried: publishing an unrestricted room; unrestricted -> restricted; naming a direct
    chat; inviting a third member into it; making it public."""
    server = make_server(**POLICY)
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    await user(server, "carol")
    room = await create(alice)
    published = await alice.put(f"{V3}/directory/list/room/{room}", {"visibility": "public"})
    assert published.code == 200, published.body
    blocked = await alice.put(f"{V3}/rooms/{room}/state/{RULES}/", {"rule": "unrestricted"})
    assert blocked.code == 403 and "published" in blocked.body["error"]
    assert (await alice.put(f"{V3}/directory/list/room/{room}", {"visibility": "private"})).code == 200
    opened = await alice.put(f"{V3}/rooms/{room}/state/{RULES}/", {"rule": "unrestricted"})
    assert opened.code == 200, opened.body
    back = await alice.put(f"{V3}/rooms/{room}/state/{RULES}/", {"rule": "restricted"})
    assert back.code == 403 and "cannot change" in back.body["error"]
    not_listed = await alice.put(f"{V3}/directory/list/room/{room}", {"visibility": "public"})
    assert not_listed.code == 403 and "restricted" in not_listed.body["error"]

    dm = await create(alice, is_direct=True, invite=["@bob:test.local"])
    assert (await bob.post(f"{V3}/join/{dm}", {})).code == 200
    third = await alice.post(f"{V3}/rooms/{dm}/invite", {"user_id": "@carol:test.local"})
    assert third.code == 403 and third.body["error"] == "A direct chat holds at most two members"
    named = await alice.put(f"{V3}/rooms/{dm}/state/m.room.name/", {"name": "Secret"})
    assert named.code == 403 and "direct chat" in named.body["error"]
    public = await alice.put(f"{V3}/rooms/{dm}/state/m.room.join_rules/", {"join_rule": "public"})
    assert public.code == 403
    direct_public = await alice.post(f"{V3}/createRoom", {"is_direct": True, "preset": "public_chat"})
    assert direct_public.code == 400


@pytest_twisted.ensureDeferred
async def test_unrestricted_room_power_for_external_users_refused(make_server: Any) -> None:
    """Tried: giving @ext:e.example power 50, and users_default 10, in an unrestricted room."""
    server = make_server(**POLICY)
    alice = await user(server, "alice")
    room = await create(alice, initial_state=[{"type": RULES, "state_key": "", "content": {"rule": "unrestricted"}}])
    pl = await state(alice, room, "m.room.power_levels")
    pl["users"]["@ext:e.example"] = 50
    refused = await alice.put(f"{V3}/rooms/{room}/state/m.room.power_levels/", pl)
    assert refused.code == 403 and "cannot be given power" in refused.body["error"]
    pl["users"].pop("@ext:e.example")
    pl["users_default"] = 10
    assert (await alice.put(f"{V3}/rooms/{room}/state/m.room.power_levels/", pl)).code == 403


@pytest_twisted.ensureDeferred
async def test_domain_rule_checker_over_http(make_server: Any) -> None:
    """Tried: inviting a user of other.example when test.local may invite only test.local;
    joining a public room uninvited with can_only_join_rooms_with_invite."""
    policy = {
        "government_policy": {
            "domain_rule_checker": {
                "enabled": True,
                "domain_mapping": {"test.local": ["test.local"]},
                "can_invite_if_not_in_domain_mapping": False,
                "can_only_join_rooms_with_invite": True,
            }
        }
    }
    server = make_server(**policy)
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room = await create(alice, preset="public_chat")
    refused = await alice.post(f"{V3}/rooms/{room}/invite", {"user_id": "@x:other.example"})
    assert refused.code == 403 and refused.body["error"] == "Users of test.local may not invite users of other.example"
    uninvited = await bob.post(f"{V3}/join/{room}", {})
    assert uninvited.code == 403 and "invited" in uninvited.body["error"]
    assert (await alice.post(f"{V3}/rooms/{room}/invite", {"user_id": "@bob:test.local"})).code == 200
    assert (await bob.post(f"{V3}/join/{room}", {})).code == 200


@pytest_twisted.ensureDeferred
async def test_external_server_users_limits(make_server: Any) -> None:
    """On the external server itself: tried createRoom public and an invite."""
    server = make_server(government_policy={"external_server": "test.local"})
    alice = await user(server, "alice")
    await user(server, "bob")
    public = await alice.post(f"{V3}/createRoom", {"visibility": "public", "preset": "public_chat"})
    assert public.code == 403 and public.body["error"] == "External users cannot create public rooms"
    room = await create(alice)
    invite = await alice.post(f"{V3}/rooms/{room}/invite", {"user_id": "@bob:test.local"})
    assert invite.code == 403 and invite.body["error"] == "External users cannot invite other users"
