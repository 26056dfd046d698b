"""Inbound federation queries, in process over TLS, on SQLite and PostgreSQL.

Three servers: a.test answers; b.test is on its allowlist (and a.test on b.test's);
c.test would talk to a.test, but a.test refuses it.  Requests are really signed by the
sender's FederationClient and authenticated by a.test (which fetches b.test's keys).
Also Synapse's federation_whitelist client endpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted
from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json

from homeserver import __version__
from tests.api.conftest import Client, HSFixture
from tests.api.helpers import register
from tests.api.test_federation_keys import Peer, _keys_client, cleanups, start_peers

__all__ = ["cleanups"]  # the fixture, shared with the key server tests

FED = "/_matrix/federation/v1"
V3 = "/_matrix/client/v3"
ALICE = "@alice:a.test"


@pytest.fixture
def peers(
    make_server: Callable[..., HSFixture],
    database_config: dict[str, Any],
    tmp_path: Path,
    cleanups: list[Callable[[], Any]],
) -> dict[str, Peer]:
    """a.test and b.test federate; c.test allows a.test, which does not allow c.test."""
    allow = {"a.test": ["b.test"], "b.test": ["a.test"], "c.test": ["a.test"]}
    return start_peers(make_server, database_config, tmp_path, cleanups, allow)


async def ask(
    sender: Peer, method: str, path: str, *, args: dict[str, str] | None = None, content: Any = None
) -> tuple[int, Any]:
    """A request signed by ``sender`` to a.test: (status, parsed JSON body)."""
    code, body = await sender.federation.client.request(method, "a.test", path, args=args, content=content)
    return code, json.loads(body) if body else None


class Alice:
    """@alice:a.test with a device, one-time keys, a fallback key and cross-signing keys."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.key = generate_signing_key("ALICEDEV")
        self.ed25519 = encode_verify_key_base64(get_verify_key(self.key))
        self.room_id = ""
        self.master: dict[str, Any] = {}
        self.ssk: dict[str, Any] = {}

    def device_keys(
        self, algorithms: tuple[str, ...] = ("m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2")
    ) -> dict[str, Any]:
        keys = {
            "user_id": ALICE,
            "device_id": "ALICEDEV",
            "algorithms": list(algorithms),
            "keys": {"curve25519:ALICEDEV": "curvecurvecurve", "ed25519:ALICEDEV": self.ed25519},
        }
        return sign_json(keys, ALICE, self.key)

    async def otk_count(self) -> int:
        resp = await self.client.post(f"{V3}/keys/upload", {})
        assert resp.code == 200, resp.body
        return int(resp.body["one_time_key_counts"]["signed_curve25519"])


def _cross_signing_key(usage: str, signer: Any = None) -> tuple[Any, dict[str, Any]]:
    key = generate_signing_key(usage)
    public = encode_verify_key_base64(get_verify_key(key))
    key.version = public
    body: dict[str, Any] = {"user_id": ALICE, "usage": [usage], "keys": {f"ed25519:{public}": public}}
    return key, (sign_json(body, ALICE, signer) if signer is not None else body)


@pytest_twisted.async_fixture
async def alice(peers: dict[str, Peer]) -> Alice:
    a = peers["a.test"].fx
    client = a.new_client()
    client.token = (await register(client, "alice", device_id="ALICEDEV"))["access_token"]
    user = Alice(client)
    assert (await client.put(f"{V3}/profile/{ALICE}/displayname", {"displayname": "Alice"})).code == 200
    assert (await client.put(f"{V3}/devices/ALICEDEV", {"display_name": "Alice's phone in Paris"})).code == 200
    otks = {f"signed_curve25519:K{i}": sign_json({"key": f"otk{i}"}, ALICE, user.key) for i in range(2)}
    fallback = {"signed_curve25519:FB": sign_json({"key": "fallback", "fallback": True}, ALICE, user.key)}
    resp = await client.post(
        f"{V3}/keys/upload", {"device_keys": user.device_keys(), "one_time_keys": otks, "fallback_keys": fallback}
    )
    assert resp.code == 200, resp.body
    master, master_json = _cross_signing_key("master")
    _, ssk_json = _cross_signing_key("self_signing", master)
    _, usk_json = _cross_signing_key("user_signing", master)
    upload = {"master_key": master_json, "self_signing_key": ssk_json, "user_signing_key": usk_json}
    assert (await client.post(f"{V3}/keys/device_signing/upload", upload)).code == 200
    room = await client.post(
        f"{V3}/createRoom", {"room_alias_name": "lobby", "visibility": "public", "name": "The Lobby"}
    )
    assert room.code == 200, room.body
    private = await client.post(f"{V3}/createRoom", {"room_alias_name": "backroom", "name": "Back room"})
    assert private.code == 200, private.body
    user.room_id = room.body["room_id"]
    user.master = master_json
    user.ssk = ssk_json
    return user


