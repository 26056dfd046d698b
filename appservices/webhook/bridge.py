"""The webhook bridge: an HTTP endpoint per hook, a ghost per hook (and per sender name),
admin commands in the room, and replies delivered to a callback URL."""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any

import aiohttp
from aiohttp import web
from mautrix.types import (
    Event,
    EventType,
    Membership,
    MessageEvent,
    MessageType,
    RoomID,
    StateEvent,
    TextMessageEventContent,
)

from appservices.common.core import BridgeCore
from appservices.common.names import escape_localpart
from appservices.webhook.config import WebhookConfig
from appservices.webhook.hooks import Hook, HookStore
from appservices.webhook.payload import PayloadError, parse_form, parse_json_body, parse_message

log = logging.getLogger("bridge.webhook")

COMMAND = "!webhook"
HELP = (
    "Webhook bridge commands:\n"
    "!webhook create [name]: a new hook posting into this room as <name>\n"
    "!webhook list: the hooks of this room\n"
    "!webhook callback <id> <url|off>: POST the room's messages (JSON) to <url>\n"
    "!webhook delete <id>"
)


def _error(status: int, errcode: str, message: str) -> web.Response:
    return web.json_response({"errcode": errcode, "error": message}, status=status)


class WebhookBridge:
    def __init__(self, config: WebhookConfig) -> None:
        self.config = config
        self.core = BridgeCore(config.bridge, "webhook", self._on_matrix_event)
        self.hooks = HookStore(config.bridge.data_dir / "webhooks.db")
        self._app = web.Application(client_max_size=config.max_body_bytes)
        self._app.router.add_post("/hooks/{hook_id}", self._post_hook)
        self._app.router.add_get("/health", self._health)
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self._profiles: dict[str, str] = {}  # ghost -> display name set this run

    async def start(self) -> None:
        for static in self.config.hooks:
            self.hooks.put(Hook(static.id, static.room_id, static.secret, static.name, static.callback_url, "config"))
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        await self.core.start()
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.config.listen.host, self.config.listen.port).start()
        log.info("webhooks listening on %s", self.config.listen)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self.core.stop()
        if self._http is not None:
            await self._http.close()
        self.hooks.close()

    # ---------------------------------------------------------------- application -> room

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"ready": self.core.appservice.ready})

    async def _post_hook(self, request: web.Request) -> web.Response:
        hook = self.hooks.get(request.match_info["hook_id"])
        if hook is None:
            return _error(404, "M_NOT_FOUND", "no such hook")
        secret = request.headers.get("X-Webhook-Secret") or request.query.get("secret")
        auth = request.headers.get("Authorization", "")
        if not secret and auth.startswith("Bearer "):
            secret = auth[len("Bearer ") :]
        if not secret:
            return _error(401, "M_MISSING_TOKEN", "secret: give it in X-Webhook-Secret, Authorization or ?secret=")
        if not hmac.compare_digest(secret.encode(), hook.secret.encode()):
            return _error(403, "M_FORBIDDEN", "secret: wrong secret for this hook")
        try:
            if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
                data = parse_form(await request.post())
            else:
                data = parse_json_body(await request.read())
            message = parse_message(data)
        except PayloadError as exc:
            return _error(400 if exc.errcode != "M_TOO_LARGE" else 413, exc.errcode, str(exc))
        except web.HTTPRequestEntityTooLarge:
            return _error(413, "M_TOO_LARGE", f"body: at most {self.config.max_body_bytes} bytes")
        ghost = self.core.ghost(self._ghost_suffix(hook, message.username))
        try:
            await ghost.ensure_registered()
            await self._ensure_profile(ghost, message.username or hook.name)
            event_id = await self.core.send(ghost, RoomID(hook.room_id), message.content())
        except Exception as exc:  # noqa: BLE001 (the homeserver said no: tell the caller why)
            log.warning("hook %s: could not post into %s: %s", hook.id, hook.room_id, exc)
            return _error(502, "M_UNKNOWN", f"the homeserver refused the message: {exc}")
        return web.json_response({"event_id": event_id, "room_id": hook.room_id})

    @staticmethod
    def _ghost_suffix(hook: Hook, username: str | None) -> str:
        if not username:
            return hook.id.lower()
        return f"{hook.id.lower()}_{escape_localpart(username)[:80]}"

    async def _ensure_profile(self, ghost: Any, displayname: str) -> None:
        key = str(ghost.mxid)
        if self._profiles.get(key) != displayname:
            await ghost.set_displayname(displayname)
            self._profiles[key] = displayname

    # ---------------------------------------------------------------- room -> application

    async def _on_matrix_event(self, event: Event) -> None:
        if isinstance(event, StateEvent) and event.type == EventType.ROOM_MEMBER:
            if event.state_key == self.core.config.bot_mxid and event.content.membership == Membership.INVITE:
                await self._notice(event.room_id, "Hello! " + HELP)
            return
        if not isinstance(event, MessageEvent) or event.type != EventType.ROOM_MESSAGE:
            return
        body = str(getattr(event.content, "body", "") or "")
        if body.strip().startswith(COMMAND):
            await self._command(event, body.strip()[len(COMMAND) :].split())
            return
        for hook in self.hooks.in_room(event.room_id):
            if hook.callback_url:
                asyncio.create_task(self._deliver(hook, event))

    async def _deliver(self, hook: Hook, event: MessageEvent) -> None:
        assert self._http is not None and hook.callback_url
        content = event.content
        payload = {
            "hook_id": hook.id,
            "room_id": event.room_id,
            "event_id": event.event_id,
            "sender": event.sender,
            "msgtype": str(content.msgtype),
            "text": content.body,
            "html": getattr(content, "formatted_body", None),
            "origin_server_ts": event.timestamp,
        }
        for attempt in range(3):
            try:
                async with self._http.post(
                    hook.callback_url, json=payload, headers={"X-Webhook-Secret": hook.secret}
                ) as response:
                    if response.status < 300:
                        return
                    log.warning("hook %s: callback answered %s", hook.id, response.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("hook %s: callback failed: %s", hook.id, exc)
            await asyncio.sleep(1 + attempt * 2)

    # ---------------------------------------------------------------- commands

    async def _notice(self, room_id: RoomID, text: str, **extra: Any) -> None:
        content = TextMessageEventContent(msgtype=MessageType.NOTICE, body=text)
        for key, value in extra.items():
            content[key] = value
        await self.core.send(self.core.bot, room_id, content)

    async def _command(self, event: MessageEvent, words: list[str]) -> None:
        room_id = event.room_id
        if not self.core.config.may_command(str(event.sender)):
            await self._notice(room_id, f"{event.sender} may not give commands to this bridge.")
            return
        verb = words[0].lower() if words else "help"
        if verb == "create":
            name = " ".join(words[1:]) or "Webhook"
            hook = self.hooks.create(room_id, name, str(event.sender))
            url = f"{self.config.public_url}/hooks/{hook.id}"
            await self._notice(
                room_id,
                f'Hook {hook.id} created: POST JSON {{"text": ...}} to {url} '
                f"with the header X-Webhook-Secret: {hook.secret}",
                **{"fr.gouv.webhook": {"id": hook.id, "url": url, "secret": hook.secret}},
            )
        elif verb == "list":
            hooks = self.hooks.in_room(room_id)
            lines = [f"{h.id}: {h.name}" + (f" (callback {h.callback_url})" if h.callback_url else "") for h in hooks]
            await self._notice(room_id, "\n".join(lines) or "No hook in this room.")
        elif verb in ("callback", "delete") and len(words) >= 2:
            target = self.hooks.get(words[1])
            if target is None or target.room_id != room_id:
                await self._notice(room_id, f"No hook {words[1]} in this room.")
            elif verb == "delete":
                self.hooks.delete(target.id)
                await self._notice(room_id, f"Hook {target.id} deleted.")
            elif len(words) == 3 and (words[2] == "off" or words[2].startswith(("http://", "https://"))):
                callback = None if words[2] == "off" else words[2]
                self.hooks.set_callback(target.id, callback)
                await self._notice(room_id, f"Hook {target.id}: callback {callback or 'off'}.")
            else:
                await self._notice(room_id, "Usage: !webhook callback <id> <http(s) URL|off>")
        else:
            await self._notice(room_id, HELP)
