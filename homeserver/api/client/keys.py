"""End-to-end encryption endpoints: /keys/*, /sendToDevice, /room_keys/*."""

from __future__ import annotations

from typing import Any

from twisted.web import server

from homeserver.core.errors import Codes, MatrixError
from homeserver.http.auth import RequestAuthenticator
from homeserver.http.params import parse_json_object
from homeserver.http.server import Router, client_path, query_param
from homeserver.services.e2ee import E2EKeyService
from homeserver.services.key_backup import KeyBackupService
from homeserver.services.to_device import ToDeviceService
from homeserver.services.uia import UserInteractiveAuth

_KEYS_PATH = "/room_keys/keys"


def register(
    router: Router,
    *,
    authenticate: RequestAuthenticator,
    keys: E2EKeyService,
    to_device: ToDeviceService,
    backups: KeyBackupService,
    uia: UserInteractiveAuth,
) -> None:
    async def upload(request: server.Request) -> tuple[int, Any]:
        requester = await authenticate(request, allow_guest=True)
        return 200, await keys.upload_keys(requester, parse_json_object(request).data)

    async def query(request: server.Request) -> tuple[int, Any]:
        requester = await authenticate(request, allow_guest=True)
        return 200, await keys.query_keys(requester, parse_json_object(request).data)

    async def claim(request: server.Request) -> tuple[int, Any]:
        await authenticate(request, allow_guest=True)
        return 200, await keys.claim_keys(parse_json_object(request).data)

    async def changes(request: server.Request) -> tuple[int, Any]:
        requester = await authenticate(request, allow_guest=True)
        from_token, to_token = query_param(request, "from"), query_param(request, "to")
        if from_token is None or to_token is None:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: from and to are required")
        return 200, await keys.keys_changes(requester, from_token, to_token)

    async def device_signing_upload(request: server.Request) -> tuple[int, Any]:
        requester = await authenticate(request)
        body = parse_json_object(request)
        session_id = None
        if await keys.needs_auth_for_cross_signing(requester.user_id, body.data):
            _, session_id, _ = await uia.check(
                body=body.data,
                flows=[["m.login.password"]],
                uri=request.path.decode("ascii"),
                method="POST",
                description="replace your cross-signing keys",
                user_id=requester.user_id,
            )
        await keys.upload_cross_signing_keys(requester.user_id, body.data)
        if session_id is not None:
            await uia.finish(session_id)
        return 200, {}

    async def signatures_upload(request: server.Request) -> tuple[int, Any]:
        requester = await authenticate(request)
        return 200, await keys.upload_signatures(requester, parse_json_object(request).data)

    async def send_to_device(request: server.Request, event_type: str, txn_id: str) -> tuple[int, Any]:
        requester = await authenticate(request, allow_guest=True)
        await to_device.send(requester, event_type, txn_id, parse_json_object(request).data)
        return 200, {}

    async def create_version(request: server.Request) -> tuple[int, Any]:
        requester = await authenticate(request)
        return 200, await backups.create_version(requester.user_id, parse_json_object(request).data)

    async def get_version(request: server.Request, version: str | None = None) -> tuple[int, Any]:
        requester = await authenticate(request)
        return 200, await backups.get_version(requester.user_id, version)

    async def put_version(request: server.Request, version: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        await backups.update_version(requester.user_id, version, parse_json_object(request).data)
        return 200, {}

    async def delete_version(request: server.Request, version: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        await backups.delete_version(requester.user_id, version)
        return 200, {}

    async def put_keys(request: server.Request, room_id: str | None = None, session_id: str | None = None) -> tuple[int, Any]:
        requester = await authenticate(request)
        body = parse_json_object(request).data
        rooms: Any
        if session_id is not None:
            rooms = {room_id: {"sessions": {session_id: body}}}
        elif room_id is not None:
            rooms = {room_id: body}
        else:
            rooms = body.get("rooms")
        return 200, await backups.put_keys(requester.user_id, query_param(request, "version"), rooms)

    async def get_keys(request: server.Request, room_id: str | None = None, session_id: str | None = None) -> tuple[int, Any]:
        requester = await authenticate(request)
        return 200, await backups.get_keys(requester.user_id, query_param(request, "version"), room_id, session_id)

    async def delete_keys(request: server.Request, room_id: str | None = None, session_id: str | None = None) -> tuple[int, Any]:
        requester = await authenticate(request)
        return 200, await backups.delete_keys(requester.user_id, query_param(request, "version"), room_id, session_id)

    router.add("POST", client_path("/keys/upload"), upload)
    router.add("POST", client_path("/keys/upload/(?P<device_id>[^/]+)"), lambda request, device_id: upload(request))
    router.add("POST", client_path("/keys/query"), query)
    router.add("POST", client_path("/keys/claim"), claim)
    router.add("GET", client_path("/keys/changes"), changes)
    router.add("POST", client_path("/keys/device_signing/upload", ("v3",)), device_signing_upload)
    router.add("POST", client_path("/keys/signatures/upload", ("v3",)), signatures_upload)
    router.add("PUT", client_path("/sendToDevice/(?P<event_type>[^/]+)/(?P<txn_id>[^/]+)"), send_to_device)
    router.add("POST", client_path("/room_keys/version"), create_version)
    router.add("GET", client_path("/room_keys/version"), get_version)
    router.add("GET", client_path("/room_keys/version/(?P<version>[^/]+)"), get_version)
    router.add("PUT", client_path("/room_keys/version/(?P<version>[^/]+)"), put_version)
    router.add("DELETE", client_path("/room_keys/version/(?P<version>[^/]+)"), delete_version)
    for suffix in ("", "/(?P<room_id>[^/]+)", "/(?P<room_id>[^/]+)/(?P<session_id>[^/]+)"):
        path = client_path(_KEYS_PATH + suffix)
        router.add("PUT", path, put_keys)
        router.add("GET", path, get_keys)
        router.add("DELETE", path, delete_keys)
