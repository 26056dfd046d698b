"""Helpers for the federation scenario tests (test_federation_scenarios*.py).

* :func:`start_ours` / :func:`start_theirs`: our server (CLI-started) and a real Synapse,
  each with a TLS federation listener on an IP-literal name (``127.0.0.x:PORT``) and a
  federation allowlist (``None`` = open federation, Synapse only).
* :class:`User`: a user registered with the shared-secret admin API (Synapse's
  ``/_synapse/admin/v1/register``, which ours serves too; faster than the CLI tools), with
  an incremental /sync that remembers everything it saw.
* :func:`restart`: stop a server (SIGTERM, clean exit required) and start it again on the
  same ports, configuration and database.
* :func:`signed_request`: a federation request signed with a server's own signing key
  file, to forge inputs over real HTTP.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import signedjson.key
import signedjson.sign
import yaml

from tests.interop import harness as h
from tests.interop.synapse_server import make_self_signed_cert

V3 = "/_matrix/client/v3"
PASSWORD = "federation scenarios password"


def insecure_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def start_ours(
    pool: h.ServerPool,
    tmp: Path,
    *,
    host: str = "127.0.0.1",
    engine: str = "sqlite",
    allow: list[str] | None = None,
    port: int | None = None,
    extra: dict[str, Any] | None = None,
) -> h.RunningServer:
    """Our server, CLI-started, federating over TLS as ``host:port`` with ``allow`` only."""
    port = port or h.free_port(host)
    cert, key = make_self_signed_cert(tmp, host)

    def patch(config: dict[str, Any]) -> None:
        for listener in config["listeners"]:
            if listener["port"] == port:
                listener["tls"] = True
        config.update(
            tls_certificate_path=str(cert),
            tls_private_key_path=str(key),
            federation_domain_whitelist=list(allow or []),
            federation_verify_certificates=False,
            ip_range_blacklist=[],
            **(extra or {}),
        )

    return pool.start_homeserver(engine=engine, host=host, federation_port=port, patch_config=patch)


def start_theirs(
    pool: h.ServerPool,
    *,
    host: str = "127.0.0.2",
    allow: list[str] | None = None,
    port: int | None = None,
    extra: dict[str, Any] | None = None,
) -> h.RunningServer:
    """A real Synapse federating over TLS as ``host:port``; ``allow=None`` is open federation."""
    config: dict[str, Any] = {"federation_domain_whitelist": allow} if allow is not None else {}
    h.deep_merge(config, extra or {})
    return pool.start_synapse(
        federation_tls=True, host=host, federation_port=port or h.free_port(host), extra_config=config
    )


def server_port(server: h.RunningServer) -> int:
    return int(server.server_name.rsplit(":", 1)[1])


# --------------------------------------------------------------------------- users


def register(server: h.RunningServer, localpart: str, password: str = PASSWORD) -> tuple[str, str]:
    """Register with the shared-secret admin API; returns (user_id, access_token)."""
    url = f"{server.client_url}/_synapse/admin/v1/register"
    status, body = h.http_json("GET", url)
    assert status == 200, (server.label, body)
    nonce = str(body["nonce"])
    mac = hmac.new(server.registration_shared_secret.encode(), digestmod=hashlib.sha1)
    mac.update(b"\x00".join([nonce.encode(), localpart.encode(), password.encode(), b"notadmin"]))
    status, body = h.http_json(
        "POST",
        url,
        {"nonce": nonce, "username": localpart, "password": password, "admin": False, "mac": mac.hexdigest()},
        timeout=30.0,
    )
    assert status == 200, (server.label, body)
    return str(body["user_id"]), str(body["access_token"])


class User:
    """A signed-in user; ``sync_until`` polls an incremental /sync and keeps what it saw."""

    def __init__(self, server: h.RunningServer, localpart: str) -> None:
        self.server = server
        self.user_id, self.token = register(server, localpart)
        self.since: str | None = None
        self.seen: list[dict[str, Any]] = []  # every /sync response body since the first

    def __repr__(self) -> str:
        return f"<User {self.user_id}>"

    def call(self, method: str, path: str, body: Any = None, timeout: float = 60.0) -> tuple[int, Any]:
        prefix = "" if path.startswith("/_matrix/") else V3
        return h.http_json(method, f"{self.server.client_url}{prefix}{path}", body, token=self.token, timeout=timeout)

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = self.call(method, path, body)
        assert status == 200, (self.user_id, method, path, answer, self.server.log_tail(40))
        return answer

    def send(self, room_id: str, event_type: str, content: dict[str, Any]) -> str:
        txn = f"t{time.monotonic_ns()}"
        return str(self.ok("PUT", f"/rooms/{quote(room_id)}/send/{event_type}/{txn}", content)["event_id"])

    def state(self, room_id: str, event_type: str, content: dict[str, Any], state_key: str = "") -> str:
        path = f"/rooms/{quote(room_id)}/state/{event_type}/{quote(state_key)}"
        return str(self.ok("PUT", path, content)["event_id"])

    def sync_until(
        self, predicate: Callable[[dict[str, Any]], Any], what: str, deadline: float = 30.0, *, past: bool = False
    ) -> Any:
        """Poll /sync until ``predicate(body)`` is truthy; return its value.  With ``past``,
        the /sync bodies already seen are tried first."""
        for body in self.seen if past else []:
            found = predicate(body)
            if found:
                return found
        end = time.monotonic() + deadline
        while True:
            path = "/sync?timeout=1000" + (f"&since={self.since}" if self.since else "")
            status, body = self.call("GET", path)
            assert status == 200, body
            self.since = body["next_batch"]
            self.seen.append(body)
            found = predicate(body)
            if found:
                return found
            if time.monotonic() > end:
                raise AssertionError(f"{self.user_id}: timed out waiting for {what}\n{self.server.log_tail(60)}")

    def wait_event(self, room_id: str, match: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        """The first timeline event of ``room_id`` matching ``match``, from /sync."""

        def find(body: dict[str, Any]) -> dict[str, Any] | None:
            for event in timeline(body, room_id):
                if match(event):
                    return event
            return None

        return dict(self.sync_until(find, what, past=True))

    def wait_event_id(self, room_id: str, event_id: str, what: str) -> dict[str, Any]:
        return self.wait_event(room_id, lambda e: e.get("event_id") == event_id, what)

    def wait_joined(self, room_id: str, user_id: str, what: str) -> None:
        self.sync_until(lambda b: membership_in(b, room_id, user_id) == "join", what, past=True)


def upload(user: User, data: bytes, content_type: str) -> str:
    """Upload ``data`` as ``user``; returns the mxc:// URI."""
    request = urllib.request.Request(f"{user.server.client_url}/_matrix/media/v3/upload", data=data, method="POST")
    request.add_header("Authorization", f"Bearer {user.token}")
    request.add_header("Content-Type", content_type)
    with urllib.request.urlopen(request, timeout=30) as resp:
        return str(json.loads(resp.read())["content_uri"])


