"""The composition root: the one place that knows how every part fits.

``build_homeserver(config, reactor)`` builds storage, services and servlets, each given its
collaborators explicitly; :class:`Homeserver` then starts the listeners and stops cleanly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet import defer, task, threads
from twisted.internet.interfaces import IListeningPort

from homeserver.api.admin import register as admin_register
from homeserver.api.client import account as account_api
from homeserver.api.client import devices as devices_api
from homeserver.api.client import login as login_api
from homeserver.api.client import register as register_api
from homeserver.api.client import versions as versions_api
from homeserver.config import HomeserverConfig
from homeserver.core.clock import Clock
from homeserver.http.auth import RequestAuthenticator
from homeserver.http.server import HomeserverSite, RootResource, Router
from homeserver.services.account import AccountService
from homeserver.services.admin import AdminService
from homeserver.services.auth import AuthService, TokenLifetimes
from homeserver.services.devices import DeviceService
from homeserver.services.login import LoginRatelimiters, LoginService
from homeserver.services.passwords import PasswordHasher
from homeserver.services.ratelimit import Rate, Ratelimiter
from homeserver.services.registration import RegistrationService
from homeserver.services.uia import UserInteractiveAuth
from homeserver.storage.accounts import AccountRepository
from homeserver.storage.database import Database
from homeserver.storage.devices import DeviceRepository
from homeserver.storage.engines import create_engine
from homeserver.storage.migrations import prepare_database
from homeserver.storage.registration_tokens import RegistrationTokenRepository
from homeserver.storage.tokens import TokenRepository
from homeserver.storage.uia import UIARepository

logger = logging.getLogger(__name__)

# Room versions a client may ask for when creating a room (issue: rooms); advertised now.
ROOM_VERSIONS = {v: "stable" for v in ("3", "4", "5", "6", "7", "8", "9", "10", "11", "12")}
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

    def build_site(self, resource_names: set[str], *, x_forwarded: bool = False) -> HomeserverSite:
        router = Router()
        for name in ("health", *sorted(resource_names)):
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
            self._listen(listener.port, listener.bind_addresses, site)
            logger.info("listening on %s port %d for %s", ",".join(listener.bind_addresses), listener.port, sorted(names))
        self.reactor.addSystemEventTrigger("before", "shutdown", self.stop)

    def _listen(self, port: int, addresses: tuple[str, ...], site: HomeserverSite) -> None:
        from twisted.internet.error import CannotListenError

        dual_stack = False
        for address in addresses:
            try:
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

    def stop(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._stop())


def open_database(config: HomeserverConfig, reactor: Any, clock: Clock) -> Database:
    """Connect and bring the schema up to date (refusing a newer schema)."""
    engine = create_engine(config.database.name, config.database.args)
    db = Database(engine, reactor)
    prepare_database(db, clock.time_msec())
    return db


def _rate(cfg: Any) -> Rate:
    return Rate(float(cfg.per_second), float(cfg.burst_count))


def build_homeserver(config: HomeserverConfig, reactor: Any, *, db: Database | None = None) -> Homeserver:
    """Wire every part, once."""
    clock = Clock(reactor)
    if db is None:
        db = open_database(config, reactor, clock)

    def run_in_thread(fn: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args)

    accounts = AccountRepository(db)
    devices_repo = DeviceRepository(db)
    tokens = TokenRepository(db)
    reg_tokens = RegistrationTokenRepository(db)

    auth_cfg = config
    password_cfg = config.password_config
    hasher = PasswordHasher(rounds=config.bcrypt_rounds, pepper=password_cfg.pepper, run_in_thread=run_in_thread)
    auth = AuthService(
        clock=clock,
        accounts=accounts,
        devices=devices_repo,
        tokens=tokens,
        lifetimes=TokenLifetimes(
            refreshable_access_token_lifetime=auth_cfg.refreshable_access_token_lifetime,
            refresh_token_lifetime=auth_cfg.refresh_token_lifetime,
            nonrefreshable_access_token_lifetime=auth_cfg.nonrefreshable_access_token_lifetime,
            session_lifetime=auth_cfg.session_lifetime,
        ),
    )
    rc = config
    login = LoginService(
        server_name=config.server_name,
        clock_ms=clock.time_msec,
        accounts=accounts,
        devices=devices_repo,
        auth=auth,
        hasher=hasher,
        ratelimiters=LoginRatelimiters(
            address=Ratelimiter(clock, _rate(rc.rc_login.address)),
            account=Ratelimiter(clock, _rate(rc.rc_login.account)),
            failed_attempts=Ratelimiter(clock, _rate(rc.rc_login.failed_attempts)),
        ),
        password_login_enabled=password_cfg.enabled and password_cfg.localdb_enabled,
    )
    registration = RegistrationService(
        server_name=config.server_name,
        clock=clock,
        accounts=accounts,
        registration_tokens=reg_tokens,
        hasher=hasher,
        settings=config.registration,
        password_policy=password_cfg.policy,
    )
    uia = UserInteractiveAuth(
        clock=clock,
        sessions=UIARepository(db),
        stages={
            "m.login.dummy": _dummy_stage,
            "m.login.password": login.password_stage,
            "m.login.registration_token": registration.registration_token_stage,
        },
    )
    services = Services(
        auth=auth,
        login=login,
        registration=registration,
        devices=DeviceService(devices=devices_repo),
        account=AccountService(
            accounts=accounts,
            devices=devices_repo,
            tokens=tokens,
            hasher=hasher,
            password_policy=password_cfg.policy,
            password_changes_enabled=password_cfg.enabled and password_cfg.localdb_enabled,
        ),
        admin=AdminService(clock=clock, accounts=accounts, registration_tokens=reg_tokens),
        uia=uia,
    )
    authenticate = RequestAuthenticator(auth)

    def client_routes(router: Router) -> None:
        versions_api.register(
            router,
            authenticate=authenticate,
            default_room_version=config.default_room_version,
            room_versions=ROOM_VERSIONS,
            password_changes_enabled=services.account.password_changes_enabled,
            displayname_changes_enabled=config.registration.enable_set_displayname,
            threepid_changes_enabled=False,
            client_well_known=_client_well_known(config),
            server_well_known=_server_well_known(config),
        )
        login_api.register(router, authenticate=authenticate, login=login, auth=auth)
        register_api.register(
            router,
            registration=registration,
            login=login,
            uia=uia,
            ratelimiter=Ratelimiter(clock, _rate(rc.rc_registration)),
        )
        account_api.register(router, authenticate=authenticate, account=services.account, uia=uia)
        devices_api.register(router, authenticate=authenticate, devices=services.devices, uia=uia)
        admin_register.register(
            router, authenticate=authenticate, registration=registration, login=login, admin=services.admin
        )

    hs = Homeserver(
        config=config,
        reactor=reactor,
        clock=clock,
        db=db,
        services=services,
        route_groups={"client": client_routes, "health": versions_api.register_health},
        background=[task.LoopingCall(lambda: defer.ensureDeferred(uia.expire_old_sessions()))],
    )
    return hs


async def _dummy_stage(auth: dict[str, Any], ctx: Any) -> bool:
    return True


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
