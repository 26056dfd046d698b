"""Typing, read receipts and presence over federation, both ways, on SQLite and PostgreSQL.

a.test hosts a room where @bob:b.test and @eve:c.test are joined.  Alice's typing, receipt and presence
arrive at b.test's /send (a recording stand-in) as m.typing, m.receipt and m.presence
EDUs.  EDUs from b.test arrive at a.test's stand-in, which hands them to a.test's real
inbound handlers: what b.test may say (its own users, in the room) shows in Alice's
/sync; what it may not (another server's user, a user not in the room) does not.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest_twisted

from tests.api._federation_outbound_helpers import (
    V3,
    create_room,
    eventually,
    local_user,
    peers_with_inboxes,
    remote_join,
    send_message,
)
from tests.api.conftest import HSFixture
from tests.api.test_federation_keys import Peer, cleanups

__all__ = ["cleanups"]


async def _sync(peer: Peer) -> dict[str, Any]:
    resp = await peer.fx.client.get(f"{V3}/sync?timeout=0")
    assert resp.code == 200, resp.body
    return dict(resp.body)


def _ephemeral(sync: dict[str, Any], room_id: str, edu_type: str) -> list[dict[str, Any]]:
    room = sync.get("rooms", {}).get("join", {}).get(room_id, {})
    return [e["content"] for e in room.get("ephemeral", {}).get("events", []) if e["type"] == edu_type]


@pytest_twisted.ensureDeferred
async def test_typing_receipts_and_presence_both_ways(
    make_server: Callable[..., HSFixture],
    database_config: dict[str, Any],
    tmp_path: Path,
    cleanups: list[Callable[[], Any]],
) -> None:
    allow = {"a.test": ["b.test"], "b.test": ["a.test"]}
    peers, inboxes = peers_with_inboxes(make_server, database_config, tmp_path, cleanups, allow)
    a, b = peers["a.test"], peers["b.test"]
    alice = await local_user(a, "alice")
    room_id = await create_room(a)
    await remote_join(a, b, room_id, "@bob:b.test")
    await remote_join(a, "c.test", room_id, "@eve:c.test")  # in the room, but not b.test's to speak for
    hello = await send_message(a, room_id, "hello")
    room = quote(room_id)

    # -- outbound ---------------------------------------------------------------------------
    resp = await a.fx.client.put(f"{V3}/rooms/{room}/typing/{quote(alice)}", {"typing": True, "timeout": 30000})
    assert resp.code == 200, resp.body
    resp = await a.fx.client.post(f"{V3}/rooms/{room}/receipt/m.read/{quote(hello)}", {})
    assert resp.code == 200, resp.body
    resp = await a.fx.client.post(f"{V3}/rooms/{room}/receipt/m.read.private/{quote(hello)}", {})
    assert resp.code == 200, resp.body
    resp = await a.fx.client.put(f"{V3}/presence/{quote(alice)}/status", {"presence": "online", "status_msg": "ici"})
    assert resp.code == 200, resp.body
    inbox = inboxes["b.test"]
    await eventually(
        lambda: inbox.edus("m.typing") and inbox.edus("m.receipt") and inbox.edus("m.presence"),
        "typing, receipt and presence at b.test",
    )
    assert inbox.edus("m.typing")[0] == {"room_id": room_id, "user_id": alice, "typing": True}
    (receipt,) = inbox.edus("m.receipt")
    assert list(receipt) == [room_id] and list(receipt[room_id]) == ["m.read"]  # never the private one
    read = receipt[room_id]["m.read"][alice]
    assert read["event_ids"] == [hello] and isinstance(read["data"]["ts"], int)
    (presence,) = inbox.edus("m.presence")
    (pushed,) = presence["push"]
    assert pushed["user_id"] == alice and pushed["presence"] == "online" and pushed["status_msg"] == "ici"
    assert pushed["currently_active"] is True and pushed["last_active_ago"] >= 0
    resp = await a.fx.client.put(f"{V3}/rooms/{room}/typing/{quote(alice)}", {"typing": False})
    assert resp.code == 200, resp.body
    await eventually(lambda: len(inbox.edus("m.typing")) >= 2, "the end of typing at b.test")
    assert inbox.edus("m.typing")[1] == {"room_id": room_id, "user_id": alice, "typing": False}

    # -- inbound ----------------------------------------------------------------------------
    send = b.federation.outbound.send_edu
    typing = {"room_id": room_id, "typing": True}
    await send(["a.test"], "m.typing", {**typing, "user_id": "@bob:b.test"})
    await send(["a.test"], "m.typing", {**typing, "user_id": "@eve:c.test"})  # not b.test's user
    await send(["a.test"], "m.typing", {**typing, "user_id": "@ghost:b.test"})  # not in the room
    await send(["a.test"], "m.typing", {"room_id": room_id, "user_id": "@bob:b.test", "typing": "yes"})  # malformed
    data = {"ts": 1_700_000_000_000, "extra": "dropped"}
    await send(
        ["a.test"],
        "m.receipt",
        {
            room_id: {
                "m.read": {
                    "@bob:b.test": {"event_ids": [hello], "data": data},
                    "@ghost:b.test": {"event_ids": [hello], "data": data},
                    "@eve:c.test": {"event_ids": [hello], "data": data},
                },
            }
        },
    )
    await send(
        ["a.test"],
        "m.presence",
        {
            "push": [
                {
                    "user_id": "@bob:b.test",
                    "presence": "unavailable",
                    "status_msg": "en réunion",
                    "last_active_ago": 5000,
                },
                {"user_id": "@eve:c.test", "presence": "online", "last_active_ago": 0},
                {"user_id": "@ghost:b.test", "presence": "online", "last_active_ago": 0},
            ]
        },
        key="@bob:b.test",
    )
    await eventually(lambda: len(inboxes["a.test"].transactions) >= 1, "b.test's EDUs at a.test")
    await b.federation.sender.wait_idle()
    edus = [e for _, _, body in inboxes["a.test"].transactions for e in body["edus"]]
    assert len(edus) == 6

    sync = await _sync(a)
    assert _ephemeral(sync, room_id, "m.typing") == [{"user_ids": ["@bob:b.test"]}]
    receipts = _ephemeral(sync, room_id, "m.receipt")
    readers = {user for content in receipts for user in content.get(hello, {}).get("m.read", {})}
    assert readers == {alice, "@bob:b.test"}
    bob_read = next(c[hello]["m.read"]["@bob:b.test"] for c in receipts if "@bob:b.test" in c[hello]["m.read"])
    assert bob_read == {"ts": 1_700_000_000_000}
    presence = {e["sender"]: e["content"] for e in sync["presence"]["events"]}
    assert set(presence) == {alice, "@bob:b.test"}
    assert presence["@bob:b.test"]["presence"] == "unavailable"
    assert presence["@bob:b.test"]["status_msg"] == "en réunion"
    assert presence["@bob:b.test"]["last_active_ago"] >= 5000

    # Bob stops typing: Alice's /sync shows nobody typing.
    await send(["a.test"], "m.typing", {**typing, "user_id": "@bob:b.test", "typing": False})
    await eventually(lambda: len(inboxes["a.test"].transactions) >= 2, "the end of Bob's typing at a.test")
    assert _ephemeral(await _sync(a), room_id, "m.typing") == [{"user_ids": []}]
