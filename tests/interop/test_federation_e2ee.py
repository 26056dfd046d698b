"""End-to-end encryption across servers: our server and a real Synapse, matrix-nio clients.

Alice uses Synapse (``127.0.0.2:PORT``), Bob our server (``127.0.0.1:PORT``, started by its
CLI with a TLS federation listener); the servers federate over TLS on loopback.  Alice
creates an encrypted room and invites Bob, who joins over federation.  Each checks the
other's device keys as the other's server handed them out over federation (what
/keys/query returned against what the other device really holds), then they talk: each
decrypts the other's Megolm messages, whose room keys went as Olm messages through
/keys/claim over federation and m.direct_to_device EDUs.  Bob's server stores the
ciphertext and none of the plaintext.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from nio import EnableEncryptionBuilder, RoomCreateResponse

from tests.interop import harness as h
from tests.interop.e2ee_clients import NioUser, marker, quiet_library_logs, stored_data_dump
from tests.interop.federation_scenarios import start_ours, start_theirs

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]

PASSWORD = "federated e2ee password"


async def _check_fingerprints(viewer: NioUser, other: NioUser) -> None:
    await viewer.query_keys([other.user_id])
    devices = {d.id: d for d in viewer.client.device_store.active_user_devices(other.user_id)}
    assert other.device_id in devices, f"{viewer.name} does not see {other.device_id}" + viewer.explain()
    device = devices[other.device_id]
    assert (device.ed25519, device.curve25519) == (other.ed25519, other.curve25519), viewer.explain()
    viewer.client.verify_device(device)


async def _conversation(ours: h.RunningServer, theirs: h.RunningServer, tmp_path: Path) -> None:
    quiet_library_logs()
    alice = await NioUser.login(theirs, "alice", PASSWORD, tmp_path / "alice", "alice on synapse")
    bob = await NioUser.login(ours, "bob", PASSWORD, tmp_path / "bob", "bob on ours")
    try:
        alice.start()
        bob.start()
        created = await alice.client.room_create(
            invite=[bob.user_id], initial_state=[EnableEncryptionBuilder().as_dict()], name="federated e2ee"
        )
        assert isinstance(created, RoomCreateResponse), alice.client.explain(created)
        room_id = created.room_id
        await bob.join(room_id)
        await alice.wait_joined(room_id, [alice.user_id, bob.user_id])
        await bob.wait_joined(room_id, [alice.user_id, bob.user_id])

        await _check_fingerprints(bob, alice)  # our server asks Synapse
        await _check_fingerprints(alice, bob)  # Synapse asks our server

        to_bob, to_alice, again = marker("synapse-to-ours"), marker("ours-to-synapse"), marker("again")
        first = await alice.send(room_id, f"hello Bob {to_bob}", ignore_unverified=False)
        got = await bob.wait_message(room_id, to_bob)
        assert got.event_id == first and got.sender == alice.user_id and got.verified, bob.explain()

        reply = await bob.send(room_id, f"hi Alice {to_alice}", ignore_unverified=False)
        back = await alice.wait_message(room_id, to_alice)
        assert back.event_id == reply and back.sender == bob.user_id and back.verified, alice.explain()

        third = await alice.send(room_id, f"still there? {again}", ignore_unverified=False)
        assert (await bob.wait_message(room_id, again)).event_id == third, bob.explain()

        stored, counts = stored_data_dump(ours)
        for secret in (to_bob, to_alice, again):
            assert secret not in stored, f"plaintext {secret!r} is in our server's stored data"
        assert "m.megolm.v1.aes-sha2" in stored, f"no Megolm event in our stored data (tables: {counts})"
    finally:
        await alice.stop()
        await bob.stop()


def test_nio_users_on_our_server_and_synapse_talk_encrypted(servers: h.ServerPool, tmp_path: Path) -> None:
    our_port, their_port = h.free_port("127.0.0.1"), h.free_port("127.0.0.2")
    ours_name, theirs_name = f"127.0.0.1:{our_port}", f"127.0.0.2:{their_port}"
    theirs = start_theirs(servers, allow=[ours_name], port=their_port)
    ours = start_ours(servers, tmp_path, allow=[theirs_name], port=our_port)
    theirs.register_user("alice", PASSWORD)
    ours.register_user("bob", PASSWORD)
    try:
        asyncio.run(_conversation(ours, theirs, tmp_path))
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- ours:\n{ours.log_tail(40)}\n--- synapse:\n{theirs.log_tail(40)}") from None
