"""Membership over federation, in process over TLS, on SQLite and PostgreSQL.

a.test and b.test federate; c.test is allowed by b.test only.  Users of b.test join a.test's
rooms by ID (with ``via``), by alias and after an invite; messages then flow both ways as
each side's /sync shows; leaving, re-joining, rejecting a remote invite and knocking go
through the real handshakes.  The resident side refuses strangers and bad events.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from tests.api.conftest import Client, HSFixture
from tests.api.helpers import register
from tests.api.test_federation_keys import Peer, cleanups, start_peers

__all__ = ["cleanups"]

V3 = "/_matrix/client/v3"
FED1 = "/_matrix/federation/v1"
FED2 = "/_matrix/federation/v2"
SYNC_DEADLINE = 15.0


@pytest.fixture
def peers(
    make_server: Callable[..., HSFixture],
    database_config: dict[str, Any],
    tmp_path: Path,
    cleanups: list[Callable[[], Any]],
) -> dict[str, Peer]:
    allow = {"a.test": ["b.test"], "b.test": ["a.test", "c.test"], "c.test": ["a.test", "b.test"]}
    return start_peers(make_server, database_config, tmp_path, cleanups, allow)


async def user(peer: Peer, name: str) -> Client:
    client = peer.fx.new_client()
    client.token = (await register(client, name))["access_token"]
    return client


async def create_room(client: Client, **body: Any) -> str:
    resp = await client.post(f"{V3}/createRoom", body)
    assert resp.code == 200, resp.body
    return str(resp.body["room_id"])


async def send_text(client: Client, room_id: str, text: str) -> str:
    txn = secrets.token_hex(4)
    resp = await client.put(
        f"{V3}/rooms/{quote(room_id)}/send/m.room.message/{txn}", {"msgtype": "m.text", "body": text}
    )
    assert resp.code == 200, resp.body
    return str(resp.body["event_id"])


class Syncer:
    """Follows one user's /sync, waiting (with a deadline) for what a test expects."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.since: str | None = None
        self.seen: list[dict[str, Any]] = []  # every sync body so far

    async def sync(self, timeout_ms: int = 0) -> dict[str, Any]:
        path = f"{V3}/sync?timeout={timeout_ms}" + (f"&since={self.since}" if self.since else "")
        resp = await self.client.get(path)
        assert resp.code == 200, resp.body
        self.since = resp.body["next_batch"]
        self.seen.append(resp.body)
        return dict(resp.body)

    async def until(self, predicate: Callable[[dict[str, Any]], Any], what: str) -> Any:
        deadline = reactor.seconds() + SYNC_DEADLINE  # type: ignore[attr-defined]
        while reactor.seconds() < deadline:  # type: ignore[attr-defined]
            body = await self.sync(timeout_ms=500)
            found = predicate(body)
            if found:
                return found
        raise AssertionError(f"timed out waiting for {what}")


def timeline(body: dict[str, Any], room_id: str, section: str = "join") -> list[dict[str, Any]]:
    room = body["rooms"].get(section, {}).get(room_id)
    return list(room["timeline"]["events"]) if room else []


def bodies(body: dict[str, Any], room_id: str) -> list[str]:
    return [e["content"].get("body") for e in timeline(body, room_id) if e["type"] == "m.room.message"]


def member_of(body: dict[str, Any], room_id: str, user_id: str, section: str = "join") -> str | None:
    room = body["rooms"].get(section, {}).get(room_id)
    if not room:
        return None
    for e in [*room.get("state", {}).get("events", []), *room["timeline"]["events"]]:
        if e["type"] == "m.room.member" and e["state_key"] == user_id:
            found = e["content"]["membership"]
    return locals().get("found")


async def members(client: Client, room_id: str) -> dict[str, str]:
    resp = await client.get(f"{V3}/rooms/{quote(room_id)}/members")
    assert resp.code == 200, resp.body
    return {e["state_key"]: e["content"]["membership"] for e in resp.body["chunk"]}


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


