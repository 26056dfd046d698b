"""Synapse's admin API for server notices, and the wiring of the feature.

``POST /_synapse/admin/v1/send_server_notice`` and ``PUT .../send_server_notice/{txnId}``
(retries with the same transaction ID send nothing and answer the first event) with
``{"user_id", "content", "type"?, "state_key"?}``; answers ``{"event_id"}``.  Server admins
only; 400 when ``server_notices`` is not configured, as in Synapse.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from twisted.web import server

from homeserver.config import HomeserverConfig
from homeserver.core.errors import Codes, MatrixError
from homeserver.http.auth import RequestAuthenticator
from homeserver.http.params import parse_json_object
from homeserver.http.server import Router
from homeserver.services.auth import Requester
from homeserver.services.events import RoomEventService
from homeserver.services.registration import RegistrationService
from homeserver.services.rooms import RoomService
from homeserver.services.server_notices import ServerNoticesService
from homeserver.services.userdata import AccountDataService
from homeserver.storage.accounts import AccountRepository
from homeserver.storage.database import Database
from homeserver.storage.events import EventRepository, TxnIdInfo
from homeserver.storage.rooms import RoomRepository
from homeserver.storage.server_notices import ServerNoticesStore
from homeserver.storage.userdata import ProfileRepository

_ADMIN = "^/_synapse/admin/v1"
RequireAdmin = Callable[[Requester], Awaitable[None]]


def register(
    router: Router,
    *,
    authenticate: RequestAuthenticator,
    require_admin: RequireAdmin,
    notices: ServerNoticesService | None,
) -> None:
    async def send(request: server.Request, txn_id: str | None) -> tuple[int, Any]:
        requester = await authenticate(request)
        await require_admin(requester)
        body = parse_json_object(request)
        user_id = body.required_str("user_id")
        content = body.object("content", required=True)
        assert content is not None
        event_type = body.str("type") or "m.room.message"
        state_key = body.str("state_key")
        if notices is None:
            raise MatrixError(400, Codes.UNKNOWN, "Server notices are not enabled on this server (server_notices)")
        txn = None
        if txn_id is not None:
            # the admin's own transaction namespace, as a client's /send is per device
            txn = TxnIdInfo(notices.system_user_id, f"{requester.user_id}/{requester.device_id}", txn_id)
        event_id = await notices.send_notice(user_id, content.data, event_type=event_type, state_key=state_key, txn=txn)
        return 200, {"event_id": event_id}

    async def post(request: server.Request) -> tuple[int, Any]:
        return await send(request, None)

    async def put(request: server.Request, txn_id: str) -> tuple[int, Any]:
        return await send(request, txn_id)

    router.add("POST", f"{_ADMIN}/send_server_notice$", post)
    router.add("PUT", f"{_ADMIN}/send_server_notice/(?P<txn_id>[^/]+)$", put)


@dataclass
class ServerNotices:
    service: ServerNoticesService | None  # None: server_notices not configured
    client_routes: Callable[[Router], None]


def build_server_notices(
    config: HomeserverConfig,
    *,
    authenticate: RequestAuthenticator,
    require_admin: RequireAdmin,
    rooms: RoomService,
    room_events: RoomEventService,
    event_store: EventRepository,
    room_store: RoomRepository,
    accounts: AccountRepository,
    account_data: AccountDataService,
    registration: RegistrationService,
    db: Database,
) -> ServerNotices:
    """The service (when configured), its membership and registration hooks, and the
    admin route (always there: it answers 400 when the feature is off, as in Synapse).
    Call after the application services are wired: the registration check is chained."""
    service = None
    if config.server_notices is not None:
        service = ServerNoticesService(
            server_name=config.server_name,
            settings=config.server_notices,
            rooms=rooms,
            room_events=room_events,
            event_store=event_store,
            room_store=room_store,
            store=ServerNoticesStore(db),
            accounts=accounts,
            profiles=ProfileRepository(db),
            account_data=account_data,
        )
        rooms.before_membership_hooks.append(service.before_membership)
        previous = registration.reserved_username_check
        check = service.check_username

        def reserved_username_check(user_id: str, app_service: Any) -> None:
            check(user_id)
            if previous is not None:
                previous(user_id, app_service)

        registration.reserved_username_check = reserved_username_check
    notices = service
    return ServerNotices(
        service=service,
        client_routes=lambda router: register(
            router, authenticate=authenticate, require_admin=require_admin, notices=notices
        ),
    )
