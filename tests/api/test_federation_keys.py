"""The key server and the federation plumbing, in process, on SQLite and PostgreSQL.

Single server: /_matrix/key/v2/server (signed, checked with signedjson) and the notary
query endpoints.  Then three servers in one process, each with a TLS listener on
loopback, reaching each other through ``federation_static_routes``: key fetching over
TLS, notary answers, a signed request authenticated by the other side (which fetches
the sender's keys), and the allowlist refusing a stranger.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import signedjson.key
import signedjson.sign
from twisted.internet import defer, protocol, reactor
from twisted.web import server

from homeserver.app import Homeserver
from homeserver.core.errors import Codes, MatrixError
from homeserver.events.signing import (
    encode_verify_key_base64,
    generate_signing_key,
    get_verify_key,
    key_id,
    write_signing_keys,
)
from homeserver.federation.server_keys import MAX_KEY_VALIDITY_MS
from homeserver.federation.tls import server_tls_options
from homeserver.federation.transport import FederationDeniedError, HttpResponseError
from homeserver.storage.server_keys import ServerKeyRepository
from tests.api.conftest import Client, HSFixture
from tests.interop.synapse_server import make_self_signed_cert

DAY_MS = 24 * 3600 * 1000


def _keys_client(hs: Homeserver, cleanups: list[Callable[[], Any]]) -> Client:
    """A plain-HTTP loopback listener serving what a "federation" listener serves."""
    port = reactor.listenTCP(0, hs.build_site({"federation"}), interface="127.0.0.1")
    cleanups.append(port.stopListening)
    return Client(f"http://127.0.0.1:{port.getHost().port}")


@pytest.fixture
def cleanups() -> Iterator[list[Callable[[], Any]]]:
    todo: list[Callable[[], Any]] = []
    yield todo
    for fn in reversed(todo):
        fn()


def _verify_key(body: dict[str, Any], kid: str) -> Any:
    return signedjson.key.decode_verify_key_base64("ed25519", kid.split(":")[1], body["verify_keys"][kid]["key"])


# -- one server ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_server_keys_are_published_and_signed(
    make_server: Callable[..., HSFixture], tmp_path: Path, cleanups: list[Callable[[], Any]]
) -> None:
    old = generate_signing_key("old1")
    old_b64 = encode_verify_key_base64(get_verify_key(old))
    fx = make_server(old_signing_keys={"ed25519:old1": {"key": old_b64, "expired_ts": 1_600_000_000_000}})
    client = _keys_client(fx.hs, cleanups)
    resp = await client.get("/_matrix/key/v2/server")
    assert resp.code == 200, resp.body
    body = resp.body
    assert body["server_name"] == "test.local"
    (kid,) = body["verify_keys"]
    assert kid == "ed25519:a_test"
    verify_key = _verify_key(body, kid)
    signedjson.sign.verify_signed_json(body, "test.local", verify_key)  # signed by the key itself
    assert verify_key == get_verify_key(fx.hs.federation.local_keys.signing_key)  # type: ignore[union-attr]
    assert body["old_verify_keys"] == {"ed25519:old1": {"key": old_b64, "expired_ts": 1_600_000_000_000}}
    now = fx.hs.clock.time_msec()
    assert now < body["valid_until_ts"] <= now + DAY_MS  # key_refresh_interval defaults to 1d
    # The pre-1.6 form with a key ID in the path answers the same.
    again = await client.get("/_matrix/key/v2/server/ed25519:a_test")
    assert again.code == 200 and again.body == body
    # A client-only listener does not serve keys.
    assert (await fx.client.get("/_matrix/key/v2/server")).code == 404


@pytest_twisted.ensureDeferred
async def test_validity_is_bounded_to_seven_days(
    make_server: Callable[..., HSFixture], cleanups: list[Callable[[], Any]]
) -> None:
    fx = make_server(key_refresh_interval="30d")
    body = (await _keys_client(fx.hs, cleanups).get("/_matrix/key/v2/server")).body
    assert body["valid_until_ts"] <= fx.hs.clock.time_msec() + MAX_KEY_VALIDITY_MS


@pytest_twisted.ensureDeferred
async def test_notary_query_endpoints(make_server: Callable[..., HSFixture], cleanups: list[Callable[[], Any]]) -> None:
    fx = make_server()  # federates with nobody: nothing is ever fetched
    client = _keys_client(fx.hs, cleanups)
    own = (await client.get("/_matrix/key/v2/server")).body
    resp = await client.get("/_matrix/key/v2/query/test.local")
    assert resp.code == 200 and resp.body == {"server_keys": [own]}
    resp = await client.post("/_matrix/key/v2/query", {"server_keys": {"test.local": {}, "elsewhere.example": {}}})
    assert resp.code == 200 and resp.body == {"server_keys": [own]}
    resp = await client.get("/_matrix/key/v2/query/elsewhere.example?minimum_valid_until_ts=5")
    assert resp.code == 200 and resp.body == {"server_keys": []}
    resp = await client.post("/_matrix/key/v2/query", {"server_keys": {}})
    assert resp.code == 200 and resp.body == {"server_keys": []}


@pytest.mark.parametrize(
    ("method", "path", "body", "code", "errcode"),
    [
        ("POST", "/_matrix/key/v2/query", {}, 400, Codes.MISSING_PARAM),
        ("POST", "/_matrix/key/v2/query", {"server_keys": []}, 400, Codes.BAD_JSON),
        ("POST", "/_matrix/key/v2/query", {"server_keys": {"bad name!": {}}}, 400, Codes.INVALID_PARAM),
        ("POST", "/_matrix/key/v2/query", {"server_keys": {"a.example": []}}, 400, Codes.BAD_JSON),
        ("POST", "/_matrix/key/v2/query", {"server_keys": {"a.example": {"ed25519:x": 5}}}, 400, Codes.BAD_JSON),
        (
            "POST",
            "/_matrix/key/v2/query",
            {"server_keys": {"a.example": {"ed25519:x": {"minimum_valid_until_ts": "soon"}}}},
            400,
            Codes.INVALID_PARAM,
        ),
        (
            "POST",
            "/_matrix/key/v2/query",
            {"server_keys": {f"s{i}.example": {} for i in range(101)}},
            400,
            Codes.INVALID_PARAM,
        ),
        ("POST", "/_matrix/key/v2/query", b"not json", 400, Codes.NOT_JSON),
        ("GET", "/_matrix/key/v2/query/bad%20name", None, 400, Codes.INVALID_PARAM),
        ("GET", "/_matrix/key/v2/query/a.example?minimum_valid_until_ts=soon", None, 400, Codes.INVALID_PARAM),
        ("PUT", "/_matrix/key/v2/query", {}, 405, Codes.UNRECOGNIZED),
    ],
)
@pytest_twisted.ensureDeferred
async def test_notary_query_validation(
    make_server: Callable[..., HSFixture],
    cleanups: list[Callable[[], Any]],
    method: str,
    path: str,
    body: Any,
    code: int,
    errcode: str,
) -> None:
    client = _keys_client(make_server().hs, cleanups)
    if isinstance(body, bytes):
        resp = await client.request(method, path, raw=body)
    else:
        resp = await client.request(method, path, body)
    assert (resp.code, resp.body["errcode"]) == (code, errcode), resp.body


# -- several servers over TLS ----------------------------------------------------------------------


class _LateFactory(protocol.Factory):
    """Listens before the server it serves exists: its port is needed in the others' configs.

    (Binding port 0 up front avoids picking a "free" port that another process takes first.)
    """

    target: protocol.Factory | None = None

    def buildProtocol(self, addr: Any) -> Any:
        assert self.target is not None
        return self.target.buildProtocol(addr)


def _other_database(database_config: dict[str, Any], tmp_path: Path, name: str) -> dict[str, Any]:
    """A database of its own for one more server in the same test."""
    if database_config["name"] == "sqlite3":
        return {"name": "sqlite3", "args": {"database": str(tmp_path / f"{name}.db")}}
    import psycopg2

    args = {k: v for k, v in database_config["args"].items() if k not in ("options", "cp_min", "cp_max")}
    schema = f"t_{secrets.token_hex(6)}"
    conn = psycopg2.connect(**args)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema}")
    conn.close()
    return {"name": "psycopg2", "args": {**args, "options": f"-c search_path={schema}", "cp_min": 1, "cp_max": 4}}


class Peer:
    def __init__(self, name: str, fx: HSFixture, port: int, keys: Client) -> None:
        self.name = name
        self.fx = fx
        self.hs = fx.hs
        self.port = port
        self.keys = keys

    @property
    def federation(self) -> Any:
        return self.hs.federation

    @property
    def key_id(self) -> str:
        return key_id(self.federation.local_keys.signing_key)


def start_peers(
    make_server: Callable[..., HSFixture],
    database_config: dict[str, Any],
    tmp_path: Path,
    cleanups: list[Callable[[], Any]],
    allow: dict[str, list[str]],
    *,
    federation_routes: Callable[[Homeserver], Callable[[Any], None]] | None = None,
) -> dict[str, Peer]:
    """In-process servers named after ``allow``'s keys, each allowing the servers listed for
    it, with TLS federation listeners and static routes to each other on 127.0.0.1.

    ``federation_routes`` replaces a server's "federation" route group (test stand-ins).
    """
    cert, key = (str(p) for p in make_self_signed_cert(tmp_path, "127.0.0.1"))
    factories = {name: _LateFactory() for name in allow}
    ports: dict[str, int] = {}
    for name, factory in factories.items():
        listening = reactor.listenSSL(0, factory, server_tls_options(cert, key), interface="127.0.0.1")
        cleanups.append(listening.stopListening)
        ports[name] = listening.getHost().port
    result: dict[str, Peer] = {}
    first = next(iter(allow))
    for name in allow:
        key_path = tmp_path / f"{name}.key"
        key_path.write_text(write_signing_keys([generate_signing_key(f"{name[0]}_{secrets.token_hex(2)}")]))
        database = database_config if name == first else _other_database(database_config, tmp_path, name)
        fx = make_server(
            server_name=name,
            database=database,
            signing_key_path=str(key_path),
            federation_domain_whitelist=allow[name],
            federation_static_routes={other: f"127.0.0.1:{ports[other]}" for other in allow[name]},
            federation_verify_certificates=False,
            ip_range_blacklist=[],
            tls_certificate_path=cert,
            tls_private_key_path=key,
        )
        hs = fx.hs
        assert hs.federation is not None
        if federation_routes is not None:
            hs.route_groups["federation"] = federation_routes(hs)
        site = hs.build_site({"federation"})
        site.doStart()
        cleanups.append(site.doStop)
        factories[name].target = site
        cleanups.append(lambda f=hs.federation: defer.ensureDeferred(f.close()))
        result[name] = Peer(name, fx, ports[name], _keys_client(hs, cleanups))
    return result


def _whoami_routes(hs: Homeserver) -> Callable[[Any], None]:
    """A stand-in for the future federation servlets: who signed this request?"""
    assert hs.federation is not None
    authenticate = hs.federation.authenticator.authenticate

    def add(router: Any) -> None:
        async def whoami(request: server.Request) -> tuple[int, Any]:
            return 200, {"origin": await authenticate(request)}

        router.add("GET", "^/_matrix/federation/v1/test/whoami$", whoami)

    return add


@pytest.fixture
def peers(
    make_server: Callable[..., HSFixture],
    database_config: dict[str, Any],
    tmp_path: Path,
    cleanups: list[Callable[[], Any]],
) -> dict[str, Peer]:
    """a.test and b.test federate with each other; c.test talks to b.test, which refuses it."""
    allow = {"a.test": ["b.test"], "b.test": ["a.test"], "c.test": ["b.test"]}
    return start_peers(make_server, database_config, tmp_path, cleanups, allow, federation_routes=_whoami_routes)


@pytest_twisted.ensureDeferred
async def test_keyring_fetches_the_peers_keys_over_tls(peers: dict[str, Peer]) -> None:
    a, b = peers["a.test"], peers["b.test"]
    now = a.hs.clock.time_msec()
    key = await a.federation.keyring.get_key("b.test", b.key_id, now)
    assert key.verify_key == get_verify_key(b.federation.local_keys.signing_key)
    assert key.source == "b.test" and now < key.valid_until_ts <= now + MAX_KEY_VALIDITY_MS
    stored = await ServerKeyRepository(a.hs.db).get_keys("b.test", [b.key_id])
    assert stored[b.key_id].verify_key == key.verify_key


@pytest_twisted.ensureDeferred
async def test_notary_serves_the_peers_keys_cosigned(peers: dict[str, Peer]) -> None:
    a, b = peers["a.test"], peers["b.test"]
    for resp in (
        await a.keys.get("/_matrix/key/v2/query/b.test"),
        await a.keys.post("/_matrix/key/v2/query", {"server_keys": {"b.test": {b.key_id: {}}}}),
    ):
        assert resp.code == 200, resp.body
        (entry,) = resp.body["server_keys"]
        assert entry["server_name"] == "b.test"
        b_key = _verify_key(entry, b.key_id)
        signedjson.sign.verify_signed_json(entry, "b.test", b_key)  # the origin's own signature
        a_key = get_verify_key(a.federation.local_keys.signing_key)
        signedjson.sign.verify_signed_json(entry, "a.test", a_key)  # and ours, as notary
    # c.test is not on a.test's allowlist: a.test neither knows nor fetches its keys.
    assert (await a.keys.get("/_matrix/key/v2/query/c.test")).body == {"server_keys": []}
    assert await ServerKeyRepository(a.hs.db).get_keys("c.test", []) == {}


@pytest_twisted.ensureDeferred
async def test_signed_request_is_authenticated_by_the_peer(peers: dict[str, Peer]) -> None:
    a, b = peers["a.test"], peers["b.test"]
    body = await a.federation.client.get_json("b.test", "/_matrix/federation/v1/test/whoami")
    assert body == {"origin": "a.test"}
    # b.test verified the signature with a.test's key, fetched from a.test over TLS.
    stored = await ServerKeyRepository(b.hs.db).get_keys("a.test", [a.key_id])
    assert stored[a.key_id].source == "a.test"
    # And the other way round.
    assert await b.federation.client.get_json("a.test", "/_matrix/federation/v1/test/whoami") == {"origin": "b.test"}


@pytest_twisted.ensureDeferred
async def test_allowlist_refusals(peers: dict[str, Peer]) -> None:
    a, b, c = peers["a.test"], peers["b.test"], peers["c.test"]
    # c.test is not allowed by b.test: 403 before anything is processed (no key fetched).
    with pytest.raises(HttpResponseError) as info:
        await c.federation.client.get_json("b.test", "/_matrix/federation/v1/test/whoami")
    assert (info.value.code, info.value.errcode, info.value.error) == (
        403,
        "M_FORBIDDEN",
        "Federation denied with c.test.",
    )
    assert await ServerKeyRepository(b.hs.db).get_keys("c.test", []) == {}
    # And we never send to a destination off our own allowlist.
    with pytest.raises(FederationDeniedError):
        await c.federation.client.get_json("a.test", "/_matrix/federation/v1/version")
    with pytest.raises(MatrixError) as denied:
        await a.federation.authenticator.authenticate_parts(
            method="GET", uri="/x", authorization=[b'X-Matrix origin="c.test",key="ed25519:x",sig="y"'], content=None
        )
    assert denied.value.code == 403
