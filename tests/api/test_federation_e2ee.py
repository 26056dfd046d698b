"""End-to-end encryption across servers, in process over TLS, on SQLite and PostgreSQL.

a.test and b.test federate; c.test allows a.test, but a.test does not allow c.test (so a.test
must never contact it).  Users upload real ed25519-signed keys; a.test's users query and
claim b.test's users' keys over federation, send them to-device messages, see their device
list changes (m.device_list_update / m.signing_key_update EDUs through PUT /send) in /sync,
and read their profiles.  Bad EDUs are dropped without harm.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted
from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json, verify_signed_json
from twisted.internet import reactor
from twisted.internet.task import deferLater

from homeserver.storage.remote_devices import RemoteDeviceRepository
from homeserver.storage.server_keys import ServerKeyRepository
from tests.api.conftest import Client, HSFixture
from tests.api.helpers import login, register
from tests.api.test_federation_keys import Peer, cleanups, start_peers
from tests.api.test_federation_membership import Syncer, create_room

__all__ = ["cleanups"]

V3 = "/_matrix/client/v3"
FED = "/_matrix/federation/v1"
BOB = "@bob:b.test"
ALICE = "@alice:a.test"


@pytest.fixture
def peers(
    make_server: Callable[..., HSFixture],
    database_config: dict[str, Any],
    tmp_path: Path,
    cleanups: list[Callable[[], Any]],
) -> dict[str, Peer]:
    allow = {"a.test": ["b.test"], "b.test": ["a.test"], "c.test": ["a.test"]}
    return start_peers(make_server, database_config, tmp_path, cleanups, allow)


class Device:
    """A user's device with real keys, as a client would hold them."""

    def __init__(self, client: Client, user_id: str, device_id: str) -> None:
        self.client = client
        self.user_id = user_id
        self.device_id = device_id
        self.key = generate_signing_key(device_id)
        self.ed25519 = encode_verify_key_base64(get_verify_key(self.key))

    def device_keys(self) -> dict[str, Any]:
        keys = {
            "user_id": self.user_id,
            "device_id": self.device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {
                f"curve25519:{self.device_id}": f"curve-{self.device_id}",
                f"ed25519:{self.device_id}": self.ed25519,
            },
        }
        return sign_json(keys, self.user_id, self.key)

    async def upload(self, one_time_keys: int = 0) -> None:
        otks = {
            f"signed_curve25519:{self.device_id}{i}": sign_json(
                {"key": f"otk-{self.device_id}-{i}"}, self.user_id, self.key
            )
            for i in range(one_time_keys)
        }
        body: dict[str, Any] = {"device_keys": self.device_keys()}
        if otks:
            body["one_time_keys"] = otks
        resp = await self.client.post(f"{V3}/keys/upload", body)
        assert resp.code == 200, resp.body


async def new_device(peer: Peer, name: str, device_id: str, *, registered: bool = False) -> Device:
    client = peer.fx.new_client()
    if registered:
        client.token = (await login(client, name, device_id=device_id))["access_token"]
    else:
        client.token = (await register(client, name, device_id=device_id))["access_token"]
    return Device(client, f"@{name}:{peer.name}", device_id)


def cross_signing(user_id: str) -> dict[str, Any]:
    master = generate_signing_key("master")
    master_pub = encode_verify_key_base64(get_verify_key(master))
    master.version = master_pub

    def key(usage: str, signer: Any = None) -> dict[str, Any]:
        signing = generate_signing_key(usage)
        pub = encode_verify_key_base64(get_verify_key(signing))
        body = {"user_id": user_id, "usage": [usage], "keys": {f"ed25519:{pub}": pub}}
        return sign_json(body, user_id, signer) if signer is not None else body

    return {
        "master_key": {"user_id": user_id, "usage": ["master"], "keys": {f"ed25519:{master_pub}": master_pub}},
        "self_signing_key": key("self_signing", master),
        "user_signing_key": key("user_signing", master),
    }


def without_unsigned(keys: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in keys.items() if k != "unsigned"}


async def eventually(check: Callable[[], Any], what: str, seconds: float = 10) -> None:
    """Poll ``check`` (an async predicate): a "changed" seen in /sync may be an earlier update's."""
    deadline = reactor.seconds() + seconds  # type: ignore[attr-defined]
    while not await check():
        assert reactor.seconds() < deadline, f"timed out waiting for {what}"  # type: ignore[attr-defined]
        await deferLater(reactor, 0.1)


