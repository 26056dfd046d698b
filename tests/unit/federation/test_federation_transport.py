"""The outbound transport: refusals before connecting, the IP filter, TLS policy, real round trips."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from _federation_helpers import make_self_signed_cert, new_key
from twisted.internet import defer, protocol, reactor
from twisted.internet.testing import MemoryReactorClock

from homeserver.config.ratelimiting import FederationRateLimitConfig
from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.events.signing import encode_verify_key_base64, get_verify_key, key_id
from homeserver.federation.auth import FederationAuthenticator
from homeserver.federation.discovery import HttpResponse, ServerDiscovery, SrvRecord
from homeserver.federation.keyring import Keyring, pinned_keys_from_config
from homeserver.federation.ratelimit import FederationRateLimiter
from homeserver.federation.tls import IPRangeFilter, TLSPolicy, server_tls_options
from homeserver.federation.transport import (
    Connector,
    FederationClient,
    FederationDeniedError,
    HttpResponseError,
    InvalidResponseError,
    RequestSendFailed,
)
from homeserver.http.server import HomeserverSite, RootResource, Router

CLIENT_NAME = "client.example"
CLIENT_KEY = new_key("c1")
DEFAULT_BLACKLIST = ("127.0.0.0/8", "10.0.0.0/8", "::1/128")


class RecordingSrv:
    def __init__(self) -> None:
        self.lookups: list[str] = []

    async def lookup_srv(self, name: str) -> list[SrvRecord]:
        self.lookups.append(name)
        return []


class RecordingWellKnown:
    def __init__(self) -> None:
        self.fetches: list[str] = []

    async def get(self, url: str) -> HttpResponse:
        self.fetches.append(url)
        return HttpResponse(404, {}, b"")


class RecordingResolver:
    def __init__(self, answers: dict[str, list[str]] | None = None) -> None:
        self.answers = answers or {}
        self.lookups: list[str] = []

    async def resolve(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        return self.answers.get(host, [])


@dataclass
class Client:
    client: FederationClient
    srv: RecordingSrv
    well_known: RecordingWellKnown
    resolver: RecordingResolver


def make_client(
    the_reactor: Any,
    *,
    allowed: set[str] | None = None,
    blacklist: tuple[str, ...] = DEFAULT_BLACKLIST,
    whitelist: tuple[str, ...] = (),
    verify: bool = False,
    custom_ca: tuple[str, ...] = (),
    resolver_answers: dict[str, list[str]] | None = None,
    timeout: float = 10.0,
    max_response_size: int = 2**20,
) -> Client:
    clock = Clock(the_reactor)
    srv, well_known, resolver = RecordingSrv(), RecordingWellKnown(), RecordingResolver(resolver_answers)
    discovery = ServerDiscovery(clock=clock, srv=srv, well_known=well_known, rng=random.Random(1))
    connector = Connector(
        reactor=the_reactor,
        host_resolver=resolver,
        ip_filter=IPRangeFilter(blacklist, whitelist),
        tls=TLSPolicy(verify_certificates=verify, custom_ca_paths=custom_ca),
        connect_timeout=2.0,
    )
    client = FederationClient(
        reactor=the_reactor,
        clock=clock,
        server_name=CLIENT_NAME,
        signing_key=CLIENT_KEY,
        is_allowed=(lambda name: True) if allowed is None else (lambda name: name in allowed),
        discovery=discovery,
        connector=connector,
        default_timeout=timeout,
        max_response_size=max_response_size,
    )
    return Client(client, srv, well_known, resolver)


def failure_of(d: Any) -> BaseException:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "still running"
    return results[0].value  # type: ignore[no-any-return]


# -- refusals, without any network -------------------------------------------------------------


def test_destination_outside_the_allowlist_is_refused_before_any_lookup() -> None:
    from twisted.internet import defer

    memory = MemoryReactorClock()
    c = make_client(memory, allowed={"friend.example"})
    err = failure_of(defer.ensureDeferred(c.client.get_json("stranger.example", "/_matrix/federation/v1/version")))
    assert isinstance(err, FederationDeniedError) and str(err) == "Federation denied with stranger.example."
    assert c.srv.lookups == [] and c.well_known.fetches == [] and c.resolver.lookups == []
    assert memory.tcpClients == [] and memory.sslClients == []


@pytest.mark.parametrize("destination", ["10.1.2.3:8448", "127.0.0.1", "[::1]:8448"])
def test_blacklisted_ip_literal_is_refused_before_connecting(destination: str) -> None:
    from twisted.internet import defer

    memory = MemoryReactorClock()
    c = make_client(memory)
    err = failure_of(defer.ensureDeferred(c.client.get_json(destination, "/x")))
    assert isinstance(err, RequestSendFailed) and "ip_range_blacklist" in str(err)
    assert memory.tcpClients == []


def test_hostname_resolving_to_blacklisted_address_is_refused() -> None:
    from twisted.internet import defer

    memory = MemoryReactorClock()
    c = make_client(memory, resolver_answers={"sneaky.example": ["10.0.0.7", "127.0.0.1"]})
    err = failure_of(defer.ensureDeferred(c.client.get_json("sneaky.example:8448", "/x")))
    assert isinstance(err, RequestSendFailed) and "10.0.0.7" in str(err)
    assert c.resolver.lookups == ["sneaky.example"] and memory.tcpClients == []


def test_only_allowed_addresses_are_tried() -> None:
    from twisted.internet import defer

    memory = MemoryReactorClock()
    c = make_client(memory, whitelist=("10.0.0.8/32",), resolver_answers={"mixed.example": ["10.0.0.7", "10.0.0.8"]})
    defer.ensureDeferred(c.client.get_json("mixed.example:8448", "/x"))
    assert [(host, port) for host, port, *_ in memory.tcpClients] == [("10.0.0.8", 8448)]


def test_ip_range_filter() -> None:
    f = IPRangeFilter(["10.0.0.0/8", "::1/128"], ["10.1.0.0/16"])
    assert not f.allows("10.0.0.1") and f.allows("10.1.2.3") and f.allows("8.8.8.8")
    assert not f.allows("::ffff:10.0.0.1")  # IPv4-mapped IPv6 is the IPv4 address
    assert not f.allows("::1") and f.allows("2001:4860::1")
    empty = IPRangeFilter([])
    assert not empty.allows("0.0.0.0") and not empty.allows("::")  # never
    assert not empty.allows("not an address")


# -- real round trips over TLS on loopback ------------------------------------------------------------


@dataclass
class TLSServer:
    port: int
    server_name: str
    cert: str
    seen: list[dict[str, Any]]
    # the /slow handler: entered (origin, n), and the Deferred each one waits on
    slow_entered: list[str] = field(default_factory=list)
    slow_gates: dict[str, defer.Deferred[None]] = field(default_factory=dict)


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[TLSServer]:
    """A loopback HTTPS server named 127.0.0.1:PORT that authenticates X-Matrix requests."""
    cert, key = make_self_signed_cert(tmp_path, "127.0.0.1")
    router = Router()
    seen: list[dict[str, Any]] = []
    holder: dict[str, FederationAuthenticator] = {}

    async def whoami(request: Any) -> tuple[int, Any]:
        origin = await holder["auth"].authenticate(request)
        seen.append({"origin": origin, "host": request.getHeader("Host"), "uri": request.uri.decode()})
        return 200, {"origin": origin}

    async def echo(request: Any, txn: str) -> tuple[int, Any]:
        origin = await holder["auth"].authenticate(request)
        return 200, {"origin": origin, "content": json.loads(request.content.read())}

    async def teapot(request: Any) -> tuple[int, Any]:
        return 418, {"errcode": "M_TEAPOT", "error": "short and stout"}

    async def big(request: Any) -> tuple[int, Any]:
        return 200, {"data": "x" * 100_000}

    slow_entered: list[str] = []
    slow_gates: dict[str, defer.Deferred[None]] = {}

    async def slow(request: Any, n: str) -> tuple[int, Any]:
        await holder["auth"].authenticate(request)
        slow_entered.append(n)
        gate = slow_gates.setdefault(n, defer.Deferred())
        await gate
        if n == "fail":
            raise MatrixError(400, Codes.INVALID_PARAM, "the handler failed")
        return 200, {"n": n}

    router.add("GET", "^/_matrix/federation/v1/whoami$", whoami)
    router.add("GET", "^/_matrix/federation/v1/slow/(?P<n>[^/]+)$", slow)
    router.add("PUT", "^/_matrix/federation/v1/echo/(?P<txn>[^/]+)$", echo)
    router.add("GET", "^/teapot$", teapot)
    router.add("GET", "^/big$", big)
    site = HomeserverSite(RootResource(router), max_request_size=2**20, max_upload_size=2**20)
    port = reactor.listenSSL(0, site, server_tls_options(cert, key), interface="127.0.0.1")
    server_name = f"127.0.0.1:{port.getHost().port}"
    clock = Clock(reactor)
    pinned = {CLIENT_NAME: {key_id(CLIENT_KEY): encode_verify_key_base64(get_verify_key(CLIENT_KEY))}}
    keyring = Keyring(
        server_name=server_name,
        clock=clock,
        store=None,  # type: ignore[arg-type]  # pinned keys never reach the store
        transport=None,  # type: ignore[arg-type]
        local_keys=dict,
        is_allowed=lambda name: name == CLIENT_NAME,
        pinned_keys=pinned_keys_from_config(pinned),
    )
    # rc_federation: one request of an origin processed at a time, no sleeping.
    limits = FederationRateLimitConfig(window_size=1000, sleep_limit=100, sleep_delay=500, reject_limit=50, concurrent=1)
    holder["auth"] = FederationAuthenticator(
        server_name=server_name,
        clock=clock,
        keyring=keyring,
        is_allowed=lambda name: name == CLIENT_NAME,
        ratelimiter=FederationRateLimiter(clock, limits),
    )
    yield TLSServer(port.getHost().port, server_name, cert, seen, slow_entered, slow_gates)
    port.stopListening()


@pytest_twisted.ensureDeferred
async def test_signed_get_over_tls_to_an_ip_literal(tls_server: TLSServer) -> None:
    c = make_client(reactor, blacklist=())
    try:
        body = await c.client.get_json(tls_server.server_name, "/_matrix/federation/v1/whoami")
        assert body == {"origin": CLIENT_NAME}
        assert tls_server.seen[0]["host"] == tls_server.server_name
        body = await c.client.put_json(
            tls_server.server_name, "/_matrix/federation/v1/echo/t%201", {"pdus": [], "ü": "∂"}
        )
        assert body == {"origin": CLIENT_NAME, "content": {"pdus": [], "ü": "∂"}}
    finally:
        await c.client.close()


@pytest_twisted.ensureDeferred
async def test_rc_federation_holds_a_slot_until_the_handler_is_done(tls_server: TLSServer) -> None:
    """With concurrent=1, a second request from the same origin waits until the first
    handler has returned, and a handler that fails gives its slot back too."""
    c = make_client(reactor, blacklist=())
    try:
        first = defer.ensureDeferred(c.client.get_json(tls_server.server_name, "/_matrix/federation/v1/slow/fail"))
        await _until(lambda: tls_server.slow_entered == ["fail"])
        second = defer.ensureDeferred(c.client.get_json(tls_server.server_name, "/_matrix/federation/v1/slow/two"))
        await _sleep(0.3)
        assert tls_server.slow_entered == ["fail"]  # the second waits for the slot
        tls_server.slow_gates["fail"].callback(None)
        with pytest.raises(HttpResponseError) as err:
            await first
        assert (err.value.code, err.value.errcode) == (400, "M_INVALID_PARAM")
        await _until(lambda: tls_server.slow_entered == ["fail", "two"])
        tls_server.slow_gates["two"].callback(None)
        assert await second == {"n": "two"}
        # The slot is free again.
        tls_server.slow_gates["three"] = defer.succeed(None)
        assert await c.client.get_json(tls_server.server_name, "/_matrix/federation/v1/slow/three") == {"n": "three"}
    finally:
        await c.client.close()


async def _sleep(seconds: float) -> None:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)  # type: ignore[attr-defined]
    await d


async def _until(condition: Any, timeout: float = 10.0) -> None:
    waited = 0.0
    while not condition():
        assert waited < timeout, "condition not reached"
        await _sleep(0.02)
        waited += 0.02


@pytest_twisted.ensureDeferred
async def test_certificate_verification(tls_server: TLSServer) -> None:
    strict = make_client(reactor, blacklist=(), verify=True)
    try:
        with pytest.raises(RequestSendFailed, match="certificate verify failed"):
            await strict.client.get_json(tls_server.server_name, "/_matrix/federation/v1/whoami")
    finally:
        await strict.client.close()
    # Trusting the certificate through federation_custom_ca_list: valid for the IP address.
    trusting = make_client(reactor, blacklist=(), verify=True, custom_ca=(tls_server.cert,))
    try:
        body = await trusting.client.get_json(tls_server.server_name, "/_matrix/federation/v1/whoami")
        assert body == {"origin": CLIENT_NAME}
    finally:
        await trusting.client.close()


@pytest_twisted.ensureDeferred
async def test_error_answers_and_size_limit(tls_server: TLSServer) -> None:
    c = make_client(reactor, blacklist=(), max_response_size=50_000)
    try:
        with pytest.raises(HttpResponseError) as info:
            await c.client.get_json(tls_server.server_name, "/teapot")
        assert (info.value.code, info.value.errcode, info.value.error) == (418, "M_TEAPOT", "short and stout")
        with pytest.raises(InvalidResponseError, match="larger than"):
            await c.client.get_json(tls_server.server_name, "/big")
    finally:
        await c.client.close()


@pytest_twisted.ensureDeferred
async def test_timeout_when_the_server_never_answers() -> None:
    class Silent(protocol.Protocol):
        pass

    factory = protocol.Factory.forProtocol(Silent)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    c = make_client(reactor, blacklist=(), timeout=0.5)
    try:
        with pytest.raises(RequestSendFailed, match="timed out"):
            await c.client.get_json(f"127.0.0.1:{port.getHost().port}", "/x")
    finally:
        await c.client.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_connection_refused_is_request_send_failed() -> None:
    probe = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
    free_port = probe.getHost().port
    await probe.stopListening()
    c = make_client(reactor, blacklist=())
    try:
        with pytest.raises(RequestSendFailed):
            await c.client.get_json(f"127.0.0.1:{free_port}", "/x")
    finally:
        await c.client.close()
