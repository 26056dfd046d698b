"""Spaces and room navigation: ``GET /v1/rooms/{roomId}/hierarchy`` and
``GET /v1/rooms/{roomId}/timestamp_to_event``; and :func:`build_client_gaps`, the wiring of
the client-API gap fillers (hierarchy, OpenID, reporting, timestamp lookup) for app.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from twisted.web import server

from homeserver.api.client import openid as openid_api
from homeserver.api.client import reporting as reporting_api
from homeserver.api.federation import hierarchy as federation_hierarchy_api
from homeserver.api.federation import openid as federation_openid_api
from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.http.auth import RequestAuthenticator
from homeserver.http.server import Router, client_path, query_param
from homeserver.services.auth import Requester
from homeserver.services.events import RoomEventService
from homeserver.services.hierarchy import HierarchyRequest, HierarchyService
from homeserver.services.message_ratelimit import MessageRateLimiter
from homeserver.services.openid import OpenIdService
from homeserver.services.presenter import EventPresenter
from homeserver.services.reporting import ReportService
from homeserver.storage.database import Database
from homeserver.storage.events import EventRepository
from homeserver.storage.reports import EventTimestampLookup, OpenIdTokenRepository, ReportRepository
from homeserver.storage.rooms import RoomRepository

_ROOM = "/rooms/(?P<room_id>[^/]+)"


def _bool_param(request: server.Request, name: str) -> bool:
    raw = query_param(request, name)
    if raw is None or raw == "false":
        return False
    if raw == "true":
        return True
    raise MatrixError(400, Codes.INVALID_PARAM, f"Query parameter {name} must be 'true' or 'false'")


def _int_param(request: server.Request, name: str, *, minimum: int) -> int | None:
    raw = query_param(request, name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise MatrixError(400, Codes.INVALID_PARAM, f"Query parameter {name} must be an integer") from None
    if value < minimum:
        raise MatrixError(400, Codes.INVALID_PARAM, f"Query parameter {name} must be at least {minimum}")
    return value


def register(
    router: Router, *, authenticate: RequestAuthenticator, hierarchy: HierarchyService, reports: ReportService
) -> None:
    async def get_hierarchy(request: server.Request, room_id: str) -> tuple[int, Any]:
        requester = await authenticate(request, allow_guest=True)
        req = HierarchyRequest(
            room_id=room_id,
            suggested_only=_bool_param(request, "suggested_only"),
            max_depth=_int_param(request, "max_depth", minimum=0),
            limit=_int_param(request, "limit", minimum=1),
            from_token=query_param(request, "from"),
        )
        return 200, await hierarchy.hierarchy(requester.user_id, req)

    async def timestamp_to_event(request: server.Request, room_id: str) -> tuple[int, Any]:
        requester = await authenticate(request, allow_guest=True)
        ts = _int_param(request, "ts", minimum=0)
        if ts is None:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing query parameter ts")
        direction = query_param(request, "dir")
        if direction not in ("f", "b"):
            raise MatrixError(400, Codes.INVALID_PARAM, "Query parameter dir must be 'f' or 'b'")
        return 200, await reports.event_at(requester.user_id, room_id, ts, forwards=direction == "f")

    router.add("GET", client_path(f"{_ROOM}/hierarchy", ("v1",)), get_hierarchy)
    router.add("GET", client_path(f"{_ROOM}/timestamp_to_event", ("v1",)), timestamp_to_event)


@dataclass
class ClientGapRoutes:
    client: Callable[[Router], None]
    federation: Callable[[Router], None]


def build_client_gaps(
    *,
    server_name: str,
    clock: Clock,
    db: Database,
    authenticate: RequestAuthenticator,
    room_events: RoomEventService,
    event_store: EventRepository,
    room_store: RoomRepository,
    presenter: EventPresenter,
    require_admin: Callable[[Requester], Awaitable[None]],
    federation_authenticator: federation_hierarchy_api.Authenticator,
    report_limiter: MessageRateLimiter | None = None,
) -> ClientGapRoutes:
    """The services and route adders of the hierarchy, OpenID, reporting and timestamp APIs."""
    hierarchy = HierarchyService(state=room_events, memberships=room_store)
    openid = OpenIdService(server_name=server_name, clock=clock, tokens=OpenIdTokenRepository(db))
    reports = ReportService(
        clock=clock,
        reports=ReportRepository(db),
        events=event_store,
        visibility=presenter,
        rooms=room_store,
        state=room_events,
        timestamps=EventTimestampLookup(db),
    )

    def client(router: Router) -> None:
        register(router, authenticate=authenticate, hierarchy=hierarchy, reports=reports)
        openid_api.register(router, authenticate=authenticate, openid=openid)
        reporting_api.register(
            router,
            authenticate=authenticate,
            reports=reports,
            require_admin=require_admin,
            report_limiter=report_limiter,
        )

    def federation(router: Router) -> None:
        federation_openid_api.register(router, openid=openid)
        federation_hierarchy_api.register(router, authenticator=federation_authenticator, hierarchy=hierarchy)

    return ClientGapRoutes(client=client, federation=federation)
