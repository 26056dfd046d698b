"""Discovery: /versions, /capabilities, the .well-known files and /health."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.web import server

from homeserver.http.auth import RequestAuthenticator
from homeserver.http.server import Router, client_path

SPEC_VERSIONS = ["r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11"]


def register(
    router: Router,
    *,
    authenticate: RequestAuthenticator,
    default_room_version: str,
    room_versions: Mapping[str, str],
    password_changes_enabled: bool,
    displayname_changes_enabled: bool,
    threepid_changes_enabled: bool,
    client_well_known: dict[str, Any] | None,
    server_well_known: dict[str, Any] | None,
) -> None:
    async def versions(request: server.Request) -> tuple[int, Any]:
        return 200, {"versions": SPEC_VERSIONS, "unstable_features": {}}

    async def capabilities(request: server.Request) -> tuple[int, Any]:
        await authenticate(request, allow_guest=True)
        return 200, {
            "capabilities": {
                "m.room_versions": {"default": default_room_version, "available": dict(room_versions)},
                "m.change_password": {"enabled": password_changes_enabled},
                "m.set_displayname": {"enabled": displayname_changes_enabled},
                "m.set_avatar_url": {"enabled": True},
                "m.3pid_changes": {"enabled": threepid_changes_enabled},
                "m.get_login_token": {"enabled": False},
            }
        }

    router.add("GET", "^/_matrix/client/versions$", versions)
    router.add("GET", client_path("/capabilities"), capabilities)

    if client_well_known is not None:
        body = client_well_known

        async def well_known_client(request: server.Request) -> tuple[int, Any]:
            return 200, body

        router.add("GET", "^/.well-known/matrix/client$", well_known_client)
    if server_well_known is not None:
        server_body = server_well_known

        async def well_known_server(request: server.Request) -> tuple[int, Any]:
            return 200, server_body

        router.add("GET", "^/.well-known/matrix/server$", well_known_server)


def register_health(router: Router) -> None:
    """``/health``: 200 "OK" once the server is serving (load balancers poll it)."""

    async def health(request: server.Request) -> tuple[int, Any]:
        request.setHeader(b"Content-Type", b"text/plain")
        request.setHeader(b"Content-Length", b"2")
        request.write(b"OK")
        request.finish()
        return 0, None

    router.add("GET", "^/health$", health)
