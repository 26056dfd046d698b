"""GET /notifications (the events that notified the user)."""

from __future__ import annotations

from typing import Any

from twisted.web import server

from homeserver.core.errors import Codes, MatrixError
from homeserver.http.auth import RequestAuthenticator
from homeserver.http.server import Router, client_path, query_param
from homeserver.services.notifications import NotificationService


def register(router: Router, *, authenticate: RequestAuthenticator, notifications: NotificationService) -> None:
    async def get_notifications(request: server.Request) -> tuple[int, Any]:
        requester = await authenticate(request)
        raw_limit = query_param(request, "limit")
        limit = None
        if raw_limit is not None:
            try:
                limit = int(raw_limit)
            except ValueError:
                raise MatrixError(400, Codes.INVALID_PARAM, "Query parameter limit must be an integer") from None
        return 200, await notifications.notifications(
            requester, from_token=query_param(request, "from"), limit=limit, only=query_param(request, "only")
        )

    router.add("GET", client_path("/notifications"), get_notifications)
