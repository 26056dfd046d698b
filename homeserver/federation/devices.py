"""Device lists over federation: m.device_list_update and m.signing_key_update, both ways.

Outbound, :meth:`DeviceListFederation.on_local_change` (a
:class:`~homeserver.services.devices.DeviceListTracker` listener) tells the servers sharing
a room with a local user that one of the user's devices changed (an EDU per device,
chained by ``prev_id`` so the receiver can tell whether it missed one) or that their
cross-signing keys changed.

Inbound, an update from a server about one of its own users we share a room with is
applied to our copy of the user's device list (:mod:`homeserver.federation.remote_keys`)
when it follows what we have, else our copy is marked stale and fetched again whole (in
the background: the sender's transaction does not wait).  Local clients then see the user
in ``device_lists.changed``.  EDUs get no answer: a malformed or foreign one is logged
and dropped.

Also here: a remote user who starts sharing a room with us may have changed devices while
we were not told, so their copy is marked stale when they join (or when our server joins
a room they are in).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import defer

from homeserver.core.clock import Clock
from homeserver.federation.remote_keys import (
    DeviceListChanged,
    RemoteDeviceCache,
    domain_of,
    stream_position,
    valid_cross_signing_key,
    valid_device_keys,
)
from homeserver.services.to_device import DIRECT_TO_DEVICE
from homeserver.storage.e2e_keys import E2EKeyRepository
from homeserver.storage.remote_devices import RemoteDevice, RemoteDeviceRepository

if TYPE_CHECKING:
    from homeserver.federation.components import Federation
    from homeserver.services.devices import DeviceListTracker
    from homeserver.services.e2ee import E2EKeyService
    from homeserver.services.events import RoomEventService
    from homeserver.services.to_device import ToDeviceService
    from homeserver.services.userdata import ProfileService
    from homeserver.storage.database import Database

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]
DEVICE_LIST_UPDATE = "m.device_list_update"
SIGNING_KEY_UPDATE = "m.signing_key_update"
MAX_PREV_IDS = 100


class EduSender(Protocol):
    """:class:`~homeserver.federation.outbound.FederationOutbound`."""

    async def send_edu(
        self, destinations: Iterable[str], edu_type: str, content: Mapping[str, Any], key: str | None = None
    ) -> None: ...


class LocalKeys(Protocol):
    """:class:`~homeserver.services.e2ee.E2EKeyService`: our users' keys as other servers see them."""

    async def query_keys_for_federation(self, wanted: dict[str, list[str]]) -> JsonDict: ...


class Resyncer(Protocol):
    """:class:`~homeserver.federation.remote_keys.RemoteDeviceCache`."""

    def resync(self, user_id: str, timeout_ms: int = ...) -> defer.Deferred[Any]: ...


class MemberEvent(Protocol):
    @property
    def type(self) -> str: ...

    @property
    def room_id(self) -> str: ...

    @property
    def state_key(self) -> str | None: ...

    @property
    def content(self) -> Mapping[str, Any]: ...