# -- joining ---------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_join_by_id_then_messages_flow_both_ways(peers: dict[str, Peer]) -> None:
    a, b = peers["a.test"], peers["b.test"]
    alice, bob = await user(a, "alice"), await user(b, "bob")
    room_id = await create_room(alice, preset="public_chat", name="Salon")
    alice_sync, bob_sync = Syncer(alice), Syncer(bob)
    await alice_sync.sync()
    await bob_sync.sync()

    resp = await bob.post(f"{V3}/join/{quote(room_id)}?via=a.test", {})
    assert resp.code == 200, resp.body
    assert resp.body == {"room_id": room_id}

    # Bob's server now holds the room: its state, and Bob joined.
    joined = await bob_sync.until(lambda s: room_id in s["rooms"]["join"] and s, "bob's join in his sync")
    state = {(e["type"], e["state_key"]): e for e in joined["rooms"]["join"][room_id]["state"]["events"]}
    state.update({(e["type"], e.get("state_key")): e for e in timeline(joined, room_id)})
    assert state[("m.room.name", "")]["content"]["name"] == "Salon"
    assert state[("m.room.member", "@bob:b.test")]["content"]["membership"] == "join"
    assert await members(bob, room_id) == {"@alice:a.test": "join", "@bob:b.test": "join"}
    # Alice's server accepted the join.
    await alice_sync.until(lambda s: member_of(s, room_id, "@bob:b.test") == "join", "bob's join at a.test")

    await send_text(alice, room_id, "bonjour de A")
    await bob_sync.until(lambda s: "bonjour de A" in bodies(s, room_id), "alice's message at b.test")
    await send_text(bob, room_id, "salut de B")
    await alice_sync.until(lambda s: "salut de B" in bodies(s, room_id), "bob's message at a.test")


@pytest_twisted.ensureDeferred
async def test_join_by_remote_alias(peers: dict[str, Peer]) -> None:
    a, b = peers["a.test"], peers["b.test"]
    alice, bob = await user(a, "alice"), await user(b, "bob")
    room_id = await create_room(alice, preset="public_chat", room_alias_name="accueil")

    # The alias is resolved over federation, from the client API too.
    resp = await bob.get(f"{V3}/directory/room/{quote('#accueil:a.test')}")
    assert resp.code == 200, resp.body
    assert resp.body["room_id"] == room_id and "a.test" in resp.body["servers"]
    missing = await bob.get(f"{V3}/directory/room/{quote('#absent:a.test')}")
    assert missing.code == 404 and missing.body["errcode"] == "M_NOT_FOUND"

    resp = await bob.post(f"{V3}/join/{quote('#accueil:a.test')}", {})
    assert resp.code == 200, resp.body
    assert resp.body == {"room_id": room_id}
    assert (await bob.get(f"{V3}/joined_rooms")).body == {"joined_rooms": [room_id]}
    assert (await members(alice, room_id))["@bob:b.test"] == "join"


