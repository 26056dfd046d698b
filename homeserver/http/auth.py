"""Reading credentials off a request: the access token, the client's address."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from twisted.web import server

from homeserver.appservice.registration import ApplicationService
from homeserver.core.errors import Codes, MatrixError
from homeserver.http.server import HomeserverSite
from homeserver.services.auth import AuthService, Requester


def get_access_token(request: server.Request) -> str | None:
    """The token from ``Authorization: Bearer``, or the legacy ``access_token`` query parameter."""
    header = request.requestHeaders.getRawHeaders(b"Authorization")
    if header:
        if len(header) > 1:
            raise MatrixError(400, Codes.MISSING_TOKEN, "Too many Authorization headers")
        scheme, _, value = header[0].partition(b" ")
        if scheme.lower() != b"bearer" or not value.strip():
            raise MatrixError(401, Codes.MISSING_TOKEN, "Invalid Authorization header")
        return value.strip().decode("ascii", "replace")
    values = request.args.get(b"access_token") if request.args else None
    if values:
        return str(values[0].decode("ascii", "replace"))
    return None


def client_ip(request: server.Request) -> str:
    """The client's address; X-Forwarded-For is trusted only on listeners configured for it."""
    site = getattr(request.channel, "site", None)
    if isinstance(site, HomeserverSite) and site.x_forwarded:
        forwarded = request.getHeader("X-Forwarded-For")
        if forwarded:
            return forwarded.split(",")[0].strip()
    peer = request.getClientAddress()
    return str(getattr(peer, "host", "unknown"))


class AppServiceAuth(Protocol):
    async def authenticate(self, token: str, request: server.Request) -> Requester | None: ...
    def service_for_token(self, token: str) -> ApplicationService | None: ...


class RequestAuthenticator:
    """Turns a request into a :class:`Requester` through the :class:`AuthService`
    (or, for an application service's as_token, through ``app_service_auth``)."""

    def __init__(self, auth: AuthService) -> None:
        self._auth = auth
        self.app_service_auth: AppServiceAuth | None = None
        # Policy checks on a user's authenticated request (account validity): (requester,
        # path); they raise a MatrixError to refuse it.
        self.requester_checks: list[Callable[[Requester, str], Awaitable[None]]] = []

    async def __call__(self, request: server.Request, *, allow_guest: bool = False) -> Requester:
        token = get_access_token(request)
        if token and self.app_service_auth is not None:
            requester = await self.app_service_auth.authenticate(token, request)
            if requester is not None:
                return requester
        user_agent = request.getHeader("User-Agent")
        requester = await self._auth.get_requester(
            token, ip=client_ip(request), user_agent=user_agent, allow_guest=allow_guest
        )
        for check in self.requester_checks:
            await check(requester, request.path.decode("utf-8", "replace"))
        return requester

    def app_service(self, request: server.Request) -> ApplicationService | None:
        """The application service whose as_token the request carries (no identity
        assertion: /register and /login name the user in their body)."""
        token = get_access_token(request)
        if not token or self.app_service_auth is None:
            return None
        return self.app_service_auth.service_for_token(token)