async def query(client: Client, wanted: dict[str, list[str]], **extra: Any) -> dict[str, Any]:
    resp = await client.post(f"{V3}/keys/query", {"device_keys": wanted, **extra})
    assert resp.code == 200, resp.body
    return dict(resp.body)


async def join_room(alice: Client, bob: Client) -> str:
    room_id = await create_room(alice, preset="public_chat")
    resp = await bob.post(f"{V3}/join/{quote(room_id)}?via=a.test", {})
    assert resp.code == 200, resp.body
    return room_id


async def send_edus(sender: Peer, edus: list[dict[str, Any]]) -> tuple[int, Any]:
    """A signed PUT /send from ``sender`` to a.test carrying these EDUs."""
    txn = secrets.token_hex(8)
    code, body = await sender.federation.client.request(
        "PUT",
        "a.test",
        f"{FED}/send/{txn}",
        content={"origin": sender.name, "origin_server_ts": 0, "pdus": [], "edus": edus},
    )
    return code, json.loads(body) if body else None


async def settle(peer: Peer) -> None:
    assert peer.hs.e2ee_federation is not None
    await peer.hs.e2ee_federation.wait_idle()


# -- keys of a user we share no room with ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_query_and_claim_keys_of_a_remote_user(peers: dict[str, Peer]) -> None:
    a, b, c = peers["a.test"], peers["b.test"], peers["c.test"]
    alice = await new_device(a, "alice", "ALICEDEV")
    bob = await new_device(b, "bob", "BOBDEV")
    await bob.upload(one_time_keys=2)
    bob_cross = cross_signing(BOB)
    assert (await bob.client.post(f"{V3}/keys/device_signing/upload", bob_cross)).code == 200

    found = await query(alice.client, {BOB: [], "@carol:c.test": [], "@dave:elsewhere.test": []})
    bob_keys = found["device_keys"][BOB]["BOBDEV"]
    assert without_unsigned(bob_keys) == bob.device_keys()
    verify_signed_json(bob_keys, BOB, get_verify_key(bob.key))  # the server changed nothing
    assert found["master_keys"][BOB] == bob_cross["master_key"]
    assert found["self_signing_keys"][BOB] == bob_cross["self_signing_key"]
    assert BOB not in found["user_signing_keys"]  # private to Bob
    # Servers off the allowlist are reported, by name, and never contacted.
    assert found["failures"]["c.test"]["status"] == 403
    assert found["failures"]["elsewhere.test"]["status"] == 403
    assert "b.test" not in found["failures"]
    assert await ServerKeyRepository(c.hs.db).get_keys("a.test", []) == {}
    # No room shared: nothing is kept.
    assert await RemoteDeviceRepository(a.hs.db).cached_lists([BOB]) == {}
    # One device asked for.
    assert set((await query(alice.client, {BOB: ["BOBDEV"]}))["device_keys"][BOB]) == {"BOBDEV"}
    assert (await query(alice.client, {BOB: ["NOPE"]}))["device_keys"].get(BOB, {}) == {}

    # Claims: each one-time key once, then nothing (no fallback key).
    claimed: set[str] = set()
    for _ in range(2):
        resp = await alice.client.post(
            f"{V3}/keys/claim", {"one_time_keys": {BOB: {"BOBDEV": "signed_curve25519"}}, "timeout": 5000}
        )
        assert resp.code == 200, resp.body
        ((key_id, key),) = resp.body["one_time_keys"][BOB]["BOBDEV"].items()
        verify_signed_json(key, BOB, get_verify_key(bob.key))
        claimed.add(key_id)
    assert claimed == {"signed_curve25519:BOBDEV0", "signed_curve25519:BOBDEV1"}
    resp = await alice.client.post(
        f"{V3}/keys/claim", {"one_time_keys": {BOB: {"BOBDEV": "signed_curve25519"}, "@carol:c.test": {"X": "y"}}}
    )
    assert resp.code == 200 and resp.body["one_time_keys"] == {}
    assert resp.body["failures"]["c.test"]["status"] == 403
    count = await bob.client.post(f"{V3}/keys/upload", {})
    assert count.body["one_time_key_counts"]["signed_curve25519"] == 0
    # A bad timeout is the client's error.
    bad = await alice.client.post(f"{V3}/keys/query", {"device_keys": {BOB: []}, "timeout": "soon"})
    assert (bad.code, bad.body["errcode"]) == (400, "M_INVALID_PARAM")


