"""The resident side refuses what it must, on SQLite and PostgreSQL.

Requests are really signed by the sending server's FederationClient; events are built and
signed with its key as a joining server would.  Refusals come before anything is stored.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted

from homeserver.events.model import Event
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.events.signing import hash_and_sign_event
from homeserver.federation.membership_stripped import checked_room_state
from tests.api.conftest import HSFixture
from tests.api.test_federation_keys import Peer, cleanups, start_peers
from tests.api.test_federation_membership import V3, Syncer, create_room, members, user

__all__ = ["cleanups"]

FED1 = "/_matrix/federation/v1"
FED2 = "/_matrix/federation/v2"
ALL_VERSIONS = [v for v in KNOWN_ROOM_VERSIONS]


@pytest.fixture
def peers(
    make_server: Callable[..., HSFixture],
    database_config: dict[str, Any],
    tmp_path: Path,
    cleanups: list[Callable[[], Any]],
) -> dict[str, Peer]:
    """a.test allows b.test only; c.test would talk to a.test, which refuses it."""
    allow = {"a.test": ["b.test"], "b.test": ["a.test"], "c.test": ["a.test"]}
    return start_peers(make_server, database_config, tmp_path, cleanups, allow)


async def ask(sender: Peer, method: str, path: str, *, args: Any = None, content: Any = None) -> tuple[int, Any]:
    code, body = await sender.federation.client.request(method, "a.test", path, args=args, content=content)
    return code, json.loads(body) if body else None


async def make_join(sender: Peer, room_id: str, user_id: str, versions: list[str] | None = None) -> tuple[int, Any]:
    return await ask(
        sender, "GET", f"{FED1}/make_join/{quote(room_id)}/{quote(user_id)}", args={"ver": versions or ALL_VERSIONS}
    )


def sign_as(peer: Peer, room_version_id: str, template: dict[str, Any], **changes: Any) -> Event:
    """``peer``'s signed event from a template, with ``changes`` applied first."""
    room_version = KNOWN_ROOM_VERSIONS[room_version_id]
    event_dict = {k: v for k, v in template.items() if k != "origin"}
    event_dict.update(changes)
    hash_and_sign_event(room_version, event_dict, peer.name, peer.federation.local_keys.signing_key)
    return Event(event_dict, room_version)


async def send_join(sender: Peer, room_id: str, event: Event) -> tuple[int, Any]:
    return await ask(
        sender, "PUT", f"{FED2}/send_join/{quote(room_id)}/{quote(event.event_id)}", content=event.get_pdu_json()
    )


@pytest_twisted.ensureDeferred
async def test_a_stranger_can_neither_make_join_nor_send_join(peers: dict[str, Peer]) -> None:
    a, b, c = peers["a.test"], peers["b.test"], peers["c.test"]
    alice = await user(a, "alice")
    room_id = await create_room(alice, preset="public_chat")
    code, body = await make_join(c, room_id, "@carol:c.test")
    assert (code, body["errcode"]) == (403, "M_FORBIDDEN"), body
    # Even a well-formed join (built from a template b.test got) is refused unread.
    code, answer = await make_join(b, room_id, "@bob:b.test")
    assert code == 200, answer
    template = dict(answer["event"], sender="@carol:c.test", state_key="@carol:c.test")
    event = sign_as(c, answer["room_version"], template)
    code, body = await ask(
        c, "PUT", f"{FED2}/send_join/{quote(room_id)}/{quote(event.event_id)}", content=event.get_pdu_json()
    )
    assert (code, body["errcode"]) == (403, "M_FORBIDDEN"), body
    assert await a.hs.services.events.get_event(event.event_id) is None
    assert await members(alice, room_id) == {"@alice:a.test": "join"}


