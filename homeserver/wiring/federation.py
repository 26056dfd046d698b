"""Room federation on top of the federation plumbing (``federation/components.build_federation``):
queries, the receiving half (/send, event reads), outbound events and EDUs, remote joins and the
resident side of joins, end-to-end encryption across servers, remote media and backfill."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from homeserver.api.federation import events as federation_events_api
from homeserver.api.federation import keys as federation_keys_api
from homeserver.api.federation import media as federation_media_api
from homeserver.api.federation import membership as federation_membership_api
from homeserver.api.federation import queries as federation_queries_api
from homeserver.config import HomeserverConfig
from homeserver.core.clock import Clock
from homeserver.federation.backfill import build_federation_backfill
from homeserver.federation.components import Federation
from homeserver.federation.devices import E2EEFederation, build_e2ee_federation
from homeserver.federation.ingest import FederationEventHandler, build_federation_ingest
from homeserver.federation.ingest_serving import FederationEventServer
from homeserver.federation.membership import build_federation_membership
from homeserver.federation.outbound import FederationOutbound, build_federation_outbound
from homeserver.http.auth import RequestAuthenticator
from homeserver.http.server import Router
from homeserver.media.remote import build_remote_fetcher
from homeserver.media.service import MediaService
from homeserver.storage.database import Database
from homeserver.storage.federation_events import FederationEventStore
from homeserver.wiring.core import CoreAccounts, RunInThread
from homeserver.wiring.rooms import RoomParts


@dataclass
class RoomFederation:
    # the receiving half of room federation: /send, received PDUs, joins' state (federation/ingest.py)
    ingest: FederationEventHandler
    outbound: FederationOutbound
    # remote keys, device-list EDUs (federation/devices.py)
    e2ee: E2EEFederation
    # the "keys" listener resource (/_matrix/key/v2)
    key_routes: Callable[[Router], None]
    # added, in this order, to the "federation" and "client" resources
    federation_routes: list[Callable[[Router], None]] = field(default_factory=list)
    client_routes: list[Callable[[Router], None]] = field(default_factory=list)


def build_room_federation(
    config: HomeserverConfig,
    *,
    reactor: Any,
    clock: Clock,
    db: Database,
    federation: Federation,
    core: CoreAccounts,
    rooms: RoomParts,
    media: MediaService,
    authenticate: RequestAuthenticator,
    run_in_thread: RunInThread,
) -> RoomFederation:
    """Builds every room-federation part and sets the hooks it needs on the local services
    (``rooms.remote``, ``messages.backfiller``, the media service's remote fetcher)."""
    server_name = config.server_name
    authenticator = federation.authenticator
    event_store, state_store, room_events = rooms.event_store, rooms.state_store, rooms.room_events

    # queries: profile, directory, user keys (api/federation/queries.py)
    def queries(router: Router) -> None:
        federation_queries_api.register(
            router,
            server_name=server_name,
            authenticator=authenticator,
            profiles=rooms.profiles,
            aliases=rooms.rooms,
            keys=rooms.e2e_keys,
            directory=rooms.directory,
        )

    def whitelist(router: Router) -> None:
        federation_queries_api.register_whitelist(
            router,
            authenticate=authenticate,
            enabled=config.federation_whitelist_endpoint_enabled,
            whitelist=config.federation_domain_whitelist,
            allow_open=config.federation_allow_open,
        )

    # ingest (federation/ingest*.py, api/federation/events.py)
    ingest = build_federation_ingest(
        server_name=server_name,
        clock=clock,
        keyring=federation.keyring,
        client=federation.client,
        events=event_store,
        state=state_store,
        room_events=room_events,
    )
    event_reads = FederationEventServer(
        server_name=server_name, clock=clock, events=event_store, state=state_store, graph=FederationEventStore(db)
    )

    def events(router: Router) -> None:
        federation_events_api.register(router, authenticator=authenticator, transactions=ingest, reads=event_reads)

    # outbound (federation/outbound.py, edus.py)
    outbound = build_federation_outbound(
        federation=federation,
        is_allowed=config.federation_allows,
        room_events=room_events,
        event_store=event_store,
        shared_room_users=rooms.room_store.shared_room_users,
        typing=rooms.typing,
        receipts=rooms.receipts,
        presence=rooms.presence,
    )
    ingest.edu_handlers.update(outbound.edu_handlers)  # m.typing, m.receipt, m.presence

    # membership (federation/membership*.py, api/federation/membership.py)
    remote_membership, resident_membership = build_federation_membership(
        server_name=server_name,
        clock=clock,
        signing_key=federation.local_keys.signing_key,
        transport=federation.client,
        keyring=federation.keyring,
        ingest=ingest,
        relay=outbound,
        event_store=event_store,
        room_state=room_events,
        memberships=rooms.room_store,
        accounts=core.accounts,
    )
    rooms.rooms.remote = remote_membership

    def membership(router: Router) -> None:
        federation_membership_api.register(router, authenticator=authenticator, resident=resident_membership)

    # end-to-end encryption (federation/devices.py, remote_keys.py)
    e2ee = build_e2ee_federation(
        server_name=server_name,
        clock=clock,
        federation=federation,
        is_allowed=config.federation_allows,
        db=db,
        keys=rooms.e2e_keys,
        tracker=rooms.device_lists,
        to_device=rooms.to_device,
        profiles=rooms.profiles,
        room_events=room_events,
        shared_room_users=rooms.room_store.shared_room_users,
    )
    ingest.edu_handlers.update(e2ee.edu_handlers)  # inbound device-list, signing-key and to-device EDUs

    # remote media (media/remote.py, api/federation/media.py)
    media.set_remote_fetcher(
        build_remote_fetcher(config, reactor=reactor, federation=federation.client, run_in_thread=run_in_thread)
    )

    def media_routes(router: Router) -> None:
        federation_media_api.register(router, authenticator=authenticator, media=media)

    # backfill on /messages (federation/backfill.py, storage/backfill.py)
    rooms.messages.backfiller = build_federation_backfill(
        server_name=server_name,
        clock=clock,
        is_allowed=config.federation_allows,
        client=federation.client,
        db=db,
        events=event_store,
        state=state_store,
        receiver=ingest,
        locks=room_events,
    )

    def key_routes(router: Router) -> None:
        federation_keys_api.register(router, own_keys=federation.local_keys, notary=federation.notary)

    return RoomFederation(
        ingest=ingest,
        outbound=outbound,
        e2ee=e2ee,
        key_routes=key_routes,
        federation_routes=[queries, events, membership, media_routes],
        client_routes=[whitelist],
    )