class DeviceListFederation:
    def __init__(
        self,
        *,
        server_name: str,
        clock: Clock,
        local_keys: LocalKeys,
        cache: RemoteDeviceRepository,
        resyncer: Resyncer,
        changed: DeviceListChanged,
        shared_room_users: Callable[[str], Awaitable[Collection[str]]],
        joined_users: Callable[[str], Awaitable[Collection[str]]],
        edus: Callable[[], EduSender | None],
    ) -> None:
        self._server_name = server_name
        self._clock = clock
        self._local_keys = local_keys
        self._cache = cache
        self._resyncer = resyncer
        self._changed = changed
        self._shared_room_users = shared_room_users
        self._joined_users = joined_users
        # Looked up when needed: outbound federation may be wired after us.
        self._edus = edus
        self._locks: dict[str, defer.DeferredLock] = {}
        self._background: set[defer.Deferred[Any]] = set()

    def handlers(self) -> dict[str, Callable[[str, Mapping[str, Any]], Awaitable[None]]]:
        """The inbound EDU handlers, by EDU type."""
        return {DEVICE_LIST_UPDATE: self.on_device_list_update, SIGNING_KEY_UPDATE: self.on_signing_key_update}

    def _is_local(self, user_id: str) -> bool:
        return domain_of(user_id) == self._server_name

    # -- outbound --------------------------------------------------------------------------------

    async def on_local_change(self, user_id: str, changes: list[tuple[str | None, int, int | None]]) -> None:
        """One of our users' device lists changed: tell the servers sharing a room with them."""
        sender = self._edus()
        if sender is None:
            return
        servers = {domain_of(u) for u in await self._shared_room_users(user_id)}
        destinations = {d for d in servers if d is not None and d != self._server_name}
        if not destinations:
            return
        device_ids = [d for d, _, _ in changes if d is not None]
        view = await self._local_keys.query_keys_for_federation({user_id: device_ids} if device_ids else {})
        devices = view.get("device_keys", {}).get(user_id, {})
        for device_id, stream_id, prev_id in changes:
            if device_id is None:
                continue
            content: JsonDict = {
                "user_id": user_id,
                "device_id": device_id,
                "stream_id": stream_id,
                "prev_id": [prev_id] if prev_id is not None else [],
                "deleted": device_id not in devices,
            }
            if device_id in devices:
                content["keys"] = {k: v for k, v in devices[device_id].items() if k != "unsigned"}
            await sender.send_edu(destinations, DEVICE_LIST_UPDATE, content)
        if any(d is None for d, _, _ in changes):
            cross = await self._local_keys.query_keys_for_federation({user_id: []})
            content = {"user_id": user_id}
            if user_id in cross.get("master_keys", {}):
                content["master_key"] = cross["master_keys"][user_id]
            if user_id in cross.get("self_signing_keys", {}):
                content["self_signing_key"] = cross["self_signing_keys"][user_id]
            if len(content) > 1:
                await sender.send_edu(destinations, SIGNING_KEY_UPDATE, content, key=user_id)

    # -- inbound ---------------------------------------------------------------------------------

    def _remote_user(self, origin: str, content: Mapping[str, Any], edu_type: str) -> str | None:
        user_id = content.get("user_id")
        if not isinstance(user_id, str) or domain_of(user_id) != origin:
            logger.info("dropped %s from %s about %r: not one of its users", edu_type, origin, user_id)
            return None
        return user_id

    async def _shares_a_room(self, user_id: str) -> bool:
        if user_id in await self._cache.users_sharing_a_room_with_us([user_id], self._server_name):
            return True
        # Updates we ignore now would be missing later: don't trust our copy any more.
        await self._cache.mark_stale([user_id])
        return False

    async def on_device_list_update(self, origin: str, content: Mapping[str, Any]) -> None:
        user_id = self._remote_user(origin, content, DEVICE_LIST_UPDATE)
        device_id = content.get("device_id")
        prev_raw = content.get("prev_id", [])
        deleted = content.get("deleted", False)
        keys = content.get("keys")
        name = content.get("device_display_name")
        if (
            user_id is None
            or not isinstance(device_id, str)
            or not isinstance(prev_raw, list)
            or len(prev_raw) > MAX_PREV_IDS
            or not isinstance(deleted, bool)
            or (keys is not None and not valid_device_keys(keys, user_id, device_id))
            or (name is not None and not isinstance(name, str))
        ):
            if user_id is not None:
                logger.info("dropped a malformed %s from %s", DEVICE_LIST_UPDATE, origin)
            return
        stream_id = stream_position(content.get("stream_id"))
        prev_ids = [stream_position(p) for p in prev_raw]
        lock = self._locks.setdefault(user_id, defer.DeferredLock())
        try:
            await lock.acquire()
            if not await self._shares_a_room(user_id):
                return
            cached = (await self._cache.cached_lists([user_id])).get(user_id)
            known = cached.stream_id if cached is not None and not cached.stale else None
            if known is not None and stream_id is not None and stream_id <= known:
                return  # our copy already includes it
            if known is not None and stream_id is not None and prev_ids and _all_known(prev_ids, known):
                device = RemoteDevice(device_id, keys, name)
                await self._cache.apply_update(user_id, device, deleted, stream_id, self._clock.time_msec())
                await self._changed(user_id, [device_id])
            else:
                # We missed something (or never had a copy): fetch the whole list.
                await self._cache.mark_stale([user_id])
                self._spawn(self._resyncer.resync(user_id))
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(user_id, None)

    async def on_signing_key_update(self, origin: str, content: Mapping[str, Any]) -> None:
        user_id = self._remote_user(origin, content, SIGNING_KEY_UPDATE)
        if user_id is None:
            return
        keys: dict[str, JsonDict] = {}
        for field, key_type in (("master_key", "master"), ("self_signing_key", "self_signing")):
            key = content.get(field)
            if key is None:
                continue
            if not valid_cross_signing_key(key, user_id, key_type):
                logger.info("dropped a malformed %s from %s", SIGNING_KEY_UPDATE, origin)
                return
            keys[key_type] = key
        if not keys or not await self._shares_a_room(user_id):
            return
        await self._cache.set_cross_signing_keys(user_id, keys)
        await self._changed(user_id, [None])

    # -- rooms: who starts sharing one with us -------------------------------------------------

    async def on_event_persisted(self, event: MemberEvent, stream: int, state_after: Any) -> None:
        """Post-persist hook: mark stale the copies of remote users who may have changed
        devices while we shared no room (and so heard nothing) and now share one."""
        if event.type != "m.room.member" or event.state_key is None or event.content.get("membership") != "join":
            return
        joiner = event.state_key
        if self._is_local(joiner):
            members = await self._joined_users(event.room_id)
            if any(self._is_local(m) and m != joiner for m in members):
                return  # we were in the room already: its members' copies are up to date
            await self._cache.mark_stale([m for m in members if not self._is_local(m)])
        else:
            await self._cache.mark_stale([joiner])

    # -- background work -----------------------------------------------------------------------

    def _spawn(self, d: defer.Deferred[Any]) -> None:
        self._background.add(d)
        d.addBoth(lambda r: self._background.discard(d))

    async def wait_idle(self) -> None:
        """Wait for the resyncs started by EDUs (tests)."""
        while self._background:
            await defer.DeferredList(list(self._background))