@pytest_twisted.ensureDeferred
async def test_make_join_checks_versions_users_rooms_and_rules(peers: dict[str, Peer]) -> None:
    a, b = peers["a.test"], peers["b.test"]
    alice = await user(a, "alice")
    room_id = await create_room(alice, preset="public_chat", room_version="10")
    private_id = await create_room(alice, preset="private_chat")

    code, body = await make_join(b, room_id, "@bob:b.test", ["11", "12"])
    assert (code, body["errcode"], body["room_version"]) == (400, "M_INCOMPATIBLE_ROOM_VERSION", "10"), body
    code, body = await ask(b, "GET", f"{FED1}/make_join/{quote(room_id)}/{quote('@bob:b.test')}")  # no ver: v1 only
    assert (code, body["errcode"]) == (400, "M_INCOMPATIBLE_ROOM_VERSION"), body
    code, body = await make_join(b, room_id, "@carol:c.test")
    assert (code, body["errcode"]) == (403, "M_FORBIDDEN"), body
    code, body = await make_join(b, "!unknown:a.test", "@bob:b.test")
    assert (code, body["errcode"]) == (404, "M_NOT_FOUND"), body
    code, body = await make_join(b, private_id, "@bob:b.test")
    assert (code, body["errcode"]) == (403, "M_FORBIDDEN"), body

    code, answer = await make_join(b, room_id, "@bob:b.test")
    assert code == 200, answer
    assert answer["room_version"] == "10"
    template = answer["event"]
    assert (template["type"], template["sender"], template["state_key"]) == (
        "m.room.member",
        "@bob:b.test",
        "@bob:b.test",
    )
    assert template["content"] == {"membership": "join"}
    assert template["prev_events"] and template["auth_events"]

    # A server ACL denying b.test closes the door.
    resp = await alice.put(
        f"{V3}/rooms/{quote(room_id)}/state/m.room.server_acl/", {"allow": ["*"], "deny": ["b.test"]}
    )
    assert resp.code == 200, resp.body
    code, body = await make_join(b, room_id, "@bob:b.test")
    assert (code, body["errcode"]) == (403, "M_FORBIDDEN"), body


@pytest_twisted.ensureDeferred
async def test_send_join_refuses_bad_events(peers: dict[str, Peer]) -> None:
    a, b = peers["a.test"], peers["b.test"]
    alice = await user(a, "alice")
    room_id = await create_room(alice, preset="public_chat")
    other_room = await create_room(alice, preset="public_chat")
    code, answer = await make_join(b, room_id, "@bob:b.test")
    assert code == 200, answer
    version, template = answer["room_version"], answer["event"]

    cases = [
        # A user of another server than the one asking.
        (sign_as(b, version, template, sender="@carol:c.test", state_key="@carol:c.test"), room_id, 403),
        # Not for this room.
        (sign_as(b, version, template), other_room, 400),
        # Another membership than the template's.
        (sign_as(b, version, template, content={"membership": "leave"}), room_id, 400),
        # Someone else's membership.
        (sign_as(b, version, template, state_key="@other:b.test"), room_id, 400),
        # Not a membership event at all.
        (sign_as(b, version, template, type="m.room.topic", state_key="", content={"topic": "x"}), room_id, 400),
    ]
    for event, path_room, expected in cases:
        code, body = await send_join(b, path_room, event)
        assert code == expected, (event.dict, body)
        assert body["errcode"] in ("M_FORBIDDEN", "M_INVALID_PARAM"), body
        assert await a.hs.services.events.get_event(event.event_id) is None
    # The event ID in the path must be the event's.
    good = sign_as(b, version, template)
    code, body = await ask(
        b, "PUT", f"{FED2}/send_join/{quote(room_id)}/{quote('$other')}", content=good.get_pdu_json()
    )
    assert (code, body["errcode"]) == (400, "M_INVALID_PARAM"), body
    # Signed by the wrong server: refused (b.test cannot speak for a user whose event it did not sign).
    unsigned = dict(good.get_pdu_json())
    unsigned["signatures"] = {}
    code, body = await ask(b, "PUT", f"{FED2}/send_join/{quote(room_id)}/{quote(good.event_id)}", content=unsigned)
    assert code in (400, 403), body
    assert await members(alice, room_id) == {"@alice:a.test": "join"}

    # The good one goes in, and the answer carries the room's state and auth chain.
    code, body = await send_join(b, room_id, good)
    assert code == 200, body
    state = {(e["type"], e["state_key"]) for e in body["state"]}
    assert {("m.room.create", ""), ("m.room.member", "@alice:a.test"), ("m.room.power_levels", "")} <= state
    assert ("m.room.member", "@bob:b.test") not in state  # the state *before* the join
    assert {e["type"] for e in body["auth_chain"]} >= {"m.room.create", "m.room.member"}
    assert Event(body["event"], KNOWN_ROOM_VERSIONS[version]).event_id == good.event_id
    assert await members(alice, room_id) == {"@alice:a.test": "join", "@bob:b.test": "join"}
    # v1 answers [200, {...}].
    code, body = await ask(
        b, "PUT", f"{FED1}/send_join/{quote(room_id)}/{quote(good.event_id)}", content=good.get_pdu_json()
    )
    assert code == 200 and body[0] == 200 and "state" in body[1], body


