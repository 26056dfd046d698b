"""Sessions: /login, /refresh, /logout, /logout/all, /account/whoami."""

from __future__ import annotations

from typing import Any

from twisted.web import server

from homeserver.core.errors import Codes, MatrixError, forbidden
from homeserver.http.auth import RequestAuthenticator, client_ip
from homeserver.http.params import Body, parse_json_object
from homeserver.http.server import Router, client_path
from homeserver.services.auth import AuthService
from homeserver.services.login import LoginService

APP_SERVICE_LOGIN_TYPE = "m.login.application_service"


def register(router: Router, *, authenticate: RequestAuthenticator, login: LoginService, auth: AuthService) -> None:
    async def get_login(request: server.Request) -> tuple[int, Any]:
        flows = login.login_flows()
        if authenticate.app_service_auth is not None:
            flows = [*flows, {"type": APP_SERVICE_LOGIN_TYPE}]
        return 200, {"flows": flows}

    async def post_login(request: server.Request) -> tuple[int, Any]:
        body = parse_json_object(request)
        login_type = body.required_str("type")
        if login_type == APP_SERVICE_LOGIN_TYPE and authenticate.app_service_auth is not None:
            return 200, await _app_service_login(request, body)
        if login_type != "m.login.password" or not login.password_login_enabled:
            raise MatrixError(400, Codes.UNKNOWN, f"Unknown login type {login_type}")
        return 200, await login.login_with_password(body.data, ip=client_ip(request))

    async def _app_service_login(request: server.Request, body: Body) -> dict[str, Any]:
        # A new device for a user of the service's namespace, authorised by the as_token.
        app_service = authenticate.app_service(request)
        if app_service is None:
            raise MatrixError(401, Codes.UNKNOWN_TOKEN, f"{APP_SERVICE_LOGIN_TYPE} needs an application service token")
        user_id = login.user_id_from_identifier(body.data)
        if not app_service.is_interested_in_user(user_id):
            raise forbidden(f"{user_id} is not in the application service's namespace")
        if not await login.user_exists(user_id):
            raise forbidden(f"Application service has not registered {user_id}")
        return await login.create_session(
            user_id,
            body.str("device_id", max_length=255),
            body.str("initial_device_display_name", max_length=255),
            refreshable=body.bool("refresh_token", False),
        )

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