@pytest_twisted.ensureDeferred
async def test_invite_then_join_then_leave_and_rejoin(peers: dict[str, Peer]) -> None:
    a, b = peers["a.test"], peers["b.test"]
    alice, bob = await user(a, "alice"), await user(b, "bob")
    room_id = await create_room(alice, preset="private_chat", name="Privé")
    bob_sync = Syncer(bob)
    await bob_sync.sync()

    resp = await alice.post(f"{V3}/rooms/{quote(room_id)}/invite", {"user_id": "@bob:b.test"})
    assert resp.code == 200, resp.body
    # The invite reached Bob with the room's stripped state.
    invited = await bob_sync.until(lambda s: s["rooms"]["invite"].get(room_id), "the invite at b.test")
    stripped = {(e["type"], e["state_key"]): e for e in invited["invite_state"]["events"]}
    assert stripped[("m.room.name", "")]["content"]["name"] == "Privé"
    assert stripped[("m.room.member", "@bob:b.test")]["content"]["membership"] == "invite"
    assert stripped[("m.room.member", "@bob:b.test")]["sender"] == "@alice:a.test"
    # Both servers signed the invite a.test stored.
    invite_id = (await alice.get(f"{V3}/rooms/{quote(room_id)}/state/m.room.member/@bob:b.test?format=event")).body
    stored = await a.hs.services.events.get_event(invite_id["event_id"])
    assert stored is not None and set(stored.event.signatures) == {"a.test", "b.test"}

    # No via: the inviter's server is the one to ask.
    resp = await bob.post(f"{V3}/join/{quote(room_id)}", {})
    assert resp.code == 200, resp.body
    assert (await members(alice, room_id))["@bob:b.test"] == "join"
    await send_text(bob, room_id, "merci")

    # Leaving is an ordinary event sent to a.test.
    resp = await bob.post(f"{V3}/rooms/{quote(room_id)}/leave", {})
    assert resp.code == 200, resp.body
    for _ in range(60):
        if (await members(alice, room_id))["@bob:b.test"] == "leave":
            break
        await sleep(0.25)
    assert (await members(alice, room_id))["@bob:b.test"] == "leave"
    assert (await bob.get(f"{V3}/joined_rooms")).body == {"joined_rooms": []}

    # Private room: rejoining needs a new invite; then the handshake runs again.
    refused = await bob.post(f"{V3}/join/{quote(room_id)}?via=a.test", {})
    assert refused.code == 403 and refused.body["errcode"] == "M_FORBIDDEN", refused.body
    assert (await alice.post(f"{V3}/rooms/{quote(room_id)}/invite", {"user_id": "@bob:b.test"})).code == 200
    resp = await bob.post(f"{V3}/join/{quote(room_id)}", {})
    assert resp.code == 200, resp.body
    assert (await members(alice, room_id))["@bob:b.test"] == "join"
    assert (await bob.get(f"{V3}/joined_rooms")).body == {"joined_rooms": [room_id]}


@pytest_twisted.ensureDeferred
async def test_reject_a_remote_invite(peers: dict[str, Peer]) -> None:
    a, b = peers["a.test"], peers["b.test"]
    alice, bob = await user(a, "alice"), await user(b, "bob")
    room_id = await create_room(alice, preset="private_chat")
    bob_sync = Syncer(bob)
    await bob_sync.sync()
    assert (await alice.post(f"{V3}/rooms/{quote(room_id)}/invite", {"user_id": "@bob:b.test"})).code == 200
    await bob_sync.until(lambda s: s["rooms"]["invite"].get(room_id), "the invite at b.test")

    resp = await bob.post(f"{V3}/rooms/{quote(room_id)}/leave", {"reason": "non merci"})
    assert resp.code == 200, resp.body
    # a.test has the rejection; b.test reports the room as left.
    member = (await alice.get(f"{V3}/rooms/{quote(room_id)}/state/m.room.member/@bob:b.test")).body
    assert member == {"membership": "leave", "reason": "non merci"}
    left = await bob_sync.until(lambda s: room_id in s["rooms"]["leave"], "the rejection in bob's sync")
    assert left
    assert not (await bob_sync.sync())["rooms"]["invite"]


@pytest_twisted.ensureDeferred
async def test_reject_an_invite_from_an_unreachable_server(peers: dict[str, Peer]) -> None:
    """The inviter's server is gone (here: it refuses b.test now): the rejection is local."""
    a, b = peers["a.test"], peers["b.test"]
    alice, bob = await user(a, "alice"), await user(b, "bob")
    room_id = await create_room(alice, preset="private_chat")
    assert (await alice.post(f"{V3}/rooms/{quote(room_id)}/invite", {"user_id": "@bob:b.test"})).code == 200
    # a.test now refuses b.test (as if it were gone): make_leave fails with a 403.
    object.__setattr__(a.hs.config, "federation_domain_whitelist", ())
    resp = await bob.post(f"{V3}/rooms/{quote(room_id)}/leave", {})
    assert resp.code == 200, resp.body
    rooms = (await Syncer(bob).sync())["rooms"]
    assert room_id not in rooms["invite"]


