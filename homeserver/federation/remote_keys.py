"""Keys of users on other servers: /keys/query and /keys/claim over federation, and the
device list cache that spares most of those queries.

``query``: a user we share a room with is answered from our copy of their device list
when it is up to date; when there is no copy yet (or it went stale), their whole list is
fetched with ``GET /user/devices/{userId}`` and kept (a *resync*).  Everyone else is asked
for with one ``POST /user/keys/query`` per server.  ``claim`` sends one
``POST /user/keys/claim`` per server.  Servers are asked concurrently, each within the
client's timeout; a server that fails (or that the allowlist refuses: it is never
contacted) is listed in ``failures`` by name, as Synapse does.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from twisted.internet import defer

from homeserver.core.clock import Clock
from homeserver.core.ids import InvalidID, UserID
from homeserver.federation.transport import (
    FederationDeniedError,
    FederationError,
    FederationRequests,
    HttpResponseError,
)
from homeserver.storage.remote_devices import RemoteDevice, RemoteDeviceRepository

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]
FEDERATION_PREFIX = "/_matrix/federation/v1"
DEFAULT_TIMEOUT_MS = 10_000
MAX_TIMEOUT_MS = 60_000
MAX_DEVICES_PER_USER = 10_000
# Whole-list fetches one /keys/query may start at once, per server asked.
MAX_CONCURRENT_RESYNCS = 10



# (user_id, device IDs or None for the cross-signing keys): record and announce a change.
DeviceListChanged = Callable[[str, Sequence[str | None]], Awaitable[None]]


def domain_of(user_id: str) -> str | None:
    try:
        return UserID.parse(user_id).domain
    except InvalidID:
        return None


def failure_of(error: BaseException) -> JsonDict:
    """A ``failures`` entry, in Synapse's shape."""
    if isinstance(error, FederationDeniedError):
        return {"status": 403, "errcode": "M_FORBIDDEN", "message": str(error)}
    if isinstance(error, HttpResponseError):
        return {"status": error.code, "message": str(error)}
    return {"status": 503, "message": str(error) or type(error).__name__}


def valid_device_keys(keys: Any, user_id: str, device_id: str) -> bool:
    return (
        isinstance(keys, dict)
        and keys.get("user_id") == user_id
        and keys.get("device_id") == device_id
        and isinstance(keys.get("keys"), dict)
    )


def valid_cross_signing_key(key: Any, user_id: str, usage: str) -> bool:
    return (
        isinstance(key, dict)
        and key.get("user_id") == user_id
        and isinstance(key.get("usage"), list)
        and usage in key["usage"]
        and isinstance(key.get("keys"), dict)
    )


