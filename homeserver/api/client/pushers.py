"""/pushers and /pushers/set: the user's pushers (spec "Push Notifications")."""

from __future__ import annotations

from typing import Any

from twisted.web import server

from homeserver.http.auth import RequestAuthenticator
from homeserver.http.params import parse_json_object
from homeserver.http.server import Router, client_path
from homeserver.services.pushers import PusherService


def register(router: Router, *, authenticate: RequestAuthenticator, pushers: PusherService) -> None:
    async def list_pushers(request: server.Request) -> tuple[int, Any]:
        requester = await authenticate(request)
        return 200, {"pushers": await pushers.list_pushers(requester.user_id)}

    async def set_pusher(request: server.Request) -> tuple[int, Any]:
        requester = await authenticate(request)
        body = parse_json_object(request)
        await pushers.set_pusher(requester.user_id, requester.device_id, body.data)
        return 200, {}

    router.add("GET", client_path("/pushers"), list_pushers)
    router.add("POST", client_path("/pushers/set"), set_pusher)