# -- knocking --------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_knock_on_a_remote_room(peers: dict[str, Peer]) -> None:
    a, b = peers["a.test"], peers["b.test"]
    alice, bob = await user(a, "alice"), await user(b, "bob")
    room_id = await create_room(
        alice,
        preset="private_chat",
        name="Sur demande",
        initial_state=[{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}],
    )
    bob_sync = Syncer(bob)
    await bob_sync.sync()
    resp = await bob.post(f"{V3}/knock/{quote(room_id)}?via=a.test", {"reason": "je peux ?"})
    assert resp.code == 200, resp.body
    knocked = await bob_sync.until(lambda s: s["rooms"]["knock"].get(room_id), "the knock in bob's sync")
    stripped = {(e["type"], e["state_key"]): e for e in knocked["knock_state"]["events"]}
    assert stripped[("m.room.name", "")]["content"]["name"] == "Sur demande"
    assert stripped[("m.room.member", "@bob:b.test")]["content"]["membership"] == "knock"
    assert (await members(alice, room_id))["@bob:b.test"] == "knock"

    # Alice lets Bob in: the invite goes to b.test, and Bob joins.
    assert (await alice.post(f"{V3}/rooms/{quote(room_id)}/invite", {"user_id": "@bob:b.test"})).code == 200
    await bob_sync.until(lambda s: s["rooms"]["invite"].get(room_id), "the invite after the knock")
    assert (await bob.post(f"{V3}/join/{quote(room_id)}", {})).code == 200
    assert (await members(alice, room_id))["@bob:b.test"] == "join"


# -- restricted rooms ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_restricted_join_is_authorised_by_a_resident_user(peers: dict[str, Peer]) -> None:
    a, b = peers["a.test"], peers["b.test"]
    alice, bob = await user(a, "alice"), await user(b, "bob")
    space = await create_room(alice, preset="public_chat", room_version="10")
    rule = {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space}]}
    room_id = await create_room(
        alice,
        preset="private_chat",
        room_version="10",
        initial_state=[{"type": "m.room.join_rules", "state_key": "", "content": rule}],
    )
    # Not in the allowed room yet: a.test will not vouch for Bob.
    refused = await bob.post(f"{V3}/join/{quote(room_id)}?via=a.test", {})
    assert refused.code == 403 and refused.body["errcode"] == "M_FORBIDDEN", refused.body
    assert "@bob:b.test" not in await members(alice, room_id)

    assert (await bob.post(f"{V3}/join/{quote(space)}?via=a.test", {})).code == 200
    resp = await bob.post(f"{V3}/join/{quote(room_id)}?via=a.test", {})
    assert resp.code == 200, resp.body
    assert (await members(alice, room_id))["@bob:b.test"] == "join"
    # The join names Alice as the authorising user, and both servers signed it.
    for peer in (a, b):
        state = await peer.hs.services.events.current_state_events(room_id, [("m.room.member", "@bob:b.test")])
        join = state[("m.room.member", "@bob:b.test")]
        assert join.content["join_authorised_via_users_server"] == "@alice:a.test"
        assert set(join.signatures) == {"a.test", "b.test"}


@pytest_twisted.ensureDeferred
async def test_join_errors_name_the_problem(peers: dict[str, Peer]) -> None:
    b = peers["b.test"]
    bob = await user(b, "bob")
    resp = await bob.post(f"{V3}/join/{quote('!abcdef')}?via={quote('bad name')}", {})
    assert (resp.code, resp.body["errcode"]) == (400, "M_INVALID_PARAM"), resp.body
    assert "via" in resp.body["error"]
    # A v12 room ID names no server: without via there is nobody to ask.
    resp = await bob.post(f"{V3}/join/{quote('!abcdef')}", {})
    assert (resp.code, resp.body["errcode"]) == (404, "M_NOT_FOUND"), resp.body
    # The server asked does not know the room: its 404 reaches the client.
    resp = await bob.post(f"{V3}/join/{quote('!nowhere:a.test')}", {})
    assert (resp.code, resp.body["errcode"]) == (404, "M_NOT_FOUND"), resp.body
    assert (await bob.get(f"{V3}/joined_rooms")).body == {"joined_rooms": []}
