"""/sync and the filter endpoints."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.web import server

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.response_json import LargeJSON
from homeserver.http.auth import RequestAuthenticator
from homeserver.http.params import parse_json_object
from homeserver.http.server import Router, client_path, query_param
from homeserver.services.streams import StreamToken
from homeserver.services.sync import SyncFilter, SyncRequest, SyncService
from homeserver.services.userdata import AccountDataService

_PRESENCE_STATES = ("online", "offline", "unavailable")


def register(
    router: Router,
    *,
    authenticate: RequestAuthenticator,
    sync: SyncService,
    account_data: AccountDataService,
    load_filter: Callable[[str, str | None], Any],
    validate_filter: Callable[[Any], Any],
    set_presence: Callable[[str, str], Any] | None = None,
) -> None:
    async def do_sync(request: server.Request) -> tuple[int, Any]:
        requester = await authenticate(request, allow_guest=True)
        since_raw = query_param(request, "since")
        since = StreamToken.parse(since_raw) if since_raw else None
        timeout_raw = query_param(request, "timeout") or "0"
        try:
            timeout = int(timeout_raw)
        except ValueError:
            raise MatrixError(400, Codes.INVALID_PARAM, "Query parameter timeout must be an integer") from None
        full_state_raw = query_param(request, "full_state") or "false"
        if full_state_raw not in ("true", "false"):
            raise MatrixError(400, Codes.INVALID_PARAM, "Query parameter full_state must be 'true' or 'false'")
        presence = query_param(request, "set_presence")
        if presence is not None and presence not in _PRESENCE_STATES:
            raise MatrixError(400, Codes.INVALID_PARAM, "Query parameter set_presence must be online, offline or unavailable")
        sync_filter: SyncFilter = await load_filter(requester.user_id, query_param(request, "filter"))
        if set_presence is not None and presence != "offline":
            await set_presence(requester.user_id, presence or "online")
        body = await sync.sync(
            SyncRequest(
                requester=requester,
                since=since,
                timeout_ms=timeout,
                full_state=full_state_raw == "true",
                filter=sync_filter,
            )
        )
        # body -> rooms -> join -> one piece per room
        return 200, LargeJSON(body, depth=3)

    async def create_filter(request: server.Request, user_id: str) -> tuple[int, Any]:
        requester = await authenticate(request, allow_guest=True)
        body = parse_json_object(request)
        validate_filter(body.data)
        filter_id = await account_data.add_filter(requester.user_id, user_id, body.data)
        return 200, {"filter_id": str(filter_id)}

    async def get_filter(request: server.Request, user_id: str, filter_id: str) -> tuple[int, Any]:
        requester = await authenticate(request, allow_guest=True)
        return 200, await account_data.get_filter(requester.user_id, user_id, filter_id)

    router.add("GET", client_path("/sync"), do_sync)
    router.add("POST", client_path("/user/(?P<user_id>[^/]+)/filter"), create_filter)
    router.add("GET", client_path("/user/(?P<user_id>[^/]+)/filter/(?P<filter_id>[^/]+)"), get_filter)