def room_section(body: dict[str, Any], room_id: str, section: str = "join") -> dict[str, Any]:
    return dict(body.get("rooms", {}).get(section, {}).get(room_id) or {})


def timeline(body: dict[str, Any], room_id: str) -> list[dict[str, Any]]:
    room = room_section(body, room_id)
    return list(room.get("timeline", {}).get("events", [])) if room else []


def ephemeral(body: dict[str, Any], room_id: str, event_type: str) -> list[dict[str, Any]]:
    room = room_section(body, room_id)
    return [e for e in room.get("ephemeral", {}).get("events", []) if e.get("type") == event_type]


def membership_in(body: dict[str, Any], room_id: str, user_id: str) -> str | None:
    """The last membership of ``user_id`` in ``room_id`` this sync body shows, if any."""
    found = None
    for section in ("join", "leave"):
        room = room_section(body, room_id, section)
        events = [*room.get("state", {}).get("events", []), *room.get("timeline", {}).get("events", [])]
        for e in events:
            if e.get("type") == "m.room.member" and e.get("state_key") == user_id:
                found = e["content"].get("membership")
    return found


def bodies(body: dict[str, Any], room_id: str) -> list[str]:
    return [e["content"].get("body") for e in timeline(body, room_id) if e["type"] == "m.room.message"]


# --------------------------------------------------------------------------- processes


def restart(server: h.RunningServer) -> None:
    """Stop ``server`` cleanly, then run it again with the same config and database."""
    problem = server.stop()
    assert problem is None, problem
    start_again(server)


def start_again(server: h.RunningServer) -> None:
    """Start a stopped ``server`` again (same config, ports, database)."""
    assert not server.is_running()
    if server.kind == "ours":
        argv = [*h.homeserver_cli(), "run", "-c", str(server.config_path)]
    else:
        argv = [sys.executable, "-m", "synapse.app.homeserver", "-c", str(server.config_path)]
    server.process = h.spawn(argv, server.log_path, server.data_dir)
    server.exit_code = None
    h.wait_for_health(server)


def log_text(server: h.RunningServer) -> str:
    return server.log_path.read_text(errors="replace")


# --------------------------------------------------------------------------- forged requests


def signing_key(server: h.RunningServer) -> Any:
    config = yaml.safe_load(server.config_path.read_text())
    return signedjson.key.read_signing_keys(Path(config["signing_key_path"]).read_text().splitlines())[0]


def x_matrix(
    key: Any, *, origin: str, destination: str, method: str, uri: str, content: Any = None
) -> tuple[str, dict[str, Any]]:
    """(Authorization header value, the signed object) for a request from ``origin``."""
    obj: dict[str, Any] = {"method": method, "uri": uri, "origin": origin, "destination": destination}
    if content is not None:
        obj["content"] = content
    signed = signedjson.sign.sign_json(obj, origin, key)
    kid = f"{key.alg}:{key.version}"
    sig = signed["signatures"][origin][kid]
    header = f'X-Matrix origin="{origin}",destination="{destination}",key="{kid}",sig="{sig}"'
    return header, signed


def federation_request(
    url: str, method: str, uri: str, authorization: str | None, content: Any = None, raw: bytes | None = None
) -> tuple[int, Any]:
    """Send one federation request (TLS, certificate not checked); returns (status, body)."""
    data = raw if raw is not None else (None if content is None else json.dumps(content).encode())
    request = urllib.request.Request(url + uri, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if authorization:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=30, context=insecure_tls()) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    try:
        return status, json.loads(body) if body else None
    except ValueError:
        return status, body.decode("utf-8", "replace")
