"""Waking a backed-off destination queue when the destination shows signs of life."""

from __future__ import annotations

from homeserver.federation.queue import BackoffPolicy, DestinationQueue, Pdu, SendTransaction

HOUR_MS = 3600 * 1000


def _backed_off_queue() -> tuple[DestinationQueue, str]:
    queue = DestinationQueue("remote.example", backoff=BackoffPolicy(min_ms=HOUR_MS))
    (send,) = [a for a in queue.add_pdus([Pdu(1, {"n": 1}, "$1")]) if isinstance(a, SendTransaction)]
    queue.transaction_failed(send.txn_id, "unreachable", now_ms=1000)
    assert queue.is_backing_off and queue.retry_at_ms == 1000 + HOUR_MS
    return queue, send.txn_id


def test_wake_retries_the_same_transaction_now() -> None:
    queue, txn_id = _backed_off_queue()
    assert queue.tick(2000) != [] and queue.in_flight_txn_id is None  # still waiting: only a wakeup
    (send,) = [a for a in queue.wake(2000) if isinstance(a, SendTransaction)]
    assert send.txn_id == txn_id and [p["n"] for p in send.pdus] == [1]
    assert queue.wake(2001) == []  # already in flight
    queue.transaction_sent(txn_id)
    assert not queue.is_backing_off


def test_wake_does_nothing_to_a_healthy_queue() -> None:
    queue = DestinationQueue("remote.example")
    assert queue.wake(5) == []
    queue, _ = _backed_off_queue()
    assert queue.wake(1000 + HOUR_MS + 1) == []  # the backoff is over anyway: tick handles it
