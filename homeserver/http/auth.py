"""Reading credentials off a request: the access token, the client's address."""

from __future__ import annotations

from twisted.web import server

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


class RequestAuthenticator:
    """Turns a request into a :class:`Requester` through the :class:`AuthService`."""

    def __init__(self, auth: AuthService) -> None:
        self._auth = auth

    async def __call__(self, request: server.Request, *, allow_guest: bool = False) -> Requester:
        user_agent = request.getHeader("User-Agent")
        return await self._auth.get_requester(
            get_access_token(request), ip=client_ip(request), user_agent=user_agent, allow_guest=allow_guest
        )
