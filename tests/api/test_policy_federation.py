"""The room access rules across federation: agent.test (an agent server, ours) hosts the
rooms; e.test is the external server (also ours).  Both engines, in process over TLS."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted

from tests.api.conftest import Client, HSFixture
from tests.api.test_federation_keys import Peer, cleanups, start_peers
from tests.api.test_federation_membership import Syncer, create_room, member_of, user

__all__ = ["cleanups"]

V3 = "/_matrix/client/v3"
RULES = "im.vector.room.access_rules"


def _policy(server_name: str) -> dict[str, Any]:
    return {
        "email_domains": {"agent.test": ["agent.gouv.example"]},
        "external_server": "e.test",
        "room_access_rules": {"enabled": True, "domains_forbidden_when_restricted": ["e.test"]},
    }


@pytest.fixture
def peers(
    make_server: Callable[..., HSFixture],
    database_config: dict[str, Any],
    tmp_path: Path,
    cleanups: list[Callable[[], Any]],
) -> dict[str, Peer]:
    def with_policy(**kwargs: Any) -> HSFixture:
        return make_server(government_policy=_policy(kwargs["server_name"]), **kwargs)

    allow = {"agent.test": ["e.test"], "e.test": ["agent.test"]}
    return start_peers(with_policy, database_config, tmp_path, cleanups, allow)


async def join(client: Client, room_id: str) -> Any:
    return await client.post(f"{V3}/join/{quote(room_id)}?via=agent.test", {})


@pytest_twisted.ensureDeferred
async def test_external_users_across_federation(peers: dict[str, Peer]) -> None:
    """Tried: an external user joining a restricted room (make_join/send_join), being invited
    to it, joining an unrestricted room uninvited, and being invited into a direct chat that
    already holds two members."""
    agent, external = peers["agent.test"], peers["e.test"]
    alice = await user(agent, "alice")
    bob = await user(agent, "bob")
    eve = await user(external, "eve")
    eve_id = "@eve:e.test"

    room = await create_room(alice, preset="public_chat")  # anyone may join, but the rule
    refused = await join(eve, room)
    assert refused.code == 403, refused.body
    assert "external user" in refused.body["error"], refused.body
    invite = await alice.post(f"{V3}/rooms/{quote(room)}/invite", {"user_id": eve_id})
    assert invite.code == 403 and "restricted room" in invite.body["error"], invite.body

    opened = await alice.put(f"{V3}/rooms/{quote(room)}/state/{RULES}/", {"rule": "unrestricted"})
    assert opened.code == 200, opened.body
    uninvited = await join(eve, room)
    assert uninvited.code == 403 and "only when invited" in uninvited.body["error"], uninvited.body
    invited = await alice.post(f"{V3}/rooms/{quote(room)}/invite", {"user_id": eve_id})
    assert invited.code == 200, invited.body
    eve_sync = Syncer(eve)
    await eve_sync.until(lambda b: room in b["rooms"].get("invite", {}), "eve's invite")
    accepted = await join(eve, room)
    assert accepted.code == 200, accepted.body
    alice_sync = Syncer(alice)
    await alice_sync.until(lambda b: member_of(b, room, eve_id) == "join", "eve's join seen by alice")
    # an external member may not be given power
    pl = (await alice.get(f"{V3}/rooms/{quote(room)}/state/m.room.power_levels/")).body
    pl["users"][eve_id] = 50
    power = await alice.put(f"{V3}/rooms/{quote(room)}/state/m.room.power_levels/", pl)
    assert power.code == 403 and "External user" in power.body["error"], power.body

    dm = await create_room(alice, is_direct=True, invite=["@bob:agent.test"])
    assert (await bob.post(f"{V3}/join/{quote(dm)}", {})).code == 200
    third = await alice.post(f"{V3}/rooms/{quote(dm)}/invite", {"user_id": eve_id})
    assert third.code == 403 and "at most two members" in third.body["error"], third.body


@pytest_twisted.ensureDeferred
async def test_email_invite_resolves_to_the_other_server(peers: dict[str, Peer]) -> None:
    """An address the mapping gives to e.test, whose account exists there, is invited as the
    derived ID over federation.  Tried: the same address into a restricted room."""
    agent, external = peers["agent.test"], peers["e.test"]
    alice = await user(agent, "alice")
    someone = await user(external, "jean-ministere.example")  # the ID derived from the address
    room = await create_room(alice)
    body = {"medium": "email", "address": "jean@ministere.example"}
    refused = await alice.post(f"{V3}/rooms/{quote(room)}/invite", body)
    assert refused.code == 403 and "external" in refused.body["error"], refused.body
    assert (await alice.put(f"{V3}/rooms/{quote(room)}/state/{RULES}/", {"rule": "unrestricted"})).code == 200
    ok = await alice.post(f"{V3}/rooms/{quote(room)}/invite", body)
    assert ok.code == 200, ok.body
    await Syncer(someone).until(lambda b: room in b["rooms"].get("invite", {}), "the invite on e.test")
