"""Room events leave for the servers in the room, in process over TLS, on SQLite and PostgreSQL.

a.test sends; the other peers' /send are recording stand-ins (see
``_federation_outbound_helpers``).  What arrives is checked against a.test's storage and
keys: the stored event JSON (only ``unsigned.age`` added), a valid signature and content
hash, and the event ID it hashes to.  Servers off the allowlist or refused by the room's
server ACL hear nothing; a destination that was down gets what it missed, in order; a
restart with a pending queue loses nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest_twisted
from twisted.internet import defer, reactor

from homeserver.app import build_homeserver
from homeserver.events.hashing import check_content_hash
from homeserver.events.model import make_event_id
from homeserver.events.room_versions import get_room_version
from homeserver.events.signing import get_verify_key, verify_event_signature
from homeserver.federation.sender import pdu_for_transaction
from homeserver.storage.federation_queue import FederationQueueRepository
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


def _ids(pdus: list[dict[str, Any]], peer: Peer) -> list[str]:
    """The IDs of PDUs of rooms of ``peer``'s default room version."""
    version = get_room_version(peer.hs.config.default_room_version)
    return [make_event_id(version, p) for p in pdus]


async def _queued(peer: Peer, destination: str) -> list[int]:
    rows = await peer.hs.db.run_interaction(
        "test_queued",
        lambda txn: txn.select_all(
            "SELECT stream_ordering FROM federation_queue_pdus WHERE destination = ? ORDER BY stream_ordering",
            (destination,),
        ),
    )
    return [int(r[0]) for r in rows]


def test_pdu_for_transaction_keeps_only_age() -> None:
    stored = {"type": "m.room.message", "origin_server_ts": 1000, "unsigned": {"transaction_id": "t1", "age_ts": 5}}
    assert pdu_for_transaction(stored, 1500) == {
        "type": "m.room.message",
        "origin_server_ts": 1000,
        "unsigned": {"age": 500},
    }
    assert stored["unsigned"] == {"transaction_id": "t1", "age_ts": 5}  # the stored JSON is untouched
    assert pdu_for_transaction({"origin_server_ts": 2000}, 1000)["unsigned"] == {"age": 0}
    assert "unsigned" not in pdu_for_transaction({"origin_server_ts": "x", "unsigned": {}}, 1000)


@pytest_twisted.ensureDeferred
async def test_events_reach_the_servers_in_the_room_signed(
    make_server: Callable[..., HSFixture],
    database_config: dict[str, Any],
    tmp_path: Path,
    cleanups: list[Callable[[], Any]],
) -> None:
    # c.test has a member in the room but is not on a.test's allowlist.
    allow = {"a.test": ["b.test"], "b.test": ["a.test"], "c.test": ["a.test"]}
    peers, inboxes = peers_with_inboxes(make_server, database_config, tmp_path, cleanups, allow)
    a, b, c = peers["a.test"], peers["b.test"], peers["c.test"]
    await local_user(a, "alice")
    room_id = await create_room(a)
    first = await send_message(a, room_id, "before anyone else joined")
    await remote_join(a, b, room_id, "@bob:b.test")
    await remote_join(a, c, room_id, "@carol:c.test")
    hello = await send_message(a, room_id, "hello")
    await eventually(lambda: len(inboxes["b.test"].pdus()) >= 1, "the message at b.test")

    (origin, _txn, body) = inboxes["b.test"].transactions[0]
    assert origin == "a.test" and body["origin"] == "a.test"  # b.test verified the X-Matrix signature
    (pdu,) = body["pdus"]
    stored = await a.hs.services.events.get_event(hello)
    assert stored is not None
    version = stored.event.room_version
    assert {k: v for k, v in pdu.items() if k != "unsigned"} == {
        k: v for k, v in stored.event.dict.items() if k != "unsigned"
    }
    assert set(pdu["unsigned"]) == {"age"} and 0 <= pdu["unsigned"]["age"] < 60_000
    assert make_event_id(version, pdu) == hello
    assert check_content_hash(pdu)
    verify_event_signature(version, pdu, "a.test", get_verify_key(a.federation.local_keys.signing_key))
    # Nothing from before b.test had a member, and not the joins (not ours to send).
    assert first not in _ids(inboxes["b.test"].pdus(), a)

    # A kick reaches the kicked member's server (joined before it), then nothing more does.
    resp = await a.fx.client.post(f"{V3}/rooms/{quote(room_id)}/kick", {"user_id": "@bob:b.test"})
    assert resp.code == 200, resp.body
    await eventually(lambda: len(inboxes["b.test"].pdus()) >= 2, "the kick at b.test")
    kick = inboxes["b.test"].pdus()[1]
    assert (kick["type"], kick["state_key"], kick["content"]["membership"]) == ("m.room.member", "@bob:b.test", "leave")
    after = await send_message(a, room_id, "after the kick")
    await a.federation.sender.wait_idle()
    assert after not in _ids(inboxes["b.test"].pdus(), a)
    assert len(inboxes["b.test"].pdus()) == 2

    # c.test is never contacted: no queue, nothing stored for it, nothing received.
    assert a.federation.sender.queue_for("c.test") is None
    assert await _queued(a, "c.test") == []
    assert inboxes["c.test"].transactions == []
    assert await a.federation.outbound.servers_in_room(room_id) == {"a.test", "c.test"}
    # Delivered PDUs are forgotten.
    assert await _queued(a, "b.test") == []


