"""End-to-end encryption support over HTTP: keys, claims, to-device, device lists,
cross-signing and key backup, on both engines.  Keys are real ed25519 keys signed here."""

from __future__ import annotations

import copy
from typing import Any

import pytest_twisted
from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json
from twisted.internet import defer

from tests.api.conftest import Client, HSFixture
from tests.api.helpers import login, password_auth, register
from tests.api.test_rooms_api import V3, create_room

KEYS = f"{V3}/keys"


class Device:
    """A client device with a real ed25519 identity key."""

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
            "keys": {f"curve25519:{self.device_id}": "curvecurvecurve", f"ed25519:{self.device_id}": self.ed25519},
        }
        return sign_json(keys, self.user_id, self.key)

    def otks(self, n: int, start: int = 0) -> dict[str, Any]:
        return {
            f"signed_curve25519:K{i:04d}": sign_json({"key": f"otk{i}"}, self.user_id, self.key)
            for i in range(start, start + n)
        }


async def new_device(server: HSFixture, name: str, device_id: str = "DEV1") -> Device:
    client = server.new_client()
    reg = await register(client, name, device_id=device_id)
    client.token = reg["access_token"]
    return Device(client, reg["user_id"], reg["device_id"])


@pytest_twisted.ensureDeferred
async def test_upload_query_claim_and_fallback(server: HSFixture) -> None:
    alice = await new_device(server, "alice", "ALICEDEV")
    bob = await new_device(server, "bob", "BOBDEV")
    resp = await alice.client.post(f"{KEYS}/upload", {"device_keys": alice.device_keys(), "one_time_keys": alice.otks(2)})
    assert resp.code == 200 and resp.body["one_time_key_counts"]["signed_curve25519"] == 2
    fallback = {"signed_curve25519:FB1": sign_json({"key": "fallback", "fallback": True}, alice.user_id, alice.key)}
    assert (await alice.client.post(f"{KEYS}/upload", {"fallback_keys": fallback})).code == 200

    queried = (await bob.client.post(f"{KEYS}/query", {"device_keys": {alice.user_id: []}})).body
    got = queried["device_keys"][alice.user_id]["ALICEDEV"]
    assert got["keys"]["ed25519:ALICEDEV"] == alice.ed25519 and got["signatures"] == alice.device_keys()["signatures"]

    claims = []
    for _ in range(3):
        body = {"one_time_keys": {alice.user_id: {"ALICEDEV": "signed_curve25519"}}}
        claims.append((await bob.client.post(f"{KEYS}/claim", body)).body["one_time_keys"][alice.user_id]["ALICEDEV"])
    assert [list(c) for c in claims] == [["signed_curve25519:K0000"], ["signed_curve25519:K0001"], ["signed_curve25519:FB1"]]
    sync = (await alice.client.get(f"{V3}/sync")).body
    assert sync["device_one_time_keys_count"]["signed_curve25519"] == 0
    assert sync["device_unused_fallback_key_types"] == []


@pytest_twisted.ensureDeferred
async def test_concurrent_claims_never_share_a_key(server: HSFixture) -> None:
    alice = await new_device(server, "alice", "ALICEDEV")
    bob = await new_device(server, "bob", "BOBDEV")
    await alice.client.post(f"{KEYS}/upload", {"device_keys": alice.device_keys(), "one_time_keys": alice.otks(50)})
    body = {"one_time_keys": {alice.user_id: {"ALICEDEV": "signed_curve25519"}}}
    results = await defer.gatherResults(
        [defer.ensureDeferred(bob.client.post(f"{KEYS}/claim", body)) for _ in range(50)]
    )
    key_ids = [next(iter(r.body["one_time_keys"][alice.user_id]["ALICEDEV"])) for r in results]
    assert len(set(key_ids)) == 50


