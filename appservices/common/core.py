"""The running bridge: mautrix's AppService (transactions in, intents out), its state store,
optional encryption, an ordered queue for incoming events and the ``main()`` scaffolding.

A bridge subclasses nothing: it gives :class:`BridgeCore` an ``on_event`` callback (called in
transaction order with decrypted events) and calls :meth:`BridgeCore.send` to post as a ghost.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml
from mautrix.appservice import AppService, IntentAPI
from mautrix.errors import MNotFound
from mautrix.types import (
    EncryptedEvent,
    Event,
    EventID,
    EventType,
    Membership,
    RoomEncryptionStateEventContent,
    RoomID,
    StateEvent,
    UserID,
)

from appservices.common.config import BridgeConfig, ConfigError, load_yaml
from appservices.common.encryption import BridgeEncryption
from appservices.common.store import BridgeStateStore, crypto_database, state_database

log = logging.getLogger("bridge")

EventCallback = Callable[[Any], Awaitable[None]]


class BridgeCore:
    """What every bridge process runs; ``on_event`` gets room events in order, decrypted."""

    def __init__(self, config: BridgeConfig, name: str, on_event: EventCallback) -> None:
        self.config = config
        self.name = name
        self._on_event = on_event
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self._state_db = state_database(config.data_dir)
        self.state_store = BridgeStateStore(self._state_db)
        self.appservice = AppService(
            server=config.homeserver_url,
            domain=config.domain,
            as_token=config.as_token,
            hs_token=config.hs_token,
            bot_localpart=config.bot_localpart,
            id=config.id,
            state_store=self.state_store,
            log=logging.getLogger(f"bridge.{name}.appservice"),
            bridge_name=name,
            ephemeral_events=True,
            encryption_events=True,
        )
        # The state store is updated before our handler runs: ordered, not in background tasks.
        self.appservice.synchronous_handlers = True
        self.appservice.matrix_event_handler(self._enqueue)
        self.encryption = (
            BridgeEncryption(config, self.appservice, crypto_database(self._state_db), self.state_store, name)
            if config.encryption
            else None
        )
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    @property
    def bot(self) -> IntentAPI:
        return self.appservice.intent

    def ghost(self, localpart_suffix: str) -> IntentAPI:
        return self.appservice.intent.user(UserID(self.config.ghost_mxid(localpart_suffix)))

    async def start(self) -> None:
        await self._state_db.start()
        await self.appservice.start(self.config.listen.host, self.config.listen.port)
        self._worker = asyncio.create_task(self._work(), name=f"{self.name} events")
        await self.bot.ensure_registered()
        if self.config.bot_displayname:
            await self.bot.set_displayname(self.config.bot_displayname)
        if self.encryption is not None:
            await self.encryption.start()
        # Pinging makes the homeserver send what waited while we were away, at once.
        await self.appservice.ping_self()
        self.appservice.ready = True
        log.info("%s bridge ready as %s on %s", self.name, self.config.bot_mxid, self.config.listen)

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        if self.encryption is not None:
            await self.encryption.stop()
        await self.appservice.stop()
        await self._state_db.stop()

    # ------------------------------------------------------------------ incoming

    async def _enqueue(self, event: Event) -> None:
        self._queue.put_nowait(event)

    async def _work(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self._handle(event)
            except Exception:  # noqa: BLE001 (one bad event must not stop the bridge)
                log.exception("%s: failed to handle %s", self.name, getattr(event, "event_id", event))

    async def _handle(self, event: Event) -> None:
        if event.type == EventType.ROOM_MEMBER and isinstance(event, StateEvent):
            if self.encryption is not None:
                await self.encryption.handle_member_event(event)
            if event.state_key == self.config.bot_mxid and event.content.membership == Membership.INVITE:
                await self._accept_invite(event)
                return
        if isinstance(event, EncryptedEvent):
            if self.encryption is None:
                log.warning("%s: encrypted event %s but encryption is disabled", self.name, event.event_id)
                return
            event = await self.encryption.decrypt(event)
        if self.config.is_bridge_user(str(getattr(event, "sender", ""))):
            return  # our own echo
        await self._on_event(event)

    async def _accept_invite(self, event: StateEvent) -> None:
        if not self.config.may_command(str(event.sender)):
            log.info("%s: ignoring invite from %s (not in permissions)", self.name, event.sender)
            await self.bot.leave_room(event.room_id, reason="not allowed to use this bridge")
            return
        await self.bot.join_room(event.room_id)
        await self.state_store.joined(event.room_id, UserID(self.config.bot_mxid))
        await self._on_event(event)

    # ------------------------------------------------------------------ outgoing

    async def is_encrypted(self, room_id: RoomID, intent: IntentAPI | None = None) -> bool:
        """From the state store, else asked (as ``intent``, a member: the bot may not be one)."""
        known = await self.state_store.is_encrypted(room_id)
        if known is not None:
            return bool(known)
        try:
            content = await (intent or self.bot).get_state_event(room_id, EventType.ROOM_ENCRYPTION)
        except MNotFound:
            return False
        if isinstance(content, RoomEncryptionStateEventContent) and content.algorithm:
            await self.state_store.set_encryption_info(room_id, content)
            return True
        return False

    async def send(
        self,
        intent: IntentAPI,
        room_id: RoomID,
        content: Any,
        event_type: EventType = EventType.ROOM_MESSAGE,
        **kwargs: Any,
    ) -> EventID:
        """Send as ``intent`` (a ghost or the bot), joined first, encrypted if the room is."""
        if intent.mxid != self.bot.mxid:
            await intent.ensure_registered()
        await intent.ensure_joined(room_id)
        if await self.is_encrypted(room_id, intent):
            if self.encryption is None:
                raise RuntimeError(f"{room_id} is encrypted and encryption is disabled in the config")
            if not await self.state_store.has_full_member_list(room_id):
                await intent.get_members(room_id)
            encrypted = await self.encryption.encrypt(room_id, event_type, content)
            sealed: Any = encrypted
            return await intent.send_message_event(room_id, EventType.ROOM_ENCRYPTED, sealed, **kwargs)
        return await intent.send_message_event(room_id, event_type, content, **kwargs)

    async def upload(
        self, intent: IntentAPI, room_id: RoomID, data: bytes, mime_type: str, filename: str
    ) -> dict[str, Any]:
        """Upload media; returns ``{"url": mxc}`` or, in an encrypted room, ``{"file": {...}}``."""
        if await self.is_encrypted(room_id, intent):
            from mautrix.crypto.attachments import encrypt_attachment

            ciphertext, info = encrypt_attachment(data)
            info.url = await intent.upload_media(ciphertext, mime_type="application/octet-stream", filename=filename)
            return {"file": info.serialize()}
        return {"url": await intent.upload_media(data, mime_type=mime_type, filename=filename)}


# ---------------------------------------------------------------------- main()


def command_line(description: str, argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("-c", "--config", required=True, type=Path, help="the bridge's YAML configuration")
    parser.add_argument(
        "-g",
        "--generate-registration",
        type=Path,
        metavar="FILE",
        help="write the registration file for the homeserver (app_service_config_files) and exit",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser.parse_args(argv)


def run(
    description: str,
    argv: list[str] | None,
    parse: Callable[[Any], Any],
    build: Callable[[Any], Any],
) -> None:
    """``homeserver-<x>-bridge -c config.yaml [-g registration.yaml]``: parse, then run until
    SIGTERM/SIGINT. ``parse(mapping)`` returns the bridge's config (with ``.bridge``, the shared
    part); ``build(config)`` returns an object with ``start()``/``stop()`` coroutines."""
    args = command_line(description, argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("aiohttp.access", "mau.appservice", "mau.crypto", "bridge.e2ee.client"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        config = parse(load_yaml(args.config))
    except ConfigError as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    if args.generate_registration:
        registration = config.registration() if hasattr(config, "registration") else config.bridge.registration()
        args.generate_registration.write_text(yaml.safe_dump(registration, sort_keys=False))
        return
    asyncio.run(_serve(build, config))


async def _serve(build: Callable[[Any], Any], config: Any) -> None:
    bridge = build(config)  # inside the loop: aiohttp sessions want a running one
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await bridge.start()
    try:
        await stop.wait()
    finally:
        await bridge.stop()