@pytest_twisted.ensureDeferred
async def test_invites_for_unknown_or_remote_users_are_refused(peers: dict[str, Peer]) -> None:
    a, b = peers["a.test"], peers["b.test"]
    await user(a, "alice")
    bob = await user(b, "bob")
    room_id = await create_room(bob, preset="private_chat", room_version="10")
    state = await b.hs.services.events.current_state_ids(room_id)
    create_id, pl_id, member_id = (
        state[("m.room.create", "")],
        state[("m.room.power_levels", "")],
        state[("m.room.member", "@bob:b.test")],
    )

    def invite(target: str) -> Event:
        template = {
            "type": "m.room.member",
            "room_id": room_id,
            "sender": "@bob:b.test",
            "state_key": target,
            "content": {"membership": "invite"},
            "prev_events": [member_id],
            "auth_events": [create_id, pl_id, member_id],
            "depth": 10,
            "origin_server_ts": 1_700_000_000_000,
        }
        return sign_as(b, "10", template)

    async def put_invite(event: Event, **body: Any) -> tuple[int, Any]:
        content = {"room_version": "10", "event": event.get_pdu_json(), "invite_room_state": [], **body}
        return await ask(b, "PUT", f"{FED2}/invite/{quote(room_id)}/{quote(event.event_id)}", content=content)

    code, body = await put_invite(invite("@nobody:a.test"))
    assert (code, body["errcode"]) == (404, "M_NOT_FOUND"), body
    code, body = await put_invite(invite("@carol:b.test"))
    assert (code, body["errcode"]) == (403, "M_FORBIDDEN"), body
    code, body = await put_invite(invite("@alice:a.test"), room_version="2")
    assert (code, body["errcode"]) == (400, "M_INCOMPATIBLE_ROOM_VERSION"), body
    code, body = await put_invite(invite("@alice:a.test"), invite_room_state="nope")
    assert (code, body["errcode"]) == (400, "M_BAD_JSON"), body

    # A proper invite comes back signed by both servers.
    event = invite("@alice:a.test")
    code, body = await put_invite(event)
    assert code == 200, body
    assert set(body["event"]["signatures"]) == {"a.test", "b.test"}
    assert Event(body["event"], KNOWN_ROOM_VERSIONS["10"]).event_id == event.event_id


# -- room state with invites and knocks (spec v1.16+: full PDUs, create event included) -------------

STRIPPED_KEYS = {"type", "state_key", "content", "sender"}


class RecordingTransport:
    """Passes requests on to the real transport and keeps the PUT bodies."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.puts: list[tuple[str, Any]] = []

    async def get_json(self, destination: str, path: str, **kwargs: Any) -> Any:
        return await self.inner.get_json(destination, path, **kwargs)

    async def put_json(self, destination: str, path: str, content: Any, **kwargs: Any) -> Any:
        self.puts.append((path, content))
        return await self.inner.put_json(destination, path, content, **kwargs)


async def state_pdus_of(peer: Peer, room_id: str, *keys: tuple[str, str]) -> list[dict[str, Any]]:
    """The PDUs of ``room_id``'s current state ``keys`` as ``peer`` would send them."""
    state = await peer.hs.services.events.current_state_ids(room_id)
    pdus = []
    for key in keys:
        stored = await peer.hs.services.events.get_event(state[key])
        assert stored is not None
        pdu = stored.event.get_pdu_json()
        pdu.pop("unsigned", None)
        pdus.append(pdu)
    return pdus


