"""Devices: /devices, /devices/{deviceId}, /delete_devices."""

from __future__ import annotations

from typing import Any

from twisted.web import server

from homeserver.http.auth import RequestAuthenticator
from homeserver.http.params import parse_json_object
from homeserver.http.server import Router, client_path
from homeserver.services.devices import DeviceService
from homeserver.services.uia import UserInteractiveAuth

_FLOWS = [["m.login.password"]]


def register(
    router: Router, *, authenticate: RequestAuthenticator, devices: DeviceService, uia: UserInteractiveAuth
) -> None:
    async def list_devices(request: server.Request) -> tuple[int, Any]:
        requester = await authenticate(request, allow_guest=True)
        return 200, {"devices": [d.to_client_json() for d in await devices.list_devices(requester.user_id)]}

    async def get_device(request: server.Request, device_id: str) -> tuple[int, Any]:
        requester = await authenticate(request, allow_guest=True)
        return 200, (await devices.get_device(requester.user_id, device_id)).to_client_json()

    async def put_device(request: server.Request, device_id: str) -> tuple[int, Any]:
        requester = await authenticate(request, allow_guest=True)
        body = parse_json_object(request, allow_empty=True)
        await devices.rename_device(requester.user_id, device_id, body.str("display_name"))
        return 200, {}

    async def delete_device(request: server.Request, device_id: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        body = parse_json_object(request, allow_empty=True)
        await devices.get_device(requester.user_id, device_id)  # 404 before asking for a password
        _, session_id, _ = await uia.check(
            body=body.data,
            flows=_FLOWS,
            uri=request.path.decode("ascii"),
            method="DELETE",
            description="remove a device from your account",
            user_id=requester.user_id,
        )
        await devices.delete_devices(requester.user_id, [device_id])
        await uia.finish(session_id)
        return 200, {}

    async def delete_devices(request: server.Request) -> tuple[int, Any]:
        requester = await authenticate(request)
        body = parse_json_object(request)
        device_ids = body.str_list("devices", required=True)
        assert device_ids is not None
        _, session_id, _ = await uia.check(
            body=body.data,
            flows=_FLOWS,
            uri=request.path.decode("ascii"),
            method="POST",
            description="remove devices from your account",
            user_id=requester.user_id,
        )
        await devices.delete_devices(requester.user_id, device_ids)
        await uia.finish(session_id)
        return 200, {}

    router.add("GET", client_path("/devices"), list_devices)
    router.add("GET", client_path("/devices/(?P<device_id>[^/]+)"), get_device)
    router.add("PUT", client_path("/devices/(?P<device_id>[^/]+)"), put_device)
    router.add("DELETE", client_path("/devices/(?P<device_id>[^/]+)"), delete_device)
    router.add("POST", client_path("/delete_devices"), delete_devices)