def _devices_path(user_id: str) -> str:
    return f"{FED}/user/devices/{quote(user_id, safe='')}"


# -- answers to an allowed server ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_version_needs_no_signature(peers: dict[str, Peer]) -> None:
    resp = await peers["a.test"].keys.get(f"{FED}/version")
    assert resp.code == 200 and resp.body == {"server": {"name": "homeserver", "version": __version__}}
    assert await ask(peers["b.test"], "GET", f"{FED}/version") == (200, resp.body)


@pytest_twisted.ensureDeferred
async def test_profile_query(peers: dict[str, Peer], alice: Alice) -> None:
    b = peers["b.test"]
    path = f"{FED}/query/profile"
    assert await ask(b, "GET", path, args={"user_id": ALICE}) == (200, {"displayname": "Alice"})
    assert await ask(b, "GET", path, args={"user_id": ALICE, "field": "displayname"}) == (200, {"displayname": "Alice"})
    assert await ask(b, "GET", path, args={"user_id": ALICE, "field": "avatar_url"}) == (200, {})
    code, body = await ask(b, "GET", path, args={"user_id": "@nobody:a.test"})
    assert (code, body["errcode"]) == (404, "M_NOT_FOUND")
    for args, errcode in (
        ({"user_id": "@bob:b.test"}, "M_INVALID_PARAM"),
        ({"user_id": "alice"}, "M_INVALID_PARAM"),
        ({}, "M_MISSING_PARAM"),
        ({"user_id": ALICE, "field": ""}, "M_INVALID_PARAM"),
    ):
        code, body = await ask(b, "GET", path, args=args)
        assert (code, body["errcode"]) == (400, errcode), (args, body)


@pytest_twisted.ensureDeferred
async def test_directory_query(peers: dict[str, Peer], alice: Alice) -> None:
    b = peers["b.test"]
    path = f"{FED}/query/directory"
    found = await ask(b, "GET", path, args={"room_alias": "#lobby:a.test"})
    assert found == (200, {"room_id": alice.room_id, "servers": ["a.test"]})
    for alias in ("#nowhere:a.test", "#lobby:b.test"):
        code, body = await ask(b, "GET", path, args={"room_alias": alias})
        assert (code, body["errcode"]) == (404, "M_NOT_FOUND"), alias
    for args, errcode in (({"room_alias": "lobby"}, "M_INVALID_PARAM"), ({}, "M_MISSING_PARAM")):
        code, body = await ask(b, "GET", path, args=args)
        assert (code, body["errcode"]) == (400, errcode), args


@pytest_twisted.ensureDeferred
async def test_user_devices(peers: dict[str, Peer], alice: Alice) -> None:
    b = peers["b.test"]
    code, body = await ask(b, "GET", _devices_path(ALICE))
    assert code == 200, body
    assert body["user_id"] == ALICE and isinstance(body["stream_id"], int)
    (device,) = body["devices"]
    # Display names stay home (as Synapse's allow_device_name_lookup_over_federation: false).
    assert device == {"device_id": "ALICEDEV", "keys": alice.device_keys()}
    assert body["master_key"] == alice.master
    assert body["self_signing_key"] == alice.ssk
    assert "user_signing_key" not in body
    # The stream ID grows when the device list changes.
    changed = await alice.client.post(
        f"{V3}/keys/upload", {"device_keys": alice.device_keys(("m.megolm.v1.aes-sha2",))}
    )
    assert changed.code == 200, changed.body
    later = (await ask(b, "GET", _devices_path(ALICE)))[1]
    assert later["stream_id"] > body["stream_id"]
    # A local user without devices has an empty list.
    assert (await ask(b, "GET", _devices_path("@nobody:a.test")))[1]["devices"] == []
    for user_id in ("@bob:b.test", "not-a-user"):
        code, err = await ask(b, "GET", _devices_path(user_id))
        assert (code, err["errcode"]) == (400, "M_INVALID_PARAM"), user_id


