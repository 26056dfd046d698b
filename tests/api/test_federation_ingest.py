"""Receiving room events over federation, in process, on SQLite and PostgreSQL.

b.test hosts a room created by its user bob; a.test's user alice takes part through PDUs
built and signed here with a.test's real signing key and sent over TLS by a.test's
signed federation client to b.test's ``PUT /send``.  c.test is not on b.test's allowlist.
(Outbound sending is switched off, so that every PDU b.test sees is one a test sent.)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from homeserver.events.builder import build_event
from homeserver.events.model import Event
from homeserver.events.room_versions import get_room_version
from homeserver.federation.transport import HttpResponseError
from tests.api.conftest import Client, HSFixture
from tests.api.helpers import register
from tests.api.test_federation_keys import Peer, cleanups, start_peers

__all__ = ["cleanups"]  # the fixture, shared with the key server tests

_txn_ids = itertools.count()


class Room:
    """A room on b.test, and alice of a.test in it, seen through b.test's storage."""

    def __init__(self, a: Peer, b: Peer, room_id: str, version: str, bob: Client) -> None:
        self.a, self.b = a, b
        self.room_id = room_id
        self.version = get_room_version(version)
        self.bob = bob
        self.events = b.hs.services.events

    async def stored(self, event_id: str) -> Any:
        return await self.events.get_event(event_id)

    async def state_event(self, type_: str, state_key: str = "") -> Event | None:
        return await self.events.current_state_event(self.room_id, type_, state_key)

    async def build(
        self,
        type_: str,
        content: dict[str, Any],
        *,
        sender: str = "@alice:a.test",
        state_key: str | None = None,
        prev: list[str] | None = None,
        auth_keys: list[tuple[str, str]] | None = None,
        origin: str = "a.test",
        signing_peer: Peer | None = None,
    ) -> Event:
        """A PDU signed by ``signing_peer`` (a.test), cited on b.test's current state."""
        state = await self.events.current_state_ids(self.room_id)
        keys = auth_keys if auth_keys is not None else [("m.room.power_levels", ""), ("m.room.member", sender)]
        if not self.version.room_id_from_create_event:
            keys = [("m.room.create", ""), *keys]
        auth = sorted({state[k] for k in keys if k in state})
        prev_ids = (
            prev if prev is not None else await self.b.hs.services.events._events.get_forward_extremities(self.room_id)
        )
        depths = [(await self.stored(p)).event.depth for p in prev_ids if await self.stored(p) is not None]
        peer = signing_peer or self.a
        return build_event(
            self.version,
            room_id=self.room_id,
            type=type_,
            sender=sender,
            content=content,
            state_key=state_key,
            prev_event_ids=prev_ids,
            auth_event_ids=auth,
            depth=max(depths, default=0) + 1,
            origin_server_ts=self.a.hs.clock.time_msec(),
            server_name=origin,
            signing_key=peer.federation.local_keys.signing_key,
        )

    async def join_alice(self) -> Event:
        join = await self.build(
            "m.room.member",
            {"membership": "join"},
            state_key="@alice:a.test",
            auth_keys=[("m.room.power_levels", ""), ("m.room.join_rules", ""), ("m.room.member", "@alice:a.test")],
        )
        result = await send(self.a, "b.test", [join.get_pdu_json()])
        assert result == {"pdus": {join.event_id: {}}}
        return join


async def send(
    sender: Peer, destination: str, pdus: list[dict[str, Any]], edus: list[dict[str, Any]] | None = None, txn: str = ""
) -> Any:
    body = {"origin": sender.name, "origin_server_ts": sender.hs.clock.time_msec(), "pdus": pdus, "edus": edus or []}
    txn_id = txn or f"t{next(_txn_ids)}"
    return await sender.federation.client.put_json(destination, f"/_matrix/federation/v1/send/{txn_id}", body)


def quiet_outbound(peer: Peer) -> None:
    """Stop a server sending its events to others: tests decide what each server sees."""
    hooks = peer.hs.services.events.post_persist_hooks
    hooks[:] = [h for h in hooks if getattr(h, "__name__", "") != "on_event_persisted"]


async def make_room(peers: dict[str, Peer], version: str = "10", preset: str = "public_chat") -> Room:
    a, b = peers["a.test"], peers["b.test"]
    for peer in peers.values():
        quiet_outbound(peer)
    bob = b.fx.new_client()
    bob.token = (await register(bob, "bob"))["access_token"]
    resp = await bob.post("/_matrix/client/v3/createRoom", {"preset": preset, "room_version": version})
    assert resp.code == 200, resp.body
    return Room(a, b, resp.body["room_id"], version, bob)


