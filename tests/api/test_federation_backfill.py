"""Backfill over federation, in process over TLS, on SQLite and PostgreSQL.

a.test hosts a room with history; a user of b.test joins it later and pages /messages back
to the room's creation through b.test, which fetches the history from a.test
(``/backfill``) as the pages reach the oldest events it holds.  When a.test does not
answer, b.test answers quickly with what it has.  Push rules: a server computes
notifications for its own users only.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.web import resource, server

from homeserver.federation.backfill import FederationBackfiller
from tests.api.conftest import Client, HSFixture
from tests.api.helpers import register
from tests.api.test_federation_keys import Peer, cleanups, start_peers

__all__ = ["cleanups"]

V3 = "/_matrix/client/v3"
DEADLINE = 15.0


@pytest.fixture
def peers(
    make_server: Callable[..., HSFixture],
    database_config: dict[str, Any],
    tmp_path: Path,
    cleanups: list[Callable[[], Any]],
) -> dict[str, Peer]:
    allow = {"a.test": ["b.test"], "b.test": ["a.test"]}
    return start_peers(make_server, database_config, tmp_path, cleanups, allow)


async def user(peer: Peer, name: str) -> Client:
    client = peer.fx.new_client()
    client.token = (await register(client, name))["access_token"]
    return client


async def send_text(client: Client, room_id: str, text: str) -> str:
    resp = await client.put(
        f"{V3}/rooms/{quote(room_id)}/send/m.room.message/{secrets.token_hex(4)}", {"msgtype": "m.text", "body": text}
    )
    assert resp.code == 200, resp.body
    return str(resp.body["event_id"])


async def room_with_history(a: Peer, b: Peer, messages: int) -> tuple[Client, Client, str]:
    """alice@a.test's public room with ``messages`` messages, then bob@b.test joined to it."""
    alice, bob = await user(a, "alice"), await user(b, "bob")
    resp = await alice.post(f"{V3}/createRoom", {"preset": "public_chat", "name": "Archives"})
    assert resp.code == 200, resp.body
    room_id = str(resp.body["room_id"])
    for i in range(messages):
        await send_text(alice, room_id, f"m{i}")
    resp = await bob.post(f"{V3}/join/{quote(room_id)}?via=a.test", {})
    assert resp.code == 200, resp.body
    return alice, bob, room_id


async def page_back(client: Client, room_id: str, limit: int) -> list[dict[str, Any]]:
    """Every event /messages gives, from the newest back to where it says history ends."""
    events: list[dict[str, Any]] = []
    token: str | None = None
    for _ in range(200):
        query = f"dir=b&limit={limit}" + (f"&from={quote(token)}" if token else "")
        resp = await client.get(f"{V3}/rooms/{quote(room_id)}/messages?{query}")
        assert resp.code == 200, resp.body
        events.extend(resp.body["chunk"])
        token = resp.body.get("end")
        if token is None:
            return events
    raise AssertionError("pagination never ended")


