"""Devices: listing, renaming, deleting (deletion also revokes the device's tokens)."""

from __future__ import annotations

from collections.abc import Collection

from homeserver.core.errors import Codes, MatrixError, not_found
from homeserver.storage.devices import DeviceRecord, DeviceRepository

MAX_DISPLAY_NAME_LENGTH = 100


class DeviceService:
    def __init__(self, *, devices: DeviceRepository) -> None:
        self._devices = devices

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

    async def delete_devices(self, user_id: str, device_ids: Collection[str]) -> None:
        """Delete devices (unknown IDs are ignored, as the spec's /delete_devices allows)."""
        await self._devices.delete_devices(user_id, list(dict.fromkeys(device_ids)))

    async def delete_other_devices(self, user_id: str, keep_device_id: str | None) -> list[str]:
        return await self._devices.delete_all_devices(user_id, except_device_id=keep_device_id)
