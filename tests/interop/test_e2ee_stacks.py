"""Three independent crypto stacks in one encrypted room, over real sockets.

* Alice: matrix-js-sdk 37 with its Rust crypto (matrix-sdk-crypto-wasm), in Node;
* Bob: matrix-nio with vodozemac;
* Carol: mautrix-python with python-olm (libolm).

Alice creates an encrypted room and invites the others; each in turn sends a message,
and the other two must decrypt it. Every room key crosses stacks: uploaded with
/keys/upload, found with /keys/query, an Olm session opened with /keys/claim, the key
sent with /sendToDevice and picked up from /sync's to_device. Finally the server's
storage holds the ciphertexts and none of the plaintexts.

Runs once per storage engine; INTEROP_TARGET=synapse runs it against a real Synapse.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from nio import RoomGetEventResponse

from tests.interop import harness as h
from tests.interop.e2ee_clients import (
    JsUser,
    MautrixUser,
    NioUser,
    marker,
    quiet_library_logs,
    require,
    running_agent,
    stored_data_dump,
)

require("mautrix.crypto", "mautrix[encryption]")

pytestmark = [pytest.mark.interop, pytest.mark.timeout(150)]

PASSWORD = "e2ee three stacks password"


async def _three_stacks(server: h.RunningServer, tmp_path: Path) -> None:
    quiet_library_logs()
    async with running_agent(tmp_path) as agent:
        alice = await JsUser.login(agent, server, "alice", PASSWORD, "alice")
        bob = await NioUser.login(server, "bob", PASSWORD, tmp_path / "bob", "bob nio")
        carol = await MautrixUser.login(server, "carol", PASSWORD, "carol mautrix")
        try:
            bob.start()
            carol.start()
            room_id = (await alice("createRoom", invite=[bob.user_id, carol.user_id], name="three stacks"))["roomId"]
            await asyncio.gather(bob.join(room_id), carol.join(room_id))
            for member in (bob.user_id, carol.user_id):
                await alice("waitMember", roomId=room_id, userId=member)
            await bob.wait_joined(room_id, [alice.user_id, bob.user_id, carol.user_id])

            from_alice, from_bob, from_carol = marker("from-js"), marker("from-nio"), marker("from-mautrix")
            sent = {}

            sent[from_alice] = (await alice("send", roomId=room_id, body=f"Alice (js-sdk) says {from_alice}"))[
                "eventId"
            ]
            got_bob = await bob.wait_message(room_id, from_alice)
            got_carol = await carol.wait_message(room_id, from_alice)
            assert got_bob.event_id == sent[from_alice] and got_bob.sender == alice.user_id, bob.explain()
            assert str(got_carol.event_id) == sent[from_alice], carol.explain()
            assert str(got_carol.sender) == alice.user_id, carol.explain()

            sent[from_bob] = await bob.send(room_id, f"Bob (nio) says {from_bob}")
            js_view = await alice("waitMessage", roomId=room_id, marker=from_bob)
            assert js_view["eventId"] == sent[from_bob] and js_view["encrypted"], js_view
            assert js_view["sender"] == bob.user_id and js_view["senderCurve25519"] == bob.curve25519, js_view
            assert str((await carol.wait_message(room_id, from_bob)).event_id) == sent[from_bob], carol.explain()

            sent[from_carol] = await carol.send(room_id, f"Carol (mautrix) says {from_carol}")
            js_view = await alice("waitMessage", roomId=room_id, marker=from_carol)
            assert js_view["eventId"] == sent[from_carol] and js_view["encrypted"], js_view
            assert js_view["sender"] == carol.user_id, js_view
            got = await bob.wait_message(room_id, from_carol)
            assert got.event_id == sent[from_carol] and got.sender == carol.user_id, bob.explain()

            # Three senders, three Megolm sessions, each an m.room.encrypted event on the server.
            ciphertexts, sessions = {}, set()
            for event_id in sent.values():
                fetched = await bob.client.room_get_event(room_id, event_id)
                assert isinstance(fetched, RoomGetEventResponse), bob.client.explain(fetched)
                source = bob.client.exchanges[-1]["response_body"]
                assert source["type"] == "m.room.encrypted", source
                assert source["content"]["algorithm"] == "m.megolm.v1.aes-sha2", source
                ciphertexts[event_id] = source["content"]["ciphertext"]
                sessions.add(source["content"]["session_id"])
            assert len(sessions) == 3, sessions

            stored, counts = stored_data_dump(server)
            for event_id, ciphertext in ciphertexts.items():
                assert ciphertext in stored, f"ciphertext of {event_id} not in the stored data (tables: {counts})"
            for secret in sent:
                assert secret not in stored, f"plaintext {secret!r} is in the server's stored data"
        finally:
            await bob.stop()
            await carol.stop()


def test_js_sdk_nio_and_mautrix_decrypt_each_other(js_sdk: Path, homeserver: h.RunningServer, tmp_path: Path) -> None:
    for name in ("alice", "bob", "carol"):
        homeserver.register_user(name, PASSWORD)
    asyncio.run(_three_stacks(homeserver, tmp_path))