# -- to-device messages -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_to_device_messages_cross_servers(peers: dict[str, Peer]) -> None:
    a, b = peers["a.test"], peers["b.test"]
    alice = await new_device(a, "alice", "ALICEDEV")
    bob = await new_device(b, "bob", "BOBDEV")
    bob2 = await new_device(b, "bob", "BOBTAB", registered=True)
    bob_sync, bob2_sync = Syncer(bob.client), Syncer(bob2.client)
    await bob_sync.sync()
    await bob2_sync.sync()

    secret = {
        "algorithm": "m.olm.v1.curve25519-aes-sha2",
        "ciphertext": {"curve-BOBDEV": {"type": 0, "body": "opaque"}},
    }
    path = f"{V3}/sendToDevice/m.room.encrypted/txn1"
    body = {"messages": {BOB: {"BOBDEV": secret}}}
    assert (await alice.client.put(path, body)).code == 200
    assert (await alice.client.put(path, body)).code == 200  # retried: sent once

    def to_device(s: dict[str, Any]) -> list[dict[str, Any]]:
        return list(s.get("to_device", {}).get("events", []))

    got = await bob_sync.until(to_device, "alice's to-device message at b.test")
    assert got == [{"sender": ALICE, "type": "m.room.encrypted", "content": secret}]
    # Every device with "*"; the retried request delivered nothing more.
    ping = {"messages": {BOB: {"*": {"n": 1}}}}
    assert (await alice.client.put(f"{V3}/sendToDevice/m.ping/txn2", ping)).code == 200
    got = await bob_sync.until(to_device, "the ping at BOBDEV")
    assert got == [{"sender": ALICE, "type": "m.ping", "content": {"n": 1}}]
    got2 = await bob2_sync.until(to_device, "the ping at BOBTAB")
    assert got2 == [{"sender": ALICE, "type": "m.ping", "content": {"n": 1}}]

    # b.test may not speak for a.test's users; garbage is dropped; a.test answers 200.
    forged = {"sender": "@mallory:c.test", "type": "m.ping", "message_id": "m1", "messages": {ALICE: {"*": {"x": 1}}}}
    code, resp = await send_edus(
        b,
        [
            {"edu_type": "m.direct_to_device", "content": forged},
            {"edu_type": "m.direct_to_device", "content": {"sender": BOB, "messages": "nope"}},
            {"edu_type": "m.direct_to_device", "content": {"sender": BOB, "type": 5, "message_id": [], "messages": {}}},
        ],
    )
    assert code == 200, resp
    genuine = {"sender": BOB, "type": "m.ping", "message_id": "m2", "messages": {ALICE: {"ALICEDEV": {"hi": 1}}}}
    alice_sync = Syncer(alice.client)
    await alice_sync.sync()
    for _ in range(2):  # the same message_id twice: delivered once
        assert (await send_edus(b, [{"edu_type": "m.direct_to_device", "content": genuine}]))[0] == 200
    got = await alice_sync.until(to_device, "bob's message at a.test")
    assert got == [{"sender": BOB, "type": "m.ping", "content": {"hi": 1}}]


