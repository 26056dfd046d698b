"""The composition root: the one place that knows how every part fits.

``build_homeserver(config, reactor)`` builds storage, services and servlets, each given its
collaborators explicitly; :class:`Homeserver` then starts the listeners and stops cleanly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, task, threads
from twisted.internet.interfaces import IListeningPort

from homeserver.api.admin import register as admin_register
from homeserver.api.client import account as account_api
from homeserver.api.client import devices as devices_api
from homeserver.api.client import directory as directory_api
from homeserver.api.client import keys as keys_api
from homeserver.api.client import login as login_api
from homeserver.api.client import push as push_api
from homeserver.api.client import register as register_api
from homeserver.api.client import rooms as rooms_api
from homeserver.api.client import sync as sync_api
from homeserver.api.client import userdata as userdata_api
from homeserver.api.client import versions as versions_api
from homeserver.api.federation import events as federation_events_api
from homeserver.api.federation import keys as federation_keys_api
from homeserver.api.federation import media as federation_media_api
from homeserver.api.federation import membership as federation_membership_api
from homeserver.api.federation import queries as federation_queries_api
from homeserver.api.media import admin as media_admin_api
from homeserver.api.media import media as media_api
from homeserver.appservice.host import AppServiceHost
from homeserver.appservice.wiring import AppServiceParts, setup_appservices
from homeserver.config import HomeserverConfig
from homeserver.config.listeners import IMPLIED_RESOURCES
from homeserver.core.clock import Clock
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.events.signing import SigningKey, read_signing_keys
from homeserver.federation.components import Federation, build_federation
from homeserver.federation.devices import E2EEFederation, build_e2ee_federation
from homeserver.federation.ingest import FederationEventHandler, build_federation_ingest
from homeserver.federation.ingest_serving import FederationEventServer
from homeserver.federation.membership import build_federation_membership
from homeserver.federation.outbound import build_federation_outbound
from homeserver.federation.tls import server_tls_options
from homeserver.filtering import parse_filter
from homeserver.http.auth import RequestAuthenticator
from homeserver.http.server import HomeserverSite, RootResource, Router
from homeserver.media.preview import PreviewService
from homeserver.media.remote import build_remote_fetcher
from homeserver.media.repository import MediaRepository
from homeserver.media.safe_http import IPPolicy, SafeHttpClient, threaded_resolver
from homeserver.media.service import MediaRules, MediaService, NoRemoteMedia
from homeserver.media.storage import LocalDiskBackend
from homeserver.services.account import AccountService
from homeserver.services.admin import AdminService
from homeserver.services.auth import AuthService, TokenLifetimes
from homeserver.services.devices import DeviceListTracker, DeviceService
from homeserver.services.directory import DirectoryService
from homeserver.services.e2ee import E2EKeyService
from homeserver.services.ephemeral import ReceiptService, TypingService
from homeserver.services.events import RoomEventService
from homeserver.services.key_backup import KeyBackupService
from homeserver.services.login import LoginRatelimiters, LoginService
from homeserver.services.message_ratelimit import MessageRateLimiter
from homeserver.services.messages import MessageService
from homeserver.services.notifier import Notifier
from homeserver.services.passwords import PasswordHasher
from homeserver.services.presence import PresenceService
from homeserver.services.presenter import EventPresenter
from homeserver.services.push import PushRuleService
from homeserver.services.ratelimit import Rate, Ratelimiter
from homeserver.services.registration import RegistrationService
from homeserver.services.rooms import RoomService
from homeserver.services.search import SearchService
from homeserver.services.sync import SyncService
from homeserver.services.sync_filter import FilterLoader
from homeserver.services.to_device import ToDeviceService
from homeserver.services.uia import UserInteractiveAuth
from homeserver.services.userdata import AccountDataService, ProfileService
from homeserver.storage.accounts import AccountRepository
from homeserver.storage.database import Database
from homeserver.storage.devices import DeviceRepository
from homeserver.storage.e2e_keys import E2EKeyRepository
from homeserver.storage.engines import create_engine
from homeserver.storage.events import EventRepository
from homeserver.storage.federation_events import FederationEventStore
from homeserver.storage.key_backup import KeyBackupRepository
from homeserver.storage.migrations import prepare_database
from homeserver.storage.push import PushRuleRepository
from homeserver.storage.receipts import ReceiptRepository
from homeserver.storage.registration_tokens import RegistrationTokenRepository
from homeserver.storage.rooms import RoomRepository
from homeserver.storage.search import SearchRepository
from homeserver.storage.state import StateGroupCache, StateRepository
from homeserver.storage.timeline import TimelineRepository
from homeserver.storage.to_device import ToDeviceRepository
from homeserver.storage.tokens import TokenRepository
from homeserver.storage.uia import UIARepository
from homeserver.storage.userdata import AccountDataRepository, ProfileRepository

logger = logging.getLogger(__name__)

# Room versions a client may ask for when creating a room.
ROOM_VERSIONS = {v.identifier: "stable" for v in KNOWN_ROOM_VERSIONS.values() if v.supported}
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


def load_signing_key(config: HomeserverConfig) -> SigningKey:
    """The server's current signing key, from ``signing_key_path`` (Synapse's file format)."""
    try:
        with open(config.signing_key_path, encoding="utf-8") as f:
            keys = read_signing_keys(f.read())
    except OSError as e:
        raise RuntimeError(
            f"cannot read the signing key {config.signing_key_path}: {e.strerror}"
            " (homeserver generate-config writes one)"
        ) from None
    if not keys:
        raise RuntimeError(f"no signing key in {config.signing_key_path}")
    return keys[0]


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
    tokens = TokenRepository(db)
    devices_repo = DeviceRepository(db, tokens)
    reg_tokens = RegistrationTokenRepository(db)

    password_cfg = config.password_config
    hasher = PasswordHasher(rounds=config.bcrypt_rounds, pepper=password_cfg.pepper, run_in_thread=run_in_thread)
    auth = AuthService(
        clock=clock,
        accounts=accounts,
        devices=devices_repo,
        tokens=tokens,
        lifetimes=TokenLifetimes(
            refreshable_access_token_lifetime=config.refreshable_access_token_lifetime,
            refresh_token_lifetime=config.refresh_token_lifetime,
            nonrefreshable_access_token_lifetime=config.nonrefreshable_access_token_lifetime,
            session_lifetime=config.session_lifetime,
        ),
    )
    login = LoginService(
        server_name=config.server_name,
        clock_ms=clock.time_msec,
        accounts=accounts,
        devices=devices_repo,
        auth=auth,
        hasher=hasher,
        ratelimiters=LoginRatelimiters(
            address=Ratelimiter(clock, _rate(config.rc_login.address)),
            account=Ratelimiter(clock, _rate(config.rc_login.account)),
            failed_attempts=Ratelimiter(clock, _rate(config.rc_login.failed_attempts)),
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
    notifier = Notifier(clock)
    state_cache = StateGroupCache()
    event_store = EventRepository(db, state_cache)
    state_store = StateRepository(db, state_cache)
    timeline = TimelineRepository(db)
    room_store = RoomRepository(db)
    profile_store = ProfileRepository(db)
    receipt_store = ReceiptRepository(db)
    room_events = RoomEventService(
        server_name=config.server_name,
        clock=clock,
        signing_key=load_signing_key(config),
        events=event_store,
        state=state_store,
        rooms=room_store,
        notifier=notifier,
    )
    profiles = ProfileService(
        server_name=config.server_name,
        profiles=profile_store,
        accounts=accounts,
        rooms=room_store,
        displayname_changes_enabled=config.registration.enable_set_displayname,
        avatar_changes_enabled=config.registration.enable_set_avatar_url,
    )
    rooms = RoomService(
        server_name=config.server_name,
        clock=clock,
        events=room_events,
        rooms=room_store,
        profile_of=profiles.lookup,
        default_room_version=config.default_room_version,
        encryption_by_default=config.encryption_enabled_by_default_for_room_type,
    )

    async def propagate_profile(user_id: str) -> None:
        for room_id in await rooms.joined_rooms(user_id):
            try:
                await rooms.update_membership(sender=user_id, room_id=room_id, action="join")
            except Exception:
                logger.exception("could not update %s's membership in %s", user_id, room_id)

    profiles.on_profile_changed = propagate_profile

    async def leave_all_rooms(user_id: str) -> None:
        for membership in await room_store.rooms_for_user(user_id, ("join", "invite", "knock")):
            try:
                await rooms.update_membership(sender=user_id, room_id=membership.room_id, action="leave")
            except Exception:
                logger.exception("deactivation: could not leave %s", membership.room_id)
    presenter = EventPresenter(clock=clock, events=event_store, state=state_store, timeline=timeline, rooms=room_store)
    messages = MessageService(
        events=room_events,
        event_store=event_store,
        state=state_store,
        timeline=timeline,
        rooms=room_store,
        presenter=presenter,
    )
    account_data = AccountDataService(notifier=notifier, account_data=AccountDataRepository(db), rooms=room_store)
    typing = TypingService(clock=clock, notifier=notifier, joined_users=room_events.joined_users)
    receipts = ReceiptService(
        clock=clock, notifier=notifier, receipts=receipt_store, events=event_store, joined_users=room_events.joined_users
    )
    sync = SyncService(
        clock=clock,
        notifier=notifier,
        events=room_events,
        event_store=event_store,
        state=state_store,
        timeline=timeline,
        rooms=room_store,
        presenter=presenter,
        account_data=account_data,
        typing=typing,
        receipts=receipts,
        receipt_store=receipt_store,
    )
    directory = DirectoryService(
        server_name=config.server_name,
        events=room_events,
        rooms=room_store,
        profiles=profile_store,
        search_all_users=config.user_directory.search_all_users,
    )
    filters = FilterLoader(account_data)
    presence = PresenceService(
        clock=clock, db=db, notifier=notifier, rooms=room_store, enabled=config.presence_enabled
    )
    sync.extensions.append(presence.sync_extension)
    push = PushRuleService(
        rules=PushRuleRepository(db),
        account_data=account_data,
        rooms=room_store,
        receipts=receipt_store,
        events=room_events,
        server_name=config.server_name,
    )
    room_events.post_persist_hooks.append(push.on_new_event)
    sync.extensions.append(push.sync_extension)
    device_lists = DeviceListTracker(
        server_name=config.server_name,
        keys=E2EKeyRepository(db),
        notifier=notifier,
        shared_users=room_store.shared_room_users,
    )
    e2e_keys = E2EKeyService(
        server_name=config.server_name,
        keys=E2EKeyRepository(db),
        rooms=room_store,
        shared_users=room_store.shared_room_users,
        device_list_changed=device_lists.changed,
    )
    devices_repo.deleted_listeners.append(e2e_keys.on_devices_deleted)
    to_device = ToDeviceService(
        server_name=config.server_name,
        clock=clock,
        notifier=notifier,
        inbox=ToDeviceRepository(db),
        devices=devices_repo,
    )
    sync.extensions.append(e2e_keys.sync_extension)
    sync.extensions.append(to_device.sync_extension)
    sync.positions["to_device"] = to_device.current_position
    sync.positions["device_lists"] = e2e_keys.current_position
    sync.positions["presence"] = presence.current_position

    services = Services(
        rooms=rooms,
        messages=messages,
        events=room_events,
        sync=sync,
        profiles=profiles,
        account_data=account_data,
        auth=auth,
        login=login,
        registration=registration,
        devices=DeviceService(devices=devices_repo, device_list_changed=device_lists.changed),
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
    services.account.on_deactivated = leave_all_rooms
    authenticate = RequestAuthenticator(auth)

    # -- media repository (homeserver/media, homeserver/api/media) ----------------------
    media = MediaService(
        server_name=config.server_name,
        clock=clock,
        repo=MediaRepository(db),
        backend=LocalDiskBackend(config.media_store_path, run_in_thread=run_in_thread),
        remote=NoRemoteMedia(),  # replaced under "federation media" below, once federation exists
        rules=MediaRules.from_config(config),
        create_limiter=Ratelimiter(clock, _rate(config.rc_media_create)),
        run_in_thread=run_in_thread,
    )
    url_previews = None
    if config.url_preview_enabled:
        url_previews = PreviewService(
            clock=clock,
            http=SafeHttpClient(
                reactor=reactor,
                policy=IPPolicy(config.url_preview_ip_range_blacklist, config.url_preview_ip_range_whitelist),
                resolve=threaded_resolver(run_in_thread),
                max_size=config.max_spider_size,
            ),
            media=media,
            max_image_pixels=config.max_image_pixels,
        )

    def media_routes(router: Router) -> None:
        media_api.register(router, authenticate=authenticate, media=media, previews=url_previews)

    def media_admin_routes(router: Router) -> None:
        media_admin_api.register(
            router, authenticate=authenticate, require_admin=services.admin.require_admin, media=media
        )

    # -- end of media repository --------------------------------------------------------

    # rc_message, shared by every listener (application services: rate_limited)
    message_limiter = MessageRateLimiter(Ratelimiter(clock, _rate(config.rc_message)), is_admin=services.admin.is_admin)

    def client_routes(router: Router) -> None:
        versions_api.register(
            router,
            authenticate=authenticate,
            default_room_version=config.default_room_version,
            room_versions=ROOM_VERSIONS,
            password_changes_enabled=services.account.password_changes_enabled,
            displayname_changes_enabled=config.registration.enable_set_displayname,
            threepid_changes_enabled=config.email is not None,  # /account/3pid (services/policy)
            client_well_known=_client_well_known(config),
            server_well_known=_server_well_known(config),
        )
        login_api.register(router, authenticate=authenticate, login=login, auth=auth)
        register_api.register(
            router,
            registration=registration,
            login=login,
            uia=uia,
            ratelimiter=Ratelimiter(clock, _rate(config.rc_registration)),
            authenticate=authenticate,
        )
        account_api.register(router, authenticate=authenticate, account=services.account, uia=uia)
        devices_api.register(router, authenticate=authenticate, devices=services.devices, uia=uia)
        admin_register.register(
            router, authenticate=authenticate, registration=registration, login=login, admin=services.admin
        )
        media_admin_routes(router)  # Synapse's /_synapse/admin/v1 media API, with the other admin APIs
        rooms_api.register(
            router, authenticate=authenticate, rooms=rooms, messages=messages, parse_filter=filters.room_event_filter,
            message_limiter=message_limiter,
        )
        sync_api.register(
            router,
            authenticate=authenticate,
            sync=sync,
            account_data=account_data,
            load_filter=filters.load,
            validate_filter=parse_filter,
            set_presence=lambda user_id, state: presence.set_presence(user_id, state, from_sync=True),
        )
        userdata_api.register(
            router,
            authenticate=authenticate,
            profiles=profiles,
            account_data=account_data,
            typing=typing,
            receipts=receipts,
            presence=presence,
        )
        push_api.register(router, authenticate=authenticate, push=push)
        keys_api.register(
            router,
            authenticate=authenticate,
            keys=e2e_keys,
            to_device=to_device,
            backups=KeyBackupService(backups=KeyBackupRepository(db)),
            uia=uia,
        )
        directory_api.register(
            router,
            authenticate=authenticate,
            rooms=rooms,
            directory=directory,
            is_admin=services.admin.is_admin,
            search=SearchService(
                search=SearchRepository(db),
                events=event_store,
                rooms=room_store,
                presenter=presenter,
                paginator=messages,
            ),
        )

    hs = Homeserver(
        config=config,
        reactor=reactor,
        clock=clock,
        db=db,
        services=services,
        route_groups={"client": client_routes, "health": versions_api.register_health, "media": media_routes},
        background=[
            task.LoopingCall(lambda: defer.ensureDeferred(uia.expire_old_sessions())),
            task.LoopingCall(media.housekeeping_task()),
        ],
    )

    # -- federation plumbing (homeserver/federation, homeserver/api/federation/keys.py) ---
    federation = hs.federation = build_federation(config, reactor=reactor, clock=clock, db=db)
    hs.route_groups["keys"] = lambda router: federation_keys_api.register(
        router, own_keys=federation.local_keys, notary=federation.notary
    )
    # -- end of federation plumbing ------------------------------------------------------

    # -- federation queries (homeserver/api/federation/queries.py) -----------------------
    def add_to_group(name: str, add_routes: Callable[[Router], None]) -> None:
        previous = hs.route_groups.get(name)

        def both(router: Router) -> None:
            if previous is not None:
                previous(router)
            add_routes(router)

        hs.route_groups[name] = both

    add_to_group(
        "federation",
        lambda router: federation_queries_api.register(
            router,
            server_name=config.server_name,
            authenticator=federation.authenticator,
            profiles=profiles,
            aliases=rooms,
            keys=e2e_keys,
            directory=directory,
        ),
    )
    add_to_group(
        "client",
        lambda router: federation_queries_api.register_whitelist(
            router,
            authenticate=authenticate,
            enabled=config.federation_whitelist_endpoint_enabled,
            whitelist=config.federation_domain_whitelist,
            allow_open=config.federation_allow_open,
        ),
    )
    # -- end of federation queries -------------------------------------------------------

    # -- federation ingest (homeserver/federation/ingest*.py, api/federation/events.py) ---
    federation_ingest = hs.federation_ingest = build_federation_ingest(
        server_name=config.server_name,
        clock=clock,
        keyring=federation.keyring,
        client=federation.client,
        events=event_store,
        state=state_store,
        room_events=room_events,
    )
    federation_event_reads = FederationEventServer(
        server_name=config.server_name,
        clock=clock,
        events=event_store,
        state=state_store,
        graph=FederationEventStore(db),
    )
    add_to_group(
        "federation",
        lambda router: federation_events_api.register(
            router,
            authenticator=federation.authenticator,
            transactions=federation_ingest,
            reads=federation_event_reads,
        ),
    )
    # -- end of federation ingest ---------------------------------------------------------

    # -- federation outbound (homeserver/federation/outbound.py, edus.py) ---------------
    federation_outbound = build_federation_outbound(
        federation=federation,
        is_allowed=config.federation_allows,
        room_events=room_events,
        event_store=event_store,
        shared_room_users=room_store.shared_room_users,
        typing=typing,
        receipts=receipts,
        presence=presence,
    )
    federation_ingest.edu_handlers.update(federation_outbound.edu_handlers)  # m.typing, m.receipt, m.presence
    # -- end of federation outbound -----------------------------------------------------

    # -- federation membership (homeserver/federation/membership*.py, api/federation/membership.py)
    remote_membership, resident_membership = build_federation_membership(
        server_name=config.server_name,
        clock=clock,
        signing_key=federation.local_keys.signing_key,
        transport=federation.client,
        keyring=federation.keyring,
        ingest=federation_ingest,
        relay=federation_outbound,
        event_store=event_store,
        room_state=room_events,
        memberships=room_store,
        accounts=accounts,
    )
    rooms.remote = remote_membership
    add_to_group(
        "federation",
        lambda router: federation_membership_api.register(
            router, authenticator=federation.authenticator, resident=resident_membership
        ),
    )
    # -- end of federation membership -------------------------------------------------------

    # -- federation e2ee (homeserver/federation/devices.py, remote_keys.py) ------------------
    hs.e2ee_federation = build_e2ee_federation(
        server_name=config.server_name,
        clock=clock,
        federation=federation,
        is_allowed=config.federation_allows,
        db=db,
        keys=e2e_keys,
        tracker=device_lists,
        to_device=to_device,
        profiles=profiles,
        room_events=room_events,
        shared_room_users=room_store.shared_room_users,
    )
    e2ee_ingest = locals().get("federation_ingest")
    if e2ee_ingest is not None:  # inbound device-list, signing-key and to-device EDUs
        e2ee_ingest.edu_handlers.update(hs.e2ee_federation.edu_handlers)
    # -- end of federation e2ee --------------------------------------------------------------

    # -- government policy (homeserver/services/policy) ---------------------------------------
    from homeserver.services.policy.wiring import build_policy

    policy = build_policy(
        config, reactor=reactor, clock=clock, db=db, room_events=room_events, rooms=rooms,
        directory=directory, event_store=event_store, room_store=room_store, admin=services.admin,
        registration=registration, uia=uia, authenticate=authenticate,
        signing_key=federation.local_keys.signing_key, login=login, push=push,
    )
    add_to_group("client", policy.client_routes)
    hs.background.extend(policy.background)
    # -- end of government policy -------------------------------------------------------------

    # -- application services (homeserver/appservice, homeserver/api/appservice) ---------
    hs.appservices = setup_appservices(
        paths=config.app_service_config_files,
        server_name=config.server_name,
        reactor=reactor,
        clock=clock,
        db=db,
        authenticate=authenticate,
        registration=registration,
        rooms=rooms,
        profiles=profiles,
        notifier=notifier,
        parts=AppServiceParts(
            accounts=accounts,
            devices=devices_repo,
            event_store=event_store,
            room_events=room_events,
            room_store=room_store,
            typing=typing,
            receipts=receipts,
            presence=presence,
            to_device_inbox=ToDeviceRepository(db),
            e2e_keys=e2e_keys,
        ),
        add_client_routes=lambda add_routes: add_to_group("client", add_routes),
        require_admin=services.admin.require_admin,
    )
    # -- end of application services -----------------------------------------------------

    # -- federation media (homeserver/media/remote.py, homeserver/api/federation/media.py) --
    media.set_remote_fetcher(
        build_remote_fetcher(config, reactor=reactor, federation=federation.client, run_in_thread=run_in_thread)
    )
    add_to_group(
        "federation",
        lambda router: federation_media_api.register(router, authenticator=federation.authenticator, media=media),
    )
    # -- end of federation media ---------------------------------------------------------

    # -- federation backfill (homeserver/federation/backfill.py, storage/backfill.py) -------
    from homeserver.federation.backfill import build_federation_backfill

    messages.backfiller = build_federation_backfill(
        server_name=config.server_name,
        clock=clock,
        is_allowed=config.federation_allows,
        client=federation.client,
        db=db,
        events=event_store,
        state=state_store,
        receiver=federation_ingest,
        locks=room_events,
    )
    # -- end of federation backfill ---------------------------------------------------------

    # -- client API conformance (api/client/voip.py, api/client/notifications.py) -------------
    from homeserver.api.client import notifications as notifications_api
    from homeserver.api.client.voip import build_voip_routes
    from homeserver.services.notifications import NotificationService

    add_to_group("client", build_voip_routes(config, clock=clock, authenticate=authenticate))
    notification_service = NotificationService(receipts=receipt_store, events=event_store, presenter=presenter)
    add_to_group(
        "client",
        lambda router: notifications_api.register(
            router, authenticate=authenticate, notifications=notification_service
        ),
    )
    # -- end of client API conformance --------------------------------------------------------

    # -- client gaps (api/client/spaces.py: hierarchy, OpenID, reports, timestamp_to_event) ----
    from homeserver.api.client.spaces import build_client_gaps

    client_gaps = build_client_gaps(
        server_name=config.server_name, clock=clock, db=db, authenticate=authenticate, room_events=room_events,
        event_store=event_store, room_store=room_store, presenter=presenter, require_admin=services.admin.require_admin,
        federation_authenticator=federation.authenticator,
    )
    add_to_group("client", client_gaps.client)
    add_to_group("federation", client_gaps.federation)
    # -- end of client gaps ---------------------------------------------------------------------

    # -- pushers (services/pushers.py, push/gateway.py, api/client/pushers.py) ----------------
    from homeserver.api.client import pushers as pushers_api
    from homeserver.services.pushers import build_pushers

    pushers = hs.pushers = build_pushers(
        config, reactor=reactor, clock=clock, db=db, push=push, room_events=room_events,
        device_deleted_listeners=devices_repo.deleted_listeners, run_in_thread=run_in_thread,
    )
    add_to_group("client", lambda router: pushers_api.register(router, authenticate=authenticate, pushers=pushers))
    # -- end of pushers -------------------------------------------------------------------------
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
