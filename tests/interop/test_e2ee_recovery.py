"""Cross-signing verification, and a second device restoring history from key backup.

Alice and Bob use matrix-js-sdk with its Rust crypto. Alice sets up cross-signing and
"recovery" as Element does it (secret storage under a recovery key, holding her
cross-signing keys and the key of a new server-side key backup); Bob sets up
cross-signing (the first upload needs no password; replacing the keys does). They
verify each other interactively (SAS over to-device messages, both confirming the
emoji): each client now shows the other as cross-signing verified, and /keys/query
carries signatures that check out (verified here with python-olm).

Bob and Alice then talk in an encrypted room; Alice's client backs the room keys up
(/room_keys/keys). Alice's first device goes offline and she logs in on a second one,
which sees the history but cannot decrypt it, until she enters her recovery key: the
new device takes the cross-signing keys from secret storage (signing itself), restores
the room keys from the backup and decrypts the old messages. The trust made on the
first device shows on the second (Bob is verified there), and Bob's client shows the
new device as verified by Alice. Finally a third device of Alice's, on a different
stack (mautrix-python with python-olm), verifies itself with the same recovery key, and
Bob's client shows that one as verified too.

Runs once per storage engine; INTEROP_TARGET=synapse runs it against a real Synapse.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.interop import harness as h
from tests.interop.e2ee_clients import (
    JsUser,
    MautrixUser,
    marker,
    quiet_library_logs,
    require,
    running_agent,
    wait_until,
)

olm = require("olm", "python-olm")
require("mautrix.crypto", "mautrix[encryption]")

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]

PASSWORD = "e2ee recovery password"
BACKUP_ALGORITHM = "m.megolm_backup.v1.curve25519-aes-sha2"


def _canonical(obj: dict[str, Any]) -> bytes:
    unsigned = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _only_key(cross_signing_key: dict[str, Any]) -> tuple[str, str]:
    (key_id, key), *rest = cross_signing_key["keys"].items()
    assert not rest, cross_signing_key
    return key_id, key


def _check_signed(signed: dict[str, Any], signer: str, signer_key_id: str, signer_key: str, what: str) -> None:
    signature = signed.get("signatures", {}).get(signer, {}).get(signer_key_id)
    assert signature, f"{what} carries no signature by {signer}'s {signer_key_id}: {signed}"
    try:
        olm.ed25519_verify(signer_key, _canonical(signed), signature)
    except olm.OlmVerifyError as exc:
        raise AssertionError(f"{what}: bad signature by {signer_key_id}: {exc}\n{signed}") from None


def _keys_query(server: h.RunningServer, token: str, user_ids: list[str]) -> dict[str, Any]:
    request = {"device_keys": {u: [] for u in user_ids}}
    status, body = h.http_json("POST", server.client_url + "/_matrix/client/v3/keys/query", request, token=token)
    assert status == 200, f"POST /keys/query {request} -> {status} {body}"
    return dict(body)


def _check_cross_signing_chain(query: dict[str, Any], verifier: str, verified: str) -> None:
    """``verifier``'s user-signing key (signed by their master key) signs ``verified``'s master key."""
    master = query["master_keys"][verifier]
    master_id, master_key = _only_key(master)
    user_signing = query.get("user_signing_keys", {}).get(verifier)
    assert user_signing, f"/keys/query by {verifier} lacks their own user-signing key: {query}"
    usk_id, usk = _only_key(user_signing)
    _check_signed(user_signing, verifier, master_id, master_key, f"{verifier}'s user-signing key")
    _check_signed(query["master_keys"][verified], verifier, usk_id, usk, f"{verified}'s master key")


def _replacing_keys_needs_password(server: h.RunningServer, user: JsUser) -> None:
    """Replacing existing cross-signing keys (here: an attacker with a stolen access token)
    must be challenged with user-interactive auth, and without it change nothing."""
    url = server.client_url + "/_matrix/client/v3/keys/device_signing/upload"
    before = _keys_query(server, user.access_token, [user.user_id])["master_keys"][user.user_id]
    public = olm.PkSigning(olm.PkSigning.generate_seed()).public_key
    body = {"master_key": {"user_id": user.user_id, "usage": ["master"], "keys": {f"ed25519:{public}": public}}}
    status, answer = h.http_json("POST", url, body, token=user.access_token)
    assert status == 401, f"POST {url} {body} without auth -> {status} {answer}, not a 401 challenge"
    assert ["m.login.password"] in [flow.get("stages") for flow in answer.get("flows", [])], answer
    after = _keys_query(server, user.access_token, [user.user_id])["master_keys"][user.user_id]
    assert after == before, f"the unauthenticated upload replaced the master key: {before} -> {after}"


async def _backed_up_sessions(server: h.RunningServer, token: str, version: str, room_id: str) -> set[str]:
    status, body = h.http_json(
        "GET", f"{server.client_url}/_matrix/client/v3/room_keys/keys?version={version}", token=token
    )
    assert status == 200, f"GET /room_keys/keys?version={version} -> {status} {body}"
    return set(body.get("rooms", {}).get(room_id, {}).get("sessions", {}))


async def _recovery(server: h.RunningServer, tmp_path: Path) -> None:
    quiet_library_logs()
    async with running_agent(tmp_path) as agent:
        alice = await JsUser.login(agent, server, "alice", PASSWORD, "alice-laptop")
        bob = await JsUser.login(agent, server, "bob", PASSWORD, "bob")

        # Cross-signing for both; recovery (secret storage + key backup) for Alice.
        for user in (alice, bob):
            status = await user("bootstrapCrossSigning")
            assert status["ready"], f"{user.name}: cross-signing not ready: {status}"
            # The spec (v1.11, MSC3967): the first upload of cross-signing keys needs no UIA.
            assert status["uiaChallenges"] == [], f"{user.name}'s first key upload was challenged: {status}"
        _replacing_keys_needs_password(server, alice)
        recovery = await alice("bootstrapSecretStorage")
        assert recovery["recoveryKey"] and recovery["secretStorageReady"], recovery
        version = recovery["backupVersion"]
        assert version and recovery["activeBackupVersion"] == version, recovery
        status, backup_info = h.http_json(
            "GET", server.client_url + "/_matrix/client/v3/room_keys/version", token=alice.access_token
        )
        assert status == 200 and backup_info["version"] == version, (status, backup_info)
        assert backup_info["algorithm"] == BACKUP_ALGORITHM, backup_info

        room_id = (await alice("createRoom", invite=[bob.user_id], name="recovery"))["roomId"]
        await bob("join", roomId=room_id)
        await alice("waitMember", roomId=room_id, userId=bob.user_id)

        # Interactive verification, both people confirming the emoji.
        sas = (await alice("sasVerify", other=bob.name))["sas"]
        assert sas[alice.name] == sas[bob.name] and len(sas[alice.name]) == 7, sas
        assert (await alice("waitUserVerified", userId=bob.user_id))["isCrossSigningVerified"]
        assert (await bob("waitUserVerified", userId=alice.user_id))["isCrossSigningVerified"]
        query = _keys_query(server, bob.access_token, [alice.user_id, bob.user_id])
        _check_cross_signing_chain(
            _keys_query(server, alice.access_token, [alice.user_id, bob.user_id]), alice.user_id, bob.user_id
        )
        _check_cross_signing_chain(query, bob.user_id, alice.user_id)
        for user in (alice, bob):
            ssk_id, ssk = _only_key(query["self_signing_keys"][user.user_id])
            device = query["device_keys"][user.user_id][user.device_id]
            _check_signed(device, user.user_id, ssk_id, ssk, f"{user.name}'s device keys")

        # History, backed up by Alice's first device.
        history = [marker("bob-history-1"), marker("bob-history-2"), marker("alice-history")]
        sent = [
            (await bob("send", roomId=room_id, body=f"old news {history[0]}"))["eventId"],
            (await bob("send", roomId=room_id, body=f"older news {history[1]}"))["eventId"],
        ]
        for secret in history[:2]:
            await alice("waitMessage", roomId=room_id, marker=secret)
        sent.append((await alice("send", roomId=room_id, body=f"my own words {history[2]}"))["eventId"])
        timeline = {e["eventId"]: e for e in (await alice("timeline", roomId=room_id))["events"]}
        sessions = {timeline[event_id]["sessionId"] for event_id in sent}
        assert len(sessions) == 2, f"expected Bob's and Alice's Megolm sessions: {sessions}"
        backed_up: set[str] = set()

        async def all_backed_up() -> bool:
            backed_up.update(await _backed_up_sessions(server, alice.access_token, version, room_id))
            return sessions <= backed_up

        await wait_until(
            f"sessions {sessions} in backup version {version}",
            all_backed_up,
            explain=lambda: f"backed up so far: {backed_up}",
            interval=0.3,
        )
        status, info = h.http_json(
            "GET", f"{server.client_url}/_matrix/client/v3/room_keys/version/{version}", token=alice.access_token
        )
        assert status == 200 and info["count"] == len(backed_up), (status, info, backed_up)
        assert info["etag"] != backup_info["etag"], f"the etag did not change as keys were added: {info}"
        await alice("stop")  # offline: the new device can only get keys from the backup

        # A new login: the history is there, undecryptable, until the recovery key.
        phone = await JsUser.login(agent, server, "alice", PASSWORD, "alice-phone")
        await phone("waitMember", roomId=room_id, userId=bob.user_id)
        before: dict[str, Any] = {}

        async def history_undecryptable() -> bool:
            before.update({e["eventId"]: e for e in (await phone("timeline", roomId=room_id))["events"]})
            return all(before.get(event_id, {}).get("decryptionFailure") for event_id in sent)

        await wait_until(
            "the new device to show the history, undecryptable",
            history_undecryptable,
            explain=lambda: json.dumps([before.get(event_id) for event_id in sent], indent=1),
            interval=0.3,
        )
        restored = await phone("restoreFromRecoveryKey", recoveryKey=recovery["recoveryKey"])
        assert restored["backupVersion"] == version and restored["backupTrusted"]["trusted"], restored
        assert restored["restored"]["imported"] >= len(sessions), restored
        assert restored["crossSigningReady"], restored
        for secret, event_id in zip(history, sent, strict=True):
            seen = await phone("waitMessage", roomId=room_id, marker=secret)
            assert seen["eventId"] == event_id and seen["encrypted"], seen

        # The trust Alice gave Bob shows on her new device; Bob sees the new device verified.
        assert (await phone("waitUserVerified", userId=bob.user_id))["isCrossSigningVerified"]
        await bob("waitDeviceCrossSigned", userId=alice.user_id, deviceId=phone.device_id)

        # A third device, on mautrix-python (python-olm), verifies itself with the recovery key.
        tablet = await MautrixUser.login(server, "alice", PASSWORD, "alice tablet mautrix")
        try:
            await tablet.client.crypto.verify_with_recovery_key(recovery["recoveryKey"])
            status = await bob("waitDeviceCrossSigned", userId=alice.user_id, deviceId=tablet.device_id)
            assert status["crossSigningVerified"], status
            query = _keys_query(server, bob.access_token, [alice.user_id])
            ssk_id, ssk = _only_key(query["self_signing_keys"][alice.user_id])
            device = query["device_keys"][alice.user_id][tablet.device_id]
            _check_signed(device, alice.user_id, ssk_id, ssk, "the mautrix device's keys")
        finally:
            await tablet.stop()


def test_cross_signing_verification_and_history_restored_from_key_backup(
    js_sdk: Path, homeserver: h.RunningServer, tmp_path: Path
) -> None:
    for name in ("alice", "bob"):
        homeserver.register_user(name, PASSWORD)
    asyncio.run(_recovery(homeserver, tmp_path))
