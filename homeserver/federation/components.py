"""The federation plumbing wired from configuration (called once, by ``app.build_homeserver``).

Kept here so the composition root stays one call long for this concern; each part
still takes its collaborators explicitly and can be built alone in tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from homeserver.config import HomeserverConfig
from homeserver.core.clock import Clock
from homeserver.events.signing import SigningKey, read_signing_keys
from homeserver.federation.auth import FederationAuthenticator
from homeserver.federation.discovery import ServerDiscovery
from homeserver.federation.dns import ReactorHostResolver, TwistedSrvResolver
from homeserver.federation.key_server import KeyNotary, LocalKeys, old_verify_keys_from_config
from homeserver.federation.keyring import Keyring, pinned_keys_from_config
from homeserver.federation.tls import IPRangeFilter, TLSPolicy
from homeserver.federation.transport import Connector, FederationClient, WellKnownClient
from homeserver.storage.database import Database
from homeserver.storage.server_keys import ServerKeyRepository


@dataclass
class Federation:
    local_keys: LocalKeys
    keyring: Keyring
    notary: KeyNotary
    client: FederationClient
    authenticator: FederationAuthenticator
    discovery: ServerDiscovery
    well_known: WellKnownClient

    async def close(self) -> None:
        await self.client.close()
        await self.well_known.close()


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
    authenticator = FederationAuthenticator(
        server_name=config.server_name, clock=clock, keyring=keyring, is_allowed=config.federation_allows
    )
    return Federation(
        local_keys=local_keys,
        keyring=keyring,
        notary=notary,
        client=client,
        authenticator=authenticator,
        discovery=discovery,
        well_known=well_known,
    )
