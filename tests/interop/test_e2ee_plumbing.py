"""The protocol plumbing the crypto stacks rely on, seen through matrix-nio's parser.

Ann (two devices) and Ben share an encrypted room.

* Ann logs in a third device with keys: Ben's /sync lists Ann in device_lists.changed,
  and GET /keys/changes between his two tokens says the same.
* Ben sends Ann a to-device message addressed to '*' (all her devices), twice with one
  transaction ID: each of her devices gets it exactly once.
* Once a device has acknowledged it (a /sync with the next token), the message is gone:
  a /sync from the old token no longer returns it.
* Ann leaves the room, their only shared encrypted room: Ben's /sync lists her in
  device_lists.left.

Runs once per storage engine; INTEROP_TARGET=synapse runs it against a real Synapse.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nio import (
    EnableEncryptionBuilder,
    JoinResponse,
    LoginResponse,
    RoomCreateResponse,
    RoomLeaveResponse,
    SyncResponse,
    ToDeviceMessage,
    ToDeviceResponse,
)

from tests.interop import harness as h
from tests.interop.e2ee_clients import WAIT, NioUser, marker, quiet_library_logs
from tests.interop.nio_client import RecordingClient

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

PASSWORD = "e2ee plumbing password"
EVENT_TYPE = "org.example.interop.ping"


async def _login(server: h.RunningServer, localpart: str, device_name: str) -> RecordingClient:
    client = RecordingClient(server.client_url, localpart)
    response = await client.login(PASSWORD, device_name=device_name)
    assert isinstance(response, LoginResponse), client.explain(response)
    return client


async def _sync(client: RecordingClient, since: str | None, timeout_ms: int = 0) -> SyncResponse:
    response = await client.sync(timeout=timeout_ms, since=since)
    assert isinstance(response, SyncResponse), client.explain(response)
    return response


async def _sync_until(
    client: RecordingClient, since: str, want: Callable[[SyncResponse], bool], what: str
) -> tuple[str, SyncResponse]:
    """Sync from ``since`` until a response satisfies ``want``; (the token used, that response)."""
    deadline = asyncio.get_running_loop().time() + WAIT
    bodies = []
    while True:
        response = await _sync(client, since, timeout_ms=1000)
        bodies.append(client.exchanges[-1].get("response_body"))
        if want(response):
            return since, response
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no /sync gave {what}; the last bodies:\n{json.dumps(bodies[-3:], indent=1)[:6000]}")
        since = response.next_batch


def _pings(response: SyncResponse, nonce: str) -> list[dict[str, Any]]:
    return [
        e.source
        for e in response.to_device_events
        if e.source.get("type") == EVENT_TYPE and e.source.get("content", {}).get("nonce") == nonce
    ]


async def _plumbing(server: h.RunningServer, tmp_path: Path) -> None:
    quiet_library_logs()
    ann1 = await _login(server, "ann", "ann one")
    ann2 = await _login(server, "ann", "ann two")
    ben = await _login(server, "ben", "ben")
    ann3: NioUser | None = None
    ann_id = str(ann1.user_id)
    try:
        created = await ann1.room_create(invite=[ben.user_id], initial_state=[EnableEncryptionBuilder().as_dict()])
        assert isinstance(created, RoomCreateResponse), ann1.explain(created)
        room_id = created.room_id
        joined = await ben.join(room_id)
        assert isinstance(joined, JoinResponse), ben.explain(joined)
        ben_token = (await _sync(ben, None)).next_batch

        # A new device with keys: Ben hears of it, in /sync and in /keys/changes.
        ann3 = await NioUser.login(server, "ann", PASSWORD, tmp_path / "ann3", "ann three")
        _, changed = await _sync_until(
            ben, ben_token, lambda r: ann_id in r.device_list.changed, f"device_lists.changed with {ann_id}"
        )
        status, changes = h.http_json(
            "GET",
            f"{server.client_url}/_matrix/client/v3/keys/changes?from={ben_token}&to={changed.next_batch}",
            token=ben.access_token,
        )
        assert status == 200 and ann_id in changes.get("changed", []), (status, changes)
        ben_token = changed.next_batch

        # To all of Ann's devices, sent twice under one transaction ID.
        tokens = {}
        for device in (ann1, ann2):
            tokens[device] = (await _sync(device, None)).next_batch
        nonce = marker("to-device")
        message = ToDeviceMessage(EVENT_TYPE, ann_id, "*", {"nonce": nonce})
        for _ in range(2):
            sent = await ben.to_device(message, tx_id="interop-txn-1")
            assert isinstance(sent, ToDeviceResponse), ben.explain(sent)
        for device in (ann1, ann2):
            used, got = await _sync_until(device, tokens[device], lambda r: bool(_pings(r, nonce)), f"the {nonce} ping")
            pings = _pings(got, nonce)
            assert len(pings) == 1, f"{device.device_id} got the ping {len(pings)} times: {pings}"
            assert pings[0]["sender"] == ben.user_id, pings
            # Acknowledge it, then look from the old token again: deleted, so not there.
            after = await _sync(device, got.next_batch, timeout_ms=500)
            assert not _pings(after, nonce), f"{device.device_id} got the ping again: {device.explain(after)}"
            again = await _sync(device, used)
            assert not _pings(again, nonce), (
                f"{device.device_id}: the acknowledged ping came back from the old token {used}" + device.explain(again)
            )

        # Ann leaves their only shared encrypted room: Ben is told to forget her devices.
        left = await ann1.room_leave(room_id)
        assert isinstance(left, RoomLeaveResponse), ann1.explain(left)
        await _sync_until(ben, ben_token, lambda r: ann_id in r.device_list.left, f"device_lists.left with {ann_id}")
    finally:
        for client in (ann1, ann2, ben):
            await client.close()
        if ann3 is not None:
            await ann3.stop()


def test_device_list_changes_to_device_delivery_and_acknowledgement(
    homeserver: h.RunningServer, tmp_path: Path
) -> None:
    for name in ("ann", "ben"):
        homeserver.register_user(name, PASSWORD)
    asyncio.run(_plumbing(homeserver, tmp_path))
