"""End-to-bridge encryption with mautrix.crypto (python-olm), the way mautrix bridges do it.

The bridge bot gets a device through ``m.login.application_service``; its Olm account and
Megolm sessions live in SQLite. To-device messages (room keys) reach that device either by a
/sync loop that asks for nothing else (the default) or, with ``encryption.appservice: true``,
in the transactions (MSC2409/MSC3202; the registration then needs ``org.matrix.msc3202: true``
and ``push_ephemeral``). Ghosts send with the bot's Megolm session, as every mautrix bridge does.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from mautrix.appservice import AppService
from mautrix.client import Client
from mautrix.crypto import OlmMachine, PgCryptoStore
from mautrix.errors import EncryptionError, SessionNotFound
from mautrix.types import (
    EncryptedEvent,
    EncryptedMegolmEventContent,
    EventFilter,
    EventType,
    Filter,
    LoginType,
    RoomEventFilter,
    RoomFilter,
    RoomID,
    StateEvent,
    StateFilter,
    UserID,
)
from mautrix.util.async_db import Database

from appservices.common.config import BridgeConfig
from appservices.common.store import BridgeStateStore

log = logging.getLogger("bridge.e2ee")


class BridgeEncryption:
    """The bot's Olm machine: encrypt what ghosts send, decrypt what people send."""

    def __init__(
        self, config: BridgeConfig, appservice: AppService, db: Database, state_store: BridgeStateStore, name: str
    ) -> None:
        self._config = config
        self._appservice = appservice
        self._db = db
        self._device_name = name
        self.crypto_store = PgCryptoStore("", "appservices.e2ee", db)
        self.state_store = state_store
        self.client = Client(
            base_url=config.homeserver_url,
            mxid=UserID(config.bot_mxid),
            sync_store=self.crypto_store,
            state_store=state_store,
            log=logging.getLogger("bridge.e2ee.client"),
        )
        self.machine = OlmMachine(self.client, self.crypto_store, state_store)
        self.appservice_mode = config.encryption_appservice
        if self.appservice_mode:
            appservice.otk_handler = self.machine.handle_as_otk_counts
            appservice.device_list_handler = self.machine.handle_as_device_lists
            appservice.to_device_handler = self.machine.handle_as_to_device_event
        self._sharing: dict[RoomID, asyncio.Lock] = {}
        self._sync: Any = None

    async def start(self) -> None:
        await self._db.start()
        await self.crypto_store.open()
        device_id = await self.crypto_store.get_device_id()
        self.client.api.token = self._config.as_token
        await self.client.login(
            login_type=LoginType.APPSERVICE,
            identifier=UserID(self._config.bot_mxid),
            device_name=self._device_name,
            device_id=device_id,
            store_access_token=True,
            update_hs_url=False,
        )
        await self.machine.load()
        if not device_id:
            await self.crypto_store.put_device_id(self.client.device_id)
        await self.machine.share_keys()
        if not self.appservice_mode:
            self._sync = self.client.start(_to_device_only())
        log.info("encryption ready: device %s of %s", self.client.device_id, self.client.mxid)

    async def stop(self) -> None:
        self.client.stop()
        if self._sync is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._sync), 5)
            except (TimeoutError, asyncio.CancelledError, Exception):  # noqa: BLE001 (shutting down)
                pass
        await self.client.api.session.close()
        await self.crypto_store.close()

    async def handle_member_event(self, event: StateEvent) -> None:
        # A ghost joining or leaving changes no one's keys: don't rotate the session for it.
        if not self._config.is_ghost(str(event.state_key)):
            await self.machine.handle_member_event(event)

    async def encrypt(self, room_id: RoomID, event_type: EventType, content: Any) -> EncryptedMegolmEventContent:
        try:
            return await self.machine.encrypt_megolm_event(room_id, event_type, content)
        except EncryptionError:
            lock = self._sharing.setdefault(room_id, asyncio.Lock())
            async with lock:
                try:
                    return await self.machine.encrypt_megolm_event(room_id, event_type, content)
                except EncryptionError:
                    members = await self._real_members(room_id)
                    await self.machine.share_group_session(room_id, members)
            return await self.machine.encrypt_megolm_event(room_id, event_type, content)

    async def _real_members(self, room_id: RoomID) -> list[UserID]:
        """Everyone joined or invited except the ghosts (who have no devices)."""
        members = await self.state_store.get_members(room_id)
        return [m for m in members if not self._config.is_ghost(str(m))]

    async def decrypt(self, event: EncryptedEvent, wait: float = 5.0) -> Any:
        try:
            return await self.machine.decrypt_megolm_event(event)
        except SessionNotFound as exc:
            if not await self.machine.wait_for_session(event.room_id, exc.session_id, timeout=wait):
                raise
            return await self.machine.decrypt_megolm_event(event)


def _to_device_only() -> Filter:
    everything = EventType.find("*")
    return Filter(
        account_data=EventFilter(not_types=[everything]),
        presence=EventFilter(not_types=[everything]),
        room=RoomFilter(
            include_leave=False,
            state=StateFilter(not_types=[everything]),
            timeline=RoomEventFilter(not_types=[everything]),
            account_data=RoomEventFilter(not_types=[everything]),
            ephemeral=RoomEventFilter(not_types=[everything]),
        ),
    )
