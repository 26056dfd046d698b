"""The HTTP layer: routing errors, CORS, discovery endpoints, body limits, bad JSON."""

from __future__ import annotations

from collections.abc import Callable

import pytest_twisted

from tests.api.conftest import HSFixture


@pytest_twisted.ensureDeferred
async def test_versions_and_health(server: HSFixture) -> None:
    resp = await server.client.get("/_matrix/client/versions")
    assert resp.code == 200 and "v1.1" in resp.body["versions"]
    assert resp.headers.getRawHeaders("Access-Control-Allow-Origin") == ["*"]
    health = await server.client.get("/health")
    assert health.code == 200 and health.body == b"OK"


@pytest_twisted.ensureDeferred
async def test_unknown_endpoint_and_wrong_method(server: HSFixture) -> None:
    resp = await server.client.get("/_matrix/client/v3/no_such_thing")
    assert (resp.code, resp.body["errcode"]) == (404, "M_UNRECOGNIZED")
    resp = await server.client.request("PATCH", "/_matrix/client/versions")
    assert (resp.code, resp.body["errcode"]) == (405, "M_UNRECOGNIZED")


@pytest_twisted.ensureDeferred
async def test_cors_preflight(server: HSFixture) -> None:
    resp = await server.client.request("OPTIONS", "/_matrix/client/v3/login")
    assert resp.code == 204
    assert "Authorization" in resp.headers.getRawHeaders("Access-Control-Allow-Headers")[0]


@pytest_twisted.ensureDeferred
async def test_capabilities_needs_a_token(server: HSFixture) -> None:
    resp = await server.client.get("/_matrix/client/v3/capabilities")
    assert (resp.code, resp.body["errcode"]) == (401, "M_MISSING_TOKEN")


@pytest_twisted.ensureDeferred
async def test_bad_json_bodies(server: HSFixture) -> None:
    """Bad input tried: not JSON, invalid UTF-8, NaN, a JSON array, wrong field types."""
    c = server.client
    for raw in (b"{not json", b"\xff\xfe", b'{"type": NaN}'):
        resp = await c.request("POST", "/_matrix/client/v3/login", raw=raw)
        assert (resp.code, resp.body["errcode"]) == (400, "M_NOT_JSON"), raw
    resp = await c.post("/_matrix/client/v3/login", [1, 2])
    assert (resp.code, resp.body["errcode"]) == (400, "M_BAD_JSON")
    resp = await c.post("/_matrix/client/v3/login", {"type": 7})
    assert (resp.code, resp.body["errcode"]) == (400, "M_BAD_JSON")
    assert "type" in resp.body["error"]
    resp = await c.post("/_matrix/client/v3/login", {})
    assert (resp.code, resp.body["errcode"]) == (400, "M_MISSING_PARAM")
    assert "type" in resp.body["error"]


@pytest_twisted.ensureDeferred
async def test_oversized_body_is_refused(make_server: Callable[..., HSFixture]) -> None:
    server = make_server(max_request_size="1K")
    big = {"type": "m.login.password", "padding": "x" * 5000}
    resp = await server.client.post("/_matrix/client/v3/login", big)
    assert (resp.code, resp.body["errcode"]) == (413, "M_TOO_LARGE")
    # The server still answers normally afterwards.
    assert (await server.client.get("/_matrix/client/versions")).code == 200


@pytest_twisted.ensureDeferred
async def test_well_known_only_when_configured(make_server: Callable[..., HSFixture]) -> None:
    plain = make_server()
    assert (await plain.client.get("/.well-known/matrix/client")).code == 404
    configured = make_server(public_baseurl="https://matrix.example.gouv.fr/", serve_server_wellknown=True)
    client_wk = await configured.client.get("/.well-known/matrix/client")
    assert client_wk.body == {"m.homeserver": {"base_url": "https://matrix.example.gouv.fr/"}}
    server_wk = await configured.client.get("/.well-known/matrix/server")
    assert server_wk.body == {"m.server": "matrix.example.gouv.fr:443"}


