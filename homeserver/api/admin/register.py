"""Synapse-compatible admin endpoints: shared-secret registration, registration tokens.

``register_new_matrix_user`` (Synapse's tool) works against this server unchanged.
"""

from __future__ import annotations

from typing import Any

from twisted.web import server

from homeserver.core.errors import Codes, MatrixError
from homeserver.http.auth import RequestAuthenticator
from homeserver.http.params import parse_json_object
from homeserver.http.server import Router
from homeserver.services.admin import AdminService
from homeserver.services.login import LoginService
from homeserver.services.registration import RegistrationService

_ADMIN = "^/_synapse/admin/v1"


def register(
    router: Router,
    *,
    authenticate: RequestAuthenticator,
    registration: RegistrationService,
    login: LoginService,
    admin: AdminService,
) -> None:
    async def get_nonce(request: server.Request) -> tuple[int, Any]:
        if not registration.settings.registration_shared_secret:
            raise MatrixError(400, Codes.UNKNOWN, "Shared secret registration is not enabled")
        return 200, {"nonce": registration.new_nonce()}

    async def post_register(request: server.Request) -> tuple[int, Any]:
        body = parse_json_object(request)
        nonce = body.required_str("nonce")
        username = body.required_str("username", max_length=255)
        password = body.required_str("password")
        is_admin = body.bool("admin", False)
        user_type = body.str("user_type")
        displayname = body.str("displayname")
        mac = body.required_str("mac")
        registration.check_shared_secret_mac(
            nonce=nonce, username=username, password=password, admin=is_admin, user_type=user_type, mac=mac
        )
        # The shared secret is the operator's own tool: the password policy still applies
        # as in Synapse, but the username is lower-cased first like Synapse does here.
        user_id = await registration.create_account(username.lower(), password, admin=is_admin, user_type=user_type)
        session = await login.create_session(user_id, None, displayname, refreshable=False)
        return 200, session

    async def list_tokens(request: server.Request) -> tuple[int, Any]:
        await admin.require_admin(await authenticate(request))
        return 200, {"registration_tokens": [t.to_json() for t in await admin.list_registration_tokens()]}

    async def new_token(request: server.Request) -> tuple[int, Any]:
        await admin.require_admin(await authenticate(request))
        body = parse_json_object(request, allow_empty=True)
        token = await admin.create_registration_token(
            body.str("token"),
            body.int("uses_allowed", minimum=0),
            body.int("expiry_time", minimum=0),
            body.int("length", minimum=1) or 16,
        )
        return 200, token.to_json()

    async def get_token(request: server.Request, token: str) -> tuple[int, Any]:
        await admin.require_admin(await authenticate(request))
        return 200, (await admin.get_registration_token(token)).to_json()

    async def delete_token(request: server.Request, token: str) -> tuple[int, Any]:
        await admin.require_admin(await authenticate(request))
        await admin.delete_registration_token(token)
        return 200, {}

    router.add("GET", f"{_ADMIN}/register$", get_nonce)
    router.add("POST", f"{_ADMIN}/register$", post_register)
    router.add("GET", f"{_ADMIN}/registration_tokens$", list_tokens)
    router.add("POST", f"{_ADMIN}/registration_tokens/new$", new_token)
    router.add("GET", f"{_ADMIN}/registration_tokens/(?P<token>[^/]+)$", get_token)
    router.add("DELETE", f"{_ADMIN}/registration_tokens/(?P<token>[^/]+)$", delete_token)