@pytest_twisted.ensureDeferred
async def test_server_acl_denied_server_is_not_contacted(
    make_server: Callable[..., HSFixture],
    database_config: dict[str, Any],
    tmp_path: Path,
    cleanups: list[Callable[[], Any]],
) -> None:
    allow = {"a.test": ["b.test", "d.test"], "b.test": ["a.test"], "d.test": ["a.test"]}
    peers, inboxes = peers_with_inboxes(make_server, database_config, tmp_path, cleanups, allow)
    a, b, d = peers["a.test"], peers["b.test"], peers["d.test"]
    alice = await local_user(a, "alice")
    room_id = await create_room(a)
    await remote_join(a, b, room_id, "@bob:b.test")
    await remote_join(a, d, room_id, "@dave:d.test")
    before = await send_message(a, room_id, "before the ACL")
    await eventually(lambda: before in _ids(inboxes["d.test"].pdus(), a), "the first message at d.test")

    resp = await a.fx.client.put(
        f"{V3}/rooms/{quote(room_id)}/state/m.room.server_acl",
        {"allow": ["*"], "deny": ["d.*"], "allow_ip_literals": False},
    )
    assert resp.code == 200, resp.body
    acl_event = resp.body["event_id"]
    after = await send_message(a, room_id, "after the ACL")
    resp = await a.fx.client.put(
        f"{V3}/rooms/{quote(room_id)}/typing/{quote(alice)}", {"typing": True, "timeout": 30000}
    )
    assert resp.code == 200, resp.body
    await eventually(lambda: after in _ids(inboxes["b.test"].pdus(), a), "the second message at b.test")
    await eventually(lambda: inboxes["b.test"].edus("m.typing"), "typing at b.test")
    await a.federation.sender.wait_idle()
    assert _ids(inboxes["b.test"].pdus(), a) == [before, acl_event, after]
    assert _ids(inboxes["d.test"].pdus(), a) == [before]
    assert inboxes["d.test"].edus("m.typing") == []
    assert await a.federation.outbound.destinations_for_room(room_id) == {"b.test"}


