"""Rooms over federation with a real Synapse, over TLS on loopback.

Our server (run by its CLI, ``127.0.0.1:PORT``, a ``tls: true`` federation listener) and
Synapse (``127.0.0.2:PORT``) allow each other only.  A Synapse user joins a room of ours
(Synapse runs make_join/send_join against our resident side); one of our users joins a
room Synapse created in room version 12 (our joining side against Synapse's resident
side); messages go both ways; every outcome is asserted on what each side's /sync shows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.interop import harness as h
from tests.interop.federation_scenarios import start_ours, start_theirs

pytestmark = [pytest.mark.interop, pytest.mark.timeout(240)]

PASSWORD = "federation rooms password"
V3 = "/_matrix/client/v3"


class User:
    def __init__(self, server: h.RunningServer, localpart: str) -> None:
        self.server = server
        self.user_id = server.register_user(localpart, PASSWORD)
        status, body = h.http_json(
            "POST",
            f"{server.client_url}{V3}/login",
            {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": localpart}, "password": PASSWORD},
        )
        assert status == 200, body
        self.token = str(body["access_token"])
        self.since: str | None = None

    def call(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
        return h.http_json(method, f"{self.server.client_url}{V3}{path}", body, token=self.token, timeout=timeout)

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = self.call(method, path, body, timeout=60.0)
        assert status == 200, (method, path, answer, self.server.log_tail(40))
        return answer

    def sync_until(self, predicate: Callable[[dict[str, Any]], Any], what: str, deadline: float = 30.0) -> Any:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            path = "/sync?timeout=1000" + (f"&since={self.since}" if self.since else "")
            status, body = self.call("GET", path)
            assert status == 200, body
            self.since = body["next_batch"]
            found = predicate(body)
            if found:
                return found
        raise AssertionError(f"{self.user_id}: timed out waiting for {what}\n{self.server.log_tail(60)}")


def messages(body: dict[str, Any], room_id: str) -> list[str]:
    room = body["rooms"].get("join", {}).get(room_id)
    events = room["timeline"]["events"] if room else []
    return [e["content"].get("body") for e in events if e["type"] == "m.room.message"]


def joined(body: dict[str, Any], room_id: str, user_id: str) -> bool:
    room = body["rooms"].get("join", {}).get(room_id)
    if not room:
        return False
    events = [*room.get("state", {}).get("events", []), *room["timeline"]["events"]]
    return any(
        e["type"] == "m.room.member" and e["state_key"] == user_id and e["content"].get("membership") == "join"
        for e in events
    )


def test_rooms_with_synapse_both_ways(servers: h.ServerPool, tmp_path: Path) -> None:
    our_port, their_port = h.free_port("127.0.0.1"), h.free_port("127.0.0.2")
    ours_name, theirs_name = f"127.0.0.1:{our_port}", f"127.0.0.2:{their_port}"
    theirs = start_theirs(servers, allow=[ours_name], port=their_port)
    ours = start_ours(servers, tmp_path, allow=[theirs_name], port=our_port)
    alice = User(ours, "alice")  # ours
    sam = User(theirs, "sam")  # Synapse's
    alice.sync_until(lambda b: True, "an initial sync")
    sam.sync_until(lambda b: True, "an initial sync")

    # 1. Sam (Synapse) joins a room of ours, by alias.
    created = alice.ok("POST", "/createRoom", {"preset": "public_chat", "name": "Chez nous", "room_alias_name": "nous"})
    our_room = created["room_id"]
    alias = f"#nous:{ours_name}"
    answer = sam.ok("POST", f"/join/{quote(alias)}", {})
    assert answer["room_id"] == our_room
    sam.sync_until(lambda b: joined(b, our_room, sam.user_id), "sam's join to our room")
    alice.sync_until(lambda b: joined(b, our_room, sam.user_id), "sam's join at our server")
    alice.ok("PUT", f"/rooms/{quote(our_room)}/send/m.room.message/a1", {"msgtype": "m.text", "body": "bienvenue"})
    sam.sync_until(lambda b: "bienvenue" in messages(b, our_room), "our message at Synapse")
    sam.ok("PUT", f"/rooms/{quote(our_room)}/send/m.room.message/s1", {"msgtype": "m.text", "body": "thanks"})
    alice.sync_until(lambda b: "thanks" in messages(b, our_room), "Synapse's message at our server")

    # 2. Alice (ours) joins a version 12 room Synapse created, by ID with via.
    created = sam.ok("POST", "/createRoom", {"preset": "public_chat", "name": "Chez eux", "room_version": "12"})
    their_room = created["room_id"]
    assert ":" not in their_room  # a v12 room ID names no server
    answer = alice.ok("POST", f"/join/{quote(their_room)}?via={quote(theirs_name)}", {})
    assert answer["room_id"] == their_room
    alice.sync_until(lambda b: joined(b, their_room, alice.user_id), "alice's join to Synapse's room")
    sam.sync_until(lambda b: joined(b, their_room, alice.user_id), "alice's join at Synapse")
    sam.ok("PUT", f"/rooms/{quote(their_room)}/send/m.room.message/s2", {"msgtype": "m.text", "body": "hello"})
    alice.sync_until(lambda b: "hello" in messages(b, their_room), "Synapse's message in its room")
    alice.ok("PUT", f"/rooms/{quote(their_room)}/send/m.room.message/a2", {"msgtype": "m.text", "body": "salut"})
    sam.sync_until(lambda b: "salut" in messages(b, their_room), "our message in Synapse's room")