def start_servers(
    make_server: Callable[..., HSFixture],
    database_config: dict[str, Any],
    tmp_path: Path,
    cleanups: list[Any],
    third: str,
) -> dict[str, Peer]:
    """a.test and b.test federate; so does d.test, never in the room; c.test is refused.
    Only one of c.test and d.test is started (``third``): each server costs start-up time."""
    b_allows = ["a.test", "d.test"] if third == "d.test" else ["a.test"]
    allow = {"a.test": ["b.test"], "b.test": b_allows, third: ["b.test"]}
    return start_peers(make_server, database_config, tmp_path, cleanups, allow)


@pytest.fixture
def peers(
    make_server: Callable[..., HSFixture], database_config: dict[str, Any], tmp_path: Path, cleanups: list[Any]
) -> dict[str, Peer]:
    return start_servers(make_server, database_config, tmp_path, cleanups, "c.test")


async def timeline_bodies(room: Room) -> list[str]:
    resp = await room.bob.get(f"/_matrix/client/v3/rooms/{room.room_id}/messages?dir=b&limit=50")
    assert resp.code == 200, resp.body
    return [e["content"].get("body") for e in reversed(resp.body["chunk"]) if e["type"] == "m.room.message"]


# -- the happy path --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["10", "12"])
@pytest_twisted.ensureDeferred
async def test_remote_join_and_message_reach_local_clients(peers: dict[str, Peer], version: str) -> None:
    room = await make_room(peers, version)
    sync = await room.bob.get("/_matrix/client/v3/sync")
    since = sync.body["next_batch"]
    join = await room.join_alice()
    member = await room.state_event("m.room.member", "@alice:a.test")
    assert member is not None and member.event_id == join.event_id
    message = await room.build("m.room.message", {"msgtype": "m.text", "body": "bonjour"})
    assert await send(room.a, "b.test", [message.get_pdu_json()]) == {"pdus": {message.event_id: {}}}
    # The room's graph moved on: the message is the only forward extremity.
    assert await room.events._events.get_forward_extremities(room.room_id) == [message.event_id]
    # Bob's client sees alice join and speak, in /sync and /messages.
    sync = await room.bob.get(f"/_matrix/client/v3/sync?since={since}&timeout=0")
    timeline = sync.body["rooms"]["join"][room.room_id]["timeline"]["events"]
    assert [e["event_id"] for e in timeline] == [join.event_id, message.event_id]
    assert await timeline_bodies(room) == ["bonjour"]
    # A PDU sent again is answered without being stored twice.
    assert await send(room.a, "b.test", [message.get_pdu_json()]) == {"pdus": {message.event_id: {}}}
    assert (await room.stored(message.event_id)).stream_ordering > 0


# -- forged and refused PDUs -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_forged_pdus(peers: dict[str, Peer]) -> None:
    room = await make_room(peers)
    await room.join_alice()
    # Signed, then altered in a signed field: the signature check fails, the PDU is dropped.
    bad_sig = (await room.build("m.room.message", {"body": "x", "msgtype": "m.text"})).get_pdu_json()
    bad_sig["origin_server_ts"] += 1
    bad_sig_id = Event(bad_sig, room.version).event_id
    # A user of c.test, signed by a.test only: c.test's signature is missing (and b.test may
    # not even ask c.test for its keys), so it is dropped.
    wrong_origin = await room.build("m.room.message", {"body": "y", "msgtype": "m.text"}, sender="@mallory:c.test")
    # Content altered after signing: the signature (over the redacted event) holds but the
    # content hash does not, so the event is stored redacted.
    bad_hash = (await room.build("m.room.message", {"body": "secret", "msgtype": "m.text"})).get_pdu_json()
    bad_hash["content"]["body"] = "tampered"
    bad_hash_id = Event(bad_hash, room.version).event_id
    # Alice (power 0) may not change the power levels: rejected.
    levels = await room.state_event("m.room.power_levels")
    assert levels is not None
    power = await room.build(
        "m.room.power_levels",
        {**levels.content, "users": {"@alice:a.test": 100}},
        state_key="",
        prev=[bad_hash_id],
    )
    result = await send(room.a, "b.test", [bad_sig, wrong_origin.get_pdu_json(), bad_hash, power.get_pdu_json()])
    pdus = result["pdus"]
    assert "signature" in pdus[bad_sig_id]["error"]
    assert "c.test" in pdus[wrong_origin.event_id]["error"]
    assert pdus[bad_hash_id] == {}
    assert "rejected" in pdus[power.event_id]["error"]
    assert await room.stored(bad_sig_id) is None
    assert await room.stored(wrong_origin.event_id) is None
    redacted = await room.stored(bad_hash_id)
    assert redacted.event.content == {} and redacted.rejected_reason is None
    rejected = await room.stored(power.event_id)
    assert rejected.rejected_reason and (await room.state_event("m.room.power_levels")) == levels
    assert await room.events._events.get_forward_extremities(room.room_id) == [bad_hash_id]
    # Bob's timeline shows the redacted message only.
    resp = await room.bob.get(f"/_matrix/client/v3/rooms/{room.room_id}/messages?dir=b&limit=50")
    ids = [e["event_id"] for e in resp.body["chunk"]]
    assert bad_hash_id in ids and power.event_id not in ids