@pytest_twisted.ensureDeferred
async def test_bad_keys_are_refused_and_store_nothing(server: HSFixture) -> None:
    """Bad input tried: a forged signature, keys for another device and another user,
    malformed key IDs, a key ID reused with other content, wrong types."""
    alice = await new_device(server, "alice", "ALICEDEV")
    forged = alice.device_keys()
    forged["keys"]["curve25519:ALICEDEV"] = "changed-after-signing"
    other_device = copy.deepcopy(alice.device_keys())
    other_device["device_id"] = "OTHER"
    other_user = copy.deepcopy(alice.device_keys())
    other_user["user_id"] = "@bob:test.local"
    for body in (
        {"device_keys": forged},
        {"device_keys": other_device},
        {"device_keys": other_user},
        {"device_keys": "nope"},
        {"one_time_keys": {"nocolon": {"key": "x"}}},
        {"one_time_keys": {"signed_curve25519:A": 5}},
        {"device_keys": alice.device_keys(), "one_time_keys": {"signed_curve25519:A": {"key": 1}}},
    ):
        resp = await alice.client.post(f"{KEYS}/upload", body)
        assert resp.code == 400 and resp.body["errcode"] in ("M_INVALID_PARAM", "M_BAD_JSON"), (body, resp.body)
    queried = (await alice.client.post(f"{KEYS}/query", {"device_keys": {alice.user_id: []}})).body
    assert queried["device_keys"][alice.user_id] == {}
    await alice.client.post(f"{KEYS}/upload", {"one_time_keys": {"signed_curve25519:A": {"key": "one"}}})
    reused = await alice.client.post(f"{KEYS}/upload", {"one_time_keys": {"signed_curve25519:A": {"key": "two"}}})
    assert reused.code == 400


@pytest_twisted.ensureDeferred
async def test_to_device_delivery_and_ack(server: HSFixture) -> None:
    alice = await new_device(server, "alice", "ALICEDEV")
    bob = await new_device(server, "bob", "BOBDEV")
    bob2 = await login(bob.client, "bob", device_id="BOBPHONE")
    since = (await bob.client.get(f"{V3}/sync")).body["next_batch"]
    body = {"messages": {bob.user_id: {"*": {"ciphertext": "opaque"}}}}
    assert (await alice.client.put(f"{V3}/sendToDevice/m.room.encrypted/t1", body)).code == 200
    assert (await alice.client.put(f"{V3}/sendToDevice/m.room.encrypted/t1", body)).code == 200  # idempotent
    first = (await bob.client.get(f"{V3}/sync?since={since}")).body
    events = first["to_device"]["events"]
    assert events == [{"sender": alice.user_id, "type": "m.room.encrypted", "content": {"ciphertext": "opaque"}}]
    # Not acknowledged yet: the same since token delivers it again.
    again = (await bob.client.get(f"{V3}/sync?since={since}")).body
    assert again["to_device"]["events"] == events
    # Acknowledged by the next token: gone.
    after = (await bob.client.get(f"{V3}/sync?since={first['next_batch']}")).body
    assert after["to_device"]["events"] == []
    phone = (await bob.client.get(f"{V3}/sync", token=bob2["access_token"])).body
    assert phone["to_device"]["events"] == events
    big = {"messages": {bob.user_id: {"BOBDEV": {"x": "y" * 70000}}}}
    assert (await alice.client.put(f"{V3}/sendToDevice/m.room.encrypted/t2", big)).code == 413
    bad = await alice.client.put(f"{V3}/sendToDevice/m.x/t3", {"messages": {bob.user_id: {"BOBDEV": "str"}}})
    assert (bad.code, bad.body["errcode"]) == (400, "M_BAD_JSON")


@pytest_twisted.ensureDeferred
async def test_device_lists_in_sync(server: HSFixture) -> None:
    alice = await new_device(server, "alice", "ALICEDEV")
    bob = await new_device(server, "bob", "BOBDEV")
    room_id = await create_room(alice.client, preset="public_chat")
    await bob.client.post(f"{V3}/join/{room_id}", {})
    since = (await alice.client.get(f"{V3}/sync")).body["next_batch"]
    await bob.client.post(f"{KEYS}/upload", {"device_keys": bob.device_keys()})
    sync = (await alice.client.get(f"{V3}/sync?since={since}&timeout=5000")).body
    assert bob.user_id in sync["device_lists"]["changed"]
    changes = (await alice.client.get(f"{KEYS}/changes?from={since}&to={sync['next_batch']}")).body
    assert bob.user_id in changes["changed"]
    since = sync["next_batch"]
    # Bob deletes a device: a change again.  Then he leaves: Alice is told he left.
    phone = await login(bob.client, "bob", device_id="BOBPHONE")
    first = await bob.client.post(f"{V3}/delete_devices", {"devices": ["BOBPHONE"]})
    await bob.client.post(
        f"{V3}/delete_devices",
        {"devices": ["BOBPHONE"], "auth": password_auth(bob.user_id, "correct horse battery", first.body["session"])},
    )
    assert (await bob.client.get(f"{V3}/account/whoami", token=phone["access_token"])).code == 401
    sync = (await alice.client.get(f"{V3}/sync?since={since}&timeout=5000")).body
    assert bob.user_id in sync["device_lists"]["changed"]
    since = sync["next_batch"]
    await bob.client.post(f"{V3}/rooms/{room_id}/leave", {})
    sync = (await alice.client.get(f"{V3}/sync?since={since}&timeout=5000")).body
    assert bob.user_id in sync["device_lists"]["left"]