# -- device lists ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_device_list_updates_follow_a_shared_room(peers: dict[str, Peer]) -> None:
    a, b = peers["a.test"], peers["b.test"]
    alice = await new_device(a, "alice", "ALICEDEV")
    bob = await new_device(b, "bob", "BOBDEV")
    await bob.upload()
    alice_sync = Syncer(alice.client)
    await alice_sync.sync()

    await join_room(alice.client, bob.client)
    # Bob starts sharing a room with Alice: her client is told to look at his devices.
    await alice_sync.until(lambda s: BOB in s.get("device_lists", {}).get("changed", []), "bob in device_lists")
    found = await query(alice.client, {BOB: []})
    assert set(found["device_keys"][BOB]) == {"BOBDEV"}
    cache = RemoteDeviceRepository(a.hs.db)
    await settle(a)
    cached = (await cache.cached_lists([BOB]))[BOB]
    assert not cached.stale and cached.stream_id is not None

    # A new device: b.test tells a.test, which applies the update and tells Alice.
    tablet = await new_device(b, "bob", "BOBTAB", registered=True)
    await tablet.upload()
    await alice_sync.until(lambda s: BOB in s.get("device_lists", {}).get("changed", []), "bob's new device")

    async def has_tablet() -> bool:
        return "BOBTAB" in {d.device_id for d in (await cache.get_devices({BOB: []}))[BOB]}

    await eventually(has_tablet, "bob's tablet in a.test's cache")
    devices = (await cache.get_devices({BOB: []}))[BOB]
    # (either applied from the EDU or, if a.test resynced meanwhile, fetched whole: unsigned differs)
    assert {d.device_id: without_unsigned(d.keys or {}) for d in devices} == {
        "BOBDEV": bob.device_keys(),
        "BOBTAB": tablet.device_keys(),
    }
    assert (await cache.cached_lists([BOB]))[BOB].stream_id > cached.stream_id  # type: ignore[operator]
    found = await query(alice.client, {BOB: []})
    assert {k: without_unsigned(v) for k, v in found["device_keys"][BOB].items()} == {
        "BOBDEV": bob.device_keys(),
        "BOBTAB": tablet.device_keys(),
    }

    # New cross-signing keys: m.signing_key_update.
    bob_cross = cross_signing(BOB)
    assert (await bob.client.post(f"{V3}/keys/device_signing/upload", bob_cross)).code == 200
    await alice_sync.until(lambda s: BOB in s.get("device_lists", {}).get("changed", []), "bob's cross-signing keys")

    async def has_master_key() -> bool:
        return BOB in (await query(alice.client, {BOB: []})).get("master_keys", {})

    await eventually(has_master_key, "bob's master key at a.test")
    found = await query(alice.client, {BOB: []})
    assert found["master_keys"][BOB] == bob_cross["master_key"]
    assert found["self_signing_keys"][BOB] == bob_cross["self_signing_key"]

    # A deleted device goes away.
    resp = await tablet.client.post(f"{V3}/logout", {})
    assert resp.code == 200
    await alice_sync.until(lambda s: BOB in s.get("device_lists", {}).get("changed", []), "bob's deleted device")
    # The "changed" seen may be an earlier update's (the signing key update can mark Bob twice):
    # the deletion arrives soon after; a client would query again on its own notification.
    deadline = reactor.seconds() + 10  # type: ignore[attr-defined]
    while set((await query(alice.client, {BOB: []}))["device_keys"][BOB]) != {"BOBDEV"}:
        assert reactor.seconds() < deadline, "bob's deleted device still listed"  # type: ignore[attr-defined]
        await settle(b)
        await settle(a)
        await deferLater(reactor, 0.1)
    # A renamed device is a change too (the name itself stays home, as with Synapse's default).
    before = (await cache.cached_lists([BOB]))[BOB].stream_id
    assert (await bob.client.put(f"{V3}/devices/BOBDEV", {"display_name": "Bob's laptop"})).code == 200
    await alice_sync.until(lambda s: BOB in s.get("device_lists", {}).get("changed", []), "bob's renamed device")

    async def renamed() -> bool:
        return (await cache.cached_lists([BOB]))[BOB].stream_id > before  # type: ignore[no-any-return,operator]

    await eventually(renamed, "bob's rename at a.test")
    assert (await cache.cached_lists([BOB]))[BOB].stream_id > before  # type: ignore[operator]
    found = await query(alice.client, {BOB: []})
    assert found["device_keys"][BOB]["BOBDEV"]["unsigned"] == {}
    # Alice's own change reaches b.test too, which keeps a copy (Bob shares a room with her).
    await alice.upload()
    bob_sync = Syncer(bob.client)
    await bob_sync.until(lambda s: True, "bob's first sync")
    found = await query(bob.client, {ALICE: []})
    assert without_unsigned(found["device_keys"][ALICE]["ALICEDEV"]) == alice.device_keys()


