"""The client-server API routes (homeserver/api/client, /_synapse/admin) of the "client"
listener resource, given the built services."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from homeserver.api.admin import register as admin_register
from homeserver.api.client import account as account_api
from homeserver.api.client import devices as devices_api
from homeserver.api.client import directory as directory_api
from homeserver.api.client import keys as keys_api
from homeserver.api.client import login as login_api
from homeserver.api.client import notifications as notifications_api
from homeserver.api.client import push as push_api
from homeserver.api.client import pushers as pushers_api
from homeserver.api.client import register as register_api
from homeserver.api.client import rooms as rooms_api
from homeserver.api.client import sync as sync_api
from homeserver.api.client import userdata as userdata_api
from homeserver.api.client import versions as versions_api
from homeserver.api.client.spaces import build_client_gaps
from homeserver.api.client.voip import build_voip_routes
from homeserver.config import HomeserverConfig
from homeserver.core.clock import Clock
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.filtering import parse_filter
from homeserver.http.auth import RequestAuthenticator
from homeserver.http.server import Router
from homeserver.services.key_backup import KeyBackupService
from homeserver.services.membership_ratelimit import MembershipRateLimits
from homeserver.services.message_ratelimit import MessageRateLimiter
from homeserver.services.notifications import NotificationService
from homeserver.services.pushers import PusherService, build_pushers
from homeserver.services.ratelimit import Ratelimiter
from homeserver.services.search import SearchService
from homeserver.storage.database import Database
from homeserver.storage.key_backup import KeyBackupRepository
from homeserver.storage.search import SearchRepository
from homeserver.wiring.core import CoreAccounts, RunInThread, rate
from homeserver.wiring.rooms import RoomParts

if TYPE_CHECKING:
    from homeserver.federation.auth import FederationAuthenticator

# Room versions a client may ask for when creating a room.
ROOM_VERSIONS = {v.identifier: "stable" for v in KNOWN_ROOM_VERSIONS.values() if v.supported}


@dataclass
class ClientApi:
    # adds the client-server API routes to a router ("client" listener resource)
    routes: Callable[[Router], None]
    # rc_message, shared by every listener (application services: rate_limited)
    message_limiter: MessageRateLimiter


def _membership_of(rooms: RoomParts) -> Callable[[str, str], Awaitable[str | None]]:
    async def membership_of(room_id: str, user_id: str) -> str | None:
        found = await rooms.room_store.get_membership(room_id, user_id)
        return found.membership if found is not None else None

    return membership_of


def build_client_api(
    config: HomeserverConfig,
    *,
    clock: Clock,
    db: Database,
    core: CoreAccounts,
    rooms: RoomParts,
    authenticate: RequestAuthenticator,
    media_admin_routes: Callable[[Router], None],
) -> ClientApi:
    message_limiter = MessageRateLimiter(Ratelimiter(clock, rate(config.rc_message)), is_admin=core.admin.is_admin)
    # rc_user_directory and rc_presence.per_user: per user, exempt as for rc_message
    user_directory_limiter = MessageRateLimiter(
        Ratelimiter(clock, rate(config.rc_user_directory)), is_admin=core.admin.is_admin
    )
    presence_limiter = MessageRateLimiter(
        Ratelimiter(clock, rate(config.rc_presence.per_user)), is_admin=core.admin.is_admin
    )
    membership_limits = MembershipRateLimits(
        clock,
        room_creation=config.rc_room_creation,
        joins=config.rc_joins,
        joins_per_room=config.rc_joins_per_room,
        invites=config.rc_invites,
        is_admin=core.admin.is_admin,
        is_host_in_room=rooms.rooms.is_host_in_room,
        membership_of=_membership_of(rooms),
    )
    presence = rooms.presence

    def routes(router: Router) -> None:
        # built per listener, as before the split (so each "client" listener has its own rc_registration)
        register_limiter = Ratelimiter(clock, rate(config.rc_registration))
        backups = KeyBackupService(backups=KeyBackupRepository(db))
        search = SearchService(
            search=SearchRepository(db),
            events=rooms.event_store,
            rooms=rooms.room_store,
            presenter=rooms.presenter,
            paginator=rooms.messages,
        )
        versions_api.register(
            router,
            authenticate=authenticate,
            default_room_version=config.default_room_version,
            room_versions=ROOM_VERSIONS,
            password_changes_enabled=core.account.password_changes_enabled,
            displayname_changes_enabled=config.registration.enable_set_displayname,
            threepid_changes_enabled=config.email is not None,  # /account/3pid (services/policy)
            client_well_known=_client_well_known(config),
            server_well_known=_server_well_known(config),
        )
        login_api.register(router, authenticate=authenticate, login=core.login, auth=core.auth)
        register_api.register(
            router,
            registration=core.registration,
            login=core.login,
            uia=core.uia,
            ratelimiter=register_limiter,
            authenticate=authenticate,
        )
        account_api.register(router, authenticate=authenticate, account=core.account, uia=core.uia)
        devices_api.register(router, authenticate=authenticate, devices=rooms.devices, uia=core.uia)
        admin_register.register(
            router, authenticate=authenticate, registration=core.registration, login=core.login, admin=core.admin
        )
        media_admin_routes(router)  # Synapse's /_synapse/admin/v1 media API, with the other admin APIs
        rooms_api.register(
            router,
            authenticate=authenticate,
            rooms=rooms.rooms,
            messages=rooms.messages,
            parse_filter=rooms.filters.room_event_filter,
            message_limiter=message_limiter,
            membership_limits=membership_limits,
        )
        sync_api.register(
            router,
            authenticate=authenticate,
            sync=rooms.sync,
            account_data=rooms.account_data,
            load_filter=rooms.filters.load,
            validate_filter=parse_filter,
            set_presence=lambda user_id, state: presence.set_presence(user_id, state, from_sync=True),
        )
        userdata_api.register(
            router,
            authenticate=authenticate,
            profiles=rooms.profiles,
            account_data=rooms.account_data,
            typing=rooms.typing,
            receipts=rooms.receipts,
            presence=presence,
            presence_limiter=presence_limiter,
        )
        push_api.register(router, authenticate=authenticate, push=rooms.push)
        keys_api.register(
            router,
            authenticate=authenticate,
            keys=rooms.e2e_keys,
            to_device=rooms.to_device,
            backups=backups,
            uia=core.uia,
        )
        directory_api.register(
            router,
            authenticate=authenticate,
            rooms=rooms.rooms,
            directory=rooms.directory,
            is_admin=core.admin.is_admin,
            search=search,
            user_directory_limiter=user_directory_limiter,
        )

    return ClientApi(routes=routes, message_limiter=message_limiter)


@dataclass
class ClientFeatures:
    """The later client-API additions, each wired by its own module: VoIP, notifications,
    spaces/OpenID/reports/timestamp lookup (api/client/spaces.py) and HTTP pushers."""

    pushers: PusherService
    # added, in this order, to the "client" and "federation" resources
    client_routes: list[Callable[[Router], None]]
    federation_routes: list[Callable[[Router], None]]


def build_client_features(
    config: HomeserverConfig,
    *,
    reactor: Any,
    clock: Clock,
    db: Database,
    core: CoreAccounts,
    rooms: RoomParts,
    authenticate: RequestAuthenticator,
    federation_authenticator: FederationAuthenticator,
    run_in_thread: RunInThread,
) -> ClientFeatures:
    # client API conformance (api/client/voip.py, api/client/notifications.py)
    voip = build_voip_routes(config, clock=clock, authenticate=authenticate)
    notification_service = NotificationService(
        receipts=rooms.receipt_store, events=rooms.event_store, presenter=rooms.presenter
    )

    def notifications(router: Router) -> None:
        notifications_api.register(router, authenticate=authenticate, notifications=notification_service)

    # client gaps (api/client/spaces.py: hierarchy, OpenID, reports, timestamp_to_event)
    gaps = build_client_gaps(
        server_name=config.server_name,
        clock=clock,
        db=db,
        authenticate=authenticate,
        room_events=rooms.room_events,
        event_store=rooms.event_store,
        room_store=rooms.room_store,
        presenter=rooms.presenter,
        require_admin=core.admin.require_admin,
        federation_authenticator=federation_authenticator,
        report_limiter=MessageRateLimiter(Ratelimiter(clock, rate(config.rc_reports)), is_admin=core.admin.is_admin),
    )

    # pushers (services/pushers.py, push/gateway.py, api/client/pushers.py)
    pushers = build_pushers(
        config,
        reactor=reactor,
        clock=clock,
        db=db,
        push=rooms.push,
        room_events=rooms.room_events,
        device_deleted_listeners=core.devices_repo.deleted_listeners,
        run_in_thread=run_in_thread,
    )

    def pusher_routes(router: Router) -> None:
        pushers_api.register(router, authenticate=authenticate, pushers=pushers)

    return ClientFeatures(
        pushers=pushers,
        client_routes=[voip, notifications, gaps.client, pusher_routes],
        federation_routes=[gaps.federation],
    )


def _client_well_known(config: HomeserverConfig) -> dict[str, Any] | None:
    if not config.public_baseurl:
        return None
    body: dict[str, Any] = {"m.homeserver": {"base_url": config.public_baseurl}}
    body.update(config.extra_well_known_client_content)
    return body


def _server_well_known(config: HomeserverConfig) -> dict[str, Any] | None:
    if not config.serve_server_wellknown:
        return None
    from urllib.parse import urlparse

    host = urlparse(config.public_baseurl).hostname if config.public_baseurl else None
    return {"m.server": f"{host or config.server_name}:443"}