def _cross_signing_key(user_id: str, usage: str, signer: Any = None, signer_id: str | None = None) -> tuple[Any, dict[str, Any]]:
    key = generate_signing_key(usage)
    public = encode_verify_key_base64(get_verify_key(key))
    body: dict[str, Any] = {"user_id": user_id, "usage": [usage], "keys": {f"ed25519:{public}": public}}
    if signer is not None:
        body = sign_json(body, user_id, signer)
    return key, body


@pytest_twisted.ensureDeferred
async def test_cross_signing_and_signatures(server: HSFixture) -> None:
    alice = await new_device(server, "alice", "ALICEDEV")
    bob = await new_device(server, "bob", "BOBDEV")
    await alice.client.post(f"{KEYS}/upload", {"device_keys": alice.device_keys()})
    master, master_json = _cross_signing_key(alice.user_id, "master")
    master_pub = next(iter(master_json["keys"].values()))
    master.version = master_pub
    self_signing, ssk_json = _cross_signing_key(alice.user_id, "self_signing", master)
    _, usk_json = _cross_signing_key(alice.user_id, "user_signing", master)
    upload = {"master_key": master_json, "self_signing_key": ssk_json, "user_signing_key": usk_json}
    # First upload needs no UIA.
    assert (await alice.client.post(f"{KEYS}/device_signing/upload", upload)).code == 200
    # Replacing them does.
    _, other_master = _cross_signing_key(alice.user_id, "master")
    needs_auth = await alice.client.post(f"{KEYS}/device_signing/upload", {"master_key": other_master})
    assert needs_auth.code == 401 and needs_auth.body["flows"] == [{"stages": ["m.login.password"]}]
    # A self-signing key not signed by the master key is refused.
    _, unsigned_ssk = _cross_signing_key(alice.user_id, "self_signing")
    refused = await alice.client.post(f"{KEYS}/device_signing/upload", {"self_signing_key": unsigned_ssk})
    assert refused.code in (400, 401)

    # Alice signs her device with her self-signing key.
    ssk_pub = next(iter(ssk_json["keys"].values()))
    self_signing.version = ssk_pub
    signed_device = sign_json(alice.device_keys(), alice.user_id, self_signing)
    resp = await alice.client.post(f"{KEYS}/signatures/upload", {alice.user_id: {"ALICEDEV": signed_device}})
    assert resp.code == 200 and resp.body["failures"] == {}
    queried = (await bob.client.post(f"{KEYS}/query", {"device_keys": {alice.user_id: []}})).body
    assert f"ed25519:{ssk_pub}" in queried["device_keys"][alice.user_id]["ALICEDEV"]["signatures"][alice.user_id]
    assert queried["master_keys"][alice.user_id]["keys"] == master_json["keys"]
    assert alice.user_id not in queried["user_signing_keys"]  # only the owner sees it
    # A forged signature is reported per key and stored nowhere.
    forged = copy.deepcopy(signed_device)
    forged["signatures"][alice.user_id][f"ed25519:{ssk_pub}"] = "AAAA" + forged["signatures"][alice.user_id][f"ed25519:{ssk_pub}"][4:]
    resp = await alice.client.post(f"{KEYS}/signatures/upload", {alice.user_id: {"ALICEDEV": forged}})
    assert "ALICEDEV" in resp.body["failures"][alice.user_id]