async def wait_for(predicate: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        found = await predicate()
        if found:
            return found
        await task.deferLater(reactor, 0.1, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


def bodies(events: list[dict[str, Any]]) -> list[str]:
    return [e["content"]["body"] for e in events if e["type"] == "m.room.message"]


# -- backfill ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_paging_back_through_the_joining_server_reaches_the_room_creation(peers: dict[str, Peer]) -> None:
    a, b = peers["a.test"], peers["b.test"]
    alice, bob, room_id = await room_with_history(a, b, 60)

    seen_by_bob = await page_back(bob, room_id, limit=10)

    ids = [e["event_id"] for e in seen_by_bob]
    assert len(ids) == len(set(ids)), "an event came twice"
    assert bodies(seen_by_bob) == [f"m{i}" for i in reversed(range(60))]
    assert seen_by_bob[-1]["type"] == "m.room.create"
    assert seen_by_bob[0]["type"] == "m.room.member" and seen_by_bob[0]["state_key"].endswith(":b.test")
    # The same history, in the same order, as the room's home server has it.
    seen_by_alice = await page_back(alice, room_id, limit=1000)
    assert ids == [e["event_id"] for e in seen_by_alice]
    assert [e["type"] for e in seen_by_bob][-3:] == ["m.room.power_levels", "m.room.member", "m.room.create"]

    # Paging again is answered locally, with the same events.
    assert [e["event_id"] for e in await page_back(bob, room_id, limit=25)] == ids


@pytest_twisted.ensureDeferred
async def test_forward_paging_after_backfill_keeps_the_topological_order(peers: dict[str, Peer]) -> None:
    a, b = peers["a.test"], peers["b.test"]
    _, bob, room_id = await room_with_history(a, b, 15)
    backwards = await page_back(bob, room_id, limit=5)

    resp = await bob.get(f"{V3}/rooms/{quote(room_id)}/messages?dir=f&limit=1000")
    assert resp.code == 200, resp.body
    forwards = resp.body["chunk"]
    assert [e["event_id"] for e in forwards] == [e["event_id"] for e in reversed(backwards)]
    assert bodies(forwards) == [f"m{i}" for i in range(15)]


class _Unresponsive(resource.Resource):
    """A server that accepts requests and never answers them."""

    isLeaf = True

    def render(self, request: server.Request) -> Any:
        return server.NOT_DONE_YET


@pytest_twisted.ensureDeferred
async def test_messages_answers_with_local_history_when_the_remote_does_not_answer(peers: dict[str, Peer]) -> None:
    a, b = peers["a.test"], peers["b.test"]
    alice, bob, room_id = await room_with_history(a, b, 10)
    after_join = await send_text(alice, room_id, "after the join")

    async def bob_has_it() -> bool:
        resp = await bob.get(f"{V3}/rooms/{quote(room_id)}/event/{quote(after_join)}")
        return resp.code == 200

    await wait_for(bob_has_it, "the message sent after the join to reach b.test")
    for site in a.hs.sites:
        site.resource = _Unresponsive()
    backfiller = b.hs.services.messages.backfiller
    assert isinstance(backfiller, FederationBackfiller)
    backfiller.timeout = 1.0

    started = time.monotonic()
    resp = await bob.get(f"{V3}/rooms/{quote(room_id)}/messages?dir=b&limit=20")
    elapsed = time.monotonic() - started

    assert resp.code == 200, resp.body
    assert elapsed < 3.0, f"/messages took {elapsed:.1f}s"
    chunk = resp.body["chunk"]
    assert chunk[0]["event_id"] == after_join
    assert chunk[-1]["type"] == "m.room.member" and chunk[-1]["state_key"].endswith(":b.test")
    assert bodies(chunk) == ["after the join"]
    # The hole is not retried at once: the next page does not wait again.
    started = time.monotonic()
    resp = await bob.get(f"{V3}/rooms/{quote(room_id)}/messages?dir=b&limit=20")
    assert resp.code == 200 and time.monotonic() - started < 0.5


# -- push rules: local users only -------------------------------------------------------------


async def push_rows(peer: Peer, user_id: str) -> int:
    rows = await peer.hs.db.run_interaction(
        "count_push_actions",
        lambda txn: txn.select_all("SELECT event_id FROM event_push_actions WHERE user_id = ?", (user_id,)),
    )
    return len(rows)


async def notification_count(client: Client, room_id: str) -> int:
    resp = await client.get(f"{V3}/sync?timeout=0")
    assert resp.code == 200, resp.body
    room = resp.body["rooms"]["join"].get(room_id, {})
    return int(room.get("unread_notifications", {}).get("notification_count", 0))


@pytest_twisted.ensureDeferred
async def test_push_rules_are_evaluated_for_local_members_only(peers: dict[str, Peer]) -> None:
    a, b = peers["a.test"], peers["b.test"]
    alice, bob, room_id = await room_with_history(a, b, 0)
    bob_id = (await bob.get(f"{V3}/account/whoami")).body["user_id"]
    alice_id = (await alice.get(f"{V3}/account/whoami")).body["user_id"]

    from_alice = await send_text(alice, room_id, "bonjour bob")

    async def bob_notified() -> bool:
        return await notification_count(bob, room_id) >= 1

    # b.test counts the message for its user bob; a.test computes nothing for him.
    await wait_for(bob_notified, "bob's notification on b.test")
    assert await push_rows(a, bob_id) == 0
    assert await push_rows(b, bob_id) >= 1

    await send_text(bob, room_id, "bonjour alice")

    async def alice_notified() -> bool:
        return await notification_count(alice, room_id) >= 1

    await wait_for(alice_notified, "alice's notification on a.test")
    assert await push_rows(b, alice_id) == 0
    assert from_alice
