"""The Application Service API over HTTP, both engines, with a small fake service (Twisted)
listening on loopback: tokens, masquerading, registration, transactions, retries,
restarts, ephemeral data, to-device, pings, queries and third-party lookups."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest_twisted
import yaml
from twisted.internet import defer, reactor, task
from twisted.web import resource, server

from tests.api.conftest import Client, HSFixture
from tests.api.helpers import register

V3 = "/_matrix/client/v3"
AS_TOKEN = "as-secret-token"
HS_TOKEN = "hs-secret-token"
GHOST = "@_bridge_alice:test.local"


@dataclass
class FakeAppService:
    """Records what the homeserver sends; answers as told (``mode``)."""

    mode: str = "ok"  # ok, error, garbage
    transactions: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    attempts: int = 0
    pings: list[Any] = field(default_factory=list)
    bad_auth: int = 0
    on_user_query: Callable[[str], Any] | None = None
    on_alias_query: Callable[[str], Any] | None = None
    port: Any = None

    def events(self) -> list[dict[str, Any]]:
        return [e for _, body in self.transactions for e in body["events"]]

    def field(self, key: str) -> list[Any]:
        return [x for _, body in self.transactions for x in body.get(key, [])]


class _Resource(resource.Resource):
    isLeaf = True

    def __init__(self, fake: FakeAppService) -> None:
        super().__init__()
        self.fake = fake

    def render(self, request: server.Request) -> Any:
        d = defer.ensureDeferred(self._handle(request))
        d.addErrback(lambda f: (print(f.getTraceback()), request.setResponseCode(500), request.finish()))
        return server.NOT_DONE_YET

    async def _handle(self, request: server.Request) -> None:
        fake = self.fake
        path = request.path.decode()
        if request.getHeader("Authorization") != f"Bearer {HS_TOKEN}":
            fake.bad_auth += 1
            return self._reply(request, 401, {"errcode": "M_UNKNOWN_TOKEN"})
        body = json.loads(request.content.read() or b"null")
        if path.startswith("/_matrix/app/v1/transactions/"):
            fake.attempts += 1
            if fake.mode == "error":
                return self._reply(request, 503, {"errcode": "M_UNKNOWN", "error": "down for maintenance"})
            if fake.mode == "garbage":
                request.setResponseCode(200)
                request.write(b"<html>not json</html>")
                request.finish()
                return None
            txn_id = path.rsplit("/", 1)[1]
            if txn_id not in {t for t, _ in fake.transactions}:
                fake.transactions.append((txn_id, body))
            return self._reply(request, 200, {})
        if path == "/_matrix/app/v1/ping":
            fake.pings.append(body)
            if fake.mode != "ok":
                return self._reply(request, 500, {"errcode": "M_UNKNOWN"})
            return self._reply(request, 200, {})
        if path.startswith("/_matrix/app/v1/users/") and fake.on_user_query is not None:
            if await fake.on_user_query(_unquote(path.rsplit("/", 1)[1])):
                return self._reply(request, 200, {})
        if path.startswith("/_matrix/app/v1/rooms/") and fake.on_alias_query is not None:
            if await fake.on_alias_query(_unquote(path.rsplit("/", 1)[1])):
                return self._reply(request, 200, {})
        if path == "/_matrix/app/v1/thirdparty/protocol/irc":
            return self._reply(
                request,
                200,
                {
                    "user_fields": ["nick"],
                    "location_fields": ["channel"],
                    "icon": "mxc://x/y",
                    "field_types": {},
                    "instances": [{"desc": "Libera", "network_id": "libera", "fields": {}}],
                },
            )
        if path == "/_matrix/app/v1/thirdparty/user/irc":
            nick = request.args.get(b"nick", [b""])[0].decode()
            return self._reply(
                request, 200, [{"userid": f"@_bridge_{nick}:test.local", "protocol": "irc", "fields": {"nick": nick}}]
            )
        return self._reply(request, 404, {"errcode": "M_NOT_FOUND"})

    @staticmethod
    def _reply(request: server.Request, code: int, body: Any) -> None:
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"application/json")
        request.write(json.dumps(body).encode())
        request.finish()


def _unquote(value: str) -> str:
    from urllib.parse import unquote

    return unquote(value)


def start_fake(fake: FakeAppService) -> int:
    fake.port = reactor.listenTCP(0, server.Site(_Resource(fake)), interface="127.0.0.1")
    return int(fake.port.getHost().port)


def write_registration(tmp_path: Path, port: int, **extra: Any) -> str:
    data = {
        "id": "bridge",
        "url": f"http://127.0.0.1:{port}",
        "as_token": AS_TOKEN,
        "hs_token": HS_TOKEN,
        "sender_localpart": "bridgebot",
        "namespaces": {
            "users": [{"exclusive": True, "regex": "@_bridge_.*:test\\.local"}],
            "aliases": [{"exclusive": True, "regex": "#_bridge_.*:test\\.local"}],
            "rooms": [],
        },
        "rate_limited": False,
        "protocols": ["irc"],
        "receive_ephemeral": True,
        "org.matrix.msc3202": True,
        **extra,
    }
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@dataclass
class Env:
    server: HSFixture
    fake: FakeAppService
    bridge: Client
    registration: str
    make: Callable[..., HSFixture]

    async def restart(self) -> None:
        """A new homeserver process on the same database (the old one's host stopped)."""
        assert self.server.hs.appservices is not None
        await self.server.hs.appservices.stop()
        self.server = await start_server(self.make, self.registration)
        self.bridge = self.server.new_client()
        self.bridge.token = AS_TOKEN


async def start_server(make: Callable[..., HSFixture], registration_path: str) -> HSFixture:
    srv = make(app_service_config_files=[registration_path], presence={"enabled": True})
    host = srv.hs.appservices
    assert host is not None
    await host.ready
    for sender in host.senders.values():
        sender.backoff_base_s = 0.05
    return srv


@contextlib.asynccontextmanager
async def running_env(make_server: Callable[..., HSFixture], tmp_path: Path) -> AsyncIterator[Env]:
    """A homeserver with the fake service registered (shared with the other appservice tests)."""
    fake = FakeAppService()
    path = write_registration(tmp_path, start_fake(fake))
    srv = await start_server(make_server, path)
    bridge = srv.new_client()
    bridge.token = AS_TOKEN
    e = Env(srv, fake, bridge, path, make_server)
    try:
        yield e
    finally:
        if e.server.hs.appservices is not None:
            await e.server.hs.appservices.stop()
        await fake.port.stopListening()


@pytest_twisted.async_yield_fixture
async def env(make_server: Callable[..., HSFixture], tmp_path: Path) -> AsyncIterator[Env]:
    async with running_env(make_server, tmp_path) as e:
        yield e


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    waited = 0.0
    while not predicate():
        if waited > timeout:
            raise AssertionError("condition not reached in time")
        await task.deferLater(reactor, 0.02, lambda: None)
        waited += 0.02


async def new_user(env: Env, name: str) -> Client:
    c = env.server.new_client()
    c.token = (await register(c, name))["access_token"]
    return c


async def register_ghost(env: Env, localpart: str = "_bridge_alice") -> str:
    resp = await env.bridge.post(
        f"{V3}/register", {"type": "m.login.application_service", "username": localpart, "inhibit_login": True}
    )
    assert resp.code == 200, resp.body
    return str(resp.body["user_id"])


def as_user(path: str, user_id: str) -> str:
    sep = "&" if "?" in path else "?"
    from urllib.parse import quote

    return f"{path}{sep}user_id={quote(user_id)}"


@pytest_twisted.ensureDeferred
async def test_tokens_masquerading_and_registration(env: Env) -> None:
    bridge = env.bridge
    assert (await bridge.get(f"{V3}/account/whoami")).body["user_id"] == "@bridgebot:test.local"
    wrong = await bridge.get(f"{V3}/account/whoami", token="not-a-token")
    assert (wrong.code, wrong.body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    # ghosts: registered by the service without password, only inside its namespace
    assert await register_ghost(env) == GHOST
    again = await bridge.post(f"{V3}/register", {"type": "m.login.application_service", "username": "_bridge_alice"})
    assert (again.code, again.body["errcode"]) == (400, "M_USER_IN_USE")
    outside = await bridge.post(f"{V3}/register", {"type": "m.login.application_service", "username": "carol"})
    assert (outside.code, outside.body["errcode"]) == (400, "M_EXCLUSIVE")
    no_token = await env.server.new_client().post(
        f"{V3}/register", {"type": "m.login.application_service", "username": "_bridge_x"}
    )
    assert no_token.code == 401
    # a person cannot take a name the bridge reserved (nor see it as available)
    human = env.server.new_client()
    taken = await human.post(f"{V3}/register", {"username": "_bridge_mallory", "password": "correct horse battery"})
    assert (taken.code, taken.body["errcode"]) == (400, "M_EXCLUSIVE")
    avail = await human.get(f"{V3}/register/available?username=_bridge_mallory")
    assert avail.body["errcode"] == "M_EXCLUSIVE"
    # masquerading
    who = await bridge.get(as_user(f"{V3}/account/whoami", GHOST))
    assert who.body["user_id"] == GHOST
    await new_user(env, "bob")
    for user_id, code in (("@bob:test.local", 403), ("@_bridge_unknown:test.local", 403), ("@_bridge_x:other", 403)):
        denied = await bridge.get(as_user(f"{V3}/account/whoami", user_id))
        assert (denied.code, denied.body["errcode"]) == (code, "M_FORBIDDEN"), user_id
    # a device for the ghost (m.login.application_service), then device masquerading
    flows = (await human.get(f"{V3}/login")).body["flows"]
    assert {"type": "m.login.application_service"} in flows
    login = await bridge.post(
        f"{V3}/login",
        {
            "type": "m.login.application_service",
            "identifier": {"type": "m.id.user", "user": "_bridge_alice"},
            "device_id": "GHOSTDEV",
        },
    )
    assert login.code == 200 and login.body["device_id"] == "GHOSTDEV"
    bad_login = await bridge.post(
        f"{V3}/login", {"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": "bob"}}
    )
    assert bad_login.code == 403
    who = await bridge.get(as_user(f"{V3}/account/whoami", GHOST) + "&org.matrix.msc3202.device_id=GHOSTDEV")
    assert (who.body["user_id"], who.body["device_id"]) == (GHOST, "GHOSTDEV")
    no_dev = await bridge.get(as_user(f"{V3}/account/whoami", GHOST) + "&device_id=NOPE")
    assert no_dev.code == 403


@pytest_twisted.ensureDeferred
async def test_aliases_reserved_and_timestamps_massaged(env: Env) -> None:
    bob = await new_user(env, "bob")
    room = (await bob.post(f"{V3}/createRoom", {})).body["room_id"]
    denied = await bob.put(f"{V3}/directory/room/%23_bridge_chan:test.local", {"room_id": room})
    assert isinstance(denied.body, dict) and "errcode" in denied.body, (denied.code, denied.body)
    assert (denied.code, denied.body["errcode"]) == (400, "M_EXCLUSIVE")
    denied = await bob.post(f"{V3}/createRoom", {"room_alias_name": "_bridge_other"})
    assert (denied.code, denied.body["errcode"]) == (400, "M_EXCLUSIVE")
    created = await env.bridge.post(f"{V3}/createRoom", {"room_alias_name": "_bridge_chan"})
    assert created.code == 200, created.body
    bridged = created.body["room_id"]
    sent = await env.bridge.put(
        f"{V3}/rooms/{bridged}/send/m.room.message/t1?ts=1000000000000", {"msgtype": "m.text", "body": "from 2001"}
    )
    event = await env.bridge.get(f"{V3}/rooms/{bridged}/event/{sent.body['event_id']}")
    assert event.body["origin_server_ts"] == 1000000000000
    bad = await env.bridge.put(f"{V3}/rooms/{bridged}/send/m.room.message/t2?ts=soon", {"body": "x"})
    assert (bad.code, bad.body["errcode"]) == (400, "M_INVALID_PARAM")
    # a user's ts is ignored
    own = await bob.put(f"{V3}/rooms/{room}/send/m.room.message/t3?ts=1000", {"msgtype": "m.text", "body": "x"})
    assert (await bob.get(f"{V3}/rooms/{room}/event/{own.body['event_id']}")).body["origin_server_ts"] > 10**12


@pytest_twisted.ensureDeferred
async def test_transactions_bring_interesting_events_in_order(env: Env) -> None:
    bob = await new_user(env, "bob")
    await register_ghost(env)
    room = (await bob.post(f"{V3}/createRoom", {"invite": [GHOST]})).body["room_id"]
    private = (await bob.post(f"{V3}/createRoom", {})).body["room_id"]
    assert (await env.bridge.post(as_user(f"{V3}/join/{room}", GHOST), {})).code == 200
    for i in range(5):
        await bob.put(f"{V3}/rooms/{room}/send/m.room.message/m{i}", {"msgtype": "m.text", "body": f"hello {i}"})
        await bob.put(f"{V3}/rooms/{private}/send/m.room.message/p{i}", {"msgtype": "m.text", "body": "secret"})
    await wait_for(lambda: len([e for e in env.fake.events() if e["type"] == "m.room.message"]) == 5)
    events = env.fake.events()
    assert all(e["room_id"] == room for e in events), "a room without bridge users leaked"
    assert [e["content"]["body"] for e in events if e["type"] == "m.room.message"] == [f"hello {i}" for i in range(5)]
    invite = next(e for e in events if e["type"] == "m.room.member" and e["content"]["membership"] == "invite")
    assert invite["state_key"] == GHOST
    txn_ids = [int(t) for t, _ in env.fake.transactions]
    assert txn_ids == sorted(txn_ids) and len(set(txn_ids)) == len(txn_ids)
    assert env.fake.bad_auth == 0
    metrics = await admin_metrics(env)
    assert metrics["queue_depth"] == 0 and metrics["sent_transactions"] >= 1


async def admin_metrics(env: Env) -> dict[str, Any]:
    admin = env.server.new_client()
    reg = await register(admin, "root")
    admin.token = reg["access_token"]
    await env.server.hs.db.run_interaction(
        "make_admin", lambda txn: txn.execute("UPDATE users SET is_admin = 1 WHERE user_id = ?", ("@root:test.local",))
    )
    resp = await admin.get("/_homeserver/admin/v1/appservices")
    assert resp.code == 200, resp.body
    assert (await env.bridge.get("/_homeserver/admin/v1/appservices")).code == 403
    return dict(resp.body["appservices"][0])


@pytest_twisted.ensureDeferred
async def test_service_down_then_back_gets_everything_in_order(env: Env) -> None:
    bob = await new_user(env, "bob")
    await register_ghost(env)
    room = (await bob.post(f"{V3}/createRoom", {"invite": [GHOST]})).body["room_id"]
    assert (await env.bridge.post(as_user(f"{V3}/join/{room}", GHOST), {})).code == 200
    await wait_for(
        lambda: any(
            e["type"] == "m.room.member" and e["content"]["membership"] == "join" and e["state_key"] == GHOST
            for e in env.fake.events()
        )
    )
    env.fake.mode = "error"
    for i in range(4):
        await bob.put(f"{V3}/rooms/{room}/send/m.room.message/a{i}", {"msgtype": "m.text", "body": f"while down {i}"})
    await wait_for(lambda: env.fake.attempts >= 3)
    env.fake.mode = "garbage"  # 200 with a body that is not JSON: not an acknowledgement
    await bob.put(f"{V3}/rooms/{room}/send/m.room.message/g", {"msgtype": "m.text", "body": "garbage time"})
    attempts = env.fake.attempts
    await wait_for(lambda: env.fake.attempts >= attempts + 2)
    metrics = await admin_metrics(env)
    assert metrics["queue_depth"] == 5 and metrics["consecutive_failures"] >= 2 and metrics["last_error"]
    env.fake.mode = "ok"
    await wait_for(lambda: sum(e["type"] == "m.room.message" for e in env.fake.events()) == 5, timeout=20)
    bodies = [e["content"]["body"] for e in env.fake.events() if e["type"] == "m.room.message"]
    assert bodies == [f"while down {i}" for i in range(4)] + ["garbage time"]


@pytest_twisted.ensureDeferred
async def test_restart_in_between_loses_nothing(env: Env) -> None:
    bob = await new_user(env, "bob")
    await register_ghost(env)
    room = (await bob.post(f"{V3}/createRoom", {"invite": [GHOST]})).body["room_id"]
    assert (await env.bridge.post(as_user(f"{V3}/join/{room}", GHOST), {})).code == 200
    await wait_for(
        lambda: any(
            e["type"] == "m.room.member" and e["content"]["membership"] == "join" and e["state_key"] == GHOST
            for e in env.fake.events()
        )
    )
    env.fake.mode = "error"
    await bob.put(f"{V3}/rooms/{room}/send/m.room.message/b0", {"msgtype": "m.text", "body": "before restart"})
    await wait_for(lambda: env.fake.attempts >= 2)
    # the "crash": the host stops; events keep being persisted without it
    assert env.server.hs.appservices is not None
    await env.server.hs.appservices.stop()
    await bob.put(f"{V3}/rooms/{room}/send/m.room.message/b1", {"msgtype": "m.text", "body": "while stopped"})
    env.fake.mode = "ok"
    await env.restart()
    await wait_for(lambda: sum(e["type"] == "m.room.message" for e in env.fake.events()) == 2, timeout=20)
    bodies = [e["content"]["body"] for e in env.fake.events() if e["type"] == "m.room.message"]
    assert bodies == ["before restart", "while stopped"]


@pytest_twisted.ensureDeferred
async def test_ephemeral_and_to_device(env: Env) -> None:
    bob = await new_user(env, "bob")
    await register_ghost(env)
    login = await env.bridge.post(
        f"{V3}/login",
        {
            "type": "m.login.application_service",
            "identifier": {"type": "m.id.user", "user": GHOST},
            "device_id": "GHOSTDEV",
        },
    )
    assert login.code == 200
    room = (await bob.post(f"{V3}/createRoom", {"invite": [GHOST]})).body["room_id"]
    await env.bridge.post(as_user(f"{V3}/join/{room}", GHOST), {})
    sent = await bob.put(f"{V3}/rooms/{room}/send/m.room.message/e1", {"msgtype": "m.text", "body": "hi"})
    assert (await bob.put(f"{V3}/rooms/{room}/typing/@bob:test.local", {"typing": True, "timeout": 30000})).code == 200
    assert (await bob.post(f"{V3}/rooms/{room}/receipt/m.read/{sent.body['event_id']}", {})).code == 200
    await bob.put(f"{V3}/sendToDevice/m.test/td1", {"messages": {GHOST: {"GHOSTDEV": {"secret": 42}}}})

    def got() -> bool:
        eph = env.fake.field("ephemeral")
        return (
            any(e["type"] == "m.typing" for e in eph)
            and any(e["type"] == "m.receipt" for e in eph)
            and bool(env.fake.field("de.sorunome.msc2409.to_device"))
        )

    await wait_for(got)
    eph = env.fake.field("ephemeral")
    typing = next(e for e in eph if e["type"] == "m.typing")
    assert typing["room_id"] == room and "@bob:test.local" in typing["content"]["user_ids"]
    receipt = next(e for e in eph if e["type"] == "m.receipt")
    assert receipt["room_id"] == room and "@bob:test.local" in receipt["content"][sent.body["event_id"]]["m.read"]
    (td,) = env.fake.field("de.sorunome.msc2409.to_device")
    assert td == {
        "type": "m.test",
        "sender": "@bob:test.local",
        "content": {"secret": 42},
        "to_user_id": GHOST,
        "to_device_id": "GHOSTDEV",
    }


@pytest_twisted.ensureDeferred
async def test_ping_queries_and_third_party(env: Env) -> None:
    bridge = env.bridge
    pong = await bridge.post("/_matrix/client/v1/appservice/bridge/ping", {"transaction_id": "p1"})
    assert pong.code == 200 and isinstance(pong.body["duration_ms"], int)
    assert env.fake.pings == [{"transaction_id": "p1"}]
    bob = await new_user(env, "bob")
    assert (await bob.post("/_matrix/client/v1/appservice/bridge/ping", {})).code == 403
    assert (await bridge.post("/_matrix/client/v1/appservice/other/ping", {})).code == 403
    env.fake.mode = "error"
    failed = await bridge.post("/_matrix/client/v1/appservice/bridge/ping", {})
    assert (failed.code, failed.body["errcode"]) == (502, "M_BAD_STATUS")
    env.fake.mode = "ok"

    async def create_user(user_id: str) -> bool:
        localpart = user_id[1:].split(":")[0]
        await bridge.post(
            f"{V3}/register", {"type": "m.login.application_service", "username": localpart, "inhibit_login": True}
        )
        return True

    async def create_alias(alias: str) -> bool:
        resp = await bridge.post(f"{V3}/createRoom", {"room_alias_name": alias[1:].split(":")[0]})
        return resp.code == 200

    env.fake.on_user_query = create_user
    env.fake.on_alias_query = create_alias
    profile = await bob.get(f"{V3}/profile/@_bridge_newcomer:test.local")
    assert profile.code == 200, profile.body
    assert (await bob.get(f"{V3}/profile/@nobody:test.local")).code == 404
    found = await bob.get(f"{V3}/directory/room/%23_bridge_irc:test.local")
    assert found.code == 200 and found.body["room_id"].startswith("!")
    assert (await bob.get(f"{V3}/directory/room/%23nothing:test.local")).code == 404
    protocols = (await bob.get(f"{V3}/thirdparty/protocols")).body
    assert protocols["irc"]["instances"][0]["appservice_id"] == "bridge"
    assert (await bob.get(f"{V3}/thirdparty/protocol/xmpp")).code == 404
    users = (await bob.get(f"{V3}/thirdparty/user/irc?nick=zoe")).body
    assert users == [{"userid": "@_bridge_zoe:test.local", "protocol": "irc", "fields": {"nick": "zoe"}}]
