"""In-process HTTP tests: the real router and servlets on a loopback port, real requests."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import treq
from twisted.internet import reactor

from homeserver.app import Homeserver, build_homeserver
from homeserver.config import parse_config
from homeserver.events.signing import generate_signing_key, write_signing_keys


@dataclass
class Response:
    code: int
    body: Any
    headers: Any


class Client:
    """A minimal JSON HTTP client bound to one server."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.token: str | None = None

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        hdrs = {k: [v] for k, v in (headers or {}).items()}
        use_token = token if token is not None else self.token
        if use_token:
            hdrs["Authorization"] = [f"Bearer {use_token}"]
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            hdrs.setdefault("Content-Type", ["application/json"])
        resp = await treq.request(method, self.base_url + path, data=data, headers=hdrs)
        content = await treq.content(resp)
        try:
            parsed = json.loads(content) if content else None
        except ValueError:
            parsed = content
        return Response(resp.code, parsed, resp.headers)

    async def get(self, path: str, **kw: Any) -> Response:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> Response:
        return await self.request("POST", path, body, **kw)

    async def put(self, path: str, body: Any = None, **kw: Any) -> Response:
        return await self.request("PUT", path, body, **kw)

    async def delete(self, path: str, body: Any = None, **kw: Any) -> Response:
        return await self.request("DELETE", path, body, **kw)


@dataclass
class HSFixture:
    hs: Homeserver
    client: Client

    def new_client(self) -> Client:
        return Client(self.client.base_url)


BASE_CONFIG: dict[str, Any] = {
    "server_name": "test.local",
    "listeners": [],
    "bcrypt_rounds": 4,
    "registration_shared_secret": "shared-secret-for-tests",
    "enable_registration": True,
    "enable_registration_without_verification": True,
    "report_stats": False,
    # As Synapse's own test config: tests send faster than a person (rc_message's tests lower it).
    "rc_message": {"per_second": 10000, "burst_count": 10000},
    "rc_room_creation": {"per_second": 10000, "burst_count": 10000},
    "rc_user_directory": {"per_second": 10000, "burst_count": 10000},
    "rc_reports": {"per_second": 10000, "burst_count": 10000},
    "rc_presence": {"per_user": {"per_second": 10000, "burst_count": 10000}},
    "rc_federation": {"window_size": 1000, "sleep_limit": 10000, "sleep_delay": 0, "reject_limit": 10000, "concurrent": 1000},
    "rc_joins": {"local": {"per_second": 10000, "burst_count": 10000}, "remote": {"per_second": 10000, "burst_count": 10000}},
    "rc_joins_per_room": {"per_second": 10000, "burst_count": 10000},
    "rc_invites": {
        "per_room": {"per_second": 10000, "burst_count": 10000},
        "per_user": {"per_second": 10000, "burst_count": 10000},
        "per_issuer": {"per_second": 10000, "burst_count": 10000},
    },
}


@pytest.fixture
def make_server(database_config: dict[str, Any], tmp_path: Any) -> Iterator[Callable[..., HSFixture]]:
    """Build a homeserver from BASE_CONFIG plus overrides, serving on a loopback port."""
    cleanups: list[Callable[[], Any]] = []

    key_path = tmp_path / "signing.key"
    if not key_path.exists():
        key_path.write_text(write_signing_keys([generate_signing_key("a_test")]))

    def make(**overrides: Any) -> HSFixture:
        data = {**BASE_CONFIG, "database": database_config, "signing_key_path": str(key_path), **overrides}
        config, _ = parse_config(data, config_dir=str(tmp_path))
        hs = build_homeserver(config, reactor)
        site = hs.build_site({"client"})
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        cleanups.append(hs.db.close)
        cleanups.append(port.stopListening)
        return HSFixture(hs, Client(f"http://127.0.0.1:{port.getHost().port}"))

    yield make
    for fn in reversed(cleanups):
        fn()


@pytest.fixture
def server(make_server: Callable[..., HSFixture]) -> HSFixture:
    return make_server()
