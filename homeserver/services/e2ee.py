"""End-to-end encryption support: device and one-time keys, cross-signing, device lists.

The server carries keys faithfully and never sees plaintext.  It checks what it can (the
shape of keys, that signatures verify, that a device only publishes its own keys) so a
client is never handed keys that are malformed or forged.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from signedjson.key import decode_verify_key_bytes
from signedjson.sign import SignatureVerifyException, verify_signed_json
from twisted.internet import defer
from unpaddedbase64 import decode_base64

from homeserver.core.errors import Codes, MatrixError, forbidden
from homeserver.core.ids import InvalidID, UserID
from homeserver.services.auth import Requester
from homeserver.services.streams import StreamToken
from homeserver.storage.e2e_keys import E2EKeyRepository
from homeserver.storage.rooms import RoomRepository

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]
MAX_ONE_TIME_KEYS_PER_UPLOAD = 1000
CROSS_SIGNING_TYPES = {"master_key": "master", "self_signing_key": "self_signing", "user_signing_key": "user_signing"}

SharedUsers = Callable[[str], Awaitable[set[str]]]
# (user_id, device IDs, None standing for the cross-signing keys): see DeviceListTracker.
DeviceListChanged = Callable[[str, Sequence[str | None]], Awaitable[None]]
DEFAULT_TIMEOUT_MS = 10_000
MAX_TIMEOUT_MS = 60_000


class RemoteQueryResult(Protocol):
    device_keys: dict[str, dict[str, JsonDict]]
    master_keys: dict[str, JsonDict]
    self_signing_keys: dict[str, JsonDict]
    failures: dict[str, JsonDict]


class RemoteKeys(Protocol):
    """Keys of users on other servers (:class:`homeserver.federation.remote_keys.RemoteDeviceCache`)."""

    async def query(self, wanted: dict[str, list[str]], timeout_ms: int) -> RemoteQueryResult: ...

    async def claim(
        self, wanted: dict[str, dict[str, str]], timeout_ms: int
    ) -> tuple[dict[str, Any], dict[str, Any]]: ...


def _bad(msg: str, errcode: str = Codes.INVALID_PARAM) -> MatrixError:
    return MatrixError(400, errcode, msg)


def _ed25519_key(key_b64: str, key_id: str) -> Any:
    try:
        return decode_verify_key_bytes(key_id, decode_base64(key_b64))
    except Exception:
        raise _bad(f"Invalid ed25519 key {key_id}") from None


def _verify(obj: JsonDict, signer: str, key_id: str, key_b64: str, what: str) -> None:
    try:
        verify_signed_json(obj, signer, _ed25519_key(key_b64, key_id))
    except SignatureVerifyException:
        raise _bad(f"Invalid signature on {what}") from None
    except Exception:
        raise _bad(f"Invalid signature on {what}") from None


def _single_ed25519(key: JsonDict, what: str) -> tuple[str, str]:
    """(key_id, public key) of a cross-signing key, which must hold exactly one ed25519 key."""
    keys = key.get("keys")
    if not isinstance(keys, dict) or len(keys) != 1:
        raise _bad(f"{what}.keys must hold exactly one key", Codes.BAD_JSON)
    key_id, value = next(iter(keys.items()))
    if not isinstance(key_id, str) or not key_id.startswith("ed25519:") or not isinstance(value, str):
        raise _bad(f"{what}.keys must be an ed25519 key", Codes.BAD_JSON)
    return key_id, value


def _timeout_ms(body: JsonDict) -> int:
    value = body.get("timeout", DEFAULT_TIMEOUT_MS)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _bad("timeout must be a non-negative integer (milliseconds)")
    return min(value, MAX_TIMEOUT_MS)


class E2EKeyService:
    def __init__(
        self,
        *,
        server_name: str,
        keys: E2EKeyRepository,
        rooms: RoomRepository,
        shared_users: SharedUsers,
        device_list_changed: DeviceListChanged,
        remote: RemoteKeys | None = None,
    ) -> None:
        self._server_name = server_name
        self._keys = keys
        self._rooms = rooms
        self._shared_users = shared_users
        self._changed = device_list_changed
        # Keys of other servers' users (set by the federation wiring; None: local only).
        self.remote = remote

    async def current_position(self) -> int:
        return await self._keys.device_list_ids.current()

    def _is_local(self, user_id: str) -> bool:
        return user_id.endswith(":" + self._server_name)

    def on_devices_deleted(self, user_id: str, device_ids: list[str]) -> None:
        """Listener for device deletions: the user's device list changed."""

        async def changed() -> None:
            await self._changed(user_id, device_ids)

        d = defer.ensureDeferred(changed())
        d.addErrback(lambda f: logger.error("device list update for %s failed: %s", user_id, f.getTraceback()))

    # -- /keys/upload --------------------------------------------------------------------

    async def upload_keys(self, requester: Requester, body: JsonDict) -> JsonDict:
        user_id, device_id = requester.user_id, requester.device_id
        if device_id is None:
            raise forbidden("Uploading keys needs a device")
        device_keys = body.get("device_keys")
        one_time = body.get("one_time_keys")
        fallback = body.get("fallback_keys", body.get("org.matrix.msc2732.fallback_keys"))
        # Validate everything first: bad input stores nothing.
        if device_keys is not None:
            self._check_device_keys(device_keys, user_id, device_id)
        otks = self._parse_key_map(one_time, "one_time_keys") if one_time is not None else []
        if len(otks) > MAX_ONE_TIME_KEYS_PER_UPLOAD:
            raise _bad(f"At most {MAX_ONE_TIME_KEYS_PER_UPLOAD} one-time keys per upload")
        fallbacks = self._parse_key_map(fallback, "fallback_keys") if fallback is not None else []
        if device_keys is not None:
            existing = await self._keys.get_device_keys(user_id, device_id)
            if existing != device_keys:
                await self._keys.set_device_keys(user_id, device_id, device_keys)
                await self._changed(user_id, [device_id])
        if otks:
            conflicts = await self._keys.add_one_time_keys(user_id, device_id, otks)
            if conflicts:
                raise _bad(f"One-time key {conflicts[0]} already exists with different content")
        if fallbacks:
            await self._keys.set_fallback_keys(user_id, device_id, fallbacks)
        return {"one_time_key_counts": await self.one_time_key_counts(user_id, device_id)}

    async def one_time_key_counts(self, user_id: str, device_id: str) -> dict[str, int]:
        counts = await self._keys.count_one_time_keys(user_id, device_id)
        counts.setdefault("signed_curve25519", 0)
        return counts

    @staticmethod
    def _check_device_keys(keys: Any, user_id: str, device_id: str) -> None:
        if not isinstance(keys, dict):
            raise _bad("device_keys must be an object", Codes.BAD_JSON)
        if keys.get("user_id") != user_id or keys.get("device_id") != device_id:
            raise _bad("device_keys.user_id and device_keys.device_id must be the uploading device's")
        algorithms = keys.get("algorithms")
        if not isinstance(algorithms, list) or not all(isinstance(a, str) for a in algorithms):
            raise _bad("device_keys.algorithms must be a list of strings", Codes.BAD_JSON)
        key_map = keys.get("keys")
        if not isinstance(key_map, dict) or not all(isinstance(v, str) for v in key_map.values()):
            raise _bad("device_keys.keys must map key IDs to strings", Codes.BAD_JSON)
        ed_key = key_map.get(f"ed25519:{device_id}")
        if ed_key is None:
            raise _bad(f"device_keys.keys must contain ed25519:{device_id}")
        _verify(keys, user_id, f"ed25519:{device_id}", ed_key, "device_keys")

    @staticmethod
    def _parse_key_map(value: Any, field: str) -> list[tuple[str, str, JsonDict]]:
        if not isinstance(value, dict):
            raise _bad(f"{field} must be an object", Codes.BAD_JSON)
        out = []
        for full_id, key in value.items():
            algorithm, sep, key_id = str(full_id).partition(":")
            if not sep or not algorithm or not key_id:
                raise _bad(f"{field}: key IDs must be algorithm:key_id, got {full_id!r}")
            # Legacy unsigned curve25519 keys are plain strings; signed ones are objects.
            if not isinstance(key, (dict, str)):
                raise _bad(f"{field}.{full_id} must be an object or a string", Codes.BAD_JSON)
            if isinstance(key, dict) and not isinstance(key.get("key"), str):
                raise _bad(f"{field}.{full_id}.key must be a string", Codes.BAD_JSON)
            out.append((algorithm, key_id, key))
        return out  # type: ignore[return-value]

    # -- /keys/query and /keys/claim ---------------------------------------------------

    async def query_keys(self, requester: Requester, body: JsonDict) -> JsonDict:
        wanted_raw = body.get("device_keys")
        if not isinstance(wanted_raw, dict):
            raise _bad("device_keys must be an object", Codes.BAD_JSON)
        wanted: dict[str, list[str]] = {}
        for user_id, devices in wanted_raw.items():
            if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
                raise _bad(f"device_keys.{user_id} must be a list of device IDs", Codes.BAD_JSON)
            try:
                UserID.parse(user_id)
            except InvalidID:
                raise _bad(f"device_keys: invalid user ID {user_id!r}") from None
            wanted[user_id] = devices
        timeout_ms = _timeout_ms(body)
        local = {u: d for u, d in wanted.items() if self._is_local(u)}
        remote = {u: d for u, d in wanted.items() if u not in local}
        found = await self._keys.query_devices(local)
        signatures = await self._keys.get_signatures(list(wanted))
        device_keys: dict[str, dict[str, JsonDict]] = {}
        for user_id, devices in found.items():
            out = device_keys.setdefault(user_id, {})
            for device_id, (keys, display_name) in devices.items():
                if keys is None:
                    continue
                keys = self._with_signatures(keys, signatures.get((user_id, device_id), []))
                keys["unsigned"] = {"device_display_name": display_name} if display_name else {}
                out[device_id] = keys
        cross = await self._keys.get_cross_signing_keys(list(local))
        result: JsonDict = {"device_keys": device_keys, "failures": {}, "master_keys": {}, "self_signing_keys": {}}
        result["user_signing_keys"] = {}
        if remote and self.remote is not None:
            self._add_remote_keys(result, await self.remote.query(remote, timeout_ms), signatures)
        for user_id, keys_by_type in cross.items():
            if "master" in keys_by_type:
                master = keys_by_type["master"]
                key_id, _ = _single_ed25519(master, "master_key")
                result["master_keys"][user_id] = self._with_signatures(
                    master, signatures.get((user_id, key_id.split(":", 1)[1]), [])
                )
            if "self_signing" in keys_by_type:
                result["self_signing_keys"][user_id] = keys_by_type["self_signing"]
            if "user_signing" in keys_by_type and user_id == requester.user_id:
                result["user_signing_keys"][user_id] = keys_by_type["user_signing"]
        return result

    def _add_remote_keys(
        self, result: JsonDict, found: RemoteQueryResult, signatures: dict[tuple[str, str], list[tuple[str, str, str]]]
    ) -> None:
        """Remote users' keys, with the signatures our users made on them (verification)."""
        for user_id, devices in found.device_keys.items():
            result["device_keys"][user_id] = {
                device_id: self._with_signatures(keys, signatures.get((user_id, device_id), []))
                for device_id, keys in devices.items()
            }
        for user_id, master in found.master_keys.items():
            try:
                key_id, _ = _single_ed25519(master, "master_key")
            except MatrixError:
                continue  # not a usable master key: leave it out
            result["master_keys"][user_id] = self._with_signatures(
                master, signatures.get((user_id, key_id.split(":", 1)[1]), [])
            )
        result["self_signing_keys"].update(found.self_signing_keys)
        result["failures"].update(found.failures)

    @staticmethod
    def _with_signatures(keys: JsonDict, extra: list[tuple[str, str, str]]) -> JsonDict:
        out = dict(keys)
        if extra:
            sigs = {u: dict(s) for u, s in (out.get("signatures") or {}).items()}
            for signer, key_id, signature in extra:
                sigs.setdefault(signer, {})[key_id] = signature
            out["signatures"] = sigs
        return out

    async def claim_keys(self, body: JsonDict) -> JsonDict:
        wanted_raw = body.get("one_time_keys")
        if not isinstance(wanted_raw, dict):
            raise _bad("one_time_keys must be an object", Codes.BAD_JSON)
        wanted = []
        remote: dict[str, dict[str, str]] = {}
        for user_id, devices in wanted_raw.items():
            if not isinstance(devices, dict) or not all(isinstance(a, str) for a in devices.values()):
                raise _bad(f"one_time_keys.{user_id} must map device IDs to algorithms", Codes.BAD_JSON)
            if self._is_local(user_id):
                wanted += [(user_id, device_id, algorithm) for device_id, algorithm in devices.items()]
            else:
                remote[user_id] = devices
        timeout_ms = _timeout_ms(body)
        claimed = await self._keys.claim_keys(wanted)
        out: dict[str, dict[str, JsonDict]] = {}
        for (user_id, device_id), (key_id, key) in claimed.items():
            out.setdefault(user_id, {})[device_id] = {key_id: key}
        failures: dict[str, Any] = {}
        if remote and self.remote is not None:
            remote_keys, failures = await self.remote.claim(remote, timeout_ms)
            out.update(remote_keys)
        return {"one_time_keys": out, "failures": failures}

    # -- device list tracking ----------------------------------------------------------

    async def device_list_delta(self, user_id: str, since: StreamToken, now: StreamToken) -> tuple[set[str], set[str]]:
        """(changed, left) between two tokens: users whose devices changed and who share a
        room with ``user_id``, users who newly share a room, and users no longer sharing any."""
        if since.device_lists >= now.device_lists and since.events >= now.events:
            return set(), set()
        # Each query is made only if its stream moved (the room store answers membership
        # questions from memory when nothing changed): most syncs need none of them.
        shared: set[str] | None = None
        changed: set[str] = set()
        if since.device_lists < now.device_lists:
            shared = set(await self._shared_users(user_id))
            changed = await self._keys.users_changed_between(shared, since.device_lists, now.device_lists)
        if since.events >= now.events:
            return changed, set()
        mine = await self._rooms.membership_changes_since(user_id, since.events, now.events)
        others = await self._rooms.member_changes_in_rooms_of(user_id, since.events, now.events)
        if not mine and not others:
            return changed, set()
        if shared is None:
            shared = set(await self._shared_users(user_id))
        left: set[str] = set()
        for room_id, membership, _event_id, _stream in mine:
            members = {m.user_id for m in await self._rooms.members(room_id, ("join",))}
            if membership == "join":
                changed |= members
            elif membership in ("leave", "ban"):
                left |= {m for m in members if m not in shared}
        for other, membership in others:
            if membership == "join":
                changed.add(other)
            elif other not in shared:
                left.add(other)
        return changed - left, left - shared

    async def keys_changes(self, requester: Requester, from_token: str, to_token: str) -> JsonDict:
        since = StreamToken.parse(from_token, "from")
        upto = StreamToken.parse(to_token, "to")
        changed, left = await self.device_list_delta(requester.user_id, since, upto)
        return {"changed": sorted(changed), "left": sorted(left)}

    async def sync_extension(
        self, requester: Requester, since: StreamToken | None, now: StreamToken, body: JsonDict
    ) -> None:
        if requester.device_id is not None:
            counts, fallbacks = await self._keys.key_counts(requester.user_id, requester.device_id)
            counts.setdefault("signed_curve25519", 0)
            body["device_one_time_keys_count"] = counts
            body["device_unused_fallback_key_types"] = fallbacks
        if since is not None:
            changed, left = await self.device_list_delta(requester.user_id, since, now)
            body["device_lists"] = {"changed": sorted(changed), "left": sorted(left)}

    # -- cross-signing -----------------------------------------------------------------

    async def needs_auth_for_cross_signing(self, user_id: str, body: JsonDict) -> bool:
        """UIA is skipped for a first upload and for re-uploading the same keys."""
        existing = (await self._keys.get_cross_signing_keys([user_id])).get(user_id, {})
        if "master" not in existing:
            return False
        for field, key_type in CROSS_SIGNING_TYPES.items():
            if field in body and body[field] != existing.get(key_type):
                return True
        return False

    async def upload_cross_signing_keys(self, user_id: str, body: JsonDict) -> None:
        existing = (await self._keys.get_cross_signing_keys([user_id])).get(user_id, {})
        new: dict[str, JsonDict] = {}
        for field, key_type in CROSS_SIGNING_TYPES.items():
            key = body.get(field)
            if key is None:
                continue
            if not isinstance(key, dict):
                raise _bad(f"{field} must be an object", Codes.BAD_JSON)
            if key.get("user_id") != user_id:
                raise _bad(f"{field}.user_id must be {user_id}")
            if key.get("usage") != [key_type]:
                raise _bad(f"{field}.usage must be [{key_type!r}]")
            _single_ed25519(key, field)
            new[key_type] = key
        master = new.get("master") or existing.get("master")
        if master is None:
            raise _bad("A master key must be uploaded first", Codes.MISSING_PARAM)
        master_id, master_key = _single_ed25519(master, "master_key")
        for key_type in ("self_signing", "user_signing"):
            if key_type in new:
                _verify(
                    new[key_type], user_id, master_id, master_key, f"{key_type}_key (must be signed by the master key)"
                )
        for key_type, key in new.items():
            await self._keys.set_cross_signing_key(user_id, key_type, key)
        if new:
            await self._changed(user_id, [None])

    async def upload_signatures(self, requester: Requester, body: JsonDict) -> JsonDict:
        """Store signatures that verify; report the others per key, as the spec asks."""
        user_id = requester.user_id
        cross = await self._keys.get_cross_signing_keys([user_id])
        own = cross.get(user_id, {})
        failures: dict[str, dict[str, JsonDict]] = {}
        rows: list[tuple[str, str, str, str, str]] = []
        changed: dict[str, set[str | None]] = {}
        own_devices = set((await self._keys.query_devices({user_id: []})).get(user_id, {}))
        for target_user, objects in body.items():
            if not isinstance(objects, dict):
                raise _bad(f"{target_user} must map key IDs to signed keys", Codes.BAD_JSON)
            for target_key_id, signed in objects.items():
                try:
                    rows += await self._check_signature(user_id, own, target_user, target_key_id, signed)
                    signed_device = target_user == user_id and target_key_id in own_devices
                    changed.setdefault(target_user, set()).add(target_key_id if signed_device else None)
                except MatrixError as e:
                    failures.setdefault(target_user, {})[target_key_id] = {"errcode": e.errcode, "error": e.msg}
        if rows:
            await self._keys.add_signatures(rows)
        for target, what in changed.items():
            await self._changed(target, sorted(what, key=lambda d: d or ""))
        return {"failures": failures}

    async def _check_signature(
        self, user_id: str, own: dict[str, JsonDict], target_user: str, target_key_id: str, signed: Any
    ) -> list[tuple[str, str, str, str, str]]:
        if not isinstance(signed, dict):
            raise _bad("The signed key must be an object", Codes.BAD_JSON)
        sigs = (signed.get("signatures") or {}).get(user_id)
        if not isinstance(sigs, dict) or not sigs:
            raise _bad("No signature by the uploading user")
        if target_user == user_id:
            devices = await self._keys.query_devices({user_id: [target_key_id]})
            device = devices.get(user_id, {}).get(target_key_id)
            if device is not None and device[0] is not None:
                # Our self-signing key signs our own device.
                stored = device[0]
                signer = own.get("self_signing")
                if signer is None:
                    raise _bad("No self-signing key to sign devices with")
            else:
                # A device signs our master key.
                master = own.get("master")
                if master is None or _single_ed25519(master, "master_key")[1] != target_key_id:
                    raise MatrixError(404, Codes.NOT_FOUND, f"Unknown key {target_key_id}")
                stored, signer = master, None
        else:
            others = (await self._keys.get_cross_signing_keys([target_user])).get(target_user, {})
            master = others.get("master")
            if master is None or _single_ed25519(master, "master_key")[1] != target_key_id:
                raise MatrixError(404, Codes.NOT_FOUND, f"Unknown key {target_key_id} of {target_user}")
            stored, signer = master, own.get("user_signing")
            if signer is None:
                raise _bad("No user-signing key to sign other users with")
        unsigned_view = {k: v for k, v in signed.items() if k not in ("signatures", "unsigned")}
        stored_view = {k: v for k, v in stored.items() if k not in ("signatures", "unsigned")}
        if unsigned_view != stored_view:
            raise _bad("The signed object does not match the stored key")
        rows = []
        for key_id, signature in sigs.items():
            if signer is not None:
                signer_id, signer_key = _single_ed25519(signer, "signing key")
            else:
                device_id = key_id.split(":", 1)[1] if ":" in key_id else ""
                dev = (await self._keys.query_devices({user_id: [device_id]})).get(user_id, {}).get(device_id)
                if dev is None or dev[0] is None:
                    raise _bad(f"Unknown signing device {device_id}")
                signer_id, signer_key = key_id, dev[0]["keys"].get(key_id, "")
            if key_id != signer_id:
                continue
            _verify(
                {**signed, "signatures": {user_id: {key_id: signature}}}, user_id, key_id, signer_key, target_key_id
            )
            rows.append((target_user, target_key_id, user_id, key_id, signature))
        if not rows:
            raise _bad("No signature by the expected key")
        return rows

    # == federation: answering other servers about our users' keys ========================
    # (GET /user/devices/{userId}, POST /user/keys/query and /user/keys/claim; see
    # homeserver/api/federation/queries.py, which checks the user IDs are ours.)
    # Device display names stay home unless asked for, as with Synapse's default
    # ``allow_device_name_lookup_over_federation: false``: they often name people and places.

    async def devices_for_federation(self, user_id: str, *, include_display_names: bool = False) -> JsonDict:
        """The federation ``/user/devices`` answer: every device with keys, and cross-signing keys.

        ``stream_id`` is the device-list stream position, which only grows, so a remote server
        can tell a newer list from an older one."""
        # The position of the user's latest device change: the prev_id our next
        # m.device_list_update for this user will carry, so the asker can chain it.
        stream_id = await self._keys.last_device_change(user_id) or await self.current_position()
        found = (await self._keys.query_devices({user_id: []})).get(user_id, {})
        signatures = await self._keys.get_signatures([user_id])
        devices: list[JsonDict] = []
        for device_id, (keys, display_name) in sorted(found.items()):
            if keys is None:
                continue
            entry: JsonDict = {
                "device_id": device_id,
                "keys": self._with_signatures(keys, signatures.get((user_id, device_id), [])),
            }
            if display_name and include_display_names:
                entry["device_display_name"] = display_name
            devices.append(entry)
        body: JsonDict = {"user_id": user_id, "stream_id": stream_id, "devices": devices}
        cross = await self.query_keys(_NOBODY, {"device_keys": {user_id: []}})
        if user_id in cross["master_keys"]:
            body["master_key"] = cross["master_keys"][user_id]
        if user_id in cross["self_signing_keys"]:
            body["self_signing_key"] = cross["self_signing_keys"][user_id]
        return body

    async def query_keys_for_federation(
        self, wanted: dict[str, list[str]], *, include_display_names: bool = False
    ) -> JsonDict:
        """The federation ``/user/keys/query`` answer for already-validated local users.

        User-signing keys are private to their owner and never leave the server."""
        found = await self.query_keys(_NOBODY, {"device_keys": wanted})
        if not include_display_names:
            for devices in found["device_keys"].values():
                for keys in devices.values():
                    keys["unsigned"] = {}
        return {
            "device_keys": found["device_keys"],
            "master_keys": found["master_keys"],
            "self_signing_keys": found["self_signing_keys"],
        }

    async def claim_keys_for_federation(self, wanted: dict[str, dict[str, str]]) -> JsonDict:
        """The federation ``/user/keys/claim`` answer: each one-time key is handed out once."""
        claimed = await self.claim_keys({"one_time_keys": wanted})
        return {"one_time_keys": claimed["one_time_keys"]}


# Queries on behalf of another server, which is no user: user-signing keys (shown only to
# their owner) are never included.
_NOBODY = Requester(user_id="", device_id=None, is_guest=False, token_hash="")