def stream_position(value: Any) -> int | None:
    """A device-list stream ID (an integer, sometimes sent as a string), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit() and len(value) < 19:
        return int(value)
    return None


def parse_user_devices(user_id: str, body: Any) -> tuple[list[RemoteDevice], dict[str, JsonDict], int | None]:
    """A ``/user/devices`` answer: (devices, cross-signing keys, stream_id).  Devices with
    malformed keys are left out; a malformed answer raises ValueError."""
    if not isinstance(body, dict) or body.get("user_id") != user_id or not isinstance(body.get("devices"), list):
        raise ValueError(f"malformed /user/devices answer for {user_id}")
    devices: dict[str, RemoteDevice] = {}
    for entry in body["devices"][:MAX_DEVICES_PER_USER]:
        if not isinstance(entry, dict) or not isinstance(entry.get("device_id"), str):
            continue
        device_id = entry["device_id"]
        keys = entry.get("keys")
        name = entry.get("device_display_name")
        devices[device_id] = RemoteDevice(
            device_id,
            keys if valid_device_keys(keys, user_id, device_id) else None,
            name if isinstance(name, str) else None,
        )
    cross: dict[str, JsonDict] = {}
    for field, key_type in (("master_key", "master"), ("self_signing_key", "self_signing")):
        if valid_cross_signing_key(body.get(field), user_id, key_type):
            cross[key_type] = body[field]
    return list(devices.values()), cross, stream_position(body.get("stream_id"))


class QueryResult:
    """The remote part of a /keys/query answer."""

    def __init__(self) -> None:
        self.device_keys: dict[str, dict[str, JsonDict]] = {}
        self.master_keys: dict[str, JsonDict] = {}
        self.self_signing_keys: dict[str, JsonDict] = {}
        self.failures: dict[str, JsonDict] = {}

    def add_devices(self, user_id: str, devices: Collection[RemoteDevice]) -> None:
        out = self.device_keys.setdefault(user_id, {})
        for device in devices:
            if device.keys is not None:
                unsigned = {"device_display_name": device.display_name} if device.display_name else {}
                out[device.device_id] = {**device.keys, "unsigned": unsigned}

    def add_cross_signing(self, user_id: str, cross: Mapping[str, JsonDict]) -> None:
        if "master" in cross:
            self.master_keys[user_id] = cross["master"]
        if "self_signing" in cross:
            self.self_signing_keys[user_id] = cross["self_signing"]


class RemoteDeviceCache:
    def __init__(
        self,
        *,
        server_name: str,
        clock: Clock,
        client: FederationRequests,
        is_allowed: Callable[[str], bool],
        cache: RemoteDeviceRepository,
        cross_signing_keys: Callable[[Collection[str]], Awaitable[dict[str, dict[str, JsonDict]]]],
        changed: DeviceListChanged,
    ) -> None:
        self._server_name = server_name
        self._clock = clock
        self._client = client
        self._is_allowed = is_allowed
        self._cache = cache
        self._cross_signing_keys = cross_signing_keys
        self._changed = changed
        # One resync per user at a time: later callers wait for the running one.
        self._resyncs: dict[str, defer.Deferred[tuple[list[RemoteDevice], dict[str, JsonDict]] | None]] = {}

    # -- resync: a user's whole device list ----------------------------------------------------

    def resync(self, user_id: str, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> defer.Deferred[Any]:
        """Fetch and store the user's whole device list; fires with (devices, cross-signing
        keys), or None when their server could not tell us (the copy then stays stale)."""
        running = self._resyncs.get(user_id)
        if running is None:
            running = defer.ensureDeferred(self._resync(user_id, timeout_ms))
            self._resyncs[user_id] = running
            running.addBoth(self._resync_done, user_id)
        result: defer.Deferred[Any] = defer.Deferred()

        def share(outcome: Any) -> Any:
            result.callback(outcome)
            return outcome

        running.addCallback(share)
        return result

    def _resync_done(self, result: Any, user_id: str) -> Any:
        self._resyncs.pop(user_id, None)
        return result

    async def wait_idle(self) -> None:
        """Wait for the resyncs under way (tests)."""
        while self._resyncs:
            await defer.DeferredList(list(self._resyncs.values()))

    async def _resync(self, user_id: str, timeout_ms: int) -> tuple[list[RemoteDevice], dict[str, JsonDict]] | None:
        try:
            return await self._fetch_and_store(user_id, timeout_ms)
        except Exception:
            # Never fail the callers sharing this resync: they fall back to asking again.
            logger.exception("device list resync of %s failed", user_id)
            return None

    async def _fetch_and_store(
        self, user_id: str, timeout_ms: int
    ) -> tuple[list[RemoteDevice], dict[str, JsonDict]] | None:
        destination = domain_of(user_id)
        if destination is None or destination == self._server_name:
            return None
        try:
            body = await self._client.get_json(
                destination, f"{FEDERATION_PREFIX}/user/devices/{quote(user_id, safe='')}", timeout=timeout_ms / 1000
            )
            devices, cross, stream_id = parse_user_devices(user_id, body)
        except (FederationError, ValueError, defer.CancelledError) as e:
            logger.info("device list resync of %s failed: %s", user_id, e)
            await self._cache.mark_stale([user_id])
            return None
        before_devices = (await self._cache.get_devices({user_id: []})).get(user_id, [])
        before_cross = (await self._cross_signing_keys([user_id])).get(user_id, {})
        await self._cache.replace_list(user_id, devices, cross, stream_id, self._clock.time_msec())
        same_cross = {k: v for k, v in before_cross.items() if k != "user_signing"} == cross
        if sorted(before_devices, key=lambda d: d.device_id) != sorted(devices, key=lambda d: d.device_id):
            await self._changed(user_id, sorted({d.device_id for d in (*before_devices, *devices)}))
        elif not same_cross:
            await self._changed(user_id, [None])
        return devices, cross

    # -- /keys/query ---------------------------------------------------------------------------

    async def query(self, wanted: dict[str, list[str]], timeout_ms: int) -> QueryResult:
        """Keys of remote users (``wanted`` holds no local user)."""
        result = QueryResult()
        tracked = await self._cache.users_sharing_a_room_with_us(list(wanted), self._server_name)
        cached = await self._cache.cached_lists(tracked)
        fresh = {u for u in tracked if u in cached and not cached[u].stale}
        if fresh:
            found = await self._cache.get_devices({u: wanted[u] for u in fresh})
            cross = await self._cross_signing_keys(fresh)
            for user_id in fresh:
                result.add_devices(user_id, found.get(user_id, []))
                result.add_cross_signing(user_id, cross.get(user_id, {}))
        by_server: dict[str, dict[str, list[str]]] = {}
        for user_id, devices in wanted.items():
            if user_id not in fresh:
                server = domain_of(user_id)
                if server is not None:
                    by_server.setdefault(server, {})[user_id] = devices
        await _gather(
            [self._query_server(server, users, tracked, timeout_ms, result) for server, users in by_server.items()]
        )
        return result

    async def _query_server(
        self, server: str, users: dict[str, list[str]], tracked: set[str], timeout_ms: int, result: QueryResult
    ) -> None:
        if not self._is_allowed(server):
            result.failures[server] = failure_of(FederationDeniedError(server))
            return
        # Users we share a room with, whole list asked for: fetch and keep their list.
        to_resync = [u for u, devices in users.items() if u in tracked and not devices]
        limit = defer.DeferredSemaphore(MAX_CONCURRENT_RESYNCS)
        resynced = await _gather([limit.run(self.resync, u, timeout_ms) for u in to_resync])
        rest = {u: d for u, d in users.items() if u not in to_resync}
        for user_id, outcome in zip(to_resync, resynced, strict=True):
            if outcome is None:
                rest[user_id] = []  # the resync failed: ask once more, without keeping the answer
                continue
            devices, cross = outcome
            result.add_devices(user_id, devices)
            result.add_cross_signing(user_id, cross)
        if not rest:
            return
        try:
            body = await self._client.post_json(
                server, f"{FEDERATION_PREFIX}/user/keys/query", {"device_keys": rest}, timeout=timeout_ms / 1000
            )
        except (FederationError, defer.CancelledError) as e:
            result.failures[server] = failure_of(e)
            return
        if not isinstance(body, dict):
            result.failures[server] = {"status": 502, "message": "malformed /user/keys/query answer"}
            return
        device_keys = body.get("device_keys")
        for user_id, devices in (device_keys if isinstance(device_keys, dict) else {}).items():
            if user_id not in rest or not isinstance(devices, dict):
                continue  # only what we asked for, from the users' own server
            out = result.device_keys.setdefault(user_id, {})
            for device_id, keys in devices.items():
                if valid_device_keys(keys, user_id, device_id) and (not rest[user_id] or device_id in rest[user_id]):
                    out[device_id] = keys
        for field, key_type, target in (
            ("master_keys", "master", result.master_keys),
            ("self_signing_keys", "self_signing", result.self_signing_keys),
        ):
            keys_by_user = body.get(field)
            for user_id, key in (keys_by_user if isinstance(keys_by_user, dict) else {}).items():
                if user_id in rest and valid_cross_signing_key(key, user_id, key_type):
                    target[user_id] = key

    # -- /keys/claim ---------------------------------------------------------------------------

    async def claim(self, wanted: dict[str, dict[str, str]], timeout_ms: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """(one_time_keys, failures) for remote users."""
        by_server: dict[str, dict[str, dict[str, str]]] = {}
        for user_id, devices in wanted.items():
            server = domain_of(user_id)
            if server is not None:
                by_server.setdefault(server, {})[user_id] = devices
        one_time_keys: dict[str, Any] = {}
        failures: dict[str, Any] = {}

        async def claim_from(server: str, users: dict[str, dict[str, str]]) -> None:
            if not self._is_allowed(server):
                failures[server] = failure_of(FederationDeniedError(server))
                return
            try:
                body = await self._client.post_json(
                    server, f"{FEDERATION_PREFIX}/user/keys/claim", {"one_time_keys": users}, timeout=timeout_ms / 1000
                )
            except (FederationError, defer.CancelledError) as e:
                failures[server] = failure_of(e)
                return
            keys = body.get("one_time_keys") if isinstance(body, dict) else None
            for user_id, devices in (keys if isinstance(keys, dict) else {}).items():
                if user_id not in users or not isinstance(devices, dict):
                    continue
                for device_id, claimed in devices.items():
                    if device_id in users[user_id] and isinstance(claimed, dict) and len(claimed) == 1:
                        one_time_keys.setdefault(user_id, {})[device_id] = claimed

        await _gather([claim_from(server, users) for server, users in by_server.items()])
        return one_time_keys, failures


async def _gather(awaitables: Sequence[Awaitable[Any]]) -> list[Any]:
    """Run concurrently; results in order (the awaitables handle their own errors)."""
    if not awaitables:
        return []
    return list(await defer.gatherResults([defer.ensureDeferred(_wrap(a)) for a in awaitables], consumeErrors=True))


async def _wrap(awaitable: Awaitable[Any]) -> Any:
    return await awaitable
