"""A mautrix-python bridge bot and a matrix-nio person talk in an encrypted room.

The bridge runs mautrix's appservice-mode encryption, as mautrix bridges do with
``encryption: appservice: true``: its bot gets a device with ``m.login.application_service``,
its Olm machine (mautrix.crypto, python-olm/libolm) uploads keys with that device's token and
runs no /sync at all: room keys arrive as to-device messages in the transactions
(``de.sorunome.msc2409.to_device``), device-list changes and one-time-key counts as MSC3202's
``org.matrix.msc3202.device_lists`` / ``device_one_time_keys_count``.  The registration asks
for them with ``org.matrix.msc3202: true`` and ``de.sorunome.msc2409.push_ephemeral: true``.

The person (nio, vodozemac) creates the encrypted room and invites the bot; each side sends
one message and must decrypt the other's.  The server's stored data (the application-service
queue included) holds the ciphertexts and neither plaintext.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.interop import harness as h
from tests.interop.conftest import ENGINE_PARAMS
from tests.interop.e2ee_clients import NioUser, marker, quiet_library_logs, require, stored_data_dump, wait_until

require("mautrix.crypto", "mautrix[encryption]")

from mautrix.appservice import AppService  # noqa: E402
from mautrix.appservice.state_store.memory import ASStateStore  # noqa: E402
from mautrix.client import Client  # noqa: E402
from mautrix.client.state_store import MemorySyncStore  # noqa: E402
from mautrix.client.state_store.memory import MemoryStateStore  # noqa: E402
from mautrix.crypto import OlmMachine  # noqa: E402
from mautrix.crypto import StateStore as CryptoStateStore  # noqa: E402
from mautrix.crypto.store import MemoryCryptoStore  # noqa: E402
from mautrix.errors import SessionNotFound  # noqa: E402
from mautrix.types import (  # noqa: E402
    EncryptedEvent,
    Event,
    EventType,
    LoginType,
    Membership,
    MessageType,
    RoomID,
    StateEvent,
    TextMessageEventContent,
    UserID,
)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

AS_TOKEN = "mautrix-e2ee-as-token"
HS_TOKEN = "mautrix-e2ee-hs-token"
BOT = "e2ebot"
PASSWORD = "bridged e2ee password"


class BridgeStateStore(MemoryStateStore, ASStateStore, CryptoStateStore):  # type: ignore[misc]
    """What the appservice and the Olm machine both need to know about rooms."""

    def __init__(self) -> None:
        MemoryStateStore.__init__(self)
        ASStateStore.__init__(self)

    async def find_shared_rooms(self, user_id: UserID) -> list[RoomID]:
        return [
            room_id
            for room_id, members in self.members.items()
            if self.encryption.get(room_id)
            and members.get(user_id) is not None
            and members[user_id].membership in (Membership.JOIN, Membership.INVITE)
        ]


class Bridge:
    """A mautrix AppService whose bot encrypts in appservice mode (no /sync)."""

    def __init__(self, server: h.RunningServer, port: int) -> None:
        self.server, self.port = server, port
        self.store = BridgeStateStore()
        self.bot = UserID(server.user_id(BOT))
        self.appservice = AppService(
            server=server.client_url,
            domain=server.server_name,
            as_token=AS_TOKEN,
            hs_token=HS_TOKEN,
            bot_localpart=BOT,
            id="e2ee-bridge",
            state_store=self.store,
            ephemeral_events=True,
            encryption_events=True,
        )
        self.client = Client(
            mxid=self.bot, base_url=server.client_url, state_store=self.store, sync_store=MemorySyncStore()
        )
        self.machine: OlmMachine | None = None
        self.decrypted: dict[str, str] = {}
        self.undecryptable: list[str] = []
        self.to_device_seen = 0
        self.otk_counts_seen = 0
        self.appservice.matrix_event_handler(self._on_event)

    async def start(self) -> None:
        await self.appservice.start("127.0.0.1", self.port)
        await self.appservice.intent.ensure_registered()
        # The bot's own device, as mautrix's appservice-mode encryption makes it.
        self.client.api.token = AS_TOKEN
        await self.client.login(
            login_type=LoginType.APPSERVICE,
            identifier=self.bot,
            device_name="mautrix bridge bot",
            store_access_token=True,
            update_hs_url=False,
        )
        crypto_store = MemoryCryptoStore(account_id=self.bot, pickle_key="interop")
        await crypto_store.put_device_id(self.client.device_id)
        self.machine = OlmMachine(self.client, crypto_store, self.store)
        await self.machine.load()
        await self.machine.share_keys()
        machine = self.machine

        async def on_to_device(evt: Any) -> None:
            self.to_device_seen += 1
            await machine.handle_as_to_device_event(evt)

        async def on_otk_counts(counts: Any) -> None:
            self.otk_counts_seen += 1
            await machine.handle_as_otk_counts(counts)

        self.appservice.to_device_handler = on_to_device
        self.appservice.otk_handler = on_otk_counts
        self.appservice.device_list_handler = machine.handle_as_device_lists

    async def stop(self) -> None:
        await self.appservice.stop()
        await self.client.api.session.close()

    async def _on_event(self, event: Event) -> None:
        if isinstance(event, StateEvent):
            await self.store.update_state(event)
        if isinstance(event, EncryptedEvent) and self.machine is not None:
            try:
                try:
                    clear = await self.machine.decrypt_megolm_event(event)
                except SessionNotFound as exc:
                    if not await self.machine.wait_for_session(event.room_id, exc.session_id, timeout=15):
                        raise
                    clear = await self.machine.decrypt_megolm_event(event)
            except Exception as exc:  # noqa: BLE001 (recorded, the test explains with it)
                self.undecryptable.append(f"{event.event_id}: {exc!r}")
                return
            self.decrypted[str(event.event_id)] = str(getattr(clear.content, "body", ""))

    async def join(self, room_id: str) -> None:
        intent = self.appservice.intent
        await intent.join_room(RoomID(room_id))
        await intent.get_state(RoomID(room_id))  # members and m.room.encryption into the store

    async def send(self, room_id: str, body: str) -> str:
        assert self.machine is not None
        room = RoomID(room_id)
        assert await self.store.is_encrypted(room), "the bot does not know the room as encrypted"
        members = await self.appservice.intent.get_joined_members(room)
        await self.machine.share_group_session(room, list(members))
        content = await self.machine.encrypt_megolm_event(
            room, EventType.ROOM_MESSAGE, TextMessageEventContent(msgtype=MessageType.TEXT, body=body)
        )
        return str(await self.appservice.intent.send_message_event(room, EventType.ROOM_ENCRYPTED, content))

    def explain(self) -> str:
        return (
            f"bridge bot {self.bot}/{self.client.device_id}: decrypted {self.decrypted}, failures "
            f"{self.undecryptable}, to-device seen {self.to_device_seen}, otk counts seen {self.otk_counts_seen}"
        )


def registration(path: Path, port: int, server_name: str) -> None:
    domain = server_name.replace(".", "\\.")
    path.write_text(
        yaml.safe_dump(
            {
                "id": "e2ee-bridge",
                "url": f"http://127.0.0.1:{port}",
                "as_token": AS_TOKEN,
                "hs_token": HS_TOKEN,
                "sender_localpart": BOT,
                "rate_limited": False,
                "de.sorunome.msc2409.push_ephemeral": True,
                "org.matrix.msc3202": True,
                "namespaces": {
                    "users": [{"exclusive": True, "regex": f"@e2e_.*:{domain}"}],
                    "aliases": [],
                    "rooms": [],
                },
            }
        )
    )


@pytest.mark.parametrize("engine", ENGINE_PARAMS)
def test_mautrix_bridge_bot_and_nio_in_an_encrypted_room(our_homeserver: Any, tmp_path: Path, engine: str) -> None:
    port = h.free_port()
    reg_path = tmp_path / "e2ee-bridge.yaml"

    def patch(config: dict[str, Any]) -> None:
        registration(reg_path, port, config["server_name"])
        config["app_service_config_files"] = [str(reg_path)]

    server = our_homeserver(engine=engine, patch_config=patch)
    server.register_user("alice", PASSWORD)
    asyncio.run(_scenario(server, port, tmp_path))
    log = server.log_tail(400)
    assert "Traceback" not in log, log


async def _scenario(server: h.RunningServer, port: int, tmp_path: Path) -> None:
    quiet_library_logs()
    bridge = Bridge(server, port)
    await bridge.start()
    alice = await NioUser.login(server, "alice", PASSWORD, tmp_path / "alice", "alice nio")
    try:
        alice.start()
        created = await alice.client.room_create(
            name="bridged and encrypted",
            invite=[bridge.bot],
            initial_state=[
                {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
            ],
        )
        room_id = str(created.room_id)
        await wait_until(
            "the bridge to hear of its invite",
            lambda: bridge.store.members.get(room_id, {}).get(bridge.bot) is not None,
            explain=bridge.explain,
        )
        await bridge.join(room_id)
        await alice.wait_joined(room_id, [alice.user_id, bridge.bot])

        to_bridge = marker("nio-to-bridge")
        sent = await alice.send(room_id, f"Alice (nio) says {to_bridge}")
        await wait_until(
            "the bridge bot to decrypt alice's message",
            lambda: to_bridge in bridge.decrypted.get(sent, ""),
            explain=lambda: bridge.explain() + "\n" + alice.explain(),
        )
        # The room key reached the bot's device in a transaction, with its key counts.
        assert bridge.to_device_seen >= 1 and bridge.otk_counts_seen >= 1, bridge.explain()

        to_alice = marker("bridge-to-nio")
        reply = await bridge.send(room_id, f"The bridge says {to_alice}")
        got = await alice.wait_message(room_id, to_alice)
        assert got.event_id == reply and got.sender == bridge.bot, alice.explain()

        stored, counts = stored_data_dump(server)
        for secret in (to_bridge, to_alice):
            assert secret not in stored, f"plaintext {secret!r} is in the server's stored data ({counts})"
    finally:
        await alice.stop()
        await bridge.stop()
