"""A bridge written with mautrix-python (AppService + IntentAPI) against our homeserver,
started by its CLI with the bridge's registration file.

* the bridge pings the homeserver, which pings it back (POST /_matrix/app/v1/ping);
* ghosts are registered (m.login.application_service) and joined by masquerading, send
  messages, one with a massaged timestamp, all seen by a person through /sync;
* the person's messages, typing and receipts reach the bridge in transactions;
* the bridge goes down, the person writes, the homeserver restarts, the bridge comes back
  and pings: every missed message arrives, in order, exactly once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml
from mautrix.appservice import AppService
from mautrix.appservice.state_store.memory import ASStateStore
from mautrix.client.state_store.memory import MemoryStateStore
from mautrix.types import Event, EventType, MessageEvent, RoomID, TextMessageEventContent, UserID

from tests.interop import harness as h
from tests.interop.conftest import ENGINE_PARAMS

pytestmark = pytest.mark.interop

AS_TOKEN = "mautrix-as-token"
HS_TOKEN = "mautrix-hs-token"


class MemoryASStateStore(MemoryStateStore, ASStateStore):  # type: ignore[misc]
    def __init__(self) -> None:
        MemoryStateStore.__init__(self)
        ASStateStore.__init__(self)


class Person:
    """A plain client over HTTP (aiohttp), enough for rooms, messages and /sync."""

    def __init__(self, base: str, token: str, user_id: str) -> None:
        self.base, self.token, self.user_id = base, token, user_id
        self.since: str | None = None

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        import aiohttp

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

    async def timeline(self, room_id: str) -> list[dict[str, Any]]:
        q = "?timeout=0" + (f"&since={self.since}" if self.since else "")
        data = await self.call("GET", "/sync" + q)
        self.since = data["next_batch"]
        return list(data.get("rooms", {}).get("join", {}).get(room_id, {}).get("timeline", {}).get("events", []))


async def login(server: h.RunningServer, localpart: str) -> Person:
    import aiohttp

    async with aiohttp.ClientSession() as s:
        # the shared-secret admin API (faster than the operator CLI; the same account)
        admin_url = server.client_url + "/_synapse/admin/v1/register"
        async with s.get(admin_url) as r:
            nonce = (await r.json())["nonce"]
        mac = hmac.new(server.registration_shared_secret.encode(), digestmod=hashlib.sha1)
        mac.update(f"{nonce}\x00{localpart}\x00correct horse battery\x00notadmin".encode())
        async with s.post(
            admin_url,
            json={"nonce": nonce, "username": localpart, "password": "correct horse battery", "mac": mac.hexdigest()},
        ) as r:
            assert r.status == 200, await r.text()
        async with s.post(
            server.client_url + "/_matrix/client/v3/login",
            json={
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": localpart},
                "password": "correct horse battery",
            },
        ) as r:
            body = await r.json()
    return Person(server.client_url, body["access_token"], body["user_id"])


def restart(server: h.RunningServer) -> None:
    assert server.stop() is None, server.log_tail()
    server.exit_code = None
    server.process = h.spawn(
        [*h.homeserver_cli(), "run", "-c", str(server.config_path)], server.log_path, server.data_dir
    )
    h.wait_for_health(server)


async def until(predicate: Any, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("engine", ENGINE_PARAMS)
def test_mautrix_bridge(our_homeserver: Any, tmp_path: Path, engine: str) -> None:
    as_port = h.free_port()
    registration = tmp_path / "mautrix.yaml"

    def patch(config: dict[str, Any]) -> None:
        domain = config["server_name"].replace(".", "\\.")
        registration.write_text(
            yaml.safe_dump(
                {
                    "id": "mxbridge",
                    "url": f"http://127.0.0.1:{as_port}",
                    "as_token": AS_TOKEN,
                    "hs_token": HS_TOKEN,
                    "sender_localpart": "mxbot",
                    "rate_limited": False,
                    "receive_ephemeral": True,
                    "namespaces": {
                        "users": [{"exclusive": True, "regex": f"@mx_.*:{domain}"}],
                        "aliases": [{"exclusive": True, "regex": f"#mx_.*:{domain}"}],
                        "rooms": [],
                    },
                }
            )
        )
        config["app_service_config_files"] = [str(registration)]

    server = our_homeserver(engine=engine, patch_config=patch)
    asyncio.run(_scenario(server, as_port))


async def _scenario(server: h.RunningServer, as_port: int) -> None:
    received: list[Event] = []

    def make_bridge() -> AppService:
        appserv = AppService(
            server=server.client_url,
            domain=server.server_name,
            as_token=AS_TOKEN,
            hs_token=HS_TOKEN,
            bot_localpart="mxbot",
            id="mxbridge",
            state_store=MemoryASStateStore(),
            ephemeral_events=True,
        )

        async def on_event(evt: Event) -> None:
            received.append(evt)

        appserv.matrix_event_handler(on_event)
        return appserv

    bridge = make_bridge()
    await bridge.start("127.0.0.1", as_port)
    try:
        assert await bridge.ping_self("first-ping") >= 0
        anne = await login(server, "anne")
        room_id = RoomID((await anne.call("POST", "/createRoom", {"name": "bridged"}))["room_id"])
        await anne.timeline(room_id)
        ghost = bridge.intent.user(UserID(f"@mx_bob:{server.server_name}"))
        await ghost.ensure_registered()
        await anne.call("POST", f"/rooms/{room_id}/invite", {"user_id": ghost.mxid})
        await ghost.ensure_joined(room_id)
        await ghost.send_text(room_id, "hello from the legacy side")
        old = await ghost.send_message_event(
            room_id,
            EventType.ROOM_MESSAGE,
            TextMessageEventContent(body="imported", msgtype="m.text"),
            timestamp=1_100_000_000_000,
        )
        seen = await anne.timeline(room_id)
        texts = {e["content"].get("body"): e for e in seen if e["type"] == "m.room.message"}
        assert texts["hello from the legacy side"]["sender"] == ghost.mxid
        assert texts["imported"]["origin_server_ts"] == 1_100_000_000_000 and texts["imported"]["event_id"] == old

        # anne writes, types and reads: the bridge hears it
        await anne.call("PUT", f"/rooms/{room_id}/send/m.room.message/a1", {"msgtype": "m.text", "body": "hi bob"})
        await anne.call(
            "PUT", f"/rooms/{room_id}/typing/{urllib.parse.quote(anne.user_id)}", {"typing": True, "timeout": 10000}
        )
        await anne.call("POST", f"/rooms/{room_id}/receipt/m.read/{urllib.parse.quote(old)}", {})

        def bodies() -> list[str]:
            return [e.content.body for e in received if isinstance(e, MessageEvent) and e.sender == anne.user_id]

        await until(
            lambda: (
                "hi bob" in bodies()
                and any(e.type == EventType.TYPING for e in received)
                and any(e.type == EventType.RECEIPT for e in received)
            )
        )
        typing = next(e for e in received if e.type == EventType.TYPING)
        assert anne.user_id in typing.content.user_ids and typing.room_id == room_id

        # the bridge goes down; anne keeps writing; the homeserver restarts in between
        await bridge.stop()
        for i in range(3):
            await anne.call(
                "PUT", f"/rooms/{room_id}/send/m.room.message/d{i}", {"msgtype": "m.text", "body": f"missed {i}"}
            )
        await asyncio.sleep(0.5)
        await asyncio.get_running_loop().run_in_executor(None, restart, server)
        await anne.call("PUT", f"/rooms/{room_id}/send/m.room.message/d3", {"msgtype": "m.text", "body": "missed 3"})
        bridge = make_bridge()
        await bridge.start("127.0.0.1", as_port)
        await bridge.ping_self()  # a bridge pings at start-up: the homeserver sends what waits at once
        want = ["hi bob"] + [f"missed {i}" for i in range(4)]
        await until(lambda: bodies() == want, timeout=20)
        await asyncio.sleep(0.3)
        assert bodies() == want  # exactly once
    finally:
        await bridge.stop()
    log = server.log_tail(400)
    assert "Traceback" not in log, log