@pytest_twisted.ensureDeferred
async def test_v12_invite_sends_full_pdus_and_the_invitee_sees_stripped_state(peers: dict[str, Peer]) -> None:
    a, b = peers["a.test"], peers["b.test"]
    alice, bob = await user(a, "alice"), await user(b, "bob")
    room_id = await create_room(alice, preset="private_chat", name="Salon v12", room_version="12")
    remote: Any = a.hs.services.rooms.remote  # a.test's FederationMembership
    recorder = RecordingTransport(remote._transport)
    remote._transport = recorder
    bob_sync = Syncer(bob)
    await bob_sync.sync()

    resp = await alice.post(f"{V3}/rooms/{quote(room_id)}/invite", {"user_id": "@bob:b.test"})
    assert resp.code == 200, resp.body
    [(path, body)] = [(p, c) for p, c in recorder.puts if p.startswith(f"{FED2}/invite/")]
    assert body["room_version"] == "12"
    sent = body["invite_room_state"]
    v12 = KNOWN_ROOM_VERSIONS["12"]
    events = [Event(pdu, v12) for pdu in sent]
    assert {(e.type, e.state_key) for e in events} >= {
        ("m.room.create", ""),
        ("m.room.join_rules", ""),
        ("m.room.name", ""),
        ("m.room.member", "@alice:a.test"),
    }
    for pdu, event in zip(sent, events, strict=True):
        # Full PDUs as a.test stored them: hashed, signed by a.test, same event IDs.
        assert "hashes" in pdu and "a.test" in pdu["signatures"], pdu
        assert event.room_id == room_id
        assert await a.hs.services.events.get_event(event.event_id) is not None
    assert "room_id" not in next(p for p in sent if p["type"] == "m.room.create")  # v12 create format

    # Bob's client sees the stripped form, create event included.
    invited = await bob_sync.until(lambda s: s["rooms"]["invite"].get(room_id), "the v12 invite at b.test")
    shown = invited["invite_state"]["events"]
    assert all(set(e) == STRIPPED_KEYS for e in shown), shown
    by_key = {(e["type"], e["state_key"]): e for e in shown}
    assert by_key[("m.room.create", "")]["sender"] == "@alice:a.test"
    assert by_key[("m.room.name", "")]["content"] == {"name": "Salon v12"}
    assert by_key[("m.room.member", "@bob:b.test")]["content"]["membership"] == "invite"
    # And Bob can still join through the inviter's server.
    assert (await bob.post(f"{V3}/join/{quote(room_id)}", {})).code == 200, path
    assert (await members(alice, room_id))["@bob:b.test"] == "join"


