"""Helpers for the bridge tests (test_bridge_*.py): a bridge's config and registration made
by its own console command, the bridge process, and a plain Matrix client over aiohttp."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.interop import harness as h

PASSWORD = "correct horse battery"


def bridge_command(name: str) -> list[str]:
    script = h.venv_script(f"homeserver-{name}-bridge")
    if script is None:
        raise h.HarnessError(f"homeserver-{name}-bridge is not installed (pip install -e .)")
    return [script]


def base_config(
    name: str, domain: str, data_dir: Path, as_port: int, *, keys_in_transactions: bool = False, **extra: Any
) -> dict[str, Any]:
    return {
        "homeserver": {"url": "http://127.0.0.1:1", "domain": domain},
        "appservice": {
            "id": name,
            "as_token": secrets.token_hex(16),
            "hs_token": secrets.token_hex(16),
            "bot_localpart": f"{name}bot",
            "bot_displayname": f"{name.title()} bridge",
            "ghost_prefix": f"{name}_",
            "listen": {"host": "127.0.0.1", "port": as_port},
        },
        "data_dir": str(data_dir),
        "encryption": {"enabled": True, "appservice": keys_in_transactions},
        **extra,
    }


def generate_registration(name: str, config_path: Path, registration: Path) -> dict[str, Any]:
    """``homeserver-<name>-bridge -c CONFIG -g REGISTRATION``, as an operator would."""
    h.run_command([*bridge_command(name), "-c", str(config_path), "-g", str(registration)], what=f"{name} -g")
    data: dict[str, Any] = yaml.safe_load(registration.read_text())
    return data


def start_with_bridge(
    our_homeserver: Any, engine: str, name: str, tmp_path: Path, *, keys_in_transactions: bool = False, **extra: Any
) -> tuple[h.RunningServer, Path, dict[str, Any]]:
    """Our homeserver with the bridge's registration; returns (server, config path, config)."""
    config_path = tmp_path / f"{name}-bridge.yaml"
    registration = tmp_path / f"{name}-registration.yaml"
    holder: dict[str, Any] = {}

    def patch(config: dict[str, Any]) -> None:
        bridge = base_config(
            name,
            config["server_name"],
            tmp_path / f"{name}-data",
            h.free_port(),
            keys_in_transactions=keys_in_transactions,
            **extra,
        )
        config_path.write_text(yaml.safe_dump(bridge))
        generate_registration(name, config_path, registration)
        config["app_service_config_files"] = [str(registration)]
        holder["config"] = bridge

    server = our_homeserver(engine=engine, patch_config=patch)
    bridge_config = holder["config"]
    bridge_config["homeserver"]["url"] = server.client_url
    config_path.write_text(yaml.safe_dump(bridge_config))
    return server, config_path, bridge_config


