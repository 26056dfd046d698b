"""Account management: /account/password and /account/deactivate (both behind UIA)."""

from __future__ import annotations

from typing import Any

from twisted.web import server

from homeserver.core.errors import Codes, MatrixError
from homeserver.http.auth import RequestAuthenticator
from homeserver.http.params import parse_json_object
from homeserver.http.server import Router, client_path
from homeserver.services.account import AccountService
from homeserver.services.uia import UserInteractiveAuth

_PASSWORD_FLOWS = [["m.login.password"]]


def register(
    router: Router, *, authenticate: RequestAuthenticator, account: AccountService, uia: UserInteractiveAuth
) -> None:
    async def change_password(request: server.Request) -> tuple[int, Any]:
        requester = await authenticate(request)
        body = parse_json_object(request)
        new_password = body.required_str("new_password")
        logout_devices = body.bool("logout_devices", True)
        if not account.password_changes_enabled:
            raise MatrixError(403, Codes.FORBIDDEN, "Password changes are disabled on this server")
        _, session_id, _ = await uia.check(
            body=body.data,
            flows=_PASSWORD_FLOWS,
            uri=request.path.decode("ascii"),
            method="POST",
            description="change your password",
            user_id=requester.user_id,
        )
        await account.change_password(requester, new_password, logout_devices=logout_devices)
        await uia.finish(session_id)
        return 200, {}

    async def deactivate(request: server.Request) -> tuple[int, Any]:
        requester = await authenticate(request)
        body = parse_json_object(request, allow_empty=True)
        body.bool("erase", False)  # validated; nothing is kept that erasure would remove yet
        body.str("id_server")  # validated; this server never binds identifiers to an identity server
        _, session_id, _ = await uia.check(
            body=body.data,
            flows=_PASSWORD_FLOWS,
            uri=request.path.decode("ascii"),
            method="POST",
            description="deactivate your account",
            user_id=requester.user_id,
        )
        await account.deactivate(requester.user_id)
        await uia.finish(session_id)
        return 200, {"id_server_unbind_result": "no-support"}

    router.add("POST", client_path("/account/password"), change_password)
    router.add("POST", client_path("/account/deactivate"), deactivate)
