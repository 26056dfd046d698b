"""Federation plumbing against a real Synapse, over TLS on loopback, both directions.

Our server is named ``127.0.0.1:PORT`` (an IP literal, self-signed certificate), Synapse
``127.0.0.2:PORT``; neither checks certificates (``federation_verify_certificates:
false``) and both allow loopback addresses (``ip_range_blacklist: []``).

1. Our server run by its CLI with a ``tls: true`` federation listener: Synapse, as a
   notary, fetches our keys from it and vouches for them; our server, as a notary,
   fetches Synapse's keys (the keyring and transport as app.py wires them).
2. Our federation parts in this process, with the TLS listener Synapse talks to: our
   Keyring fetches and checks Synapse's keys; our transport sends Synapse signed
   requests, which Synapse authenticates by fetching *our* keys from us; and Synapse's
   own signed request to us (a profile query a Synapse user triggers) passes our
   FederationAuthenticator, which fetched Synapse's keys to check it.
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import signedjson.key
import signedjson.sign
import treq
from twisted.internet import defer, reactor
from twisted.web import server

from homeserver.app import build_homeserver
from homeserver.config import parse_config
from homeserver.events.signing import generate_signing_key, write_signing_keys
from homeserver.federation.tls import server_tls_options
from tests.interop import harness as h
from tests.interop.federation_scenarios import start_ours, start_theirs
from tests.interop.synapse_server import make_self_signed_cert

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]

PASSWORD = "federation keys password"


def _insecure() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _verify_key(body: dict[str, Any], kid: str) -> Any:
    return signedjson.key.decode_verify_key_base64("ed25519", kid.split(":", 1)[1], body["verify_keys"][kid]["key"])


def _check_self_signed(body: dict[str, Any], server_name: str) -> list[str]:
    """Check a key response is signed by its own keys; return its key IDs."""
    assert body["server_name"] == server_name, body
    for kid in body["verify_keys"]:
        signedjson.sign.verify_signed_json(body, server_name, _verify_key(body, kid))
    return list(body["verify_keys"])


def test_keys_over_tls_between_our_cli_server_and_synapse(servers: h.ServerPool, tmp_path: Path) -> None:
    our_port, their_port = h.free_port("127.0.0.1"), h.free_port("127.0.0.2")
    ours_name, theirs_name = f"127.0.0.1:{our_port}", f"127.0.0.2:{their_port}"
    theirs = start_theirs(servers, allow=[ours_name], port=their_port)
    ours = start_ours(servers, tmp_path, allow=[theirs_name], port=our_port)
    assert ours.server_name == ours_name and theirs.server_name == theirs_name

    # Our TLS listener serves our keys, signed by themselves.
    status, own = h.http_json("GET", f"https://{ours_name}/_matrix/key/v2/server", context=_insecure())
    assert status == 200, own
    our_key_ids = _check_self_signed(own, ours_name)

    # Synapse, as a notary, fetches them from our TLS listener, checks them and vouches for
    # them.  (Synapse fetches on a cache miss only when asked for specific key IDs.)
    status, answer = h.http_json(
        "POST",
        f"https://{theirs_name}/_matrix/key/v2/query",
        {"server_keys": {ours_name: {kid: {"minimum_valid_until_ts": 0} for kid in our_key_ids}}},
        context=_insecure(),
        timeout=30,
    )
    assert status == 200, (answer, theirs.log_tail(30), ours.log_tail(30))
    (entry,) = answer["server_keys"]
    assert _check_self_signed(entry, ours_name) == our_key_ids
    status, synapse_own = h.http_json("GET", f"https://{theirs_name}/_matrix/key/v2/server", context=_insecure())
    (synapse_kid,) = _check_self_signed(synapse_own, theirs_name)
    signedjson.sign.verify_signed_json(entry, theirs_name, _verify_key(synapse_own, synapse_kid))

    # Our server, as a notary, fetches Synapse's keys over TLS and vouches for them.
    status, answer = h.http_json(
        "GET", f"https://{ours_name}/_matrix/key/v2/query/{theirs_name}", context=_insecure(), timeout=30
    )
    assert status == 200, (answer, ours.log_tail(30))
    (entry,) = answer["server_keys"]
    assert _check_self_signed(entry, theirs_name) == [synapse_kid]
    signedjson.sign.verify_signed_json(entry, ours_name, _verify_key(own, our_key_ids[0]))


@pytest_twisted.ensureDeferred
async def test_signed_requests_both_ways_with_synapse(servers: h.ServerPool, tmp_path: Path) -> None:
    our_port, their_port = h.free_port("127.0.0.1"), h.free_port("127.0.0.2")
    ours_name, theirs_name = f"127.0.0.1:{our_port}", f"127.0.0.2:{their_port}"
    theirs = servers.start_synapse(
        federation_tls=True,
        host="127.0.0.2",
        federation_port=their_port,
        extra_config={"federation_domain_whitelist": [ours_name]},
    )
    alice = theirs.register_user("alice", PASSWORD)
    status, login = h.http_json(
        "POST",
        theirs.client_url + "/_matrix/client/v3/login",
        {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": PASSWORD},
    )
    assert status == 200, login

    # Our server, in this process, with a TLS listener on 127.0.0.1.
    cert, key = make_self_signed_cert(tmp_path, "127.0.0.1")
    key_path = tmp_path / "signing.key"
    key_path.write_text(write_signing_keys([generate_signing_key("a_ours")]))
    config, _ = parse_config(
        {
            "server_name": ours_name,
            "listeners": [],
            "database": {"name": "sqlite3", "args": {"database": str(tmp_path / "ours.db")}},
            "signing_key_path": str(key_path),
            "report_stats": False,
            "federation_domain_whitelist": [theirs_name],
            "federation_verify_certificates": False,
            "ip_range_blacklist": [],
            "tls_certificate_path": str(cert),
            "tls_private_key_path": str(key),
        },
        config_dir=str(tmp_path),
    )
    hs = build_homeserver(config, reactor)
    federation = hs.federation
    assert federation is not None
    profile_queries: list[str] = []

    # Until the federation servlets exist: a profile query servlet that authenticates.
    def federation_routes(router: Any) -> None:
        async def profile(request: server.Request) -> tuple[int, Any]:
            origin = await federation.authenticator.authenticate(request)
            profile_queries.append(origin)
            return 200, {"displayname": f"Bob, as told to {origin}"}

        router.add("GET", "^/_matrix/federation/v1/query/profile$", profile)

    hs.route_groups["federation"] = federation_routes
    port = reactor.listenSSL(
        our_port, hs.build_site({"federation"}), server_tls_options(str(cert), str(key)), interface="127.0.0.1"
    )
    try:
        # 1. Our Keyring fetches Synapse's keys over TLS and checks them.
        status, synapse_own = h.http_json("GET", f"https://{theirs_name}/_matrix/key/v2/server", context=_insecure())
        (synapse_kid,) = _check_self_signed(synapse_own, theirs_name)
        fetched = await federation.keyring.get_key(theirs_name, synapse_kid, hs.clock.time_msec())
        assert fetched.key_base64 == synapse_own["verify_keys"][synapse_kid]["key"]
        assert fetched.source == theirs_name

        # 2. A signed request Synapse answers without authentication...
        version = await federation.client.get_json(theirs_name, "/_matrix/federation/v1/version")
        assert version["server"]["name"] == "Synapse", version

        # 3. ...and one it authenticates: Synapse fetches our keys from our TLS listener.
        answer = await federation.client.get_json(
            theirs_name, "/_matrix/federation/v1/query/profile", args={"user_id": alice}
        )
        assert answer.get("displayname") == "alice", answer

        # 4. Synapse signs a request to us; our authenticator checks it with Synapse's key.
        bob = f"@bob:{ours_name}"
        response = await treq.get(
            f"{theirs.client_url}/_matrix/client/v3/profile/{bob}",
            headers={"Authorization": f"Bearer {login['access_token']}"},
        )
        body = json.loads(await treq.content(response))
        assert response.code == 200, (body, theirs.log_tail(30))
        assert body["displayname"] == f"Bob, as told to {theirs_name}"
        assert profile_queries == [theirs_name]
    finally:
        await port.stopListening()
        await federation.close()
        await defer.maybeDeferred(hs.db.close)