def _all_known(prev_ids: list[int | None], known: int) -> bool:
    """Whether our copy (at ``known``) includes every update the new one follows."""
    return all(p is not None and p <= known for p in prev_ids)


# -- wiring --------------------------------------------------------------------------------------

EduHandler = Callable[[str, Mapping[str, Any]], Awaitable[None]]


@dataclass
class E2EEFederation:
    remote_keys: RemoteDeviceCache
    device_lists: DeviceListFederation
    # inbound EDU handlers by type, for the transaction receiver
    edu_handlers: dict[str, EduHandler]

    async def wait_idle(self) -> None:
        """Wait for the background resyncs (tests)."""
        await self.device_lists.wait_idle()
        await self.remote_keys.wait_idle()


def build_e2ee_federation(
    *,
    server_name: str,
    clock: Clock,
    federation: Federation,
    is_allowed: Callable[[str], bool],
    db: Database,
    keys: E2EKeyService,
    tracker: DeviceListTracker,
    to_device: ToDeviceService,
    profiles: ProfileService,
    room_events: RoomEventService,
    shared_room_users: Callable[[str], Awaitable[Collection[str]]],
) -> E2EEFederation:
    """Wire end-to-end encryption across servers (called once, by ``app.build_homeserver``):
    remote key queries, device-list EDUs both ways, to-device EDUs, remote profiles."""
    from homeserver.services.userdata import RemoteProfiles

    key_store = E2EKeyRepository(db)
    cache = RemoteDeviceRepository(db)
    remote_keys = RemoteDeviceCache(
        server_name=server_name,
        clock=clock,
        client=federation.client,
        is_allowed=is_allowed,
        cache=cache,
        cross_signing_keys=key_store.get_cross_signing_keys,
        changed=tracker.changed,
    )
    device_lists = DeviceListFederation(
        server_name=server_name,
        clock=clock,
        local_keys=keys,
        cache=cache,
        resyncer=remote_keys,
        changed=tracker.changed,
        shared_room_users=shared_room_users,
        joined_users=room_events.joined_users,
        edus=lambda: federation.outbound,
    )
    keys.remote = remote_keys
    tracker.local_listeners.append(device_lists.on_local_change)
    room_events.post_persist_hooks.append(device_lists.on_event_persisted)
    to_device.edus = lambda: federation.outbound
    profiles.remote_profiles = RemoteProfiles(clock=clock, client=federation.client)
    handlers: dict[str, EduHandler] = {**device_lists.handlers(), DIRECT_TO_DEVICE: to_device.on_direct_to_device}
    return E2EEFederation(remote_keys=remote_keys, device_lists=device_lists, edu_handlers=handlers)