@pytest_twisted.ensureDeferred
async def test_keys_query(peers: dict[str, Peer], alice: Alice) -> None:
    b = peers["b.test"]
    path = f"{FED}/user/keys/query"
    for wanted in ([], ["ALICEDEV"]):
        code, body = await ask(b, "POST", path, content={"device_keys": {ALICE: wanted}})
        assert code == 200, body
        assert set(body) == {"device_keys", "master_keys", "self_signing_keys"}
        assert body["device_keys"] == {ALICE: {"ALICEDEV": {**alice.device_keys(), "unsigned": {}}}}
        assert body["master_keys"] == {ALICE: alice.master}
        assert body["self_signing_keys"] == {ALICE: alice.ssk}
    code, body = await ask(b, "POST", path, content={"device_keys": {ALICE: ["NOSUCHDEV"], "@nobody:a.test": []}})
    assert code == 200 and body["device_keys"] == {ALICE: {}, "@nobody:a.test": {}}
    for content, errcode in (
        ({"device_keys": {"@bob:b.test": []}}, "M_INVALID_PARAM"),
        ({"device_keys": {"bob": []}}, "M_INVALID_PARAM"),
        ({"device_keys": {ALICE: "ALICEDEV"}}, "M_BAD_JSON"),
        ({"device_keys": {ALICE: [1]}}, "M_BAD_JSON"),
        ({"device_keys": []}, "M_BAD_JSON"),
        ({}, "M_MISSING_PARAM"),
        ([], "M_BAD_JSON"),
    ):
        code, body = await ask(b, "POST", path, content=content)
        assert (code, body["errcode"]) == (400, errcode), content


@pytest_twisted.ensureDeferred
async def test_keys_claim(peers: dict[str, Peer], alice: Alice) -> None:
    b = peers["b.test"]
    path = f"{FED}/user/keys/claim"
    content = {"one_time_keys": {ALICE: {"ALICEDEV": "signed_curve25519"}}}
    claimed = []
    for _ in range(3):
        code, body = await ask(b, "POST", path, content=content)
        assert code == 200 and set(body) == {"one_time_keys"}, body
        (key_id,) = body["one_time_keys"][ALICE]["ALICEDEV"]
        claimed.append(key_id)
    # Each one-time key once, then the fallback key.
    assert claimed == ["signed_curve25519:K0", "signed_curve25519:K1", "signed_curve25519:FB"]
    assert await alice.otk_count() == 0
    code, body = await ask(b, "POST", path, content={"one_time_keys": {ALICE: {"NOSUCHDEV": "signed_curve25519"}}})
    assert (code, body) == (200, {"one_time_keys": {}})
    for bad, errcode in (
        ({"one_time_keys": {"@bob:b.test": {"D": "signed_curve25519"}}}, "M_INVALID_PARAM"),
        ({"one_time_keys": {"@:a.test": {}}}, "M_INVALID_PARAM"),
        ({"one_time_keys": {ALICE: ["ALICEDEV"]}}, "M_BAD_JSON"),
        ({"one_time_keys": {ALICE: {"ALICEDEV": 5}}}, "M_BAD_JSON"),
        ({"one_time_keys": "all"}, "M_BAD_JSON"),
        ({}, "M_MISSING_PARAM"),
    ):
        code, body = await ask(b, "POST", path, content=bad)
        assert (code, body["errcode"]) == (400, errcode), bad


@pytest_twisted.ensureDeferred
async def test_public_rooms(peers: dict[str, Peer], alice: Alice) -> None:
    b = peers["b.test"]
    path = f"{FED}/publicRooms"
    code, body = await ask(b, "GET", path)
    assert code == 200, body
    (entry,) = body["chunk"]  # the back room is not published
    assert entry["room_id"] == alice.room_id and entry["name"] == "The Lobby"
    assert entry["canonical_alias"] == "#lobby:a.test" and entry["num_joined_members"] == 1
    assert (await ask(b, "GET", path, args={"limit": "1"}))[1]["chunk"] == [entry]
    assert (await ask(b, "POST", path, content={"filter": {"generic_search_term": "lobby"}}))[1]["chunk"] == [entry]
    assert (await ask(b, "POST", path, content={"filter": {"generic_search_term": "nothing"}}))[1]["chunk"] == []
    assert (await ask(b, "POST", path, content={"limit": 10}))[1]["chunk"] == [entry]
    for method, args, content, errcode in (
        ("GET", {"limit": "lots"}, None, "M_INVALID_PARAM"),
        ("GET", {"since": "x"}, None, "M_INVALID_PARAM"),
        ("POST", None, {"limit": "ten"}, "M_BAD_JSON"),
        ("POST", None, {"filter": "lobby"}, "M_BAD_JSON"),
    ):
        code, body = await ask(b, method, path, args=args, content=content)
        assert (code, body["errcode"]) == (400, errcode), (args, content)


