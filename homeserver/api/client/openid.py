"""OpenID: ``POST /user/{userId}/openid/request_token``."""

from __future__ import annotations

from typing import Any

from twisted.web import server

from homeserver.http.auth import RequestAuthenticator
from homeserver.http.params import parse_json_object
from homeserver.http.server import Router, client_path
from homeserver.services.openid import OpenIdService


def register(router: Router, *, authenticate: RequestAuthenticator, openid: OpenIdService) -> None:
    async def request_token(request: server.Request, user_id: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        parse_json_object(request, allow_empty=True)  # the body is an empty object
        return 200, await openid.request_token(requester.user_id, user_id)

    router.add("POST", client_path("/user/(?P<user_id>[^/]+)/openid/request_token"), request_token)
