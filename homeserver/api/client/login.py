"""Sessions: /login, /refresh, /logout, /logout/all, /account/whoami."""

from __future__ import annotations

from typing import Any

from twisted.web import server

from homeserver.core.errors import Codes, MatrixError
from homeserver.http.auth import RequestAuthenticator, client_ip
from homeserver.http.params import parse_json_object
from homeserver.http.server import Router, client_path
from homeserver.services.auth import AuthService
from homeserver.services.login import LoginService


def register(router: Router, *, authenticate: RequestAuthenticator, login: LoginService, auth: AuthService) -> None:
    async def get_login(request: server.Request) -> tuple[int, Any]:
        return 200, {"flows": login.login_flows()}

    async def post_login(request: server.Request) -> tuple[int, Any]:
        body = parse_json_object(request)
        login_type = body.required_str("type")
        if login_type != "m.login.password" or not login.password_login_enabled:
            raise MatrixError(400, Codes.UNKNOWN, f"Unknown login type {login_type}")
        return 200, await login.login_with_password(body.data, ip=client_ip(request))

    async def refresh(request: server.Request) -> tuple[int, Any]:
        body = parse_json_object(request)
        return 200, await auth.refresh(body.required_str("refresh_token"))

    async def logout(request: server.Request) -> tuple[int, Any]:
        requester = await authenticate(request, allow_guest=True)
        await auth.logout(requester)
        return 200, {}

    async def logout_all(request: server.Request) -> tuple[int, Any]:
        requester = await authenticate(request, allow_guest=True)
        await auth.logout_all(requester.user_id)
        return 200, {}

    async def whoami(request: server.Request) -> tuple[int, Any]:
        requester = await authenticate(request, allow_guest=True)
        body: dict[str, Any] = {"user_id": requester.user_id, "is_guest": requester.is_guest}
        if requester.device_id is not None:
            body["device_id"] = requester.device_id
        return 200, body

    router.add("GET", client_path("/login"), get_login)
    router.add("POST", client_path("/login"), post_login)
    router.add("POST", client_path("/refresh", ("v1", "v3")), refresh)
    router.add("POST", client_path("/logout"), logout)
    router.add("POST", client_path("/logout/all"), logout_all)
    router.add("GET", client_path("/account/whoami"), whoami)