@pytest_twisted.ensureDeferred
async def test_v12_invite_room_state_is_checked(peers: dict[str, Peer]) -> None:
    a, b = peers["a.test"], peers["b.test"]
    alice = await user(a, "alice")
    bob = await user(b, "bob")
    room_id = await create_room(bob, preset="private_chat", name="Chez Bob", room_version="12")
    other_room = await create_room(bob, preset="private_chat", name="Ailleurs", room_version="12")
    state = await b.hs.services.events.current_state_ids(room_id)
    create, rules, name, member = await state_pdus_of(
        b,
        room_id,
        ("m.room.create", ""),
        ("m.room.join_rules", ""),
        ("m.room.name", ""),
        ("m.room.member", "@bob:b.test"),
    )
    [elsewhere] = await state_pdus_of(b, other_room, ("m.room.name", ""))
    invite = sign_as(
        b,
        "12",
        {
            "type": "m.room.member",
            "room_id": room_id,
            "sender": "@bob:b.test",
            "state_key": "@alice:a.test",
            "content": {"membership": "invite"},
            "prev_events": [state[("m.room.member", "@bob:b.test")]],
            "auth_events": [state[("m.room.power_levels", "")], state[("m.room.member", "@bob:b.test")]],
            "depth": 10,
            "origin_server_ts": 1_700_000_000_000,
        },
    )

    async def put_invite(room_state: Any) -> tuple[int, Any]:
        content = {"room_version": "12", "event": invite.get_pdu_json(), "invite_room_state": room_state}
        return await ask(b, "PUT", f"{FED2}/invite/{quote(room_id)}/{quote(invite.event_id)}", content=content)

    forged_name = dict(name, content={"name": "Faux nom"})  # content changed after signing
    badly_signed = dict(rules, signatures={"b.test": {b.key_id: "AAAA" + "A" * 82}})
    legacy = [{k: e[k] for k in STRIPPED_KEYS} for e in (create, rules, name)]
    cases = [
        ([rules, name, member], "m.room.create"),
        ([create, forged_name, member], "hash"),
        ([create, badly_signed, member], "signature"),
        ([create, rules, elsewhere], f"room {room_id}"),
        (legacy, "room version 12"),
        ([create, {"type": "m.room.name"}], "room version 12"),
    ]
    for room_state, named in cases:
        code, body = await put_invite(room_state)
        assert (code, body["errcode"]) == (400, "M_INVALID_PARAM"), (named, body)
        assert "invite_room_state" in body["error"] and named in body["error"], body
    alice_sync = Syncer(alice)
    assert room_id not in (await alice_sync.sync())["rooms"]["invite"]

    # The proper PDUs are accepted, and Alice sees them stripped.
    code, body = await put_invite([create, rules, name, member])
    assert code == 200, body
    assert set(body["event"]["signatures"]) == {"a.test", "b.test"}
    invited = await alice_sync.until(lambda s: s["rooms"]["invite"].get(room_id), "the invite at a.test")
    shown = invited["invite_state"]["events"]
    assert all(set(e) == STRIPPED_KEYS for e in shown), shown
    by_key = {(e["type"], e["state_key"]): e for e in shown}
    assert by_key[("m.room.create", "")]["content"]["room_version"] == "12"
    assert by_key[("m.room.name", "")]["content"] == {"name": "Chez Bob"}
    assert by_key[("m.room.member", "@alice:a.test")]["content"]["membership"] == "invite"


@pytest_twisted.ensureDeferred
async def test_knock_answer_carries_room_state_pdus(peers: dict[str, Peer]) -> None:
    a, b = peers["a.test"], peers["b.test"]
    alice = await user(a, "alice")
    room_id = await create_room(
        alice,
        preset="private_chat",
        name="Sur demande",
        room_version="12",
        initial_state=[{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}],
    )
    code, answer = await ask(
        b, "GET", f"{FED1}/make_knock/{quote(room_id)}/{quote('@bob:b.test')}", args={"ver": ALL_VERSIONS}
    )
    assert code == 200, answer
    knock = sign_as(b, answer["room_version"], answer["event"])
    code, body = await ask(
        b, "PUT", f"{FED1}/send_knock/{quote(room_id)}/{quote(knock.event_id)}", content=knock.get_pdu_json()
    )
    assert code == 200, body
    v12 = KNOWN_ROOM_VERSIONS["12"]
    pdus = body["knock_room_state"]
    events = [Event(pdu, v12) for pdu in pdus]
    assert {(e.type, e.state_key) for e in events} >= {
        ("m.room.create", ""),
        ("m.room.join_rules", ""),
        ("m.room.name", ""),
    }
    for pdu, event in zip(pdus, events, strict=True):
        assert "hashes" in pdu and "a.test" in pdu["signatures"] and "unsigned" not in pdu, pdu
        assert await a.hs.services.events.get_event(event.event_id) is not None

    # The knocking side keeps what checks out, stripped, and drops a forged entry.
    name = next(p for p in pdus if p["type"] == "m.room.name")
    forged = dict(name, content={"name": "Faux"})
    kept = await checked_room_state(
        v12, room_id, [*pdus, forged, "junk"], b.federation.keyring, what="knock_room_state", strict=False
    )
    assert all(set(e) == STRIPPED_KEYS for e in kept), kept
    assert [e["content"] for e in kept if e["type"] == "m.room.name"] == [{"name": "Sur demande"}]
    assert len(kept) == len(pdus)
