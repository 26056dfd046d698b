"""The user directory across federation, three of our servers in process (TLS), both
engines: agent.test and agent2.test are agent servers, e.test the external server.
agent2.test sets ``government_policy.external_users.visible_in_directory: true``."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests.api.conftest import Client, HSFixture
from tests.api.test_federation_keys import Peer, cleanups, start_peers
from tests.api.test_federation_membership import Syncer, create_room, member_of, user

__all__ = ["cleanups"]

V3 = "/_matrix/client/v3"


@pytest.fixture
def peers(
    make_server: Callable[..., HSFixture],
    database_config: dict[str, Any],
    tmp_path: Path,
    cleanups: list[Callable[[], Any]],
) -> dict[str, Peer]:
    def with_policy(**kwargs: Any) -> HSFixture:
        policy: dict[str, Any] = {"external_server": "e.test"}
        if kwargs["server_name"] == "agent2.test":
            policy["external_users"] = {"visible_in_directory": True}
        return make_server(government_policy=policy, **kwargs)

    allow = {
        "agent.test": ["agent2.test", "e.test"],
        "agent2.test": ["agent.test", "e.test"],
        "e.test": ["agent.test", "agent2.test"],
    }
    return start_peers(with_policy, database_config, tmp_path, cleanups, allow)


async def named(peer: Peer, localpart: str, display_name: str) -> Client:
    client = await user(peer, localpart)
    resp = await client.put(f"{V3}/profile/@{localpart}:{peer.name}/displayname", {"displayname": display_name})
    assert resp.code == 200, resp.body
    return client


async def search(client: Client, term: str) -> list[dict[str, Any]]:
    resp = await client.post(f"{V3}/user_directory/search", {"search_term": term})
    assert resp.code == 200, resp.body
    return list(resp.body["results"])


async def until_found(client: Client, term: str, expected: list[str], what: str, deadline: float = 20.0) -> None:
    """Poll the search until it returns ``expected`` (user IDs, in order)."""
    end = time.monotonic() + deadline
    while True:
        got = [r["user_id"] for r in await search(client, term)]
        if got == expected:
            return
        assert time.monotonic() < end, f"{what}: {term!r} gives {got}, expected {expected}"
        await deferLater(reactor, 0.1, lambda: None)


@pytest_twisted.ensureDeferred
async def test_remote_members_in_the_directory(peers: dict[str, Peer]) -> None:
    agent, agent2, external = peers["agent.test"], peers["agent2.test"], peers["e.test"]
    alice = await named(agent, "alice", "Alice Agent")
    carol = await named(agent, "carol", "Carol Ailleurs")
    bob = await named(agent2, "bob", "Bob Deux")
    eve = await named(external, "eve", "Eve Externe")
    bob_id, eve_id = "@bob:agent2.test", "@eve:e.test"

    room = await create_room(alice, invite=[eve_id, bob_id])
    alice_sync = Syncer(alice)
    for client, user_id in ((eve, eve_id), (bob, bob_id)):
        await Syncer(client).until(lambda b: room in b["rooms"].get("invite", {}), f"{user_id}'s invite")
        joined = await client.post(f"{V3}/join/{quote(room)}?via=agent.test", {})
        assert joined.code == 200, joined.body
        await alice_sync.until(lambda b, u=user_id: member_of(b, room, u) == "join", f"{user_id}'s join")

    # A remote member of a room shared with alice: found by name (from his member event).
    assert await search(alice, "deux") == [{"user_id": bob_id, "display_name": "Bob Deux"}]
    # The external server's users are not listed by an agent server (the default) ...
    assert await search(alice, "externe") == []
    assert await search(alice, "eve") == []
    # ... unless it says so (agent2.test); bob's server learnt the room's members when he
    # joined (the join brought the room's state).
    assert await search(bob, "externe") == [{"user_id": eve_id, "display_name": "Eve Externe"}]
    assert [r["user_id"] for r in await search(bob, "alice agent")] == ["@alice:agent.test"]

    # carol shares no room with bob: not found, until the room becomes public.
    assert await search(carol, "deux") == []
    public = await alice.put(f"{V3}/rooms/{quote(room)}/state/m.room.join_rules/", {"join_rule": "public"})
    assert public.code == 200, public.body
    assert [r["user_id"] for r in await search(carol, "deux")] == [bob_id]

    # bob's new name reaches alice's server with his member event.
    renamed = await bob.put(f"{V3}/profile/{quote(bob_id)}/displayname", {"displayname": "Robert Deux"})
    assert renamed.code == 200, renamed.body
    await until_found(alice, "robert", [bob_id], "bob's new name")
    assert [r["display_name"] for r in await search(alice, "bob")] == ["Robert Deux"]  # his localpart

    # Gone from alice's directory once he leaves.
    assert (await bob.post(f"{V3}/rooms/{quote(room)}/leave", {})).code == 200
    await until_found(alice, "deux", [], "bob's leave")
