"""Reporting content: ``POST /rooms/{roomId}/report/{eventId}``, ``POST /rooms/{roomId}/report``,
and for administrators Synapse's ``GET /_synapse/admin/v1/event_reports[/{id}]``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.web import server

from homeserver.core.errors import Codes, MatrixError
from homeserver.http.auth import RequestAuthenticator
from homeserver.http.params import parse_json_object
from homeserver.http.server import Router, client_path, query_param
from homeserver.services.auth import Requester
from homeserver.services.message_ratelimit import MessageRateLimiter
from homeserver.services.reporting import DEFAULT_ADMIN_PAGE, ReportService

_ROOM = "/rooms/(?P<room_id>[^/]+)"
ADMIN_REPORTS = "/_synapse/admin/v1/event_reports"


def _int_param(request: server.Request, name: str, default: int) -> int:
    raw = query_param(request, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise MatrixError(400, Codes.INVALID_PARAM, f"Query parameter {name} must be an integer") from None
    if value < 0:
        raise MatrixError(400, Codes.INVALID_PARAM, f"Query parameter {name} must not be negative")
    return value


def register(
    router: Router,
    *,
    authenticate: RequestAuthenticator,
    reports: ReportService,
    require_admin: Callable[[Requester], Awaitable[None]],
    report_limiter: MessageRateLimiter | None = None,
) -> None:
    async def limit(requester: Requester) -> None:
        if report_limiter is not None:
            await report_limiter.check(requester)  # rc_reports

    async def report_event(request: server.Request, room_id: str, event_id: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        body = parse_json_object(request, allow_empty=True)
        score = body.raw("score")
        if score is not None and (not isinstance(score, int) or isinstance(score, bool)):
            raise MatrixError(400, Codes.BAD_JSON, "Parameter score must be an integer")
        await limit(requester)
        await reports.report_event(requester.user_id, room_id, event_id, body.str("reason"), score)
        return 200, {}

    async def report_room(request: server.Request, room_id: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        body = parse_json_object(request)
        reason = body.required_str("reason")
        await limit(requester)
        await reports.report_room(requester.user_id, room_id, reason)
        return 200, {}

    async def list_reports(request: server.Request) -> tuple[int, Any]:
        await require_admin(await authenticate(request))
        direction = query_param(request, "dir") or "b"
        if direction not in ("b", "f"):
            raise MatrixError(400, Codes.INVALID_PARAM, "Query parameter dir must be 'b' or 'f'")
        return 200, await reports.list_reports(
            offset=_int_param(request, "from", 0),
            limit=_int_param(request, "limit", DEFAULT_ADMIN_PAGE),
            newest_first=direction == "b",
            room_id=query_param(request, "room_id"),
            user_id=query_param(request, "user_id"),
        )

    async def get_report(request: server.Request, report_id: str) -> tuple[int, Any]:
        await require_admin(await authenticate(request))
        if not report_id.isdigit():
            raise MatrixError(400, Codes.INVALID_PARAM, "The report ID must be a positive integer")
        return 200, await reports.get_report(int(report_id))

    router.add("POST", client_path(f"{_ROOM}/report/(?P<event_id>[^/]+)"), report_event)
    router.add("POST", client_path(f"{_ROOM}/report"), report_room)
    router.add("GET", f"^{ADMIN_REPORTS}$", list_reports)
    router.add("GET", f"^{ADMIN_REPORTS}/(?P<report_id>[^/]+)$", get_report)