# -- refusals ------------------------------------------------------------------------------------

ENDPOINTS: list[tuple[str, str, dict[str, str] | None, Any]] = [
    ("GET", f"{FED}/query/profile", {"user_id": ALICE}, None),
    ("GET", f"{FED}/query/directory", {"room_alias": "#lobby:a.test"}, None),
    ("GET", _devices_path(ALICE), None, None),
    ("POST", f"{FED}/user/keys/query", None, {"device_keys": {ALICE: []}}),
    ("POST", f"{FED}/user/keys/claim", None, {"one_time_keys": {ALICE: {"ALICEDEV": "signed_curve25519"}}}),
    ("GET", f"{FED}/publicRooms", None, None),
    ("POST", f"{FED}/publicRooms", None, {}),
]


@pytest_twisted.ensureDeferred
async def test_a_server_off_the_allowlist_gets_403_and_changes_nothing(peers: dict[str, Peer], alice: Alice) -> None:
    c = peers["c.test"]
    for method, path, args, content in ENDPOINTS:
        code, body = await ask(c, method, path, args=args, content=content)
        assert (code, body) == (403, {"errcode": "M_FORBIDDEN", "error": "Federation denied with c.test."}), path
    assert await alice.otk_count() == 2  # the claim consumed nothing
    # Nothing was processed, not even c.test's keys fetched.
    from homeserver.storage.server_keys import ServerKeyRepository

    assert await ServerKeyRepository(peers["a.test"].hs.db).get_keys("c.test", []) == {}


@pytest_twisted.ensureDeferred
async def test_unsigned_requests_get_401(peers: dict[str, Peer], alice: Alice) -> None:
    plain = peers["a.test"].keys  # a plain-HTTP listener serving what "federation" serves
    for method, path, args, content in ENDPOINTS:
        query = ("?" + "&".join(f"{k}={quote(v)}" for k, v in args.items())) if args else ""
        resp = await plain.request(method, path + query, content)
        assert (resp.code, resp.body["errcode"]) == (401, "M_UNAUTHORIZED"), path
        forged = await plain.request(
            method,
            path + query,
            content,
            headers={"Authorization": 'X-Matrix origin="b.test",destination="a.test",key="ed25519:x",sig="abcd"'},
        )
        assert (forged.code, forged.body["errcode"]) == (401, "M_UNAUTHORIZED"), path
    assert await alice.otk_count() == 2
    # A body that is not JSON is refused before anything else.
    for path in (f"{FED}/user/keys/query", f"{FED}/user/keys/claim", f"{FED}/publicRooms"):
        resp = await plain.request("POST", path, raw=b"{not json")
        assert (resp.code, resp.body["errcode"]) == (400, "M_NOT_JSON"), path


# -- Synapse's federation_whitelist client endpoint ------------------------------------------------

WHITELIST = "/_synapse/client/v1/config/federation_whitelist"


@pytest_twisted.ensureDeferred
async def test_whitelist_endpoint_is_off_by_default(make_server: Callable[..., HSFixture]) -> None:
    fx = make_server(federation_domain_whitelist=["b.test"])
    fx.client.token = (await register(fx.client, "alice"))["access_token"]
    resp = await fx.client.get(WHITELIST)
    assert (resp.code, resp.body["errcode"]) == (404, "M_UNRECOGNIZED")


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (
            {"federation_domain_whitelist": ["b.test", "c.test:8448"]},
            {"whitelist_enabled": True, "whitelist": ["b.test", "c.test:8448"]},
        ),
        ({}, {"whitelist_enabled": True, "whitelist": []}),  # no list, not open: nobody
        ({"federation_allow_open": True}, {"whitelist_enabled": False, "whitelist": []}),
    ],
)
@pytest_twisted.ensureDeferred
async def test_whitelist_endpoint(
    make_server: Callable[..., HSFixture],
    cleanups: list[Callable[[], Any]],
    settings: dict[str, Any],
    expected: dict[str, Any],
) -> None:
    fx = make_server(federation_whitelist_endpoint_enabled=True, **settings)
    resp = await fx.client.get(WHITELIST)
    assert (resp.code, resp.body["errcode"]) == (401, "M_MISSING_TOKEN")
    fx.client.token = (await register(fx.client, "alice"))["access_token"]
    resp = await fx.client.get(WHITELIST)
    assert (resp.code, resp.body) == (200, expected)
    # Served to clients, not to other servers.
    assert (await _keys_client(fx.hs, cleanups).get(WHITELIST)).code == 404
