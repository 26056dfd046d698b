"""The webhook bridge (appservices/webhook), started by its console command against our
homeserver started by its CLI with the registration the bridge generated.

* a person invites the bridge bot, creates a hook with ``!webhook create``; an application
  POSTs JSON, a form (with a sender name) and HTML: each lands in the room as a ghost with
  the right display name; wrong secrets and bad bodies get Matrix errors naming the field;
* ``!webhook callback`` makes the person's messages reach the application as JSON;
* the same in an encrypted room with a matrix-nio client (E2EE): the bridge reads the
  encrypted command, answers encrypted, the ghost's message is decrypted by nio, and nio's
  encrypted reply reaches the callback in clear.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.interop import harness as h
from tests.interop.bridge_support import PASSWORD, BridgeProcess, Person, register, start_with_bridge, until
from tests.interop.conftest import ENGINE_PARAMS

pytestmark = pytest.mark.interop

ENCRYPTION = {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}


class CallbackReceiver:
    """The business application's side: an HTTP server collecting the callbacks."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, Any], str | None]] = []
        self.port = h.free_port()
        self.url = f"http://127.0.0.1:{self.port}/matrix-replies"
        self._runner: web.AppRunner | None = None

    async def _receive(self, request: web.Request) -> web.Response:
        self.received.append((await request.json(), request.headers.get("X-Webhook-Secret")))
        return web.json_response({})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/matrix-replies", self._receive)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def texts(self) -> list[str]:
        return [body["text"] for body, _ in self.received]


@pytest.mark.parametrize("engine", ENGINE_PARAMS)
def test_webhook_bridge(our_homeserver: Any, tmp_path: Path, engine: str) -> None:
    webhook_port = h.free_port()
    server, config_path, config = start_with_bridge(
        our_homeserver,
        engine,
        "webhook",
        tmp_path,
        webhook={"listen": {"host": "127.0.0.1", "port": webhook_port}},
    )
    bridge = BridgeProcess("webhook", config_path, tmp_path / "webhook-bridge.log").start()
    try:
        bridge.wait_for_log("webhooks listening on")
        asyncio.run(_scenario(server, config, tmp_path))
    except BaseException:
        print(bridge.log_tail(120))
        raise
    finally:
        problem = bridge.stop()
    assert problem is None, problem
    assert "Traceback" not in bridge.log_tail(2000), bridge.log_tail(200)


async def _scenario(server: h.RunningServer, config: dict[str, Any], tmp_path: Path) -> None:
    receiver = CallbackReceiver()
    await receiver.start()
    try:
        await _plain_room(server, config, receiver)
        await _encrypted_room(server, config, receiver, tmp_path)
    finally:
        await receiver.stop()


