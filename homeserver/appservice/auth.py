"""as_token authentication, with identity assertion ("masquerading").

An application service authenticates with its as_token and acts as its bot
(``sender_localpart``) or, with ``?user_id=``, as any registered user of its namespace; with
``?device_id=`` (or MSC3202's ``org.matrix.msc3202.device_id``) as one of that user's
devices, which encrypting bridges need for to-device traffic and key uploads.
"""

from __future__ import annotations

from typing import Protocol

from twisted.web import server

from homeserver.appservice.registration import ApplicationService, AppServices
from homeserver.core.errors import Codes, MatrixError, forbidden
from homeserver.core.ids import InvalidID, UserID
from homeserver.http.server import query_param
from homeserver.services.auth import Requester, hash_token


class UserLookup(Protocol):
    async def get_user(self, user_id: str) -> object | None: ...


class DeviceLookup(Protocol):
    async def get_device(self, user_id: str, device_id: str) -> object | None: ...


class AppServiceAuthenticator:
    def __init__(self, *, server_name: str, services: AppServices, accounts: UserLookup, devices: DeviceLookup) -> None:
        self._server_name = server_name
        self._services = services
        self._accounts = accounts
        self._devices = devices

    def service_for_token(self, token: str) -> ApplicationService | None:
        return self._services.by_as_token(token)

    async def authenticate(self, token: str, request: server.Request) -> Requester | None:
        """The requester for an as_token, or None when ``token`` is no service's token."""
        service = self._services.by_as_token(token)
        if service is None:
            return None
        user_id = query_param(request, "user_id") or service.sender
        if user_id != service.sender:
            try:
                parsed = UserID.parse(user_id)
            except InvalidID:
                raise MatrixError(
                    400, Codes.INVALID_PARAM, f"Query parameter user_id: invalid user ID {user_id!r}"
                ) from None
            if parsed.domain != self._server_name or not service.is_interested_in_user(user_id):
                raise forbidden(f"Application service cannot masquerade as this user ({user_id})")
            if await self._accounts.get_user(user_id) is None:
                raise forbidden(f"Application service has not registered this user ({user_id})")
        device_id = query_param(request, "device_id") or query_param(request, "org.matrix.msc3202.device_id")
        if device_id is not None and await self._devices.get_device(user_id, device_id) is None:
            raise forbidden(f"Application service has not registered this device ({device_id}) for {user_id}")
        return Requester(user_id, device_id, False, hash_token(token), app_service=service)