@pytest_twisted.ensureDeferred
async def test_a_server_that_was_down_gets_what_it_missed_in_order(
    make_server: Callable[..., HSFixture],
    database_config: dict[str, Any],
    tmp_path: Path,
    cleanups: list[Callable[[], Any]],
) -> None:
    allow = {"a.test": ["b.test"], "b.test": ["a.test"]}
    peers, inboxes = peers_with_inboxes(make_server, database_config, tmp_path, cleanups, allow)
    a, b = peers["a.test"], peers["b.test"]
    await local_user(a, "alice")
    room_id = await create_room(a)
    await remote_join(a, b, room_id, "@bob:b.test")
    inboxes["b.test"].down = True
    sent = [await send_message(a, room_id, f"missed {i}") for i in range(4)]
    queue = a.federation.sender.queue_for("b.test")
    assert queue is not None
    await eventually(lambda: inboxes["b.test"].refused >= 2, "two refused attempts")
    assert queue.is_backing_off
    assert len(await _queued(a, "b.test")) == 4  # persisted until delivered
    retry = await FederationQueueRepository(a.hs.db).get_retry_state("b.test")
    assert retry.failure_count >= 1 and retry.retry_at_ms > 0

    inboxes["b.test"].down = False
    more = await send_message(a, room_id, "after the outage")
    await eventually(lambda: len(inboxes["b.test"].pdus()) >= 5, "the missed messages at b.test")
    await a.federation.sender.wait_idle()
    assert _ids(inboxes["b.test"].pdus(), a) == [*sent, more]
    assert await _queued(a, "b.test") == []
    retry = await FederationQueueRepository(a.hs.db).get_retry_state("b.test")
    assert (retry.failure_count, retry.retry_at_ms) == (0, 0)


@pytest_twisted.ensureDeferred
async def test_a_request_from_a_backed_off_server_wakes_its_queue(
    make_server: Callable[..., HSFixture],
    database_config: dict[str, Any],
    tmp_path: Path,
    cleanups: list[Callable[[], Any]],
) -> None:
    allow = {"a.test": ["b.test"], "b.test": ["a.test"]}
    retry = {"a.test": {"destination_min_retry_interval": "1h"}}
    peers, inboxes = peers_with_inboxes(make_server, database_config, tmp_path, cleanups, allow, retry=retry)
    a, b = peers["a.test"], peers["b.test"]
    await local_user(a, "alice")
    room_id = await create_room(a)
    await remote_join(a, b, room_id, "@bob:b.test")
    inboxes["b.test"].down = True
    missed = await send_message(a, room_id, "while b.test was down")
    queue = a.federation.sender.queue_for("b.test")
    assert queue is not None
    await eventually(lambda: queue.is_backing_off, "a failed attempt")
    assert queue.retry_at_ms > a.hs.clock.time_msec() + 2_500_000  # an hour away, give or take the jitter

    # b.test is back and says something to a.test: a.test retries at once.
    inboxes["b.test"].down = False
    presence = {"push": [{"user_id": "@bob:b.test", "presence": "online", "last_active_ago": 0}]}
    await b.federation.outbound.send_edu(["a.test"], "m.presence", presence, key="@bob:b.test")
    await eventually(lambda: inboxes["b.test"].pdus(), "the missed message at b.test")
    assert _ids(inboxes["b.test"].pdus(), a) == [missed]
    assert inboxes["a.test"].edus("m.presence") == [presence]
    await a.federation.sender.wait_idle()
    assert not queue.is_backing_off


@pytest_twisted.ensureDeferred
async def test_a_restart_with_a_pending_queue_loses_nothing(
    make_server: Callable[..., HSFixture],
    database_config: dict[str, Any],
    tmp_path: Path,
    cleanups: list[Callable[[], Any]],
) -> None:
    allow = {"a.test": ["b.test"], "b.test": ["a.test"]}
    peers, inboxes = peers_with_inboxes(make_server, database_config, tmp_path, cleanups, allow)
    a, b = peers["a.test"], peers["b.test"]
    await local_user(a, "alice")
    room_id = await create_room(a)
    await remote_join(a, b, room_id, "@bob:b.test")
    inboxes["b.test"].down = True
    sent = [await send_message(a, room_id, f"pending {i}") for i in range(3)]
    await eventually(lambda: inboxes["b.test"].refused >= 1, "a refused attempt")
    await a.federation.close()  # the old process stops sending

    # A new process on the same database: the queue is resumed from storage.
    restarted = build_homeserver(a.hs.config, reactor)
    assert restarted.federation is not None
    cleanups.append(restarted.db.close)
    cleanups.append(lambda: defer.ensureDeferred(restarted.federation.close()))  # type: ignore[union-attr]
    inboxes["b.test"].down = False
    await restarted.federation.start()
    await eventually(lambda: len(inboxes["b.test"].pdus()) >= 3, "the pending messages at b.test")
    await restarted.federation.sender.wait_idle()
    assert _ids(inboxes["b.test"].pdus(), a) == sent
    assert await _queued(a, "b.test") == []