@pytest_twisted.ensureDeferred
async def test_key_backup(server: HSFixture) -> None:
    alice = await new_device(server, "alice", "ALICEDEV")
    c = alice.client
    assert (await c.get(f"{V3}/room_keys/version")).code == 404
    version = (await c.post(f"{V3}/room_keys/version", {"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {"public_key": "pk"}})).body["version"]
    key = {"first_message_index": 5, "forwarded_count": 0, "is_verified": False, "session_data": {"ciphertext": "c5"}}
    put = await c.put(f"{V3}/room_keys/keys/!room:test.local/sess1?version={version}", key)
    assert put.code == 200 and put.body["count"] == 1
    worse = {**key, "first_message_index": 9, "session_data": {"ciphertext": "c9"}}
    better = {**key, "first_message_index": 1, "session_data": {"ciphertext": "c1"}}
    await c.put(f"{V3}/room_keys/keys?version={version}", {"rooms": {"!room:test.local": {"sessions": {"sess1": worse}}}})
    got = (await c.get(f"{V3}/room_keys/keys/!room:test.local/sess1?version={version}")).body
    assert got["session_data"] == {"ciphertext": "c5"}
    await c.put(f"{V3}/room_keys/keys/!room:test.local?version={version}", {"sessions": {"sess1": better}})
    all_keys = (await c.get(f"{V3}/room_keys/keys?version={version}")).body
    assert all_keys["rooms"]["!room:test.local"]["sessions"]["sess1"]["session_data"] == {"ciphertext": "c1"}
    info = (await c.get(f"{V3}/room_keys/version")).body
    assert info["version"] == version and info["count"] == 1 and info["etag"] == "2"
    # A new version makes the old one read-only for uploads.
    newer = (await c.post(f"{V3}/room_keys/version", {"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {}})).body["version"]
    stale = await c.put(f"{V3}/room_keys/keys/!room:test.local/sess2?version={version}", key)
    assert (stale.code, stale.body["errcode"], stale.body["current_version"]) == (403, "M_WRONG_ROOM_KEYS_VERSION", newer)
    bad = await c.put(f"{V3}/room_keys/keys/!room:test.local/sess2?version={newer}", {**key, "is_verified": "yes"})
    assert (bad.code, bad.body["errcode"]) == (400, "M_BAD_JSON")
    assert (await c.delete(f"{V3}/room_keys/version/{version}")).code == 200
    assert (await c.get(f"{V3}/room_keys/version/{version}")).code == 404


@pytest_twisted.ensureDeferred
async def test_encryption_is_never_weakened(server: HSFixture) -> None:
    alice = await new_device(server, "alice", "ALICEDEV")
    c = alice.client
    room_id = await create_room(c, initial_state=[{"type": "m.room.encryption", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}])
    for content in ({}, {"algorithm": "m.olm.v1.curve25519-aes-sha2"}, {"algorithm": ""}):
        resp = await c.put(f"{V3}/rooms/{room_id}/state/m.room.encryption", content)
        assert resp.code in (400, 403), (content, resp.body)
    state_event = (await c.get(f"{V3}/rooms/{room_id}/state/m.room.encryption?format=event")).body
    redact = await c.put(f"{V3}/rooms/{room_id}/redact/{state_event['event_id']}/r1", {})
    assert redact.code == 403
    # Re-sending the same algorithm (e.g. with new rotation settings) is allowed.
    same = {"algorithm": "m.megolm.v1.aes-sha2", "rotation_period_ms": 604800000}
    assert (await c.put(f"{V3}/rooms/{room_id}/state/m.room.encryption", same)).code == 200
    current = (await c.get(f"{V3}/rooms/{room_id}/state/m.room.encryption")).body
    assert current["algorithm"] == "m.megolm.v1.aes-sha2"


@pytest_twisted.ensureDeferred
async def test_encryption_by_default(make_server: Any) -> None:
    server = make_server(encryption_enabled_by_default_for_room_type="invite")
    alice = await new_device(server, "alice", "ALICEDEV")
    private = await create_room(alice.client, preset="private_chat")
    public = await create_room(alice.client, preset="public_chat")
    assert (await alice.client.get(f"{V3}/rooms/{private}/state/m.room.encryption")).body["algorithm"] == "m.megolm.v1.aes-sha2"
    assert (await alice.client.get(f"{V3}/rooms/{public}/state/m.room.encryption")).code == 404
