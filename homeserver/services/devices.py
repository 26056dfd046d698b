"""Devices: listing, renaming, deleting (deletion also revokes the device's tokens), and
:class:`DeviceListTracker`, which records and announces changes to users' device lists."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Sequence

from homeserver.core.errors import Codes, MatrixError, not_found
from homeserver.core.ids import InvalidID, UserID
from homeserver.services.notifier import Notifier
from homeserver.storage.devices import DeviceRecord, DeviceRepository
from homeserver.storage.e2e_keys import E2EKeyRepository

logger = logging.getLogger(__name__)

MAX_DISPLAY_NAME_LENGTH = 100

# (user_id, [(device_id or None for the cross-signing keys, stream_id, previous stream_id)])
LocalChangeListener = Callable[[str, list[tuple[str | None, int, int | None]]], Awaitable[None]]
DeviceListChanged = Callable[[str, Sequence[str | None]], Awaitable[None]]


class DeviceListTracker:
    """A user's devices or keys changed: record it on the device-list stream (read by /sync
    ``device_lists.changed`` and /keys/changes), wake the /sync of everyone sharing a room
    with them, and, for a local user, tell the listeners (m.device_list_update EDUs)."""

    def __init__(
        self,
        *,
        server_name: str,
        keys: E2EKeyRepository,
        notifier: Notifier,
        shared_users: Callable[[str], Awaitable[set[str]]],
    ) -> None:
        self._server_name = server_name
        self._keys = keys
        self._notifier = notifier
        self._shared_users = shared_users
        self.local_listeners: list[LocalChangeListener] = []

    async def changed(self, user_id: str, device_ids: Sequence[str | None] = (None,)) -> None:
        """``device_ids``: the devices concerned; None stands for the cross-signing keys."""
        changes = await self._keys.mark_device_list_changed(user_id, list(dict.fromkeys(device_ids)))
        if not changes:
            return
        self._notifier.notify("device_lists", changes[-1][1], await self._shared_users(user_id) | {user_id})
        try:
            local = UserID.parse(user_id).domain == self._server_name
        except InvalidID:
            local = False
        if not local:
            return
        for listener in self.local_listeners:
            try:
                await listener(user_id, changes)
            except Exception:
                logger.exception("device list listener failed for %s", user_id)


class DeviceService:
    def __init__(self, *, devices: DeviceRepository, device_list_changed: DeviceListChanged | None = None) -> None:
        self._devices = devices
        self._device_list_changed = device_list_changed

    async def list_devices(self, user_id: str) -> list[DeviceRecord]:
        return await self._devices.get_devices(user_id)

    async def get_device(self, user_id: str, device_id: str) -> DeviceRecord:
        device = await self._devices.get_device(user_id, device_id)
        if device is None:
            raise not_found("No device found")
        return device

    async def rename_device(self, user_id: str, device_id: str, display_name: str | None) -> None:
        if display_name is not None and len(display_name) > MAX_DISPLAY_NAME_LENGTH:
            raise MatrixError(
                400, Codes.INVALID_PARAM, f"Parameter display_name is longer than {MAX_DISPLAY_NAME_LENGTH} characters"
            )
        if not await self._devices.update_display_name(user_id, device_id, display_name):
            raise not_found("No device found")
        if self._device_list_changed is not None:
            await self._device_list_changed(user_id, [device_id])

    async def delete_devices(self, user_id: str, device_ids: Collection[str]) -> None:
        """Delete devices (unknown IDs are ignored, as the spec's /delete_devices allows)."""
        await self._devices.delete_devices(user_id, list(dict.fromkeys(device_ids)))

    async def delete_other_devices(self, user_id: str, keep_device_id: str | None) -> list[str]:
        return await self._devices.delete_all_devices(user_id, except_device_id=keep_device_id)