@dataclass
class BridgeProcess:
    """The bridge started by its console command; ``stop()`` says if it exited uncleanly."""

    name: str
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> BridgeProcess:
        self.process = h.spawn(
            [*bridge_command(self.name), "-c", str(self.config_path)], self.log_path, self.config_path.parent
        )
        return self

    def wait_for_log(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} bridge exited with {self.process.returncode}\n{self.log_tail()}")
            if text in h.tail(self.log_path, 400):
                return
            time.sleep(0.1)
        raise AssertionError(f"{self.name} bridge did not log {text!r} in {timeout}s\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        return h.tail(self.log_path, lines)

    def stop(self) -> str | None:
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            return None if code in (None, 0) else f"{self.name} bridge had exited with {code}\n{self.log_tail()}"
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return f"{self.name} bridge ignored SIGTERM\n{self.log_tail()}"
        return None if code == 0 else f"{self.name} bridge exited with {code}\n{self.log_tail()}"


async def register(server: h.RunningServer, localpart: str) -> None:
    """The shared-secret admin API (what ``register_new_matrix_user`` uses; faster than the CLI)."""
    async with aiohttp.ClientSession() as s:
        url = server.client_url + "/_synapse/admin/v1/register"
        async with s.get(url) as r:
            nonce = (await r.json())["nonce"]
        mac = hmac.new(server.registration_shared_secret.encode(), digestmod=hashlib.sha1)
        mac.update(f"{nonce}\x00{localpart}\x00{PASSWORD}\x00notadmin".encode())
        body = {"nonce": nonce, "username": localpart, "password": PASSWORD, "mac": mac.hexdigest()}
        async with s.post(url, json=body) as r:
            assert r.status == 200, await r.text()


@dataclass
class Person:
    """A plain client: rooms, messages, and a /sync it polls to wait for what it expects."""

    base: str
    token: str
    user_id: str
    since: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    invited: set[str] = field(default_factory=set)

    @classmethod
    async def login(cls, server: h.RunningServer, localpart: str) -> Person:
        await register(server, localpart)
        body = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": localpart},
            "password": PASSWORD,
        }
        async with aiohttp.ClientSession() as s:
            async with s.post(server.client_url + "/_matrix/client/v3/login", json=body) as r:
                data = await r.json()
        return cls(server.client_url, data["access_token"], data["user_id"])

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        async with aiohttp.ClientSession() as s:
            async with s.request(
                method,
                self.base + "/_matrix/client/v3" + path,
                json=body,
                headers={"Authorization": f"Bearer {self.token}"},
            ) as r:
                data = await r.json()
                assert r.status == 200, (method, path, r.status, data)
                return data

    async def send(self, room_id: str, body: str) -> str:
        txn = secrets.token_hex(6)
        path = f"/rooms/{urllib.parse.quote(room_id)}/send/m.room.message/{txn}"
        return str((await self.call("PUT", path, {"msgtype": "m.text", "body": body}))["event_id"])

    async def sync_once(self) -> None:
        q = "?timeout=500" + (f"&since={self.since}" if self.since else "")
        data = await self.call("GET", "/sync" + q)
        self.since = data["next_batch"]
        rooms = data.get("rooms", {})
        for room_id, room in rooms.get("join", {}).items():
            for event in room.get("timeline", {}).get("events", []):
                self.events.append({**event, "room_id": room_id})
        self.invited.update(rooms.get("invite", {}))

    async def wait_event(
        self, what: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20.0
    ) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for event in self.events:
                if predicate(event):
                    return event
            if asyncio.get_running_loop().time() > deadline:
                seen = [(e["type"], e["sender"], e.get("content", {}).get("body")) for e in self.events[-15:]]
                raise AssertionError(f"{self.user_id} did not see {what}; last events: {seen}")
            await self.sync_once()

    async def wait_message(self, room_id: str, text: str, timeout: float = 20.0) -> dict[str, Any]:
        return await self.wait_event(
            f"a message containing {text!r} in {room_id}",
            lambda e: (
                e["room_id"] == room_id
                and e["type"] == "m.room.message"
                and text in str(e.get("content", {}).get("body", ""))
            ),
            timeout,
        )

    async def wait_invite(self, timeout: float = 20.0) -> str:
        """The first room this person is invited to and has not joined yet."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.invited:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{self.user_id} got no invite")
            await self.sync_once()
        return self.invited.pop()

    async def wait_joined(self, room_id: str, user_id: str, timeout: float = 20.0) -> None:
        await self.wait_event(
            f"{user_id} joined to {room_id}",
            lambda e: (
                e["room_id"] == room_id
                and e["type"] == "m.room.member"
                and e.get("state_key") == user_id
                and e["content"].get("membership") == "join"
            ),
            timeout,
        )

    async def displayname(self, user_id: str) -> str | None:
        data = await self.call("GET", f"/profile/{urllib.parse.quote(user_id, safe='')}")
        name = data.get("displayname")
        return str(name) if name is not None else None


async def until(what: str, predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- Prosody

PROSODY_CONFIG = """
run_as_root = true
daemonize = false
pidfile = "{dir}/prosody.pid"
data_path = "{dir}/data"
certificates = "{dir}/certs"
modules_enabled = {{ "roster"; "saslauth"; "disco"; "ping"; "presence"; "message"; "iq"; "c2s" }}
modules_disabled = {{ "s2s"; "offline"; "posix" }}
c2s_ports = {{ {c2s_port} }}
c2s_interfaces = {{ "127.0.0.1" }}
component_ports = {{ {component_port} }}
component_interface = "127.0.0.1"
s2s_ports = {{}}
http_ports = {{}}
https_ports = {{}}
authentication = "internal_plain"
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
log = {{ {{ levels = {{ min = "info" }}, to = "file", filename = "{dir}/prosody.log" }} }}
VirtualHost "{domain}"
Component "conference.{domain}" "muc"
  muc_room_locking = false
Component "{component}"
  component_secret = "{secret}"
"""


@dataclass
class Prosody:
    """Debian's Prosody with a generated config in a tmp dir, on loopback ports."""

    directory: Path
    domain: str = "xmpp.test"
    secret: str = field(default_factory=lambda: secrets.token_hex(12))
    c2s_port: int = field(default_factory=h.free_port)
    component_port: int = field(default_factory=h.free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def component(self) -> str:
        return f"matrix.{self.domain}"

    @property
    def config_path(self) -> Path:
        return self.directory / "prosody.cfg.lua"

    def write_config(self) -> None:
        for sub in ("data", "certs"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            PROSODY_CONFIG.format(
                dir=self.directory,
                c2s_port=self.c2s_port,
                component_port=self.component_port,
                domain=self.domain,
                component=self.component,
                secret=self.secret,
            )
        )

    def register(self, user: str, password: str) -> str:
        h.run_command(
            ["prosodyctl", "--config", str(self.config_path), "register", user, self.domain, password],
            what="prosodyctl register",
        )
        return f"{user}@{self.domain}"

    def start(self) -> None:
        self.process = h.spawn(
            ["prosody", "--config", str(self.config_path)], self.directory / "stdout.log", self.directory
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise h.HarnessError(f"prosody exited with {self.process.returncode}\n{self.log_tail()}")
            if all(_listening(port) for port in (self.c2s_port, self.component_port)):
                return
            time.sleep(0.1)
        raise h.HarnessError(f"prosody did not listen in 15 s\n{self.log_tail()}")

    def log_tail(self) -> str:
        return h.tail(self.directory / "prosody.log") + "\n" + h.tail(self.directory / "stdout.log")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0