@pytest_twisted.ensureDeferred
async def test_banned_users_message_is_soft_failed(peers: dict[str, Peer]) -> None:
    room = await make_room(peers)
    join = await room.join_alice()
    ban = await room.bob.post(
        f"/_matrix/client/v3/rooms/{room.room_id}/ban", {"user_id": "@alice:a.test", "reason": "spam"}
    )
    assert ban.code == 200, ban.body
    # Alice's server has not heard of the ban: her message cites her join and passes the
    # auth rules at that point, but not against the room's current state.
    state = await room.events.current_state_ids(room.room_id)
    late = build_event(
        room.version,
        room_id=room.room_id,
        type="m.room.message",
        sender="@alice:a.test",
        content={"body": "too late", "msgtype": "m.text"},
        prev_event_ids=[join.event_id],
        auth_event_ids=sorted({state[("m.room.create", "")], state[("m.room.power_levels", "")], join.event_id}),
        depth=join.depth + 1,
        origin_server_ts=room.a.hs.clock.time_msec(),
        server_name="a.test",
        signing_key=room.a.federation.local_keys.signing_key,
    )
    extremities = await room.events._events.get_forward_extremities(room.room_id)
    assert await send(room.a, "b.test", [late.get_pdu_json()]) == {"pdus": {late.event_id: {}}}
    stored = await room.stored(late.event_id)
    assert stored is not None and stored.hidden and stored.rejected_reason is None
    assert await room.events._events.get_forward_extremities(room.room_id) == extremities
    assert "too late" not in await timeline_bodies(room)
    member = await room.state_event("m.room.member", "@alice:a.test")
    assert member is not None and member.content["membership"] == "ban"


# -- transactions ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_transaction_limits_duplicates_and_edus(peers: dict[str, Peer]) -> None:
    room = await make_room(peers)
    await room.join_alice()
    a = room.a
    message = await room.build("m.room.message", {"body": "m", "msgtype": "m.text"})
    with pytest.raises(HttpResponseError) as info:
        await send(a, "b.test", [message.get_pdu_json()] * 51)
    assert (info.value.code, info.value.errcode) == (400, "M_TOO_LARGE")
    with pytest.raises(HttpResponseError) as info:
        await send(a, "b.test", [], [{"edu_type": "m.typing", "content": {}}] * 101)
    assert (info.value.code, info.value.errcode) == (400, "M_TOO_LARGE")
    assert await room.stored(message.event_id) is None

    ingest = room.b.hs.federation_ingest
    assert ingest is not None
    seen: list[tuple[str, dict[str, Any]]] = []

    async def record(origin: str, content: dict[str, Any]) -> None:
        seen.append((origin, content))

    async def broken(origin: str, content: dict[str, Any]) -> None:
        raise RuntimeError("handler bug")

    ingest.edu_handlers["org.example.test"] = record
    ingest.edu_handlers["org.example.broken"] = broken
    edus = [
        {"edu_type": "org.example.broken", "content": {}},
        {"edu_type": "org.example.unknown", "content": {"x": 1}},
        {"edu_type": "org.example.test", "content": {"n": 1}},
    ]
    first = await send(a, "b.test", [message.get_pdu_json()], edus, txn="dup")
    assert first == {"pdus": {message.event_id: {}}}
    assert seen == [("a.test", {"n": 1})]
    # The same transaction ID again (even with another body) is answered from the cache.
    other = await room.build("m.room.message", {"body": "other", "msgtype": "m.text"})
    again = await send(a, "b.test", [other.get_pdu_json()], edus, txn="dup")
    assert again == first
    assert seen == [("a.test", {"n": 1})]
    assert await room.stored(other.event_id) is None
    # Bad shapes are 400s naming the field.
    resp = await a.federation.client.request(
        "PUT", "b.test", "/_matrix/federation/v1/send/bad", content={"pdus": {}, "edus": []}
    )
    assert resp[0] == 400 and b"pdus" in resp[1]


