"""The persisted federation queue, on SQLite and PostgreSQL: what a restart must not lose."""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
from twisted.internet import task

from homeserver.core.clock import Clock
from homeserver.federation.queue import LoadPdus, MarkDelivered, ScheduleWakeup, SendTransaction
from homeserver.federation.sender import DestinationUnreachable, FederationSender
from homeserver.storage.database import Database, Transaction
from homeserver.storage.federation_queue import FederationQueueRepository, RetryState

DEST = "remote.example"


async def store_events(db: Database, numbers: range) -> None:
    def txn_fn(txn: Transaction) -> None:
        txn.execute_many(
            "INSERT INTO events (stream_ordering, event_id, room_id, type, sender, depth, origin_server_ts,"
            " received_ts, json) VALUES (?, ?, '!r:test', 'm.room.message', '@a:test', ?, 0, 0, ?)",
            [(n, f"$e{n}", n, json.dumps({"event_id": f"$e{n}", "n": n})) for n in numbers],
        )

    await db.run_interaction("store_events", txn_fn)


@pytest_twisted.ensureDeferred
async def test_pending_pdus_edus_and_backoff_survive_a_reload(db: Database) -> None:
    repo = FederationQueueRepository(db)
    await store_events(db, range(1, 5))
    for n in (3, 1, 2, 4):
        await repo.enqueue_pdu([DEST, "other.example"], n, f"$e{n}")
    await repo.enqueue_pdu([DEST], 1, "$e1")  # idempotent
    await repo.enqueue_pdu([DEST], 0, "$gone")  # no such event: forgotten on load
    dl = await repo.enqueue_edu(DEST, "m.device_list_update", {"stream_id": 1})
    p1 = await repo.enqueue_edu(DEST, "m.presence", {"v": 1}, key="@u:test")
    p2 = await repo.enqueue_edu(DEST, "m.presence", {"v": 2}, key="@u:test")  # replaces p1
    assert dl < p1 < p2
    await repo.save_retry_state(DEST, 4, 80_000)

    assert await repo.destinations_to_resume() == ["other.example", DEST]
    queue = await repo.load(DEST, txn_id_base=5)
    assert queue.failure_count == 4 and queue.retry_at_ms == 80_000
    assert queue.tick(0) == [ScheduleWakeup(80_000)]
    actions = queue.tick(80_000)
    (send,) = [a for a in actions if isinstance(a, SendTransaction)]
    assert [p["n"] for p in send.pdus] == [1, 2, 3, 4] and send.txn_id == "5_1"
    assert sorted(e["content"].get("v", 0) for e in send.edus) == [0, 2]

    done = queue.transaction_sent(send.txn_id)
    assert done[0] == MarkDelivered((1, 2, 3, 4), (dl, p2))
    await repo.mark_delivered(DEST, done[0].pdu_streams, done[0].edu_ids)  # type: ignore[union-attr]
    await repo.save_retry_state(DEST, 0, 0)
    assert await repo.get_retry_state(DEST) == RetryState(0, 0, 4)
    assert await repo.destinations_to_resume() == ["other.example"]
    empty = await repo.load(DEST, txn_id_base=6)
    assert empty.pending_pdu_count == 0 and empty.pending_edu_count == 0 and not empty.is_backing_off
    other = await repo.load("other.example", txn_id_base=6)
    assert other.pending_pdu_count == 4 and other.pending_edu_count == 0


@pytest_twisted.ensureDeferred
async def test_queued_pdus_are_read_back_in_pages(db: Database) -> None:
    repo = FederationQueueRepository(db)
    await store_events(db, range(1, 11))
    for n in range(1, 11):
        await repo.enqueue_pdu([DEST], n, f"$e{n}")
    pdus, exhausted = await repo.get_pdus(DEST, 4, 3)
    assert [p.stream for p in pdus] == [4, 5, 6] and not exhausted
    pdus, exhausted = await repo.get_pdus(DEST, 8, 3)
    assert [p.stream for p in pdus] == [8, 9, 10] and exhausted
    assert pdus[0].pdu == {"event_id": "$e8", "n": 8} and pdus[0].event_id == "$e8"

    queue = await repo.load(DEST, txn_id_base=1, max_pdus_in_memory=4)
    assert queue.pending_pdu_count == 4
    actions = queue.tick(0)
    assert [a for a in actions if isinstance(a, SendTransaction)] == []
    (load,) = [a for a in actions if isinstance(a, LoadPdus)]
    assert load == LoadPdus(5, 50)  # fewer than a full transaction in memory: read on first


@pytest_twisted.ensureDeferred
async def test_backed_off_destination_is_resumed_even_with_nothing_pending(db: Database) -> None:
    repo = FederationQueueRepository(db)
    assert await repo.get_retry_state(DEST) == RetryState(0, 0, None)
    await repo.save_retry_state(DEST, 2, 15_000)
    await repo.mark_delivered(DEST, [7], [])
    await repo.mark_delivered(DEST, [3], [])  # never goes backwards
    assert await repo.get_retry_state(DEST) == RetryState(2, 15_000, 7)
    assert await repo.destinations_to_resume() == [DEST]
    # The EDU ID allocator carries on from what is stored.
    first = await repo.enqueue_edu(DEST, "x", {})
    assert await FederationQueueRepository(db).enqueue_edu(DEST, "x", {}) == first + 1


class FlakyTransport:
    def __init__(self) -> None:
        self.up = False
        self.received: list[int] = []

    async def put_transaction(self, destination: str, txn_id: str, body: dict[str, Any]) -> None:
        if not self.up:
            raise DestinationUnreachable("down")
        self.received.extend(p["n"] for p in body["pdus"])


@pytest_twisted.ensureDeferred
async def test_restarted_sender_over_the_database_delivers_everything(db: Database) -> None:
    reactor, transport = task.Clock(), FlakyTransport()
    reactor.advance(1_000)
    await store_events(db, range(1, 76))
    sender = FederationSender(
        Clock(reactor), transport, FederationQueueRepository(db), server_name="us.test", jitter=lambda: 1.0
    )
    await sender.start()
    for n in range(1, 76):
        await sender.send_pdu([DEST], {"event_id": f"$e{n}", "n": n}, n)
    await sender.send_edu(DEST, "m.typing", {"room_id": "!r:test"})
    await sender.send_edu(DEST, "m.direct_to_device", {"message_id": "m1"})
    await sender.wait_idle()
    sender.stop()

    transport.up = True
    repo = FederationQueueRepository(db)
    assert await repo.get_retry_state(DEST) == RetryState(1, 1_005_000, None)
    restarted = FederationSender(
        Clock(reactor), transport, repo, server_name="us.test", jitter=lambda: 1.0, max_pdus_in_memory=20
    )
    await restarted.start()
    await restarted.wait_idle()
    assert transport.received == []  # the backoff carries on across the restart
    reactor.advance(5)
    await restarted.wait_idle()
    assert transport.received == list(range(1, 76))
    assert await repo.destinations_to_resume() == []
    assert await repo.get_retry_state(DEST) == RetryState(0, 0, 75)
    restarted.stop()
