"""Federation benchmark: our server against Synapse, side by side (see tests/bench/README.md).

    .venv/bin/python tests/bench/federation_bench.py                 # PostgreSQL, full sizes
    .venv/bin/python tests/bench/federation_bench.py --quick         # small numbers, ~1 minute
    .venv/bin/python tests/bench/federation_bench.py --pdus 5000 --members 2000 --events 20000 --cross

Both servers run from their own CLIs on fresh PostgreSQL databases (ours on 127.0.0.1,
Synapse on 127.0.0.2, federation over TLS with self-signed certificates, each allowing
the other and the load generator).  The load generator is a third federating server on
127.0.0.3: it has its own signing key, serves ``/_matrix/key/v2/server`` and the
federation endpoints a peer needs, signs its requests (X-Matrix) and its events.  It is
built on this project's pure event code (hashing, signing, event IDs); Synapse checking
every one of its events is what keeps that honest.  It does not check the signatures of
what it receives: it is a load generator, not a server.

Measured:

1. **inbound transaction throughput**: a user of the target creates a public room
   (version 10), the load generator joins it (make_join/send_join) and sends ``--pdus``
   messages in transactions of 50 PDUs, one transaction at a time as a sending server
   does; PDUs/s accepted = PDUs answered without error / wall time of the transactions.
2. **joining a big room** (``--members`` members, ``--events`` events): the load generator
   builds the room itself in memory and is its resident server (it answers make_join and
   send_join with the full state and auth chain); a user of each target joins it by ID.
   Reported: the client's ``POST /join`` wall time, and the time until ``joined_members``
   shows every member.
3. with ``--cross``: the load generator fills each target's throughput room up to
   ``--members`` members and ``--events`` events (through ``/send``), then a user of the
   *other* server joins it: our server joining a room hosted on Synapse, and Synapse
   joining one hosted on ours.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[2]
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve() and VENV_PYTHON.exists() and __name__ == "__main__":
    os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), *sys.argv])
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import yarl  # noqa: E402
from aiohttp import web  # noqa: E402

from homeserver.core.json import encode_canonical_json  # noqa: E402
from homeserver.events.model import make_event_id  # noqa: E402
from homeserver.events.room_versions import get_room_version  # noqa: E402
from homeserver.events.signing import (  # noqa: E402
    SigningKey,
    encode_verify_key_base64,
    generate_signing_key,
    get_verify_key,
    hash_and_sign_event,
    key_id,
    sign_json,
)
from homeserver.federation.xmatrix import sign_request  # noqa: E402
from tests.interop import harness as h  # noqa: E402
from tests.interop.synapse_server import make_self_signed_cert, start_synapse  # noqa: E402

JsonDict = dict[str, Any]
ROOM_VERSION = get_room_version("10")
TXN_SIZE = 50
PASSWORD = "federation bench password"
V3 = "/_matrix/client/v3"
FED = "/_matrix/federation"


# -- a room as the load generator sees it ---------------------------------------------------


class Room:
    """A linear room graph: its events, current state and latest event."""

    def __init__(self, room_id: str) -> None:
        self.room_id = room_id
        self.events: dict[str, JsonDict] = {}
        self.order: list[str] = []
        self.state: dict[tuple[str, str], str] = {}
        self.last: str | None = None
        self.depth = 0

    def add(self, event_id: str, pdu: JsonDict, *, timeline: bool = True) -> None:
        self.events[event_id] = pdu
        if "state_key" in pdu:
            self.state[(pdu["type"], pdu["state_key"])] = event_id
        if timeline:
            self.order.append(event_id)
            self.last = event_id
            self.depth = max(self.depth, int(pdu["depth"]))

    def auth_ids(self, event_type: str, sender: str, state_key: str | None, membership: str | None) -> list[str]:
        """The auth events of a new event (v10 rules: create, power levels, sender's membership,
        and for a join the join rules)."""
        keys = [("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.member", sender)]
        if event_type == "m.room.member" and state_key is not None:
            keys.append(("m.room.member", state_key))
            if membership == "join":
                keys.append(("m.room.join_rules", ""))
        return list(dict.fromkeys(self.state[k] for k in keys if k in self.state))

    def auth_chain(self, event_ids: list[str]) -> list[str]:
        chain: set[str] = set()
        todo = list(event_ids)
        while todo:
            for auth_id in self.events[todo.pop()]["auth_events"]:
                if auth_id not in chain and auth_id in self.events:
                    chain.add(auth_id)
                    todo.append(auth_id)
        return sorted(chain, key=lambda e: self.events[e]["depth"])


class LoadServer:
    """The third server: keys, signed requests, event building and the resident side."""

    def __init__(self, host: str, port: int, workdir: Path) -> None:
        self.name = f"{host}:{port}"
        self.host, self.port = host, port
        self.key: SigningKey = generate_signing_key("lg1")
        self.rooms: dict[str, Room] = {}
        self.received_pdus = 0
        cert, key = make_self_signed_cert(workdir, host)
        self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ssl.load_cert_chain(str(cert), str(key))
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    # -- outbound ------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/_matrix/key/v2/server", self._keys)
        app.router.add_get("/_matrix/key/v2/server/{kid}", self._keys)
        app.router.add_put(FED + "/v1/send/{txn}", self._on_send)
        app.router.add_get(FED + "/v1/make_join/{room}/{user}", self._make_join)
        app.router.add_put(FED + "/v2/send_join/{room}/{event}", self._send_join)
        app.router.add_get(FED + "/v1/event/{event}", self._event)
        app.router.add_get(FED + "/v1/event_auth/{room}/{event}", self._event_auth)
        app.router.add_get(FED + "/v1/state_ids/{room}", self._state_ids)
        app.router.add_get(FED + "/v1/state/{room}", self._state)
        app.router.add_get(FED + "/v1/backfill/{room}", self._backfill)
        app.router.add_post(FED + "/v1/get_missing_events/{room}", self._missing)
        app.router.add_get(FED + "/v1/user/devices/{user}", self._devices)
        app.router.add_get(FED + "/v1/version", self._version)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, ssl_context=self._ssl).start()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=False, limit=20), timeout=aiohttp.ClientTimeout(total=600)
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def request(self, method: str, destination: str, path: str, body: Any = None) -> tuple[int, Any]:
        assert self._session is not None
        auth = sign_request(self.key, origin=self.name, destination=destination, method=method, uri=path, content=body)
        data = None if body is None else encode_canonical_json(body)
        headers = {"Authorization": auth, "Content-Type": "application/json"}
        url = yarl.URL(f"https://{destination}{path}", encoded=True)  # sent exactly as signed
        async with self._session.request(method, url, data=data, headers=headers) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text

    def build(
        self, room: Room, sender: str, event_type: str, content: JsonDict, state_key: str | None = None
    ) -> tuple[str, JsonDict]:
        """A new event of ours on top of the room, hashed, signed and added to it."""
        pdu: JsonDict = {
            "room_id": room.room_id,
            "sender": sender,
            "type": event_type,
            "content": content,
            "origin": self.name,
            "origin_server_ts": int(time.time() * 1000),
            "prev_events": [room.last] if room.last else [],
            "auth_events": room.auth_ids(event_type, sender, state_key, content.get("membership")),
            "depth": room.depth + 1,
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        hash_and_sign_event(ROOM_VERSION, pdu, self.name, self.key)
        event_id = make_event_id(ROOM_VERSION, pdu)
        room.add(event_id, pdu)
        return event_id, pdu

    async def join_remote(self, destination: str, room_id: str, user_id: str) -> Room:
        """make_join + send_join v2 against ``destination``; the room as it answered."""
        status, made = await self.request(
            "GET", destination, f"{FED}/v1/make_join/{quote(room_id)}/{quote(user_id)}?ver=10"
        )
        if status != 200:
            raise RuntimeError(f"make_join at {destination}: HTTP {status} {made}")
        event = dict(made["event"])
        event.setdefault("origin", self.name)
        event["origin_server_ts"] = int(time.time() * 1000)
        hash_and_sign_event(ROOM_VERSION, event, self.name, self.key)
        event_id = make_event_id(ROOM_VERSION, event)
        status, answer = await self.request(
            "PUT", destination, f"{FED}/v2/send_join/{quote(room_id)}/{quote(event_id)}", event
        )
        if status != 200:
            raise RuntimeError(f"send_join at {destination}: HTTP {status} {answer}")
        room = self.rooms[room_id] = Room(room_id)
        for pdu in [*answer.get("auth_chain", []), *answer.get("state", [])]:
            room.add(make_event_id(ROOM_VERSION, pdu), pdu, timeline=False)
        room.add(event_id, answer.get("event") or event)
        return room

    async def send_pdus(self, destination: str, pdus: list[JsonDict]) -> tuple[int, list[str]]:
        """One transaction; (PDUs accepted, errors)."""
        body = {"origin": self.name, "origin_server_ts": int(time.time() * 1000), "pdus": pdus}
        status, answer = await self.request("PUT", destination, f"{FED}/v1/send/{secrets.token_hex(8)}", body)
        if status != 200:
            return 0, [f"HTTP {status}: {str(answer)[:300]}"]
        results = answer.get("pdus", {}) if isinstance(answer, dict) else {}
        errors = [f"{k}: {v['error']}" for k, v in results.items() if isinstance(v, dict) and v.get("error")]
        return len(pdus) - len(errors), errors

    # -- a room of our own ---------------------------------------------------------------

    def create_room(self, members: int, events: int) -> tuple[Room, float]:
        """A public room with ``members`` members of ours and ``events`` events in all."""
        started = time.monotonic()
        room = Room(f"!{secrets.token_hex(8)}:{self.name}")
        self.rooms[room.room_id] = room
        creator = f"@creator:{self.name}"
        self.build(room, creator, "m.room.create", {"creator": creator, "room_version": "10"}, "")
        self.build(room, creator, "m.room.member", {"membership": "join"}, creator)
        self.build(room, creator, "m.room.power_levels", {"users": {creator: 100}, "users_default": 0}, "")
        self.build(room, creator, "m.room.join_rules", {"join_rule": "public"}, "")
        self.build(room, creator, "m.room.history_visibility", {"history_visibility": "shared"}, "")
        for i in range(members - 1):
            user = f"@m{i}:{self.name}"
            self.build(room, user, "m.room.member", {"membership": "join", "displayname": f"Membre {i}"}, user)
        for i in range(max(0, events - len(room.order))):
            sender = f"@m{i % max(1, members - 1)}:{self.name}" if members > 1 else creator
            self.build(room, sender, "m.room.message", {"msgtype": "m.text", "body": f"message {i}"})
        return room, time.monotonic() - started

    # -- inbound -----------------------------------------------------------------------

    def _envelope(self, pdus: list[JsonDict]) -> JsonDict:
        return {"origin": self.name, "origin_server_ts": int(time.time() * 1000), "pdus": pdus}

    async def _keys(self, request: web.Request) -> web.Response:
        body = {
            "server_name": self.name,
            "valid_until_ts": int(time.time() * 1000) + 86_400_000,
            "verify_keys": {key_id(self.key): {"key": encode_verify_key_base64(get_verify_key(self.key))}},
            "old_verify_keys": {},
        }
        return web.json_response(sign_json(body, self.name, self.key))

    async def _on_send(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received_pdus += len(body.get("pdus", []))
        return web.json_response({"pdus": {}})

    def _room(self, request: web.Request) -> Room:
        room = self.rooms.get(request.match_info["room"])
        if room is None:
            raise web.HTTPNotFound(
                text='{"errcode":"M_NOT_FOUND","error":"Unknown room"}', content_type="application/json"
            )
        return room

    async def _make_join(self, request: web.Request) -> web.Response:
        room, user = self._room(request), request.match_info["user"]
        template = {
            "room_id": room.room_id,
            "sender": user,
            "state_key": user,
            "type": "m.room.member",
            "content": {"membership": "join"},
            "origin": user.partition(":")[2],
            "origin_server_ts": int(time.time() * 1000),
            "prev_events": [room.last],
            "auth_events": room.auth_ids("m.room.member", user, user, "join"),
            "depth": room.depth + 1,
        }
        return web.json_response({"event": template, "room_version": "10"})

    async def _send_join(self, request: web.Request) -> web.Response:
        # The join is not added to the room: every joiner sees the same room.
        room, event = self._room(request), await request.json()
        state = list(room.state.values())
        chain = room.auth_chain(state)
        return web.json_response(
            {
                "origin": self.name,
                "event": event,
                "state": [room.events[e] for e in state],
                "auth_chain": [room.events[e] for e in chain],
                "members_omitted": False,
                "servers_in_room": [self.name],
            }
        )

    def _find(self, event_id: str) -> JsonDict | None:
        return next((r.events[event_id] for r in self.rooms.values() if event_id in r.events), None)

    async def _event(self, request: web.Request) -> web.Response:
        pdu = self._find(request.match_info["event"])
        if pdu is None:
            raise web.HTTPNotFound()
        return web.json_response(self._envelope([pdu]))

    async def _event_auth(self, request: web.Request) -> web.Response:
        room = self._room(request)
        return web.json_response(
            {"auth_chain": [room.events[e] for e in room.auth_chain([request.match_info["event"]])]}
        )

    async def _state_ids(self, request: web.Request) -> web.Response:
        room = self._room(request)  # the current state: the rooms here only grow by messages at the end
        state = list(room.state.values())
        return web.json_response({"pdu_ids": state, "auth_chain_ids": room.auth_chain(state)})

    async def _state(self, request: web.Request) -> web.Response:
        room = self._room(request)
        state = list(room.state.values())
        return web.json_response(
            {"pdus": [room.events[e] for e in state], "auth_chain": [room.events[e] for e in room.auth_chain(state)]}
        )

    async def _backfill(self, request: web.Request) -> web.Response:
        room = self._room(request)
        limit = int(request.query.get("limit", "10"))
        starts = [room.order.index(v) for v in request.query.getall("v", []) if v in room.order]
        top = max(starts, default=-1)
        ids = room.order[max(0, top - limit + 1) : top + 1][::-1]
        return web.json_response(self._envelope([room.events[e] for e in ids]))

    async def _missing(self, request: web.Request) -> web.Response:
        # The rooms are linear: walk back from the latest events to the earliest ones.
        room, body = self._room(request), await request.json()
        earliest, limit = set(body.get("earliest_events", [])), int(body.get("limit", 10))
        min_depth = int(body.get("min_depth", 0))
        found: list[str] = []
        for latest in body.get("latest_events", []):
            if latest not in room.events or latest not in room.order:
                continue
            index = room.order.index(latest) - 1
            while index >= 0 and len(found) < limit:
                event_id = room.order[index]
                if event_id in earliest or room.events[event_id]["depth"] < min_depth:
                    break
                if event_id not in found:
                    found.append(event_id)
                index -= 1
        found.sort(key=lambda e: room.events[e]["depth"])
        return web.json_response({"events": [room.events[e] for e in found]})

    async def _devices(self, request: web.Request) -> web.Response:
        return web.json_response({"user_id": request.match_info["user"], "stream_id": 0, "devices": []})

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"server": {"name": "federation_bench", "version": "1"}})

    async def _not_found(self, request: web.Request) -> web.Response:
        return web.json_response({"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"}, status=404)


# -- the targets ------------------------------------------------------------------------------


class Target:
    """One server under test and a logged-in user of it."""

    def __init__(self, label: str, server: h.RunningServer) -> None:
        self.label, self.server = label, server
        self.token = ""
        self.user_id = ""

    async def login(self, localpart: str) -> None:
        self.user_id = await asyncio.to_thread(self.server.register_user, localpart, PASSWORD)
        status, body = await self.call(
            "POST",
            "/login",
            {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": localpart}, "password": PASSWORD},
        )
        if status != 200:
            raise RuntimeError(f"{self.label}: login failed: {status} {body}")
        self.token = str(body["access_token"])

    async def call(self, method: str, path: str, body: Any = None, timeout: float = 600.0) -> tuple[int, Any]:
        return await asyncio.to_thread(
            h.http_json, method, f"{self.server.client_url}{V3}{path}", body, token=self.token or None, timeout=timeout
        )

    async def joined_count(self, room_id: str) -> int:
        status, body = await self.call("GET", f"/rooms/{quote(room_id)}/joined_members")
        return len(body.get("joined", {})) if status == 200 and isinstance(body, dict) else -1

    async def wait_members(self, room_id: str, expected: int, deadline: float = 900.0) -> float:
        started = time.monotonic()
        while time.monotonic() - started < deadline:
            if await self.joined_count(room_id) >= expected:
                return time.monotonic() - started
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.label}: {room_id} never showed {expected} members")

    async def has_event(self, room_id: str, event_id: str) -> bool:
        status, _ = await self.call("GET", f"/rooms/{quote(room_id)}/event/{quote(event_id)}")
        return status == 200


def start_servers(args: argparse.Namespace, work: Path, lg_name: str, pg: h.Postgres | None) -> dict[str, Target]:
    our_port, their_port = h.free_port("127.0.0.1"), h.free_port("127.0.0.2")
    ours_name, theirs_name = f"127.0.0.1:{our_port}", f"127.0.0.2:{their_port}"
    targets: dict[str, Target] = {}
    if "ours" in args.only:
        cert, key = make_self_signed_cert(work, "127.0.0.1")

        def patch(config: dict[str, Any]) -> None:
            for listener in config["listeners"]:
                if listener["port"] == our_port:
                    listener["tls"] = True
            config.update(
                tls_certificate_path=str(cert),
                tls_private_key_path=str(key),
                federation_domain_whitelist=[theirs_name, lg_name],
                federation_verify_certificates=False,
                ip_range_blacklist=[],
                presence={"enabled": False},
            )

        options: dict[str, Any] = {}
        if pg is not None:
            db = pg.create_database()
            options = {"engine": "postgres", "database_url": pg.url(db), "database": db}
        server = h.start_our_homeserver(
            work / "ours", host="127.0.0.1", federation_port=our_port, patch_config=patch, **options
        )
        targets["ours"] = Target("ours", server)
    if "synapse" in args.only:
        options = {"engine": "postgres", "postgres": pg, "database": pg.create_database()} if pg is not None else {}
        server = start_synapse(
            work / "synapse",
            host="127.0.0.2",
            federation_tls=True,
            federation_port=their_port,
            extra_config={"federation_domain_whitelist": [ours_name, lg_name], "presence": {"enabled": False}},
            **options,
        )
        targets["synapse"] = Target("synapse", server)
    return targets


# -- the measurements -------------------------------------------------------------------------


async def send_messages(lg: LoadServer, target: Target, room: Room, count: int, *, members: int = 0) -> JsonDict:
    """``members`` joins of new users of ours, then ``count`` messages, in transactions of 50."""
    sender = f"@loadgen:{lg.name}"
    pdus: list[JsonDict] = []
    for i in range(members):
        user = f"@j{len(room.order)}_{i}:{lg.name}"
        pdus.append(lg.build(room, user, "m.room.member", {"membership": "join"}, user)[1])
    for i in range(count):
        pdus.append(lg.build(room, sender, "m.room.message", {"msgtype": "m.text", "body": f"pdu {i}"})[1])
    accepted, errors = 0, []
    started = time.monotonic()
    for start in range(0, len(pdus), TXN_SIZE):
        ok, errs = await lg.send_pdus(target.server.server_name, pdus[start : start + TXN_SIZE])
        accepted += ok
        errors.extend(errs)
    answered = time.monotonic() - started
    # Synapse answers /send once the PDUs are staged and persists them afterwards: the
    # clock stops when the last PDU can be read by a local user.
    last = room.last or ""
    seen = False
    while not seen and time.monotonic() - started < answered + 600:
        seen = await target.has_event(room.room_id, last)
        if not seen:
            await asyncio.sleep(0.05)
    elapsed = time.monotonic() - started
    return {
        "pdus": len(pdus),
        "accepted": accepted,
        "answered_seconds": round(answered, 3),
        "seconds": round(elapsed, 3),
        "pdus_per_second": round(accepted / elapsed, 1) if elapsed and seen else None,
        "last_event_visible_to_local_user": seen,
        "errors": errors[:5],
        "error_count": len(errors),
    }


async def throughput(lg: LoadServer, target: Target, pdus: int) -> tuple[Room, JsonDict]:
    status, body = await target.call("POST", "/createRoom", {"preset": "public_chat", "room_version": "10"})
    if status != 200:
        raise RuntimeError(f"{target.label}: createRoom: {status} {body}")
    room = await lg.join_remote(target.server.server_name, body["room_id"], f"@loadgen:{lg.name}")
    return room, await send_messages(lg, target, room, pdus)


async def timed_join(joiner: Target, room_id: str, via: str, expected_members: int) -> JsonDict:
    started = time.monotonic()
    status, body = await joiner.call("POST", f"/join/{quote(room_id)}?via={quote(via)}", {})
    join_seconds = time.monotonic() - started
    if status != 200:
        return {"error": f"POST /join: HTTP {status} {str(body)[:300]}", "seconds": round(join_seconds, 3)}
    members_seconds = join_seconds + await joiner.wait_members(room_id, expected_members)
    return {"join_seconds": round(join_seconds, 3), "all_members_seconds": round(members_seconds, 3)}


def ratio(ours: Any, theirs: Any) -> str:
    if isinstance(ours, int | float) and isinstance(theirs, int | float) and theirs:
        return f"{ours / theirs:.2f}x"
    return "n/a"


async def run(args: argparse.Namespace) -> JsonDict:
    work = Path(tempfile.mkdtemp(prefix="fedbench-", dir=args.workdir))
    lg = LoadServer("127.0.0.3", h.free_port("127.0.0.3"), work)
    await lg.start()
    pg = h.Postgres() if args.engine == "postgres" else None
    results: JsonDict = {"command": " ".join(sys.argv), "engine": args.engine, "load_generator": lg.name}
    targets: dict[str, Target] = {}
    try:
        targets = await asyncio.to_thread(start_servers, args, work, lg.name, pg)
        for target in targets.values():
            await target.login(f"bench{secrets.token_hex(3)}")
        # 1. inbound transaction throughput
        rooms: dict[str, Room] = {}
        for name, target in targets.items():
            print(f"[{name}] throughput: {args.pdus} PDUs in transactions of {TXN_SIZE} ...", flush=True)
            rooms[name], results[f"throughput_{name}"] = await throughput(lg, target, args.pdus)
            print(f"[{name}]   {results[f'throughput_{name}']}", flush=True)
        # 2. joining a big room the load generator hosts
        room, built = lg.create_room(args.members, args.events)
        results["big_room"] = {"members": args.members, "events": len(room.order), "build_seconds": round(built, 1)}
        for name, target in targets.items():
            print(f"[{name}] joining {room.room_id} ({args.members} members, {len(room.order)} events) ...", flush=True)
            results[f"join_lg_room_{name}"] = await timed_join(target, room.room_id, lg.name, args.members + 1)
            print(f"[{name}]   {results[f'join_lg_room_{name}']}", flush=True)
        # 3. each joins a big room hosted by the other
        if args.cross and len(targets) == 2:
            for host_name, joiner_name in (("synapse", "ours"), ("ours", "synapse")):
                host, joiner = targets[host_name], targets[joiner_name]
                hosted = rooms[host_name]
                missing_events = max(0, args.events - len(hosted.order) - args.members)
                print(
                    f"[{host_name}] filling its room: {args.members} joins + {missing_events} messages ...", flush=True
                )
                filled = await send_messages(lg, host, hosted, missing_events, members=args.members)
                results[f"fill_{host_name}"] = filled
                print(f"[{host_name}]   {filled}", flush=True)
                expected = await host.joined_count(hosted.room_id) + 1
                print(
                    f"[{joiner_name}] joining the room hosted by {host_name} ({expected - 1} members) ...", flush=True
                )
                results[f"join_{host_name}_room_{joiner_name}"] = await timed_join(
                    joiner, hosted.room_id, host.server.server_name, expected
                )
                print(f"[{joiner_name}]   {results[f'join_{host_name}_room_{joiner_name}']}", flush=True)
    finally:
        for target in targets.values():
            problem = await asyncio.to_thread(target.server.stop)
            if problem:
                results.setdefault("problems", []).append(problem)
            if pg is not None and target.server.database:
                await asyncio.to_thread(pg.drop_database, target.server.database)
        await lg.close()
    results["workdir"] = str(work)
    return results


def report(results: JsonDict) -> None:
    def get(key: str, field: str) -> Any:
        value = results.get(key, {})
        return value.get(field) if isinstance(value, dict) else None

    rows = [
        ("inbound PDUs/s accepted (higher is better)", "throughput_{}", "pdus_per_second"),
        ("join of the load generator's big room: POST /join (s)", "join_lg_room_{}", "join_seconds"),
        ("  ... until every member is listed (s)", "join_lg_room_{}", "all_members_seconds"),
    ]
    print(f"\n{'metric':58} {'ours':>10} {'synapse':>10} {'ours/synapse':>13}")
    for label, key, field in rows:
        o, s = get(key.format("ours"), field), get(key.format("synapse"), field)
        print(f"{label:58} {o if o is not None else 'n/a':>10} {s if s is not None else 'n/a':>10} {ratio(o, s):>13}")
    if "join_synapse_room_ours" in results or "join_ours_room_synapse" in results:
        o = get("join_synapse_room_ours", "join_seconds")
        s = get("join_ours_room_synapse", "join_seconds")
        print(
            f"{'cross join: POST /join (s) (ours joins Synapse`s / reverse)':58} {o or 'n/a':>10} {s or 'n/a':>10} {ratio(o, s):>13}"
        )
        o = get("join_synapse_room_ours", "all_members_seconds")
        s = get("join_ours_room_synapse", "all_members_seconds")
        print(f"{'  ... until every member is listed (s)':58} {o or 'n/a':>10} {s or 'n/a':>10} {ratio(o, s):>13}")
        o, s = get("fill_ours", "pdus_per_second"), get("fill_synapse", "pdus_per_second")
        print(
            f"{'filling the hosted rooms: PDUs/s (joins + messages)':58} {o or 'n/a':>10} {s or 'n/a':>10} {ratio(o, s):>13}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pdus", type=int, default=2000, help="PDUs sent for the throughput measurement")
    parser.add_argument("--members", type=int, default=2000, help="members of the big rooms")
    parser.add_argument("--events", type=int, default=20000, help="events of the big rooms")
    parser.add_argument("--cross", action="store_true", help="also each server joining a big room hosted by the other")
    parser.add_argument("--quick", action="store_true", help="small numbers: 500 PDUs, 200 members, 2,000 events")
    parser.add_argument("--only", nargs="+", choices=("ours", "synapse"), default=["ours", "synapse"])
    parser.add_argument("--engine", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--workdir", default=str(ROOT / "tests" / "bench" / "_work"))
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.quick:  # smaller defaults; numbers given explicitly still win
        for name, small in (("pdus", 500), ("members", 200), ("events", 2000)):
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, small)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    results = asyncio.run(run(args))
    out = Path(args.workdir) / "federation_results.json"
    out.write_text(json.dumps(results, indent=2))
    if args.json:
        print(json.dumps(results, indent=2))
    report(results)
    print(f"\nresults: {out}  (git {_git_commit()})")
    return 0


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip()
    except OSError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
