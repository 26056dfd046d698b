"""Client-Server endpoints served for application services: the ping, third-party
lookups, and an admin view of each service's queue (``/_homeserver/admin/v1/appservices``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.web import server

from homeserver.appservice.host import AppServiceHost
from homeserver.core.errors import Codes, MatrixError, forbidden, not_found
from homeserver.http.auth import RequestAuthenticator
from homeserver.http.params import parse_json_object
from homeserver.http.server import Router, client_path
from homeserver.services.auth import Requester

ADMIN_PATH = "^/_homeserver/admin/v1/appservices$"


def register(
    router: Router,
    *,
    authenticate: RequestAuthenticator,
    host: AppServiceHost,
    require_admin: Callable[[Requester], Awaitable[None]],
) -> None:
    async def ping(request: server.Request, appservice_id: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        if requester.app_service is None or requester.app_service.id != appservice_id:
            raise forbidden("Only the application service itself may ping it (use its as_token)")
        body = parse_json_object(request, allow_empty=True)
        duration = await host.ping(requester.app_service, body.str("transaction_id"))
        return 200, {"duration_ms": duration}

    async def protocols(request: server.Request) -> tuple[int, Any]:
        await authenticate(request)
        return 200, await host.protocols()

    async def protocol(request: server.Request, protocol: str) -> tuple[int, Any]:
        await authenticate(request)
        info = await host.protocol(protocol)
        if info is None:
            raise not_found(f"Unknown protocol {protocol}")
        return 200, info

    def lookup(kind: str, reverse_key: str) -> Callable[..., Awaitable[tuple[int, Any]]]:
        async def handler(request: server.Request, protocol: str | None = None) -> tuple[int, Any]:
            await authenticate(request)
            fields = _fields(request)
            if protocol is None and reverse_key not in fields:
                raise MatrixError(400, Codes.MISSING_PARAM, f"Missing parameter: {reverse_key}")
            results = await host.lookup(kind, protocol, fields)
            if not results and protocol is None:
                raise not_found(f"No {kind} found")
            return 200, results

        return handler

    async def admin_status(request: server.Request) -> tuple[int, Any]:
        await require_admin(await authenticate(request))
        return 200, {"appservices": await host.metrics()}

    router.add("POST", client_path("/appservice/(?P<appservice_id>[^/]+)/ping", ("v1",)), ping)
    router.add("GET", client_path("/thirdparty/protocols"), protocols)
    router.add("GET", client_path("/thirdparty/protocol/(?P<protocol>[^/]+)"), protocol)
    router.add("GET", client_path("/thirdparty/location/(?P<protocol>[^/]+)"), lookup("location", "alias"))
    router.add("GET", client_path("/thirdparty/user/(?P<protocol>[^/]+)"), lookup("user", "userid"))
    router.add("GET", client_path("/thirdparty/location"), lookup("location", "alias"))
    router.add("GET", client_path("/thirdparty/user"), lookup("user", "userid"))
    router.add("GET", ADMIN_PATH, admin_status)


def _fields(request: server.Request) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, values in (request.args or {}).items():
        name = key.decode("utf-8", "replace")
        if name == "access_token":
            continue
        out[name] = [v.decode("utf-8", "replace") for v in values]
    return out
