"""End-to-end encryption between two matrix-nio clients (vodozemac), over real sockets.

Alice and Bob each log in with matrix-nio's Olm machine, upload device and one-time keys,
compare each other's device fingerprints (what /keys/query returned against what the
other device really holds) and mark them verified, then talk in an encrypted room: each
decrypts the other's Megolm messages, whose Olm-encrypted room keys travelled through
/keys/claim and /sendToDevice. Then the server's storage is read back, every table and
every file: the messages' ciphertext is there, their plaintext nowhere.

Runs once per storage engine; INTEROP_TARGET=synapse runs it against a real Synapse.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from nio import EnableEncryptionBuilder, RoomCreateResponse, RoomGetEventResponse, RoomMessageText

from tests.interop import harness as h
from tests.interop.e2ee_clients import NioUser, marker, quiet_library_logs, stored_data_dump

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

PASSWORD = "e2ee nio password"


async def _verify_fingerprints(viewer: NioUser, other: NioUser) -> None:
    """What two people do out of band: check the key the server handed out is the real one."""
    await viewer.query_keys([other.user_id])
    devices = {d.id: d for d in viewer.client.device_store.active_user_devices(other.user_id)}
    assert other.device_id in devices, (
        f"{viewer.name}'s /keys/query does not list {other.user_id}'s device {other.device_id}" + viewer.explain()
    )
    device = devices[other.device_id]
    assert device.ed25519 == other.ed25519, f"ed25519 key of {other.device_id} differs" + viewer.explain()
    assert device.curve25519 == other.curve25519, f"curve25519 key of {other.device_id} differs" + viewer.explain()
    viewer.client.verify_device(device)


async def _nio_conversation(server: h.RunningServer, tmp_path: Path) -> None:
    quiet_library_logs()
    alice = await NioUser.login(server, "alice", PASSWORD, tmp_path / "alice", "alice nio")
    bob = await NioUser.login(server, "bob", PASSWORD, tmp_path / "bob", "bob nio")
    try:
        alice.start()
        bob.start()
        created = await alice.client.room_create(
            invite=[bob.user_id], initial_state=[EnableEncryptionBuilder().as_dict()], name="e2ee nio"
        )
        assert isinstance(created, RoomCreateResponse), alice.client.explain(created)
        room_id = created.room_id
        await bob.join(room_id)
        await alice.wait_joined(room_id, [alice.user_id, bob.user_id])
        await bob.wait_joined(room_id, [alice.user_id, bob.user_id])

        await _verify_fingerprints(alice, bob)
        await _verify_fingerprints(bob, alice)

        to_bob, to_alice, again = marker("alice-to-bob"), marker("bob-to-alice"), marker("alice-again")
        first = await alice.send(room_id, f"hello Bob {to_bob}", ignore_unverified=False)
        received = await bob.wait_message(room_id, to_bob)
        assert received.event_id == first and received.sender == alice.user_id, bob.explain()
        assert received.decrypted and received.verified, f"Bob sees {received} as not from a verified device"

        reply = await bob.send(room_id, f"hi Alice {to_alice}", ignore_unverified=False)
        back = await alice.wait_message(room_id, to_alice)
        assert back.event_id == reply and back.decrypted and back.verified, alice.explain()

        # A second message on the same Megolm session: no new room key needed.
        third = await alice.send(room_id, f"still there? {again}", ignore_unverified=False)
        assert (await bob.wait_message(room_id, again)).event_id == third, bob.explain()

        # On the wire and at rest, the messages are m.room.encrypted with Megolm ciphertext.
        ciphertexts = {}
        for event_id in (first, reply, third):
            fetched = await alice.client.room_get_event(room_id, event_id)
            assert isinstance(fetched, RoomGetEventResponse), alice.client.explain(fetched)
            source = alice.client.exchanges[-1]["response_body"]
            assert source["type"] == "m.room.encrypted", source
            assert source["content"]["algorithm"] == "m.megolm.v1.aes-sha2", source
            assert isinstance(fetched.event, RoomMessageText), f"{event_id} did not decrypt: {fetched.event}"
            ciphertexts[event_id] = source["content"]["ciphertext"]

        stored, counts = stored_data_dump(server)
        for event_id, ciphertext in ciphertexts.items():
            assert ciphertext in stored, (
                f"the ciphertext of {event_id} is not in the server's stored data: the dump missed the "
                f"event table, so the plaintext check below would prove nothing (tables: {counts})"
            )
        for secret in (to_bob, to_alice, again):
            assert secret not in stored, f"plaintext {secret!r} is in the server's stored data"
    finally:
        await alice.stop()
        await bob.stop()


def test_nio_users_exchange_encrypted_messages_and_the_server_stores_no_plaintext(
    homeserver: h.RunningServer, tmp_path: Path
) -> None:
    homeserver.register_user("alice", PASSWORD)
    homeserver.register_user("bob", PASSWORD)
    asyncio.run(_nio_conversation(homeserver, tmp_path))