async def _plain_room(server: h.RunningServer, config: dict[str, Any], receiver: CallbackReceiver) -> None:
    bot = server.user_id(config["appservice"]["bot_localpart"])
    anne = await Person.login(server, "anne")
    room_id = (await anne.call("POST", "/createRoom", {"name": "Exploitation", "invite": [bot]}))["room_id"]
    await anne.wait_joined(room_id, bot)
    await anne.send(room_id, "!webhook create Supervision")
    notice = await anne.wait_event("the hook's notice", lambda e: "fr.gouv.webhook" in e.get("content", {}))
    assert notice["sender"] == bot and notice["content"]["msgtype"] == "m.notice"
    hook = notice["content"]["fr.gouv.webhook"]
    url, secret = hook["url"], hook["secret"]
    assert secret in notice["content"]["body"] and url in notice["content"]["body"]

    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={"text": "disque plein sur srv-1"}, headers={"X-Webhook-Secret": secret}) as r:
            assert r.status == 200, await r.text()
            posted = await r.json()
        message = await anne.wait_message(room_id, "disque plein sur srv-1")
        assert message["event_id"] == posted["event_id"] and posted["room_id"] == room_id
        ghost = message["sender"]
        assert ghost.startswith("@webhook_") and ghost.endswith(":" + server.server_name)
        assert await anne.displayname(ghost) == "Supervision"

        # a form, the secret in the query string, a sender name of its own
        async with http.post(url + f"?secret={secret}", data={"text": "build 42 OK", "username": "Jenkins"}) as r:
            assert r.status == 200, await r.text()
        jenkins = await anne.wait_message(room_id, "build 42 OK")
        assert jenkins["sender"] != ghost and await anne.displayname(jenkins["sender"]) == "Jenkins"

        html = "<b>alerte</b> niveau <i>2</i>"
        async with http.post(
            url, json={"text": html, "format": "html"}, headers={"Authorization": f"Bearer {secret}"}
        ) as r:
            assert r.status == 200, await r.text()
        formatted = await anne.wait_message(room_id, "alerte niveau 2")
        assert formatted["content"]["formatted_body"] == html
        assert formatted["content"]["format"] == "org.matrix.custom.html"

        # bad input: the caller learns what is wrong, nothing reaches the room
        bad: list[tuple[str, dict[str, Any], int, str, str]] = [
            (url, {"json": {"text": "x"}, "headers": {"X-Webhook-Secret": "wrong"}}, 403, "M_FORBIDDEN", "secret"),
            (url, {"json": {"text": "x"}}, 401, "M_MISSING_TOKEN", "secret"),
            (
                url.rsplit("/", 1)[0] + "/nohook",
                {"json": {"text": "x"}, "headers": {"X-Webhook-Secret": secret}},
                404,
                "M_NOT_FOUND",
                "hook",
            ),
            (url, {"data": b"{not json", "headers": {"X-Webhook-Secret": secret}}, 400, "M_NOT_JSON", "JSON"),
            (url, {"json": ["text"], "headers": {"X-Webhook-Secret": secret}}, 400, "M_BAD_JSON", "object"),
            (url, {"json": {"txt": "x"}, "headers": {"X-Webhook-Secret": secret}}, 400, "M_MISSING_PARAM", "text"),
            (url, {"json": {"text": 5}, "headers": {"X-Webhook-Secret": secret}}, 400, "M_INVALID_PARAM", "text"),
            (
                url,
                {"json": {"text": "x", "format": "rtf"}, "headers": {"X-Webhook-Secret": secret}},
                400,
                "M_INVALID_PARAM",
                "format",
            ),
            (
                url,
                {"json": {"text": "x", "username": ""}, "headers": {"X-Webhook-Secret": secret}},
                400,
                "M_INVALID_PARAM",
                "username",
            ),
            (
                url,
                {"json": {"text": "x" * 2_000_000}, "headers": {"X-Webhook-Secret": secret}},
                413,
                "M_TOO_LARGE",
                "body",
            ),
        ]
        for target, options, status, errcode, field in bad:
            async with http.post(target, **options) as r:
                body = await r.json()
                assert (r.status, body.get("errcode")) == (status, errcode), (options, r.status, body)
                assert field in body["error"], body

    # replies: the application gets the room's messages
    await anne.send(room_id, f"!webhook callback {hook['id']} {receiver.url}")
    await anne.wait_message(room_id, f"callback {receiver.url}")
    reply_id = await anne.send(room_id, "bien reçu, j'interviens")
    await until("the callback", lambda: "bien reçu, j'interviens" in receiver.texts())
    body, header_secret = next(item for item in receiver.received if item[0]["text"] == "bien reçu, j'interviens")
    assert body["event_id"] == reply_id and body["sender"] == anne.user_id and body["room_id"] == room_id
    assert body["hook_id"] == hook["id"] and header_secret == secret
    assert not any(text.startswith("!webhook") for text in receiver.texts())


async def _encrypted_room(
    server: h.RunningServer, config: dict[str, Any], receiver: CallbackReceiver, tmp_path: Path
) -> None:
    from nio import RoomCreateResponse, RoomMessageNotice

    from tests.interop.e2ee_clients import NioUser, quiet_library_logs

    quiet_library_logs()
    bot = server.user_id(config["appservice"]["bot_localpart"])
    await register(server, "bruno")
    bruno = await NioUser.login(server, "bruno", PASSWORD, tmp_path / "nio-bruno", "bruno-nio")
    notices: list[Any] = []
    bruno.client.add_event_callback(lambda room, event: notices.append(event), RoomMessageNotice)
    bruno.start()
    try:
        created = await bruno.client.room_create(name="Chiffré", invite=[bot], initial_state=[ENCRYPTION])
        assert isinstance(created, RoomCreateResponse), created
        room_id = created.room_id
        await bruno.wait_joined(room_id, [bruno.user_id, bot])
        await bruno.send(room_id, "!webhook create Alertes")
        notice = await until(
            "the hook's notice, decrypted",
            lambda: next((n for n in notices if "fr.gouv.webhook" in n.source.get("content", {})), None),
            timeout=25,
        )
        assert notice.decrypted, "the bridge answered in clear in an encrypted room"
        hook = notice.source["content"]["fr.gouv.webhook"]
        async with aiohttp.ClientSession() as http:
            async with http.post(
                hook["url"], json={"text": "alerte chiffrée 7"}, headers={"X-Webhook-Secret": hook["secret"]}
            ) as r:
                assert r.status == 200, await r.text()
                posted = await r.json()
        message = await bruno.wait_message(room_id, "alerte chiffrée 7")
        assert message.decrypted and message.event_id == posted["event_id"]
        assert message.sender.startswith("@webhook_")

        await bruno.send(room_id, f"!webhook callback {hook['id']} {receiver.url}")
        await until("the callback notice", lambda: any(f"callback {receiver.url}" in n.body for n in notices))
        await bruno.send(room_id, "réponse chiffrée")
        await until("the decrypted reply at the callback", lambda: "réponse chiffrée" in receiver.texts())
        body, _ = next(item for item in receiver.received if item[0]["text"] == "réponse chiffrée")
        assert body["sender"] == bruno.user_id and body["room_id"] == room_id
    finally:
        await bruno.stop()
