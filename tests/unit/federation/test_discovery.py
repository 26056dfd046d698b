"""Server discovery: the spec's resolution steps, with fake DNS and a fake well-known fetcher."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from _federation_helpers import make_clock, run

from homeserver.federation.discovery import (
    DiscoveryError,
    HttpResponse,
    Route,
    ServerDiscovery,
    SrvRecord,
    cache_seconds,
    order_srv_records,
    parse_well_known,
)


class FakeSrv:
    def __init__(self) -> None:
        self.records: dict[str, list[SrvRecord] | Exception] = {}
        self.lookups: list[str] = []

    async def lookup_srv(self, name: str) -> list[SrvRecord]:
        self.lookups.append(name)
        answer = self.records.get(name, [])
        if isinstance(answer, Exception):
            raise answer
        return list(answer)


class FakeWellKnown:
    def __init__(self) -> None:
        self.responses: dict[str, HttpResponse | Exception] = {}
        self.fetches: list[str] = []

    def serve(self, host: str, body: Any, *, code: int = 200, headers: dict[str, list[str]] | None = None) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.responses[f"https://{host}/.well-known/matrix/server"] = HttpResponse(code, headers or {}, raw)

    async def get(self, url: str) -> HttpResponse:
        self.fetches.append(url)
        answer = self.responses.get(url)
        if answer is None:
            return HttpResponse(404, {}, b"")
        if isinstance(answer, Exception):
            raise answer
        return answer


class Env:
    def __init__(self, static_routes: dict[str, str] | None = None) -> None:
        self.reactor, clock = make_clock()
        self.srv = FakeSrv()
        self.well_known = FakeWellKnown()
        self.discovery = ServerDiscovery(
            clock=clock,
            srv=self.srv,
            well_known=self.well_known,
            static_routes=static_routes,
            rng=random.Random(4),
        )

    def resolve(self, name: str) -> list[Route]:
        return run(self.discovery.resolve(name))  # type: ignore[no-any-return]


def test_ip_literals_use_the_given_port_or_8448_without_any_lookup() -> None:
    env = Env()
    assert env.resolve("1.2.3.4") == [Route("1.2.3.4", 8448, "1.2.3.4", "1.2.3.4")]
    assert env.resolve("1.2.3.4:1234") == [Route("1.2.3.4", 1234, "1.2.3.4:1234", "1.2.3.4")]
    assert env.resolve("[2001:db8::1]:8449") == [Route("2001:db8::1", 8449, "[2001:db8::1]:8449", "2001:db8::1")]
    assert env.resolve("[::1]") == [Route("::1", 8448, "[::1]", "::1")]
    assert env.srv.lookups == [] and env.well_known.fetches == []


def test_explicit_port_skips_well_known_and_srv() -> None:
    env = Env()
    assert env.resolve("example.com:8000") == [Route("example.com", 8000, "example.com:8000", "example.com")]
    assert env.srv.lookups == [] and env.well_known.fetches == []


def test_well_known_delegation_to_host_and_port() -> None:
    env = Env()
    env.well_known.serve("example.com", {"m.server": "matrix.example.net:8443"})
    assert env.resolve("example.com") == [
        Route("matrix.example.net", 8443, "matrix.example.net:8443", "matrix.example.net")
    ]
    assert env.srv.lookups == []


def test_well_known_delegation_to_ip_literal() -> None:
    env = Env()
    env.well_known.serve("example.com", {"m.server": "10.1.2.3"})
    assert env.resolve("example.com") == [Route("10.1.2.3", 8448, "10.1.2.3", "10.1.2.3")]


def test_well_known_delegation_then_srv_on_the_delegated_name() -> None:
    env = Env()
    env.well_known.serve("example.com", {"m.server": "matrix.example.net"})
    env.srv.records["_matrix-fed._tcp.matrix.example.net"] = [SrvRecord(10, 0, 443, "fed.example.net.")]
    assert env.resolve("example.com") == [Route("fed.example.net", 443, "matrix.example.net", "matrix.example.net")]


def test_well_known_delegation_then_legacy_srv_then_8448() -> None:
    env = Env()
    env.well_known.serve("example.com", {"m.server": "matrix.example.net"})
    env.srv.records["_matrix._tcp.matrix.example.net"] = [SrvRecord(10, 0, 8000, "old.example.net")]
    assert env.resolve("example.com") == [Route("old.example.net", 8000, "matrix.example.net", "matrix.example.net")]
    env2 = Env()
    env2.well_known.serve("example.com", {"m.server": "matrix.example.net"})
    assert env2.resolve("example.com") == [
        Route("matrix.example.net", 8448, "matrix.example.net", "matrix.example.net")
    ]
    assert env2.srv.lookups == ["_matrix-fed._tcp.matrix.example.net", "_matrix._tcp.matrix.example.net"]


def test_no_well_known_srv_on_the_server_name_with_its_certificate() -> None:
    env = Env()
    env.srv.records["_matrix-fed._tcp.example.com"] = [SrvRecord(10, 5, 8443, "hs.hosting.example")]
    assert env.resolve("example.com") == [Route("hs.hosting.example", 8443, "example.com", "example.com")]
    assert env.well_known.fetches == ["https://example.com/.well-known/matrix/server"]


def test_no_well_known_no_srv_falls_back_to_8448() -> None:
    env = Env()
    assert env.resolve("example.com") == [Route("example.com", 8448, "example.com", "example.com")]
    assert env.srv.lookups == ["_matrix-fed._tcp.example.com", "_matrix._tcp.example.com"]


def test_matrix_fed_srv_wins_over_legacy() -> None:
    env = Env()
    env.srv.records["_matrix-fed._tcp.example.com"] = [SrvRecord(10, 0, 1, "new.example")]
    env.srv.records["_matrix._tcp.example.com"] = [SrvRecord(10, 0, 2, "old.example")]
    assert env.resolve("example.com")[0].host == "new.example"
    assert env.srv.lookups == ["_matrix-fed._tcp.example.com"]


def test_srv_service_explicitly_unavailable() -> None:
    env = Env()
    env.srv.records["_matrix-fed._tcp.example.com"] = [SrvRecord(0, 0, 0, ".")]
    with pytest.raises(DiscoveryError, match="unavailable"):
        env.resolve("example.com")


def test_srv_failure_is_an_error_unless_cached() -> None:
    env = Env()
    env.srv.records["_matrix-fed._tcp.example.com"] = [SrvRecord(10, 0, 1, "a.example", ttl=60)]
    env.resolve("example.com")
    env.reactor.advance(3600)
    env.srv.records["_matrix-fed._tcp.example.com"] = OSError("DNS timeout")
    assert env.resolve("example.com")[0].host == "a.example"  # the stale answer
    env2 = Env()
    env2.srv.records["_matrix-fed._tcp.example.com"] = OSError("DNS timeout")
    with pytest.raises(DiscoveryError, match="DNS timeout"):
        env2.resolve("example.com")


def test_srv_answers_are_cached_for_their_ttl() -> None:
    env = Env()
    env.srv.records["_matrix-fed._tcp.example.com"] = [SrvRecord(10, 0, 1, "a.example", ttl=300)]
    env.resolve("example.com")
    env.well_known.serve("example.com", {"m.server": "ignored.example"})  # well-known cached as absent
    env.resolve("example.com")
    assert env.srv.lookups == ["_matrix-fed._tcp.example.com"]
    env.reactor.advance(301)
    env.resolve("example.com")
    assert len(env.srv.lookups) == 2


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1]", json.dumps({"m.server": 7}).encode(), json.dumps({"m.server": "bad name!"}).encode(), b"{}"],
)
def test_invalid_well_known_falls_back_and_is_cached_for_an_hour(body: bytes) -> None:
    env = Env()
    env.well_known.serve("example.com", body)
    assert env.resolve("example.com") == [Route("example.com", 8448, "example.com", "example.com")]
    env.reactor.advance(3599)
    env.resolve("example.com")
    assert len(env.well_known.fetches) == 1
    env.reactor.advance(2)
    env.resolve("example.com")
    assert len(env.well_known.fetches) == 2


def test_non_200_well_known_is_ignored() -> None:
    env = Env()
    env.well_known.serve("example.com", {"m.server": "elsewhere.example:1"}, code=500)
    assert env.resolve("example.com")[0].host == "example.com"


def test_well_known_cache_follows_cache_control_within_bounds() -> None:
    env = Env()
    env.well_known.serve("example.com", {"m.server": "a.example:1"}, headers={"cache-control": ["max-age=600"]})
    assert env.resolve("example.com")[0].host == "a.example"
    env.well_known.serve("example.com", {"m.server": "b.example:1"})
    env.reactor.advance(599)
    assert env.resolve("example.com")[0].host == "a.example"
    env.reactor.advance(2)
    assert env.resolve("example.com")[0].host == "b.example"
    # No Cache-Control: 24 hours.
    env.well_known.serve("example.com", {"m.server": "c.example:1"})
    env.reactor.advance(23 * 3600)
    assert env.resolve("example.com")[0].host == "b.example"
    env.reactor.advance(3601)
    assert env.resolve("example.com")[0].host == "c.example"


def test_cache_seconds_bounds() -> None:
    assert cache_seconds({}) == 24 * 3600
    assert cache_seconds({"cache-control": ["public, max-age=3600"]}) == 3600
    assert cache_seconds({"cache-control": ["max-age=10"]}) == 5 * 60
    assert cache_seconds({"cache-control": ["max-age=9999999"]}) == 48 * 3600
    assert cache_seconds({"cache-control": ["no-store"]}) == 5 * 60
    assert cache_seconds({"cache-control": ["s-maxage=5, max-age=7200"]}) == 7200


def test_network_failures_back_off_exponentially_up_to_an_hour() -> None:
    env = Env()
    env.well_known.responses["https://example.com/.well-known/matrix/server"] = ConnectionRefusedError()
    waits = []
    for _ in range(7):
        env.resolve("example.com")
        fetched = len(env.well_known.fetches)
        waited = 0
        while len(env.well_known.fetches) == fetched:
            env.reactor.advance(60)
            waited += 60
            env.resolve("example.com")
        waits.append(waited)
    assert waits == [120, 240, 480, 960, 1920, 3600, 3600]  # 2, 4, 8, 16, 32 min, then an hour


def test_well_known_redirects_are_followed_but_not_loops_or_downgrades() -> None:
    env = Env()
    base = "https://example.com/.well-known/matrix/server"
    env.well_known.responses[base] = HttpResponse(301, {"location": ["https://www.example.com/wk"]}, b"")
    env.well_known.responses["https://www.example.com/wk"] = HttpResponse(200, {}, b'{"m.server": "hs.example:1"}')
    assert env.resolve("example.com")[0].host == "hs.example"

    loop = Env()
    loop.well_known.responses[base] = HttpResponse(302, {"location": ["/again"]}, b"")
    loop.well_known.responses["https://example.com/again"] = HttpResponse(302, {"location": [base]}, b"")
    assert loop.resolve("example.com")[0].host == "example.com"
    assert len(loop.well_known.fetches) == 2

    downgrade = Env()
    downgrade.well_known.responses[base] = HttpResponse(302, {"location": ["http://example.com/x"]}, b"")
    assert downgrade.resolve("example.com")[0].host == "example.com"
    assert downgrade.well_known.fetches == [base]


def test_static_routes_replace_discovery_but_keep_the_name() -> None:
    env = Env(static_routes={"agency.example": "10.20.0.5:8448", "other.example": "hs.internal"})
    env.well_known.serve("agency.example", {"m.server": "elsewhere.example:1"})
    assert env.resolve("agency.example") == [Route("10.20.0.5", 8448, "agency.example", "agency.example")]
    assert env.resolve("other.example") == [Route("hs.internal", 8448, "other.example", "other.example")]
    assert env.srv.lookups == [] and env.well_known.fetches == []


def test_static_route_for_a_delegated_name() -> None:
    env = Env(static_routes={"matrix.example.net": "10.0.0.9:9000"})
    env.well_known.serve("example.com", {"m.server": "matrix.example.net"})
    assert env.resolve("example.com") == [Route("10.0.0.9", 9000, "matrix.example.net", "matrix.example.net")]


def test_invalid_server_names_are_refused() -> None:
    env = Env()
    for bad in ("", "exa mple.com", "example.com:99999", "[::1"):
        with pytest.raises(DiscoveryError):
            env.resolve(bad)


def test_parse_well_known() -> None:
    assert parse_well_known(b'{"m.server": "a.example:443"}') == "a.example:443"
    with pytest.raises(DiscoveryError):
        parse_well_known(b'{"m.server": ""}')


def test_srv_ordering_priority_then_weight() -> None:
    records = [SrvRecord(20, 0, 1, "low"), SrvRecord(10, 1, 1, "light"), SrvRecord(10, 99, 1, "heavy")]
    firsts = {order_srv_records(records, random.Random(seed))[0].target for seed in range(50)}
    assert firsts <= {"light", "heavy"}
    counts = sum(order_srv_records(records, random.Random(seed))[0].target == "heavy" for seed in range(200))
    assert counts > 150
    for seed in range(20):
        assert order_srv_records(records, random.Random(seed))[-1].target == "low"
    zero = [SrvRecord(5, 0, 1, "a"), SrvRecord(5, 0, 2, "b")]
    assert {r.target for r in order_srv_records(zero, random.Random(1))} == {"a", "b"}