@pytest_twisted.ensureDeferred
async def test_device_list_edus_checked(peers: dict[str, Peer]) -> None:
    a, b = peers["a.test"], peers["b.test"]
    alice = await new_device(a, "alice", "ALICEDEV")
    bob = await new_device(b, "bob", "BOBDEV")
    await bob.upload()
    await join_room(alice.client, bob.client)
    await query(alice.client, {BOB: []})  # a.test now keeps Bob's list
    await settle(a)
    cache = RemoteDeviceRepository(a.hs.db)
    known = (await cache.cached_lists([BOB]))[BOB].stream_id
    assert known is not None
    assert a.hs.e2ee_federation is not None
    handle = a.hs.e2ee_federation.edu_handlers["m.device_list_update"]
    ghost = Device(bob.client, BOB, "GHOST")

    # Another server speaking for Bob: ignored.
    await handle(
        "c.test",
        {"user_id": BOB, "device_id": "GHOST", "stream_id": known + 1, "prev_id": [known], "keys": ghost.device_keys()},
    )
    # Garbage: ignored, no error.
    for content in (
        {},
        {"user_id": 5},
        {"user_id": BOB, "device_id": ["x"], "stream_id": known + 1},
        {"user_id": BOB, "device_id": "GHOST", "stream_id": known + 1, "prev_id": "nope"},
        {"user_id": BOB, "device_id": "GHOST", "stream_id": known + 1, "prev_id": [known], "keys": {"user_id": ALICE}},
        {"user_id": BOB, "device_id": "GHOST", "stream_id": known + 1, "prev_id": [known], "deleted": "yes"},
    ):
        await handle("b.test", content)
    await settle(a)
    assert {d.device_id for d in (await cache.get_devices({BOB: []}))[BOB]} == {"BOBDEV"}

    # Through PUT /send as well: the transaction is accepted, the EDUs dropped.
    code, body = await send_edus(
        b,
        [
            {"edu_type": "m.device_list_update", "content": {"user_id": ALICE, "device_id": "X", "stream_id": 1}},
            {"edu_type": "m.signing_key_update", "content": {"user_id": BOB, "master_key": "nope"}},
            {"edu_type": "m.signing_key_update", "content": {"user_id": ALICE, "master_key": {}}},
            {"edu_type": "m.device_list_update", "content": []},
        ],
    )
    assert code == 200, body
    await settle(a)
    assert {d.device_id for d in (await cache.get_devices({BOB: []}))[BOB]} == {"BOBDEV"}

    # A genuine update that follows our copy is applied as it is.
    await handle(
        "b.test",
        {
            "user_id": BOB,
            "device_id": "GHOST",
            "stream_id": known + 1,
            "prev_id": [known],
            "keys": ghost.device_keys(),
            "deleted": False,
        },
    )
    assert {d.device_id for d in (await cache.get_devices({BOB: []}))[BOB]} == {"BOBDEV", "GHOST"}
    # One whose prev_id we never saw: a.test fetches Bob's whole list again, from b.test.
    await handle("b.test", {"user_id": BOB, "device_id": "OTHER", "stream_id": known + 50, "prev_id": [known + 40]})
    await settle(a)
    assert {d.device_id for d in (await cache.get_devices({BOB: []}))[BOB]} == {"BOBDEV"}
    assert not (await cache.cached_lists([BOB]))[BOB].stale


# -- profiles -------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_remote_profiles(peers: dict[str, Peer]) -> None:
    a, b = peers["a.test"], peers["b.test"]
    alice = await new_device(a, "alice", "ALICEDEV")
    bob = await new_device(b, "bob", "BOBDEV")
    assert (await bob.client.put(f"{V3}/profile/{BOB}/displayname", {"displayname": "Bob"})).code == 200

    resp = await alice.client.get(f"{V3}/profile/{BOB}")
    assert (resp.code, resp.body) == (200, {"displayname": "Bob"})
    resp = await alice.client.get(f"{V3}/profile/{BOB}/displayname")
    assert (resp.code, resp.body) == (200, {"displayname": "Bob"})
    resp = await alice.client.get(f"{V3}/profile/{BOB}/avatar_url")
    assert (resp.code, resp.body["errcode"]) == (404, "M_NOT_FOUND")
    resp = await alice.client.get(f"{V3}/profile/@nobody:b.test")
    assert (resp.code, resp.body["errcode"]) == (404, "M_NOT_FOUND")
    # Off the allowlist: refused without asking, as Synapse does.
    resp = await alice.client.get(f"{V3}/profile/@carol:c.test")
    assert (resp.code, resp.body["errcode"]) == (403, "M_FORBIDDEN")
    # Kept a short while.
    assert (await bob.client.put(f"{V3}/profile/{BOB}/displayname", {"displayname": "Robert"})).code == 200
    assert (await alice.client.get(f"{V3}/profile/{BOB}")).body == {"displayname": "Bob"}
