"""The federation plumbing wired from configuration (called once, by ``app.build_homeserver``).

Kept here so the composition root stays one call long for this concern; each part
still takes its collaborators explicitly and can be built alone in tests.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from homeserver.config import HomeserverConfig
from homeserver.core.clock import Clock
from homeserver.events.signing import SigningKey, read_signing_keys
from homeserver.federation.auth import FederationAuthenticator
from homeserver.federation.discovery import ServerDiscovery
from homeserver.federation.dns import ReactorHostResolver, TwistedSrvResolver
from homeserver.federation.key_server import KeyNotary, LocalKeys, old_verify_keys_from_config
from homeserver.federation.keyring import Keyring, pinned_keys_from_config
from homeserver.federation.queue import BackoffPolicy
from homeserver.federation.ratelimit import FederationRateLimiter
from homeserver.federation.sender import FederationClientTransport, FederationSender
from homeserver.federation.tls import IPRangeFilter, TLSPolicy
from homeserver.federation.transport import Connector, FederationClient, WellKnownClient
from homeserver.storage.database import Database
from homeserver.storage.federation_queue import FederationQueueRepository
from homeserver.storage.server_keys import ServerKeyRepository

if TYPE_CHECKING:
    from homeserver.federation.outbound import FederationOutbound


@dataclass
class Federation:
    local_keys: LocalKeys
    keyring: Keyring
    notary: KeyNotary
    client: FederationClient
    authenticator: FederationAuthenticator
    discovery: ServerDiscovery
    well_known: WellKnownClient
    # the persisted per-destination queues (PUT /send)
    sender: FederationSender
    # what goes to which servers: room events, EDUs (set by build_federation_outbound)
    outbound: FederationOutbound | None = None

    async def start(self) -> None:
        """Resume the queues left non-empty by the previous run (when the server starts)."""
        await self.sender.start()

    async def close(self) -> None:
        self.sender.stop()
        await self.client.close()
        await self.well_known.close()


class _WakingAuthenticator(FederationAuthenticator):
    """Also tells the sender that the origin of a request it authenticated is up (so a
    backed-off queue to it is retried now rather than hours later)."""

    def __init__(self, *, on_origin: Callable[[str], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._on_origin = on_origin

    async def authenticate_parts(
        self, *, method: str, uri: str, authorization: Collection[bytes], content: Any | None
    ) -> str:
        origin = await super().authenticate_parts(method=method, uri=uri, authorization=authorization, content=content)
        self._on_origin(origin)
        return origin


def load_signing_keys(path: str) -> list[SigningKey]:
    """Every key in the signing key file; the first one signs."""
    try:
        with open(path, encoding="utf-8") as f:
            keys = read_signing_keys(f.read())
    except OSError as e:
        raise RuntimeError(f"cannot read the signing key {path}: {e.strerror}") from None
    if not keys:
        raise RuntimeError(f"no signing key in {path}")
    return keys


def build_federation(config: HomeserverConfig, *, reactor: Any, clock: Clock, db: Database) -> Federation:
    local_keys = LocalKeys(
        server_name=config.server_name,
        clock=clock,
        signing_keys=load_signing_keys(config.signing_key_path),
        old_verify_keys=old_verify_keys_from_config(config.old_signing_keys),
        key_refresh_interval_ms=config.key_refresh_interval,
    )
    connector = Connector(
        reactor=reactor,
        host_resolver=ReactorHostResolver(reactor),
        ip_filter=IPRangeFilter(config.ip_range_blacklist, config.ip_range_whitelist),
        tls=TLSPolicy(
            verify_certificates=config.federation_verify_certificates,
            custom_ca_paths=config.federation_custom_ca_list,
        ),
    )
    well_known = WellKnownClient(reactor=reactor, clock=clock, connector=connector)
    discovery = ServerDiscovery(
        clock=clock,
        srv=TwistedSrvResolver(reactor),
        well_known=well_known,
        static_routes=config.federation_static_routes,
    )
    client = FederationClient(
        reactor=reactor,
        clock=clock,
        server_name=config.server_name,
        signing_key=local_keys.signing_key,
        is_allowed=config.federation_allows,
        discovery=discovery,
        connector=connector,
    )
    store = ServerKeyRepository(db)
    keyring = Keyring(
        server_name=config.server_name,
        clock=clock,
        store=store,
        transport=client,
        local_keys=local_keys.verify_keys,
        is_allowed=config.federation_allows,
        pinned_keys=pinned_keys_from_config(config.federation_pinned_keys),
        trusted_key_servers=config.trusted_key_servers,
    )
    notary = KeyNotary(local=local_keys, clock=clock, store=store, fetcher=keyring, is_allowed=config.federation_allows)
    retry = config.federation
    sender = FederationSender(
        clock,
        FederationClientTransport(client),
        FederationQueueRepository(db),
        server_name=config.server_name,
        backoff=BackoffPolicy(
            min_ms=retry.destination_min_retry_interval,
            max_ms=retry.destination_max_retry_interval,
            multiplier=retry.destination_retry_multiplier,
        ),
    )
    authenticator = _WakingAuthenticator(
        server_name=config.server_name,
        clock=clock,
        keyring=keyring,
        is_allowed=config.federation_allows,
        on_origin=sender.wake,
        ratelimiter=FederationRateLimiter(clock, config.rc_federation),
    )
    return Federation(
        sender=sender,
        local_keys=local_keys,
        keyring=keyring,
        notary=notary,
        client=client,
        authenticator=authenticator,
        discovery=discovery,
        well_known=well_known,
    )
