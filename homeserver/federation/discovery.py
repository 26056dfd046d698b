"""Server discovery (spec: server-server API, "Resolving server names").

Where to connect for a server name, with DNS and HTTPS injected (:class:`SrvResolver`,
:class:`WellKnownFetcher`) so the rules can be tested without a network.  It happens
in two stages, as the transport needs them:

1. :meth:`ServerDiscovery.delegate`: the *delegated server name*.  An IP literal, a name
   with an explicit port, or a name in ``federation_static_routes`` is its own; otherwise
   ``https://<hostname>/.well-known/matrix/server`` may delegate to another name (cached:
   the response's Cache-Control max-age within 5 min..48 h, 24 h by default; errors for
   1 h; network failures for 2 min, doubling up to 1 h while they repeat).
2. :meth:`ServerDiscovery.routes`: the delegated name's connection targets, in order.
   A static route; an IP literal with its port or 8448; a hostname with an explicit
   port; otherwise SRV ``_matrix-fed._tcp.<host>``, then the deprecated
   ``_matrix._tcp.<host>``, then ``<host>:8448``.

Every :class:`Route` carries the ``Host`` header (the delegated server name as written)
and the name the TLS certificate must be valid for (its host part): delegation by DNS
never changes whose certificate we expect, only where we connect.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar
from urllib.parse import urljoin, urlsplit

from homeserver.core.clock import Clock
from homeserver.core.ids import InvalidID, is_valid_server_name, split_host_port

logger = logging.getLogger(__name__)

DEFAULT_FEDERATION_PORT = 8448

WELL_KNOWN_DEFAULT_CACHE_SECONDS = 24 * 3600
WELL_KNOWN_MIN_CACHE_SECONDS = 5 * 60
WELL_KNOWN_MAX_CACHE_SECONDS = 48 * 3600
WELL_KNOWN_ERROR_CACHE_SECONDS = 3600
WELL_KNOWN_DOWN_CACHE_SECONDS = 2 * 60
WELL_KNOWN_MAX_REDIRECTS = 5
WELL_KNOWN_MAX_SIZE = 50 * 1024
SRV_MIN_CACHE_SECONDS = 60
SRV_MAX_CACHE_SECONDS = 24 * 3600
_CACHE_SIZE = 10_000

_T = TypeVar("_T")


class DiscoveryError(Exception):
    """The server name cannot be resolved to anywhere to connect."""


@dataclass(frozen=True, slots=True)
class Route:
    """Connect to ``host`` (to be resolved to addresses unless an IP) on ``port``, send
    ``Host: host_header``, and expect a certificate for ``tls_server_name``."""

    host: str
    port: int
    host_header: str
    tls_server_name: str


@dataclass(frozen=True, slots=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str
    ttl: int = 3600


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """What the well-known fetcher got: status, lower-cased header names, body."""

    code: int
    headers: Mapping[str, Sequence[str]]
    body: bytes


class SrvResolver(Protocol):
    async def lookup_srv(self, name: str) -> list[SrvRecord]:
        """The SRV records at ``name``; [] when there are none.  A single record with
        target "." (service explicitly unavailable) must be returned as is."""
        ...


class WellKnownFetcher(Protocol):
    async def get(self, url: str) -> HttpResponse:
        """GET ``url`` over HTTPS without following redirects; raises on network errors."""
        ...


# -- pure helpers ----------------------------------------------------------------------------


def parse_server_name(server_name: str) -> tuple[str, int | None]:
    """``(host, port)`` with IPv6 brackets removed; raises :class:`DiscoveryError`."""
    try:
        host, port = split_host_port(server_name)
    except InvalidID as e:
        raise DiscoveryError(str(e)) from None
    if host.startswith("["):
        host = host[1:-1]
    return host, port


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def route_for(server_name: str, host: str, port: int) -> Route:
    """A route to ``host:port`` for (delegated) ``server_name``."""
    tls_name, _ = parse_server_name(server_name)
    return Route(host=host, port=port, host_header=server_name, tls_server_name=tls_name)


def parse_well_known(body: bytes) -> str:
    """The ``m.server`` of a well-known body; raises :class:`DiscoveryError` if invalid."""
    try:
        parsed = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise DiscoveryError("well-known response is not JSON") from None
    if not isinstance(parsed, dict):
        raise DiscoveryError("well-known response is not a JSON object")
    delegated = parsed.get("m.server")
    if not isinstance(delegated, str) or not is_valid_server_name(delegated):
        raise DiscoveryError(f"well-known m.server is not a server name: {delegated!r}")
    return delegated


_MAX_AGE_RE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)


def cache_seconds(headers: Mapping[str, Sequence[str]]) -> int:
    """How long to keep a valid well-known response, from its Cache-Control header."""
    control = ",".join(headers.get("cache-control", ())).lower()
    if re.search(r"(?:^|,)\s*(?:no-store|no-cache)\s*(?:,|$)", control):
        seconds = 0
    else:
        match = _MAX_AGE_RE.search(control)
        seconds = int(match.group(1)) if match else WELL_KNOWN_DEFAULT_CACHE_SECONDS
    return max(WELL_KNOWN_MIN_CACHE_SECONDS, min(seconds, WELL_KNOWN_MAX_CACHE_SECONDS))


def order_srv_records(records: Sequence[SrvRecord], rng: random.Random) -> list[SrvRecord]:
    """RFC 2782 order: ascending priority; within a priority, weighted random."""
    ordered: list[SrvRecord] = []
    for priority in sorted({r.priority for r in records}):
        group = [r for r in records if r.priority == priority]
        while group:
            total = sum(r.weight for r in group)
            if total == 0:
                chosen = group[0]
            else:
                point = rng.randint(1, total)
                running = 0
                chosen = group[-1]
                for record in group:
                    running += record.weight
                    if running >= point:
                        chosen = record
                        break
            ordered.append(chosen)
            group.remove(chosen)
    return ordered


# -- the resolver ----------------------------------------------------------------------------


@dataclass
class _WellKnownEntry:
    delegated: str | None
    expires: float
    failures: int = 0


class ServerDiscovery:
    def __init__(
        self,
        *,
        clock: Clock,
        srv: SrvResolver,
        well_known: WellKnownFetcher,
        static_routes: Mapping[str, str] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._clock = clock
        self._srv = srv
        self._well_known = well_known
        self._static = dict(static_routes or {})
        self._rng = rng or random.Random()
        self._well_known_cache: dict[str, _WellKnownEntry] = {}
        self._srv_cache: dict[str, tuple[list[SrvRecord], float]] = {}

    async def resolve(self, server_name: str) -> list[Route]:
        """Both stages: the routes for ``server_name``, best first."""
        return await self.routes(await self.delegate(server_name))

    async def delegate(self, server_name: str) -> str:
        """The delegated server name (stage 1): ``server_name`` itself or its well-known ``m.server``."""
        host, port = parse_server_name(server_name)
        if server_name in self._static or is_ip_literal(host) or port is not None:
            return server_name
        return await self._well_known_delegation(host) or server_name

    async def routes(self, delegated: str) -> list[Route]:
        """The connection targets of a delegated server name (stage 2), best first."""
        host, port = parse_server_name(delegated)
        static = self._static.get(delegated)
        if static is not None:
            target_host, target_port = parse_server_name(static)
            return [route_for(delegated, target_host, target_port or DEFAULT_FEDERATION_PORT)]
        if is_ip_literal(host):
            return [route_for(delegated, host, port or DEFAULT_FEDERATION_PORT)]
        if port is not None:
            return [route_for(delegated, host, port)]
        for service in ("_matrix-fed._tcp.", "_matrix._tcp."):
            records = await self._lookup_srv(service + host)
            if len(records) == 1 and records[0].target in (".", ""):
                raise DiscoveryError(f"{service}{host} says the service is unavailable")
            if records:
                return [route_for(delegated, r.target.rstrip("."), r.port) for r in records]
        return [route_for(delegated, host, DEFAULT_FEDERATION_PORT)]

    # -- SRV ----------------------------------------------------------------------------------

    async def _lookup_srv(self, name: str) -> list[SrvRecord]:
        now = self._clock.time()
        cached = self._srv_cache.get(name)
        if cached is not None and cached[1] > now:
            return order_srv_records(cached[0], self._rng)
        try:
            records = await self._srv.lookup_srv(name)
        except Exception as e:
            if cached is not None:
                logger.warning("SRV lookup of %s failed (%s); using the expired answer", name, e)
                return order_srv_records(cached[0], self._rng)
            raise DiscoveryError(f"SRV lookup of {name} failed: {e}") from e
        ttl = min((r.ttl for r in records), default=SRV_MIN_CACHE_SECONDS)
        ttl = max(SRV_MIN_CACHE_SECONDS, min(ttl, SRV_MAX_CACHE_SECONDS))
        self._bounded_put(self._srv_cache, name, (records, now + ttl))
        return order_srv_records(records, self._rng)

    # -- .well-known ---------------------------------------------------------------------------

    async def _well_known_delegation(self, hostname: str) -> str | None:
        now = self._clock.time()
        entry = self._well_known_cache.get(hostname)
        if entry is not None and entry.expires > now:
            return entry.delegated
        failures = 0
        try:
            delegated, seconds = await self._fetch_well_known(hostname)
        except _WellKnownUnreachable as e:
            failures = (entry.failures if entry is not None else 0) + 1
            seconds = min(WELL_KNOWN_DOWN_CACHE_SECONDS * 2 ** (failures - 1), WELL_KNOWN_ERROR_CACHE_SECONDS)
            delegated = None
            logger.info("no .well-known for %s (%s); retrying in %ds", hostname, e, seconds)
        except DiscoveryError as e:
            delegated, seconds = None, WELL_KNOWN_ERROR_CACHE_SECONDS
            logger.info("invalid .well-known for %s: %s", hostname, e)
        self._bounded_put(self._well_known_cache, hostname, _WellKnownEntry(delegated, now + seconds, failures))
        return delegated

    async def _fetch_well_known(self, hostname: str) -> tuple[str, int]:
        url = f"https://{hostname}/.well-known/matrix/server"
        seen = {url}
        for _ in range(WELL_KNOWN_MAX_REDIRECTS + 1):
            try:
                response = await self._well_known.get(url)
            except Exception as e:
                raise _WellKnownUnreachable(str(e) or type(e).__name__) from e
            if response.code in (301, 302, 303, 307, 308):
                location = next(iter(response.headers.get("location", ())), None)
                if not location:
                    raise DiscoveryError(f"redirect without a Location from {url}")
                url = urljoin(url, location)
                if urlsplit(url).scheme != "https":
                    raise DiscoveryError(f"well-known redirect to a non-HTTPS URL {url}")
                if url in seen:
                    raise DiscoveryError(f"well-known redirect loop at {url}")
                seen.add(url)
                continue
            if response.code != 200:
                raise DiscoveryError(f"well-known answered HTTP {response.code}")
            if len(response.body) > WELL_KNOWN_MAX_SIZE:
                raise DiscoveryError("well-known response is too large")
            return parse_well_known(response.body), cache_seconds(response.headers)
        raise DiscoveryError(f"more than {WELL_KNOWN_MAX_REDIRECTS} well-known redirects")

    @staticmethod
    def _bounded_put(cache: dict[str, _T], key: str, value: _T) -> None:
        cache.pop(key, None)
        cache[key] = value
        while len(cache) > _CACHE_SIZE:
            del cache[next(iter(cache))]


class _WellKnownUnreachable(Exception):
    """The well-known request failed at the network level (as opposed to a bad answer)."""
