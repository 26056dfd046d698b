"""``GET /_matrix/federation/v1/hierarchy/{roomId}``: a room of ours and its space children,
for another server's ``/hierarchy`` (services/hierarchy.py says what is listed)."""

from __future__ import annotations

from typing import Any, Protocol

from twisted.web import server

from homeserver.core.errors import Codes, MatrixError
from homeserver.http.server import Router, query_param
from homeserver.services.hierarchy import HierarchyService

FEDERATION_PREFIX = "/_matrix/federation/v1"


class Authenticator(Protocol):
    async def authenticate(self, request: server.Request) -> str: ...


def register(router: Router, *, authenticator: Authenticator, hierarchy: HierarchyService) -> None:
    async def get_hierarchy(request: server.Request, room_id: str) -> tuple[int, Any]:
        origin = await authenticator.authenticate(request)
        raw = query_param(request, "suggested_only")
        if raw not in (None, "true", "false"):
            raise MatrixError(400, Codes.INVALID_PARAM, "Query parameter suggested_only must be 'true' or 'false'")
        return 200, await hierarchy.for_server(origin, room_id, raw == "true")

    router.add("GET", f"^{FEDERATION_PREFIX}/hierarchy/(?P<room_id>[^/]+)$", get_hierarchy)
