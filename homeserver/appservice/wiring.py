"""Plugging the application-service host into the homeserver (called once by app.py)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from homeserver.api.appservice import client as appservice_api
from homeserver.appservice.auth import AppServiceAuthenticator
from homeserver.appservice.host import AppServiceHost, build_appservices
from homeserver.appservice.registration import ApplicationService
from homeserver.config.appservice import load_app_services
from homeserver.core.clock import Clock
from homeserver.http.auth import RequestAuthenticator
from homeserver.http.server import Router
from homeserver.services.auth import Requester
from homeserver.storage.database import Database

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AppServiceParts:
    """The homeserver's collaborators the application services use."""

    accounts: Any
    devices: Any
    event_store: Any
    room_events: Any
    room_store: Any
    typing: Any
    receipts: Any
    presence: Any
    to_device_inbox: Any
    e2e_keys: Any


def setup_appservices(
    *,
    paths: tuple[str, ...],
    server_name: str,
    reactor: Any,
    clock: Clock,
    db: Database,
    authenticate: RequestAuthenticator,
    registration: Any,
    rooms: Any,
    profiles: Any,
    notifier: Any,
    parts: AppServiceParts,
    add_client_routes: Callable[[Callable[[Router], None]], None],
    require_admin: Callable[[Requester], Awaitable[None]],
    backoff_base_s: float = 1.0,
    timeout_s: float = 30.0,
) -> AppServiceHost | None:
    """Load the registrations (raising ConfigError on any problem), and when there are
    any, wire auth, reservations, queries, transactions and routes.  Returns the host
    (its ``ready`` Deferred fires once started), or None without services."""
    services = load_app_services(paths, server_name)
    if not services:
        return None
    host = build_appservices(
        services=services,
        reactor=reactor,
        clock=clock,
        db=db,
        parts=parts,
        backoff_base_s=backoff_base_s,
        timeout_s=timeout_s,
    )
    authenticate.app_service_auth = AppServiceAuthenticator(
        server_name=server_name, services=services, accounts=parts.accounts, devices=parts.devices
    )

    def reserved_username_check(user_id: str, app_service: ApplicationService | None) -> None:
        services.check_username(user_id, app_service)

    registration.reserved_username_check = reserved_username_check
    rooms.alias_checks.append(lambda user_id, alias: services.check_alias(alias, user_id))

    async def check_room_alias(creator: str, req: Any) -> Any:
        if req.room_alias_name:
            services.check_alias(f"#{req.room_alias_name}:{server_name}", creator)
        return req

    rooms.create_room_hooks.append(check_room_alias)

    # An invite to a local user of a service's namespace who does not exist yet: ask the
    # service first, so a bridge can create its ghost before the invite reaches it.
    suffix = ":" + server_name

    async def query_invitee(sender: str, room_id: str, action: str, target: str) -> None:
        if action == "invite" and target.endswith(suffix):
            await host.ensure_user(target)

    async def query_create_room_invitees(creator: str, req: Any) -> Any:
        for invitee in req.invite:
            if isinstance(invitee, str) and invitee.endswith(suffix):
                await host.ensure_user(invitee)
        return req

    rooms.before_membership_hooks.append(query_invitee)
    rooms.create_room_hooks.append(query_create_room_invitees)

    async def resolve_alias(alias: str) -> tuple[str, str] | None:
        return await host.query_alias(alias, parts.room_store.get_alias)  # type: ignore[no-any-return]

    rooms.unknown_alias_resolver = resolve_alias
    profiles.unknown_user_resolver = host.query_user
    assert host.event_feeder is not None and host.ephemeral_feeder is not None
    parts.room_events.post_persist_hooks.append(host.event_feeder.on_event)
    notifier.listeners.append(host.ephemeral_feeder.on_notify)
    add_client_routes(
        lambda router: appservice_api.register(
            router, authenticate=authenticate, host=host, require_admin=require_admin
        )
    )

    def start() -> None:
        host.ready = defer.ensureDeferred(host.start())
        host.ready.addErrback(lambda f: logger.error("application services did not start: %s", f.getTraceback()))

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", lambda: defer.ensureDeferred(host.stop()))
    return host
