"""FederationAuthenticator: X-Matrix on inbound requests, the allowlist first, clear errors."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

import pytest
from _federation_helpers import DAY_MS, FakeKeyStore, FakeTransport, key_response, make_clock, new_key, run
from twisted.web.http_headers import Headers

from homeserver.core.errors import MatrixError
from homeserver.events.signing import key_id
from homeserver.federation.auth import FederationAuthenticator
from homeserver.federation.keyring import Keyring
from homeserver.federation.server_keys import SERVER_KEYS_PATH
from homeserver.federation.xmatrix import sign_request

ME = "me.example"
REMOTE = "remote.example"
REMOTE_KEY = new_key("r1")


class FakeRequest:
    def __init__(self, method: str, uri: str, headers: list[str], body: bytes = b"") -> None:
        self.method = method.encode()
        self.uri = uri.encode()
        self.requestHeaders = Headers({b"Authorization": [h.encode() for h in headers]} if headers else {})
        self.content = io.BytesIO(body)


class SpyKeyring:
    def __init__(self, inner: Keyring) -> None:
        self.inner = inner
        self.calls = 0

    async def verify_json_for_server(self, server_name: str, json_object: Mapping[str, Any], minimum: int) -> None:
        self.calls += 1
        await self.inner.verify_json_for_server(server_name, json_object, minimum)


class Env:
    def __init__(self, allowed: set[str] | None = None) -> None:
        self.reactor, self.clock = make_clock()
        self.transport = FakeTransport()
        self.transport.answers[("GET", REMOTE, SERVER_KEYS_PATH)] = key_response(
            REMOTE, [REMOTE_KEY], self.clock.time_msec() + DAY_MS
        )
        allowed = {REMOTE} if allowed is None else allowed
        self.keyring = SpyKeyring(
            Keyring(
                server_name=ME,
                clock=self.clock,
                store=FakeKeyStore(),
                transport=self.transport,
                local_keys=dict,
                is_allowed=lambda name: name in allowed,
            )
        )
        self.auth = FederationAuthenticator(
            server_name=ME, clock=self.clock, keyring=self.keyring, is_allowed=lambda name: name in allowed
        )

    def authenticate(self, request: FakeRequest) -> str:
        return run(self.auth.authenticate(request))  # type: ignore[arg-type,no-any-return]

    def error(self, request: FakeRequest) -> MatrixError:
        with pytest.raises(MatrixError) as info:
            self.authenticate(request)
        return info.value


def signed(
    method: str,
    uri: str,
    content: Any = None,
    *,
    origin: str = REMOTE,
    destination: str = ME,
    key: Any = REMOTE_KEY,
) -> str:
    return sign_request(key, origin=origin, destination=destination, method=method, uri=uri, content=content)


def test_signed_get_with_query_string() -> None:
    env = Env()
    uri = "/_matrix/federation/v1/query/profile?user_id=%40a%3Ame.example&field=displayname"
    assert env.authenticate(FakeRequest("GET", uri, [signed("GET", uri)])) == REMOTE


def test_signed_put_with_body() -> None:
    env = Env()
    body = {"pdus": [], "edus": [{"edu_type": "m.typing", "content": {}}]}
    uri = "/_matrix/federation/v1/send/txn1"
    header = signed("PUT", uri, body)
    assert env.authenticate(FakeRequest("PUT", uri, [header], json.dumps(body).encode())) == REMOTE
    tampered = json.dumps({**body, "pdus": [{"x": 1}]}).encode()
    err = env.error(FakeRequest("PUT", uri, [header], tampered))
    assert (err.code, err.errcode) == (401, "M_UNAUTHORIZED") and "Invalid request signature" in err.msg


def test_signature_for_another_uri_or_method_is_refused() -> None:
    env = Env()
    header = signed("GET", "/_matrix/federation/v1/version")
    for method, uri in (
        ("GET", "/_matrix/federation/v1/query/directory"),
        ("DELETE", "/_matrix/federation/v1/version"),
    ):
        err = env.error(FakeRequest(method, uri, [header]))
        assert (err.code, err.errcode) == (401, "M_UNAUTHORIZED")


def test_missing_and_malformed_headers() -> None:
    env = Env()
    err = env.error(FakeRequest("GET", "/x", []))
    assert (err.code, err.errcode, err.msg) == (401, "M_UNAUTHORIZED", "Missing X-Matrix Authorization header")
    err = env.error(FakeRequest("GET", "/x", ["Bearer some_token"]))
    assert (err.code, err.errcode) == (401, "M_UNAUTHORIZED")
    err = env.error(FakeRequest("GET", "/x", ['X-Matrix origin="remote.example",key="ed25519:r1"']))
    assert (err.code, err.errcode) == (401, "M_UNAUTHORIZED") and "missing 'sig'" in err.msg
    assert env.keyring.calls == 0


def test_bearer_next_to_x_matrix_is_ignored() -> None:
    env = Env()
    assert env.authenticate(FakeRequest("GET", "/x", ["Bearer abc", signed("GET", "/x")])) == REMOTE


def test_origin_outside_the_allowlist_is_forbidden_before_anything_else() -> None:
    env = Env(allowed=set())
    err = env.error(FakeRequest("GET", "/x", [signed("GET", "/x")]))
    assert (err.code, err.errcode, err.msg) == (403, "M_FORBIDDEN", f"Federation denied with {REMOTE}.")
    # Nothing processed: no key lookup, no fetch, even with a wrong destination or bad body.
    err = env.error(FakeRequest("PUT", "/x", [signed("PUT", "/x", {}, destination="elsewhere.example")], b"{}"))
    assert err.code == 403
    assert env.keyring.calls == 0 and env.transport.calls == []


def test_destination_must_be_us() -> None:
    env = Env()
    err = env.error(FakeRequest("GET", "/x", [signed("GET", "/x", destination="other.example")]))
    assert (err.code, err.errcode) == (401, "M_UNAUTHORIZED") and "not this server" in err.msg
    assert env.keyring.calls == 0


def test_header_without_destination_is_checked_against_our_name() -> None:
    env = Env()
    header = signed("GET", "/x")
    without = header.replace(f',destination="{ME}"', "")
    assert "destination" not in without
    assert env.authenticate(FakeRequest("GET", "/x", [without])) == REMOTE


def test_unknown_key_is_a_clear_401() -> None:
    env = Env()
    err = env.error(FakeRequest("GET", "/x", [signed("GET", "/x", key=new_key("other"))]))
    assert (err.code, err.errcode) == (401, "M_UNAUTHORIZED")
    assert "Cannot verify the request signature" in err.msg and "ed25519:other" in err.msg


def test_wrong_key_under_a_known_key_id() -> None:
    env = Env()
    impostor = new_key("r1")
    assert key_id(impostor) == key_id(REMOTE_KEY)
    err = env.error(FakeRequest("GET", "/x", [signed("GET", "/x", key=impostor)]))
    assert (err.code, err.errcode) == (401, "M_UNAUTHORIZED") and "Invalid request signature" in err.msg


def test_several_origins_are_refused() -> None:
    env = Env(allowed={REMOTE, "third.example"})
    headers = [signed("GET", "/x"), signed("GET", "/x", origin="third.example", key=new_key("t"))]
    err = env.error(FakeRequest("GET", "/x", headers))
    assert (err.code, err.errcode) == (401, "M_UNAUTHORIZED")


def test_non_json_body_is_400() -> None:
    env = Env()
    err = env.error(FakeRequest("PUT", "/x", [signed("PUT", "/x", {})], b"{not json"))
    assert (err.code, err.errcode) == (400, "M_NOT_JSON")


def test_empty_put_body_is_signed_without_content() -> None:
    env = Env()
    assert env.authenticate(FakeRequest("PUT", "/x", [signed("PUT", "/x")], b"")) == REMOTE
