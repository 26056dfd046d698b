"""Three independent end-to-end encryption stacks, driven from one asyncio test.

* :class:`NioUser`: matrix-nio's AsyncClient with its vodozemac-based Olm machine, a
  /sync loop of its own, and the key upload/query/claim chores its ``sync_forever`` does.
* :class:`MautrixUser`: mautrix-python's Client with ``mautrix.crypto.OlmMachine``
  (python-olm, i.e. libolm), in-memory crypto and state stores.
* :class:`JsAgent`: one long-running Node process (js/e2ee_agent.mjs) hosting any number
  of matrix-js-sdk clients with the Rust crypto (matrix-sdk-crypto-wasm), driven by JSON
  commands over stdin/stdout.

And :func:`stored_data_dump`, which reads everything the server has stored (every row of
every table, and every file under its data directory) for the plaintext check.

A waiting helper raises AssertionError with what the client did see, so a test fails
with the evidence instead of a bare timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import pytest
import yaml
from nio import (
    AsyncClient,
    AsyncClientConfig,
    JoinResponse,
    KeysClaimResponse,
    KeysQueryResponse,
    KeysUploadResponse,
    LoginResponse,
    MegolmEvent,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
)

from tests.interop import harness as h
from tests.interop.js_node import JS_DIR
from tests.interop.nio_client import RecordingClient

T = TypeVar("T")

WAIT = 25.0  # seconds a client waits to see another's action


def require(module: str, package: str) -> ModuleType:
    """Import ``module``; without it skip the test module, or fail it when CI=true."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        reason = f"{module} is not importable ({exc}): pip install {package!r}"
    if h.in_ci():
        pytest.fail(f"{reason} (CI=true: this is required, not optional)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def marker(label: str) -> str:
    """A unique token to put in a message body and look for everywhere else."""
    return f"{label}-plaintext-{secrets.token_hex(8)}"


async def wait_until(
    what: str,
    check: Callable[[], T | None] | Callable[[], Awaitable[T | None]],
    timeout: float = WAIT,
    explain: Callable[[], str] | None = None,
    interval: float = 0.1,
) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``explain()`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() > deadline:
            detail = explain() if explain else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{detail}")
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------- matrix-nio


class E2EEClient(RecordingClient):
    """RecordingClient with encryption on: nio's Olm machine, stored in ``store_path``."""

    def __init__(self, homeserver: str, user: str, store_path: str) -> None:
        config = AsyncClientConfig(
            max_limit_exceeded=0,
            max_timeouts=0,
            request_timeout=30,
            encryption_enabled=True,
            store_sync_tokens=False,
        )
        AsyncClient.__init__(self, homeserver, user, store_path=store_path, config=config)
        self.exchanges: list[dict[str, Any]] = []

    def exchanges_for(self, fragment: str, last: int = 3) -> str:
        found = [e for e in self.exchanges if fragment in e["request"]]
        return json.dumps(found[-last:], indent=1, default=str)[:6000]


class NioUser:
    """One matrix-nio device: login, a background /sync loop, decrypted messages."""

    def __init__(self, client: E2EEClient, name: str) -> None:
        self.client = client
        self.name = name
        self.decrypted: dict[str, RoomMessageText] = {}
        self.undecrypted: dict[str, MegolmEvent] = {}
        self.errors: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self.synced = asyncio.Event()
        client.add_event_callback(self._on_event, (RoomMessageText, MegolmEvent))

    @property
    def user_id(self) -> str:
        return str(self.client.user_id)

    @property
    def device_id(self) -> str:
        return str(self.client.device_id)

    @property
    def ed25519(self) -> str:
        return str(self.client.olm.account.identity_keys["ed25519"])

    @property
    def curve25519(self) -> str:
        return str(self.client.olm.account.identity_keys["curve25519"])

    @classmethod
    async def login(
        cls, server: h.RunningServer, localpart: str, password: str, store_dir: Path, device_name: str
    ) -> NioUser:
        store_dir.mkdir(parents=True, exist_ok=True)
        client = E2EEClient(server.client_url, localpart, str(store_dir))
        response = await client.login(password, device_name=device_name)
        if not isinstance(response, LoginResponse):
            await client.close()
            raise AssertionError(f"nio login as {localpart} failed" + client.explain(response))
        user = cls(client, device_name)
        uploaded = await client.keys_upload()
        assert isinstance(uploaded, KeysUploadResponse), "nio /keys/upload failed" + client.explain(uploaded)
        return user

    def _on_event(self, room: Any, event: Any) -> None:
        if isinstance(event, RoomMessageText):
            self.decrypted[event.event_id] = event
            self.undecrypted.pop(event.event_id, None)
        elif isinstance(event, MegolmEvent):
            self.undecrypted[event.event_id] = event

    def start(self) -> None:
        self._task = asyncio.create_task(self._sync_loop(), name=f"nio sync {self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
            self._task = None
        await self.client.close()

    async def _sync_loop(self) -> None:
        while True:
            response = await self.client.sync(timeout=1000)
            if not isinstance(response, SyncResponse):
                self.errors.append(self.client.explain(response))
                await asyncio.sleep(0.5)
                continue
            await self._chores()
            self.synced.set()

    async def _chores(self) -> None:
        """What nio's sync_forever does after each sync, plus retrying undecrypted events."""
        client = self.client
        if client.should_upload_keys:
            await client.keys_upload()
        if client.should_query_keys:
            await client.keys_query()
        if client.should_claim_keys:
            await client.keys_claim(client.get_users_for_key_claiming())
        await client.send_to_device_messages()
        for event_id, event in list(self.undecrypted.items()):
            try:
                decrypted = client.decrypt_event(event)
            except Exception:  # noqa: BLE001 (still no key: try after the next sync)
                continue
            if isinstance(decrypted, RoomMessageText):
                self.decrypted[event_id] = decrypted
                self.undecrypted.pop(event_id, None)

    async def synced_once(self) -> None:
        self.synced.clear()
        await asyncio.wait_for(self.synced.wait(), WAIT)

    def explain(self) -> str:
        undecrypted = {
            event_id: {"session_id": e.session_id, "sender": e.sender, "device_id": e.device_id}
            for event_id, e in self.undecrypted.items()
        }
        return (
            f"nio {self.name} ({self.user_id}/{self.device_id}): decrypted bodies "
            f"{[e.body for e in self.decrypted.values()]}, undecrypted {undecrypted}, sync errors "
            f"{self.errors[-2:]}\nlast /keys/query:\n{self.client.exchanges_for('/keys/query', 1)}"
            f"\nlast /keys/claim:\n{self.client.exchanges_for('/keys/claim', 1)}"
        )

    async def wait_message(self, room_id: str, marker_text: str, timeout: float = WAIT) -> RoomMessageText:
        def found() -> RoomMessageText | None:
            for event in self.decrypted.values():
                if marker_text in event.body and event.source.get("room_id", room_id) == room_id:
                    return event
            return None

        return await wait_until(
            f"{self.name} to decrypt a message containing {marker_text!r}", found, timeout, self.explain
        )

    async def wait_joined(self, room_id: str, user_ids: list[str], timeout: float = WAIT) -> None:
        def joined() -> bool:
            room = self.client.rooms.get(room_id)
            return room is not None and all(u in room.users for u in user_ids) and room.encrypted

        await wait_until(
            f"{self.name} to see {user_ids} joined in encrypted room {room_id}",
            joined,
            timeout,
            lambda: str(self.client.rooms.get(room_id).__dict__ if room_id in self.client.rooms else "no room"),
        )

    async def join(self, room_id: str) -> None:
        await wait_until(f"{self.name} to be invited to {room_id}", lambda: room_id in self.client.invited_rooms, WAIT)
        response = await self.client.join(room_id)
        assert isinstance(response, JoinResponse), f"{self.name} join" + self.client.explain(response)
        await wait_until(f"{self.name} to see itself in {room_id}", lambda: room_id in self.client.rooms)

    async def send(self, room_id: str, body: str, *, ignore_unverified: bool = True) -> str:
        room = self.client.rooms.get(room_id)
        # Never let a test message go out in clear.
        assert room is not None and room.encrypted, f"{self.name}: {room_id} is not known as encrypted"
        if self.client.should_query_keys:
            await self.client.keys_query()
        response = await self.client.room_send(
            room_id,
            "m.room.message",
            {"msgtype": "m.text", "body": body},
            ignore_unverified_devices=ignore_unverified,
        )
        assert isinstance(response, RoomSendResponse), f"{self.name} send" + self.client.explain(response)
        return str(response.event_id)

    async def query_keys(self, user_ids: list[str]) -> dict[str, Any]:
        """A raw /keys/query through nio's transport; returns the response body."""
        self.client.olm.users_for_key_query.update(user_ids)
        response = await self.client.keys_query()
        assert isinstance(response, KeysQueryResponse), "keys_query" + self.client.explain(response)
        body = self.client.exchanges[-1].get("response_body")
        assert isinstance(body, dict), self.client.explain(response)
        return body

    async def claim(self, user_id: str, device_id: str) -> dict[str, Any]:
        response = await self.client.keys_claim({user_id: [device_id]})
        assert isinstance(response, KeysClaimResponse), "keys_claim" + self.client.explain(response)
        return dict(self.client.exchanges[-1].get("response_body") or {})


# --------------------------------------------------------------------------- mautrix


def _mautrix_state_store() -> Any:
    from mautrix.client.state_store import MemoryStateStore
    from mautrix.crypto import StateStore as CryptoStateStore
    from mautrix.types import Membership

    class StateStore(MemoryStateStore, CryptoStateStore):  # type: ignore[misc]
        """The client's memory state store, plus the one query the crypto needs."""

        async def find_shared_rooms(self, user_id: Any) -> list[Any]:
            return [
                room_id
                for room_id, members in self.members.items()
                if self.encryption.get(room_id)
                and members.get(user_id) is not None
                and members[user_id].membership in (Membership.JOIN, Membership.INVITE)
            ]

    return StateStore()


class MautrixUser:
    """One mautrix-python device with mautrix.crypto (python-olm) and a /sync loop."""

    def __init__(self, client: Any, name: str) -> None:
        self.client = client
        self.name = name
        self.decrypted: dict[str, Any] = {}
        self.encrypted_seen: list[str] = []
        self._sync: asyncio.Future[Any] | None = None

    @property
    def user_id(self) -> str:
        return str(self.client.mxid)

    @property
    def device_id(self) -> str:
        return str(self.client.device_id)

    @classmethod
    async def login(cls, server: h.RunningServer, localpart: str, password: str, device_name: str) -> MautrixUser:
        from mautrix.client import Client
        from mautrix.client.state_store import MemorySyncStore
        from mautrix.crypto import OlmMachine
        from mautrix.crypto.store import MemoryCryptoStore
        from mautrix.types import EventType, UserID

        state_store = _mautrix_state_store()
        client = Client(
            mxid=UserID(server.user_id(localpart)),
            base_url=server.client_url,
            state_store=state_store,
            sync_store=MemorySyncStore(),
        )
        await client.login(password=password, device_name=device_name)
        crypto_store = MemoryCryptoStore(account_id=client.mxid, pickle_key="interop")
        await crypto_store.put_device_id(client.device_id)
        crypto = OlmMachine(client, crypto_store, state_store)
        client.crypto = crypto
        await crypto.load()
        await crypto.share_keys()
        user = cls(client, device_name)
        client.add_event_handler(EventType.ROOM_MESSAGE, user._on_message)
        client.add_event_handler(EventType.ROOM_ENCRYPTED, user._on_encrypted)
        return user

    async def _on_message(self, event: Any) -> None:
        self.decrypted[str(event.event_id)] = event

    async def _on_encrypted(self, event: Any) -> None:
        # The DecryptionDispatcher decrypts these; remember them to explain a failure.
        self.encrypted_seen.append(f"encrypted {event.event_id} session {event.content.session_id}")

    def start(self) -> None:
        self._sync = self.client.start(None)

    async def stop(self) -> None:
        self.client.stop()
        if self._sync is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._sync), 5)
            except (TimeoutError, asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        await self.client.api.session.close()

    def explain(self) -> str:
        bodies = [getattr(e.content, "body", None) for e in self.decrypted.values()]
        return f"mautrix {self.name} ({self.user_id}/{self.device_id}): decrypted {bodies}, encrypted events seen {self.encrypted_seen[-8:]}"

    async def wait_message(self, room_id: str, marker_text: str, timeout: float = WAIT) -> Any:
        def found() -> Any:
            for event in self.decrypted.values():
                if str(event.room_id) == room_id and marker_text in str(getattr(event.content, "body", "")):
                    return event
            return None

        return await wait_until(
            f"{self.name} to decrypt a message containing {marker_text!r}", found, timeout, self.explain
        )

    async def join(self, room_id: str) -> None:
        from mautrix.types import Membership, RoomID

        await wait_until(
            f"{self.name} to be invited to {room_id}",
            lambda: self._membership(room_id) == Membership.INVITE,
            explain=self.explain,
        )
        await self.client.join_room(RoomID(room_id))
        await wait_until(
            f"{self.name} to see itself joined to encrypted {room_id}",
            self._joined_and_encrypted(room_id),
            explain=self.explain,
        )

    def _membership(self, room_id: str) -> Any:
        member = self.client.state_store.members.get(room_id, {}).get(self.client.mxid)
        return member.membership if member else None

    def _joined_and_encrypted(self, room_id: str) -> Callable[[], Awaitable[bool]]:
        from mautrix.types import Membership

        async def check() -> bool:
            return self._membership(room_id) == Membership.JOIN and bool(
                await self.client.state_store.is_encrypted(room_id)
            )

        return check

    async def send(self, room_id: str, body: str) -> str:
        from mautrix.types import MessageType, RoomID, TextMessageEventContent

        # Never let a test message go out in clear.
        assert await self.client.state_store.is_encrypted(room_id), f"{self.name}: {room_id} not known as encrypted"
        # Fetch the member list now so the new session goes to every member's devices.
        members = await self.client.get_joined_members(RoomID(room_id))
        await self.client.state_store.set_members(RoomID(room_id), members)
        event_id = await self.client.send_message(
            RoomID(room_id), TextMessageEventContent(msgtype=MessageType.TEXT, body=body)
        )
        return str(event_id)


# --------------------------------------------------------------------------- matrix-js-sdk


class JsAgent:
    """js/e2ee_agent.mjs in a child process: matrix-js-sdk clients with the Rust crypto."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._process: asyncio.subprocess.Process | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._reader: asyncio.Task[None] | None = None
        self._log_file: Any = None

    async def start(self) -> JsAgent:
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 (closed in close())
        ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[0] = ready
        self._process = await asyncio.create_subprocess_exec(
            "node",
            str(JS_DIR / "e2ee_agent.mjs"),
            cwd=str(JS_DIR),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log_file,
            limit=64 * 1024 * 1024,
        )
        self._reader = asyncio.create_task(self._read_replies())
        try:
            await asyncio.wait_for(ready, 30)
        except TimeoutError:
            raise AssertionError("the matrix-js-sdk agent did not start\n" + self.log_tail()) from None
        return self

    async def _read_replies(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        while True:
            line = await self._process.stdout.readline()
            if not line:
                break
            text = line.decode("utf-8", "replace").strip()
            if not text.startswith("REPLY "):
                continue
            message = json.loads(text[len("REPLY ") :])
            future = self._pending.pop(message.get("id"), None)
            if future is not None and not future.done():
                future.set_result(message)
        for future in self._pending.values():
            if not future.done():
                future.set_result({"ok": False, "error": {"message": "the agent exited"}})

    def log_tail(self, lines: int = 60) -> str:
        return f"--- matrix-js-sdk agent log ({self.log_path}) ---\n" + h.tail(self.log_path, lines)

    async def call(self, cmd: str, timeout: float = 45.0, **args: Any) -> Any:
        """Run one command; return its value, or fail with the SDK's error and log tail."""
        assert self._process is not None and self._process.stdin is not None
        self._next_id += 1
        request_id = self._next_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._process.stdin.write((json.dumps({"id": request_id, "cmd": cmd, **args}) + "\n").encode())
        await self._process.stdin.drain()
        try:
            message = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise AssertionError(
                f"matrix-js-sdk {cmd} {args.get('client', '')} gave no answer within {timeout:.0f}s\n" + self.log_tail()
            ) from None
        if not message.get("ok"):
            error = json.dumps(message.get("error"), indent=1, default=str)[:8000]
            raise AssertionError(
                f"matrix-js-sdk {cmd} {json.dumps(args, default=str)[:300]} failed:\n{error}\n{self.log_tail(40)}"
            )
        return message.get("value")

    async def close(self) -> None:
        if self._process is None:
            return
        if self._process.returncode is None:
            try:
                await self.call("exit", timeout=5)
            except (AssertionError, ConnectionError, RuntimeError):
                pass
            try:
                await asyncio.wait_for(self._process.wait(), 5)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        if self._reader is not None:
            self._reader.cancel()
        if self._log_file is not None:
            self._log_file.close()
        self._process = None


class JsUser:
    """A handle on one client inside the agent, named for readable tests."""

    def __init__(self, agent: JsAgent, name: str, info: dict[str, Any]) -> None:
        self.agent = agent
        self.name = name
        self.user_id: str = info["userId"]
        self.device_id: str = info["deviceId"]
        self.access_token: str = info["accessToken"]
        self.ed25519: str = info["ed25519"]
        self.curve25519: str = info["curve25519"]

    @classmethod
    async def login(cls, agent: JsAgent, server: h.RunningServer, localpart: str, password: str, name: str) -> JsUser:
        info = await agent.call(
            "login",
            client=name,
            baseUrl=server.client_url,
            user=localpart,
            password=password,
            deviceName=f"{name} (matrix-js-sdk)",
        )
        return cls(agent, name, info)

    async def __call__(self, cmd: str, timeout: float = 45.0, **args: Any) -> Any:
        return await self.agent.call(cmd, timeout=timeout, client=self.name, **args)


# --------------------------------------------------------------------------- stored data


def _text_of(value: Any) -> str:
    if isinstance(value, memoryview):
        value = value.tobytes()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _database_path(server: h.RunningServer) -> Path:
    config = yaml.safe_load(server.config_path.read_text())
    path = Path(str(config["database"]["args"]["database"]))
    return path if path.is_absolute() else server.config_path.parent / path


def stored_data_dump(server: h.RunningServer) -> tuple[str, dict[str, int]]:
    """Everything the server stored, as one text, and the row count of each table.

    SQLite: every row of every table, plus the raw bytes of the database files (a value
    deleted since may linger in a free page). PostgreSQL: every row of every table in the
    server's database. Either way also every file under the server's data directory.
    """
    parts: list[str] = []
    counts: dict[str, int] = {}
    if server.engine == "sqlite":
        db_path = _database_path(server)
        connection = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
        try:
            tables = [r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                rows = connection.execute(f'SELECT * FROM "{table}"').fetchall()
                counts[table] = len(rows)
                parts.extend(" ".join(_text_of(v) for v in row) for row in rows)
        finally:
            connection.close()
    else:
        import psycopg2

        pg = h.Postgres()
        connection = psycopg2.connect(
            host=pg.host, port=pg.port, user=pg.user, password=pg.password or None, dbname=server.database
        )
        try:
            cursor = connection.cursor()
            cursor.execute(
                "SELECT table_schema, table_name FROM information_schema.tables"
                " WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')"
            )
            for schema, table in cursor.fetchall():
                cursor.execute(f'SELECT * FROM "{schema}"."{table}"')
                rows = cursor.fetchall()
                counts[f"{schema}.{table}"] = len(rows)
                parts.extend(" ".join(_text_of(v) for v in row) for row in rows)
        finally:
            connection.close()
    for path in sorted(server.data_dir.rglob("*")):
        if path.is_file():
            parts.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(parts), counts


def quiet_library_logs() -> None:
    """nio and mautrix log every decryption at INFO; keep pytest's captured log readable."""
    for name in ("nio", "mau", "peewee", "aiohttp"):
        logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.asynccontextmanager
async def running_agent(directory: Path) -> AsyncIterator[JsAgent]:
    """``async with running_agent(tmp_path) as agent``: a JsAgent, closed afterwards."""
    agent = JsAgent(directory / "e2ee_agent.log")
    await agent.start()
    try:
        yield agent
    finally:
        await agent.close()
