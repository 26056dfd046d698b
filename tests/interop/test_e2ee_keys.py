"""The key plumbing under pressure: one-time keys run out, and a device goes away.

* One-time keys run out and the fallback key takes over. Dave (matrix-js-sdk, Rust
  crypto) uploads one-time keys and a fallback key. While his client is held back from
  replenishing them, another user claims them all over /keys/claim; the next claim gets
  the fallback key (marked ``"fallback": true``, and handed out again on every later
  claim), and Dave's /sync reports no one-time keys and no unused fallback key. Erin
  (matrix-nio) then sends Dave an encrypted message: her Olm session is built on the
  fallback key, and Dave still decrypts. Released, Dave's client uploads fresh one-time
  keys, and claims get one-time keys again.
* A device deleted mid-conversation stops receiving keys. Frank (matrix-js-sdk) talks
  to Gina's two matrix-nio devices; both decrypt. Gina deletes one device (DELETE
  /devices with user-interactive auth). Frank's client learns it from /sync's
  device_lists.changed, re-queries Gina's keys and no longer lists the device; his next
  message uses a new Megolm session whose key goes to Gina's remaining device only,
  which decrypts it.

Runs once per storage engine; INTEROP_TARGET=synapse runs it against a real Synapse.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from nio import DeleteDevicesAuthResponse, DeleteDevicesResponse, RoomGetEventResponse, WhoamiError

from tests.interop import harness as h
from tests.interop.e2ee_clients import JsUser, NioUser, marker, quiet_library_logs, running_agent, wait_until

pytestmark = [pytest.mark.interop, pytest.mark.timeout(150)]

PASSWORD = "e2ee keys password"
OTK = "signed_curve25519"


def _login_http(server: h.RunningServer, localpart: str) -> str:
    status, body = h.http_json(
        "POST",
        server.client_url + "/_matrix/client/v3/login",
        {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": localpart}, "password": PASSWORD},
    )
    assert status == 200, (status, body)
    return str(body["access_token"])


def _claim(server: h.RunningServer, token: str, user_id: str, device_id: str) -> tuple[str, dict[str, Any]] | None:
    """POST /keys/claim for one device; the (key id, key object) it got, or None."""
    request = {"one_time_keys": {user_id: {device_id: OTK}}}
    status, body = h.http_json("POST", server.client_url + "/_matrix/client/v3/keys/claim", request, token=token)
    assert status == 200, f"POST /keys/claim {request} -> {status} {body}"
    keys = body.get("one_time_keys", {}).get(user_id, {}).get(device_id, {})
    assert len(keys) <= 1, f"one claim gave several keys: {body}"
    return next(iter(keys.items())) if keys else None


async def _fallback_key_takes_over(server: h.RunningServer, tmp_path: Path) -> None:
    quiet_library_logs()
    async with running_agent(tmp_path) as agent:
        dave = await JsUser.login(agent, server, "dave", PASSWORD, "dave")
        erin = await NioUser.login(server, "erin", PASSWORD, tmp_path / "erin", "erin nio")
        try:
            erin.start()
            records = await dave("records")
            first_upload = records["keyUploads"][0]
            assert first_upload["oneTimeKeys"] > 0 and first_upload["fallbackKeys"], (
                f"matrix-js-sdk's first /keys/upload should carry one-time keys and a fallback key: {records}"
            )

            room_id = (await dave("createRoom", invite=[erin.user_id], name="fallback"))["roomId"]
            await erin.join(room_id)
            await dave("waitMember", roomId=room_id, userId=erin.user_id)

            # Hold Dave's client back from replenishing, then claim every one-time key.
            await dave("holdKeyUploads", hold=True)
            drainer = _login_http(server, "drainer")
            claimed: list[tuple[str, dict[str, Any]]] = []
            while True:
                got = _claim(server, drainer, dave.user_id, dave.device_id)
                assert got is not None, f"/keys/claim gave nothing after {len(claimed)} keys: no fallback key"
                if got[1].get("fallback"):
                    fallback = got
                    break
                claimed.append(got)
                assert len(claimed) <= 200, "more one-time keys than any client uploads"
            assert claimed, "the first claim already gave the fallback key: no one-time key was uploaded"
            assert len({key_id for key_id, _ in claimed}) == len(claimed), "a one-time key was handed out twice"
            again = _claim(server, drainer, dave.user_id, dave.device_id)
            assert again == fallback, f"the fallback key is reused until replaced: {again} != {fallback}"

            def empty_sync() -> Any:
                return [
                    s
                    for s in syncs
                    if (s["oneTimeKeysCount"] or {}).get(OTK, 0) == 0 and s["unusedFallbackKeyTypes"] == []
                ]

            syncs: list[dict[str, Any]] = []

            async def dave_sees_keys_gone() -> Any:
                syncs[:] = (await dave("records"))["syncs"]
                return empty_sync()

            await wait_until(
                f"Dave's /sync to report 0 {OTK} keys and no unused fallback key",
                dave_sees_keys_gone,
                explain=lambda: json.dumps(syncs[-5:], indent=1),
                interval=0.3,
            )

            # Erin's client claims a key for Dave's device: the fallback key, and it works.
            secret = marker("over-fallback")
            event_id = await erin.send(room_id, f"on the fallback key: {secret}")
            claims = [e for e in erin.client.exchanges if "/keys/claim" in e["request"]]
            assert claims, "Erin's client never claimed a key for Dave's device" + erin.explain()
            erin_got = claims[-1]["response_body"]["one_time_keys"][dave.user_id][dave.device_id]
            assert erin_got == dict([fallback]), f"Erin should get the fallback key {fallback}, got {erin_got}"
            seen = await dave("waitMessage", roomId=room_id, marker=secret)
            assert seen["eventId"] == event_id and seen["encrypted"], seen

            # Released, Dave's client replenishes its one-time keys (the Rust crypto rotates
            # the fallback key by age, not on use), and claims get one-time keys again.
            uploads_before = len((await dave("records"))["keyUploads"])
            await dave("holdKeyUploads", hold=False)
            await dave("waitKeyUpload", after=uploads_before, fallback=False)
            fresh = _claim(server, drainer, dave.user_id, dave.device_id)
            assert fresh is not None and not fresh[1].get("fallback"), f"a one-time key again, not {fresh}"
            assert fresh[0] not in {key_id for key_id, _ in claimed}, f"{fresh} was handed out before"
        finally:
            await erin.stop()


def test_one_time_keys_run_out_and_the_fallback_key_takes_over(
    js_sdk: Path, homeserver: h.RunningServer, tmp_path: Path
) -> None:
    for name in ("dave", "erin", "drainer"):
        homeserver.register_user(name, PASSWORD)
    asyncio.run(_fallback_key_takes_over(homeserver, tmp_path))


async def _session_of(nio: NioUser, room_id: str, event_id: str) -> str:
    fetched = await nio.client.room_get_event(room_id, event_id)
    assert isinstance(fetched, RoomGetEventResponse), nio.client.explain(fetched)
    source = nio.client.exchanges[-1]["response_body"]
    assert source["type"] == "m.room.encrypted", source
    return str(source["content"]["session_id"])


async def _delete_device(nio: NioUser, device_id: str) -> None:
    challenge = await nio.client.delete_devices([device_id])
    assert isinstance(challenge, DeleteDevicesAuthResponse), nio.client.explain(challenge)
    auth = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": nio.user_id},
        "password": PASSWORD,
        "session": challenge.session,
    }
    deleted = await nio.client.delete_devices([device_id], auth=auth)
    assert isinstance(deleted, DeleteDevicesResponse), nio.client.explain(deleted)


async def _deleted_device_gets_no_keys(server: h.RunningServer, tmp_path: Path) -> None:
    quiet_library_logs()
    async with running_agent(tmp_path) as agent:
        frank = await JsUser.login(agent, server, "frank", PASSWORD, "frank")
        laptop = await NioUser.login(server, "gina", PASSWORD, tmp_path / "gina-laptop", "gina laptop")
        phone = await NioUser.login(server, "gina", PASSWORD, tmp_path / "gina-phone", "gina phone")
        try:
            laptop.start()
            phone.start()
            room_id = (await frank("createRoom", invite=[laptop.user_id], name="devices"))["roomId"]
            await laptop.join(room_id)
            await frank("waitMember", roomId=room_id, userId=laptop.user_id)
            await frank("devices", userId=laptop.user_id)
            await frank("waitDevices", userId=laptop.user_id, present=[laptop.device_id, phone.device_id])

            before = marker("before-delete")
            first = (await frank("send", roomId=room_id, body=f"to both devices {before}"))["eventId"]
            assert (await laptop.wait_message(room_id, before)).event_id == first, laptop.explain()
            assert (await phone.wait_message(room_id, before)).event_id == first, phone.explain()
            first_session = await _session_of(laptop, room_id, first)
            shared_before = len((await frank("records"))["toDevice"])

            # Gina deletes her phone from her laptop; the phone's token dies with it.
            phone_token = phone.client.access_token
            await phone.stop()
            await _delete_device(laptop, phone.device_id)
            stale = phone.client.__class__(server.client_url, phone.user_id, str(tmp_path / "stale"))
            stale.access_token = phone_token
            try:
                whoami = await stale.whoami()
                assert isinstance(whoami, WhoamiError), "the deleted device's token still works" + stale.explain(whoami)
            finally:
                await stale.close()

            # Frank's client hears of it through /sync and drops the device.
            await frank("waitDevices", userId=laptop.user_id, present=[laptop.device_id], absent=[phone.device_id])
            after = marker("after-delete")
            second = (await frank("send", roomId=room_id, body=f"to the laptop only {after}"))["eventId"]
            assert (await laptop.wait_message(room_id, after)).event_id == second, laptop.explain()
            second_session = await _session_of(laptop, room_id, second)
            assert second_session != first_session, "no new Megolm session after a recipient device was deleted"

            shares = [
                r for r in (await frank("records"))["toDevice"][shared_before:] if r["eventType"] == "m.room.encrypted"
            ]
            targets = {tuple(t) for r in shares for t in r["targets"]}
            assert (laptop.user_id, laptop.device_id) in targets, f"the new room key never went to the laptop: {shares}"
            assert (laptop.user_id, phone.device_id) not in targets, f"the deleted device got a room key: {shares}"

            keys = await laptop.query_keys([laptop.user_id])
            listed = set(keys["device_keys"].get(laptop.user_id, {}))
            assert listed == {laptop.device_id}, f"/keys/query still lists {listed}: {keys}"
        finally:
            await laptop.stop()
            await phone.stop()


def test_a_device_deleted_mid_conversation_stops_receiving_room_keys(
    js_sdk: Path, homeserver: h.RunningServer, tmp_path: Path
) -> None:
    for name in ("frank", "gina"):
        homeserver.register_user(name, PASSWORD)
    asyncio.run(_deleted_device_gets_no_keys(homeserver, tmp_path))
