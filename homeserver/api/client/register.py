"""Registration: /register (with UIA), /register/available, registration token validity."""

from __future__ import annotations

from typing import Any

from twisted.web import server

from homeserver.core.errors import Codes, MatrixError, forbidden
from homeserver.http.auth import RequestAuthenticator, client_ip
from homeserver.http.params import Body, parse_json_object
from homeserver.http.server import Router, client_path, query_param
from homeserver.services.login import LoginService
from homeserver.services.ratelimit import Ratelimiter
from homeserver.services.registration import RegistrationService
from homeserver.services.uia import UserInteractiveAuth

APP_SERVICE_LOGIN_TYPE = "m.login.application_service"


def register(
    router: Router,
    *,
    registration: RegistrationService,
    login: LoginService,
    uia: UserInteractiveAuth,
    ratelimiter: Ratelimiter,
    authenticate: RequestAuthenticator | None = None,
) -> None:
    settings = registration.settings

    async def post_register(request: server.Request) -> tuple[int, Any]:
        kind = query_param(request, "kind") or "user"
        if kind not in ("user", "guest"):
            raise MatrixError(400, Codes.INVALID_PARAM, "Parameter kind must be 'user' or 'guest'")
        body = parse_json_object(request, allow_empty=True)
        ip = client_ip(request)
        if body.data.get("type") == APP_SERVICE_LOGIN_TYPE and authenticate is not None:
            return await _register_app_service_user(request, body)
        if kind == "guest":
            return await _register_guest(body, ip)
        if not settings.enable_registration:
            raise forbidden("Registration has been disabled")
        username = body.str("username", max_length=255)
        password = body.str("password")
        device_id = body.str("device_id", max_length=255)
        display_name = body.str("initial_device_display_name", max_length=255)
        inhibit_login = body.bool("inhibit_login", False)
        refreshable = body.bool("refresh_token", False)
        if username is not None:
            await registration.check_available(username)
        if password is not None:
            registration.check_password_policy(password)
        ratelimiter.check(ip, update=False)
        initial: dict[str, Any] | None = None
        auth = body.data.get("auth")
        if not isinstance(auth, dict) or "session" not in auth:
            # A new session remembers the parameters, so later requests may omit them;
            # the password is kept only as its hash.
            initial = {"username": username}
            if password is not None:
                initial["password_hash"] = await registration.hash_password(password)
        completed, session_id, serverdict = await uia.check(
            body=body.data,
            flows=registration.registration_flows(),
            uri=request.path.decode("ascii"),
            method="POST",
            description="register a new account",
            serverdict=initial,
        )
        # Fields may be sent once, at the start of the session (Synapse allows it).
        username = username if username is not None else serverdict.get("username")
        username = registration.localpart_for(username, completed)
        password_hash = None
        if password is None:
            password_hash = serverdict.get("password_hash")
            if password_hash is None:
                raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: password")
        ratelimiter.check(ip)
        user_id = await registration.create_account(username, password, password_hash=password_hash)
        await registration.after_registration(user_id, completed)
        token = completed.get("m.login.registration_token")
        if isinstance(token, str):
            await registration.token_used(token)
        await uia.finish(session_id)
        if inhibit_login:
            return 200, {"user_id": user_id, "home_server": login.server_name}
        return 200, await login.create_session(user_id, device_id, display_name, refreshable=refreshable)

    async def _register_app_service_user(request: server.Request, body: Body) -> tuple[int, Any]:
        # No password and no UIA: the as_token is the authority, within the namespace.
        assert authenticate is not None
        app_service = authenticate.app_service(request)
        if app_service is None:
            raise MatrixError(401, Codes.UNKNOWN_TOKEN, f"{APP_SERVICE_LOGIN_TYPE} needs an application service token")
        username = body.str("username", max_length=255)
        if username is None:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: username")
        user_id = await registration.create_account(username, None, app_service=app_service)
        if body.bool("inhibit_login", False):
            return 200, {"user_id": user_id, "home_server": login.server_name}
        return 200, await login.create_session(
            user_id,
            body.str("device_id", max_length=255),
            body.str("initial_device_display_name", max_length=255),
            refreshable=body.bool("refresh_token", False),
        )

    async def _register_guest(body: Body, ip: str) -> tuple[int, Any]:
        if not settings.allow_guest_access:
            raise MatrixError(403, Codes.GUEST_ACCESS_FORBIDDEN, "Guest access is disabled")
        ratelimiter.check(ip)
        display_name = body.str("initial_device_display_name", max_length=255)
        user_id = await registration.create_account(None, None, guest=True)
        return 200, await login.create_session(user_id, None, display_name, refreshable=False)

    async def available(request: server.Request) -> tuple[int, Any]:
        if not settings.enable_registration:
            raise forbidden("Registration has been disabled")
        ratelimiter.check(client_ip(request))
        username = query_param(request, "username")
        if username is None:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: username")
        await registration.check_available(username)
        return 200, {"available": True}

    async def token_validity(request: server.Request) -> tuple[int, Any]:
        if not settings.registration_requires_token:
            raise forbidden("Registration tokens are not enabled")
        ratelimiter.check(client_ip(request))
        token = query_param(request, "token")
        if token is None:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: token")
        return 200, {"valid": await registration.is_token_valid(token)}

    router.add("POST", client_path("/register"), post_register)
    router.add("GET", client_path("/register/available"), available)
    router.add("GET", client_path("/register/m.login.registration_token/validity", ("v1",)), token_validity)
