"""Two servers with their real federation servlets: a message, typing and a receipt go
from one to the other through the outbound queue and the real /send receiver, and show
in the other side's /sync (on SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest_twisted

from tests.api._federation_outbound_helpers import RETRY, V3, create_room, eventually, local_user, send_message
from tests.api.conftest import HSFixture
from tests.api.test_federation_keys import Peer, cleanups, start_peers

__all__ = ["cleanups"]


async def _room_sync(peer: Peer, room_id: str) -> dict[str, Any]:
    resp = await peer.fx.client.get(f"{V3}/sync?timeout=0")
    assert resp.code == 200, resp.body
    return dict(resp.body.get("rooms", {}).get("join", {}).get(room_id, {}))


def _texts(room: dict[str, Any]) -> list[str]:
    return [
        e["content"].get("body") for e in room.get("timeline", {}).get("events", []) if e["type"] == "m.room.message"
    ]


def _ephemeral(room: dict[str, Any], edu_type: str) -> list[dict[str, Any]]:
    return [e["content"] for e in room.get("ephemeral", {}).get("events", []) if e["type"] == edu_type]


@pytest_twisted.ensureDeferred
async def test_message_typing_and_receipt_through_the_real_servlets(
    make_server: Callable[..., HSFixture],
    database_config: dict[str, Any],
    tmp_path: Path,
    cleanups: list[Callable[[], Any]],
) -> None:
    allow = {"a.test": ["b.test"], "b.test": ["a.test"]}

    def make(**kwargs: Any) -> HSFixture:
        return make_server(federation=RETRY, **kwargs)

    peers = start_peers(make, database_config, tmp_path, cleanups, allow)
    a, b = peers["a.test"], peers["b.test"]
    alice = await local_user(a, "alice")
    bob = await local_user(b, "bob")
    room_id = await create_room(a)
    resp = await b.fx.client.post(f"{V3}/join/{quote(room_id)}?server_name=a.test", {})
    assert resp.code == 200, resp.body

    hello = await send_message(a, room_id, "bonjour de a.test")

    async def bob_sees_hello() -> bool:
        return "bonjour de a.test" in _texts(await _room_sync(b, room_id))

    await eventually(bob_sees_hello, "the message in Bob's /sync")

    resp = await b.fx.client.put(f"{V3}/rooms/{quote(room_id)}/typing/{quote(bob)}", {"typing": True, "timeout": 30000})
    assert resp.code == 200, resp.body

    async def alice_sees_bob_typing() -> bool:
        return _ephemeral(await _room_sync(a, room_id), "m.typing") == [{"user_ids": [bob]}]

    await eventually(alice_sees_bob_typing, "Bob typing in Alice's /sync")

    resp = await a.fx.client.post(f"{V3}/rooms/{quote(room_id)}/receipt/m.read/{quote(hello)}", {})
    assert resp.code == 200, resp.body

    async def bob_sees_alice_read() -> bool:
        receipts = _ephemeral(await _room_sync(b, room_id), "m.receipt")
        return any(alice in c.get(hello, {}).get("m.read", {}) for c in receipts)

    await eventually(bob_sees_alice_read, "Alice's receipt in Bob's /sync")