@pytest_twisted.ensureDeferred
async def test_a_transaction_with_a_chain_and_a_repeated_pdu(peers: dict[str, Peer]) -> None:
    """The transaction's PDUs are looked up in one read; each answer still holds for the
    PDUs after the first (m1 twice: the second is the stored m1, not a new event)."""
    room = await make_room(peers)
    await room.join_alice()
    m1 = await room.build("m.room.message", {"body": "one", "msgtype": "m.text"})
    m2 = await room.build("m.room.message", {"body": "two", "msgtype": "m.text"}, prev=[m1.event_id])
    m3 = await room.build("m.room.message", {"body": "three", "msgtype": "m.text"}, prev=[m2.event_id])
    result = await send(room.a, "b.test", [m1.get_pdu_json(), m2.get_pdu_json(), m1.get_pdu_json(), m3.get_pdu_json()])
    assert result == {"pdus": {m1.event_id: {}, m2.event_id: {}, m3.event_id: {}}}
    # (Depths built here do not follow m1: the order of /messages is not the point.)
    assert sorted((await timeline_bodies(room))[-3:]) == ["one", "three", "two"]
    for event in (m1, m2, m3):
        stored = await room.stored(event.event_id)
        assert stored is not None and not stored.outlier and not stored.hidden
    events = room.b.hs.services.events._events
    assert await events.get_forward_extremities(room.room_id) == [m3.event_id]
    # What the in-memory copies say is what a fresh read of the database says.
    state = await events.get_current_state_ids(room.room_id)
    fresh = type(events)(events._db, events._state_cache)
    assert await fresh.get_current_state_ids(room.room_id) == state
    assert await fresh.get_forward_extremities(room.room_id) == [m3.event_id]


@pytest_twisted.ensureDeferred
async def test_non_allowlisted_origin_is_refused_before_processing(peers: dict[str, Peer]) -> None:
    room = await make_room(peers)
    await room.join_alice()
    message = await room.build("m.room.message", {"body": "c", "msgtype": "m.text"})
    with pytest.raises(HttpResponseError) as info:
        await send(peers["c.test"], "b.test", [message.get_pdu_json()])
    assert (info.value.code, info.value.errcode) == (403, "M_FORBIDDEN")
    assert await room.stored(message.event_id) is None


@pytest_twisted.ensureDeferred
async def test_server_acl_and_unknown_rooms(peers: dict[str, Peer]) -> None:
    room = await make_room(peers)
    await room.join_alice()
    resp = await room.bob.put(
        f"/_matrix/client/v3/rooms/{room.room_id}/state/m.room.server_acl/",
        {"allow": ["*"], "deny": ["a.test"], "allow_ip_literals": False},
    )
    assert resp.code == 200, resp.body
    message = await room.build("m.room.message", {"body": "acl", "msgtype": "m.text"})
    result = await send(room.a, "b.test", [message.get_pdu_json()])
    assert result == {"pdus": {message.event_id: {"error": "Server is banned from room"}}}
    assert await room.stored(message.event_id) is None
    # Reads are refused too.
    with pytest.raises(HttpResponseError) as info:
        await room.a.federation.client.get_json("b.test", f"/_matrix/federation/v1/event/{resp.body['event_id']}")
    assert info.value.code == 403
    # A PDU for a room b.test does not know is ignored (no room version, so no event ID).
    stranger = message.get_pdu_json()
    stranger["room_id"] = "!unknown:a.test"
    assert await send(room.a, "b.test", [stranger]) == {"pdus": {}}


@pytest_twisted.ensureDeferred
async def test_local_policy_refusal_rejects(peers: dict[str, Peer]) -> None:
    """A local policy check acts as an extra auth rule: the refused event is stored as
    rejected (hidden), and events after it are judged on the state before it."""
    room = await make_room(peers)
    await room.join_alice()
    seen: list[tuple[str, int]] = []

    async def no_shouting(event: Event, state_before: Any) -> str | None:
        seen.append((event.type, len(state_before)))
        return "no shouting" if str(event.content.get("body", "")).isupper() else None

    room.events.event_policy_checks.append(no_shouting)
    loud = await room.build("m.room.message", {"body": "HELLO", "msgtype": "m.text"})
    refused = {"pdus": {loud.event_id: {"error": "Event rejected: no shouting"}}}
    assert await send(room.a, "b.test", [loud.get_pdu_json()]) == refused
    quiet = await room.build("m.room.message", {"body": "hello", "msgtype": "m.text"}, prev=[loud.event_id])
    assert await send(room.a, "b.test", [quiet.get_pdu_json()]) == {"pdus": {quiet.event_id: {}}}
    stored = await room.stored(loud.event_id)
    assert stored is not None and stored.hidden and stored.rejected_reason == "no shouting"
    assert await timeline_bodies(room) == ["hello"]
    assert seen and all(count >= 5 for _, count in seen)  # the checks got the state before each event
