"""``GET /_matrix/federation/v1/openid/userinfo?access_token=``: who an OpenID token is for.

Unauthenticated (no X-Matrix signature): the caller is any third party the user gave the
token to, which is the point of the exchange."""

from __future__ import annotations

from typing import Any

from twisted.web import server

from homeserver.http.server import Router, query_param
from homeserver.services.openid import OpenIdService

FEDERATION_PREFIX = "/_matrix/federation/v1"


def register(router: Router, *, openid: OpenIdService) -> None:
    async def userinfo(request: server.Request) -> tuple[int, Any]:
        return 200, await openid.userinfo(query_param(request, "access_token"))

    router.add("GET", f"^{FEDERATION_PREFIX}/openid/userinfo$", userinfo)
