"""The composition root: the one place that knows how every part fits.

``build_homeserver(config, reactor)`` builds each area from its collaborators, in order; each
area's wiring lives in its own module (see :mod:`homeserver.wiring` and the ``build_*``
functions named below). :class:`Homeserver` then starts the listeners and stops cleanly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, task, threads
from twisted.internet.interfaces import IListeningPort

from homeserver.api.admin.server_notices import build_server_notices
from homeserver.api.client import versions as versions_api
from homeserver.appservice.host import AppServiceHost
from homeserver.appservice.wiring import AppServiceParts, setup_appservices
from homeserver.config import HomeserverConfig
from homeserver.config.listeners import IMPLIED_RESOURCES
from homeserver.core.clock import Clock
from homeserver.federation.components import Federation, build_federation
from homeserver.federation.devices import E2EEFederation
from homeserver.federation.ingest import FederationEventHandler
from homeserver.federation.tls import server_tls_options
from homeserver.http.auth import RequestAuthenticator
from homeserver.http.server import HomeserverSite, RootResource, Router
from homeserver.services.account import AccountService
from homeserver.services.admin import AdminService
from homeserver.services.auth import AuthService
from homeserver.services.devices import DeviceService
from homeserver.services.events import RoomEventService
from homeserver.services.login import LoginService
from homeserver.services.messages import MessageService
from homeserver.services.policy.wiring import build_policy
from homeserver.services.registration import RegistrationService
from homeserver.services.rooms import RoomService
from homeserver.services.sync import SyncService
from homeserver.services.uia import UserInteractiveAuth
from homeserver.services.userdata import AccountDataService, ProfileService
from homeserver.storage.database import Database
from homeserver.storage.engines import create_engine
from homeserver.storage.migrations import prepare_database
from homeserver.storage.to_device import ToDeviceRepository
from homeserver.wiring.client import build_client_api, build_client_features
from homeserver.wiring.core import build_core_accounts
from homeserver.wiring.federation import build_room_federation
from homeserver.wiring.media import build_media
from homeserver.wiring.rooms import build_rooms

logger = logging.getLogger(__name__)

# How long shutdown waits for in-flight requests before closing the database anyway.
SHUTDOWN_GRACE_SECONDS = 10.0


@dataclass
class Services:
    """The built services, for the command line tools and tests that drive them directly."""

    auth: AuthService
    login: LoginService
    registration: RegistrationService
    devices: DeviceService
    account: AccountService
    admin: AdminService
    uia: UserInteractiveAuth
    rooms: RoomService
    messages: MessageService
    events: RoomEventService
    sync: SyncService
    profiles: ProfileService
    account_data: AccountDataService


@dataclass
class Homeserver:
    config: HomeserverConfig
    reactor: Any
    clock: Clock
    db: Database
    services: Services
    # listener resource group name -> function adding its routes to a router
    route_groups: dict[str, Callable[[Router], None]]
    # periodic housekeeping, started with the listeners
    background: list[task.LoopingCall] = field(default_factory=list)
    ports: list[IListeningPort] = field(default_factory=list)
    sites: list[HomeserverSite] = field(default_factory=list)
    # keys, keyring, signed-request transport and X-Matrix authenticator (homeserver/federation)
    federation: Federation | None = None
    # end-to-end encryption across servers: remote keys, device-list EDUs (federation/devices.py)
    e2ee_federation: E2EEFederation | None = None
    # the application-service host (homeserver/appservice), when any are registered
    appservices: AppServiceHost | None = None
    # the receiving half of room federation: /send, received PDUs, joins' state (federation/ingest.py)
    federation_ingest: FederationEventHandler | None = None
    # HTTP pushers and their delivery to push gateways (services/pushers.py)
    pushers: Any = None

    def add_routes(self, name: str, add_routes: Callable[[Router], None]) -> None:
        """Add ``add_routes`` to the listener resource ``name``, after the routes it has."""
        previous = self.route_groups.get(name)

        def both(router: Router) -> None:
            if previous is not None:
                previous(router)
            add_routes(router)

        self.route_groups[name] = both

    def build_site(self, resource_names: set[str], *, x_forwarded: bool = False) -> HomeserverSite:
        router = Router()
        # As in Synapse, "client" and "federation" also serve "media" (IMPLIED_RESOURCES).
        implied = {i for n in resource_names for i in IMPLIED_RESOURCES.get(n, ())}
        for name in ("health", *sorted(set(resource_names) | implied)):
            add_routes = self.route_groups.get(name)
            if add_routes is not None:
                add_routes(router)
        site = HomeserverSite(
            RootResource(router),
            max_request_size=self.config.max_request_size,
            max_upload_size=self.config.max_upload_size,
            x_forwarded=x_forwarded,
        )
        self.sites.append(site)
        return site

    def start_listening(self) -> None:
        """Open every configured HTTP listener and start the housekeeping tasks."""
        for loop in self.background:
            loop.clock = self.reactor
            loop.start(3600, now=True)
        for listener in self.config.listeners:
            if listener.type != "http":
                logger.warning("listener type %r on port %d is not supported yet", listener.type, listener.port)
                continue
            names = {n for res in listener.resources for n in res.names}
            site = self.build_site(names, x_forwarded=listener.x_forwarded)
            self._listen(listener.port, listener.bind_addresses, site, tls=listener.tls)
            logger.info("listening on %s port %d for %s", ",".join(listener.bind_addresses), listener.port, sorted(names))
        self.reactor.addSystemEventTrigger("before", "shutdown", self.stop)
        if self.federation is not None:  # resume the outbound queues left by the last run
            defer.ensureDeferred(self.federation.start()).addErrback(
                lambda f: logger.error("federation sender did not start: %s", f.getTraceback())
            )

    def _listen(self, port: int, addresses: tuple[str, ...], site: HomeserverSite, *, tls: bool = False) -> None:
        from twisted.internet.error import CannotListenError

        tls_options = None
        if tls:  # the config guarantees both paths for a tls: true listener
            assert self.config.tls_certificate_path and self.config.tls_private_key_path
            tls_options = server_tls_options(self.config.tls_certificate_path, self.config.tls_private_key_path)
        dual_stack = False
        for address in addresses:
            try:
                if tls_options is not None:
                    self.ports.append(self.reactor.listenSSL(port, site, tls_options, interface=address))
                else:
                    self.ports.append(self.reactor.listenTCP(port, site, interface=address))
                dual_stack = dual_stack or address == "::"
            except CannotListenError:
                # "::" usually covers IPv4 too, so 0.0.0.0 on the same port then fails.
                if address == "0.0.0.0" and dual_stack:
                    continue
                raise

    async def _stop(self) -> None:
        logger.info("shutting down: no new connections, waiting for in-flight requests")
        for loop in self.background:
            if loop.running:
                loop.stop()
        await defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in self.ports])
        self.ports.clear()
        idle = defer.gatherResults([s.wait_idle() for s in self.sites])
        timeout = self.reactor.callLater(SHUTDOWN_GRACE_SECONDS, idle.cancel)
        try:
            await idle
        except defer.CancelledError:
            logger.warning("shutdown: requests still running after %.0fs, closing anyway", SHUTDOWN_GRACE_SECONDS)
        else:
            timeout.cancel()
        if self.federation is not None:
            await self.federation.close()

    def stop(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._stop())


def open_database(config: HomeserverConfig, reactor: Any, clock: Clock) -> Database:
    """Connect and bring the schema up to date (refusing a newer schema)."""
    engine = create_engine(config.database.name, config.database.args)
    db = Database(engine, reactor)
    prepare_database(db, clock.time_msec())
    return db


def build_homeserver(config: HomeserverConfig, reactor: Any, *, db: Database | None = None) -> Homeserver:
    """Wire every part, once: one call per area, each given its collaborators explicitly."""
    clock = Clock(reactor)
    if db is None:
        db = open_database(config, reactor, clock)

    def run_in_thread(fn: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args)

    # accounts, login, registration, UIA, admin (wiring/core.py)
    core = build_core_accounts(config, clock=clock, db=db, run_in_thread=run_in_thread)
    # rooms, messages, sync, ephemeral, push rules, e2e keys, to-device (wiring/rooms.py)
    rooms = build_rooms(config, clock=clock, db=db, core=core)
    authenticate = RequestAuthenticator(core.auth)
    # media repository and URL previews (wiring/media.py)
    media = build_media(
        config, reactor=reactor, clock=clock, db=db, authenticate=authenticate,
        require_admin=core.admin.require_admin, run_in_thread=run_in_thread,
    )
    # the client-server API routes (wiring/client.py)
    client = build_client_api(
        config, clock=clock, db=db, core=core, rooms=rooms, authenticate=authenticate,
        media_admin_routes=media.admin_routes,
    )
    services = Services(
        auth=core.auth, login=core.login, registration=core.registration, devices=rooms.devices,
        account=core.account, admin=core.admin, uia=core.uia, rooms=rooms.rooms, messages=rooms.messages,
        events=rooms.room_events, sync=rooms.sync, profiles=rooms.profiles, account_data=rooms.account_data,
    )
    uia = core.uia
    hs = Homeserver(
        config=config,
        reactor=reactor,
        clock=clock,
        db=db,
        services=services,
        route_groups={"client": client.routes, "health": versions_api.register_health, "media": media.routes},
        background=[
            task.LoopingCall(lambda: defer.ensureDeferred(uia.expire_old_sessions())),
            task.LoopingCall(media.media.housekeeping_task()),
        ],
    )

    # federation plumbing: keys, keyring, signed requests, X-Matrix (federation/components.py)
    federation = hs.federation = build_federation(config, reactor=reactor, clock=clock, db=db)
    # room federation: queries, ingest, outbound, joins, e2ee, media, backfill (wiring/federation.py)
    room_federation = build_room_federation(
        config, reactor=reactor, clock=clock, db=db, federation=federation, core=core, rooms=rooms,
        media=media.media, authenticate=authenticate, run_in_thread=run_in_thread,
    )
    hs.federation_ingest = room_federation.ingest
    hs.e2ee_federation = room_federation.e2ee
    hs.route_groups["keys"] = room_federation.key_routes
    for add in room_federation.federation_routes:
        hs.add_routes("federation", add)
    for add in room_federation.client_routes:
        hs.add_routes("client", add)

    # government policy (services/policy/wiring.py)
    policy = build_policy(
        config, reactor=reactor, clock=clock, db=db, room_events=rooms.room_events, rooms=rooms.rooms,
        directory=rooms.directory, event_store=rooms.event_store, room_store=rooms.room_store, admin=core.admin,
        registration=core.registration, uia=core.uia, authenticate=authenticate,
        signing_key=federation.local_keys.signing_key, login=core.login, push=rooms.push,
    )
    hs.add_routes("client", policy.client_routes)
    hs.background.extend(policy.background)

    # application services (appservice/wiring.py)
    hs.appservices = setup_appservices(
        paths=config.app_service_config_files,
        server_name=config.server_name,
        reactor=reactor,
        clock=clock,
        db=db,
        authenticate=authenticate,
        registration=core.registration,
        rooms=rooms.rooms,
        profiles=rooms.profiles,
        notifier=rooms.notifier,
        parts=AppServiceParts(
            accounts=core.accounts,
            devices=core.devices_repo,
            event_store=rooms.event_store,
            room_events=rooms.room_events,
            room_store=rooms.room_store,
            typing=rooms.typing,
            receipts=rooms.receipts,
            presence=rooms.presence,
            to_device_inbox=ToDeviceRepository(db),
            e2e_keys=rooms.e2e_keys,
        ),
        add_client_routes=lambda add_routes: hs.add_routes("client", add_routes),
        require_admin=core.admin.require_admin,
    )

    # VoIP, notifications, hierarchy/OpenID/reports/timestamps, pushers (wiring/client.py)
    features = build_client_features(
        config, reactor=reactor, clock=clock, db=db, core=core, rooms=rooms, authenticate=authenticate,
        federation_authenticator=federation.authenticator, run_in_thread=run_in_thread,
    )
    hs.pushers = features.pushers
    for add in features.client_routes:
        hs.add_routes("client", add)
    for add in features.federation_routes:
        hs.add_routes("federation", add)

    # server notices, after the application services: it chains their registration check
    # (services/server_notices.py, api/admin/server_notices.py)
    notices = build_server_notices(
        config, authenticate=authenticate, require_admin=core.admin.require_admin, rooms=rooms.rooms,
        room_events=rooms.room_events, event_store=rooms.event_store, room_store=rooms.room_store,
        accounts=core.accounts, account_data=rooms.account_data, registration=core.registration, db=db,
    )
    hs.add_routes("client", notices.client_routes)
    return hs
