"""The per-destination federation queue: the state machine through its inputs and actions,
then the Twisted sender over it with a fake clock, transport and store."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, task

from homeserver.core.clock import Clock
from homeserver.federation.queue import (
    Action,
    BackoffPolicy,
    DestinationQueue,
    Edu,
    GiveUp,
    LoadPdus,
    MarkDelivered,
    Pdu,
    SaveRetryState,
    ScheduleWakeup,
    SendTransaction,
)
from homeserver.federation.sender import (
    DestinationServerError,
    DestinationUnreachable,
    FederationClientTransport,
    FederationSender,
    TransactionRejected,
)
from homeserver.federation.transport import HttpResponseError, InvalidResponseError, RequestSendFailed

DEST = "remote.example"
DAY_MS = 24 * 60 * 60 * 1000


def pdu(stream: int) -> Pdu:
    return Pdu(stream, {"event_id": f"$e{stream}", "n": stream}, f"$e{stream}")


def of(kind: type, actions: list[Action]) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def only_send(actions: list[Action]) -> SendTransaction:
    sends = of(SendTransaction, actions)
    assert len(sends) == 1, actions
    return sends[0]  # type: ignore[no-any-return]


def streams(send: SendTransaction) -> list[int]:
    return [p["n"] for p in send.pdus]


def receipt(room: str, user: str, event_id: str, edu_id: int | None = None, thread: str | None = None) -> Edu:
    data: dict[str, Any] = {"ts": 1}
    if thread is not None:
        data["thread_id"] = thread
    content = {room: {"m.read": {user: {"event_ids": [event_id], "data": data}}}}
    return Edu("m.receipt", content, edu_id=edu_id)


def fail(q: DestinationQueue, send: SendTransaction, now_ms: int, **kw: Any) -> list[Action]:
    return q.transaction_failed(send.txn_id, "unreachable", now_ms=now_ms, **kw)


# -- batching and the single transaction in flight ---------------------------------------------


def test_pdus_go_out_in_batches_of_50_one_transaction_at_a_time() -> None:
    q = DestinationQueue(DEST, txn_id_base=7)
    first = only_send(q.add_pdus([pdu(i) for i in range(1, 121)]))
    assert streams(first) == list(range(1, 51)) and first.txn_id == "7_1"
    assert q.add_pdus([pdu(121)]) == []  # one in flight: nothing more goes out
    assert q.in_flight_txn_id == "7_1"

    actions = q.transaction_sent(first.txn_id)
    assert of(MarkDelivered, actions) == [MarkDelivered(tuple(range(1, 51)), ())]
    second = only_send(actions)
    assert streams(second) == list(range(51, 101)) and second.txn_id == "7_2"
    third = only_send(q.transaction_sent(second.txn_id))
    assert streams(third) == list(range(101, 122))
    last = q.transaction_sent(third.txn_id)
    assert of(SendTransaction, last) == [] and last[0] == MarkDelivered(tuple(range(101, 122)), ())
    assert q.in_flight_txn_id is None and q.pending_pdu_count == 0


def test_edus_go_out_100_per_transaction_with_pdus() -> None:
    q = DestinationQueue(DEST)
    edus = [Edu("m.direct_to_device", {"n": i}, edu_id=i) for i in range(250)]
    first = only_send(q.add_edus(edus))
    assert len(first.edus) == 100 and first.edus[0] == {"edu_type": "m.direct_to_device", "content": {"n": 0}}
    assert q.add_pdus([pdu(1)]) == []
    second_actions = q.transaction_sent(first.txn_id)
    assert of(MarkDelivered, second_actions) == [MarkDelivered((), tuple(range(100)))]
    second = only_send(second_actions)
    assert streams(second) == [1] and [e["content"]["n"] for e in second.edus] == list(range(100, 200))
    third = only_send(q.transaction_sent(second.txn_id))
    assert [e["content"]["n"] for e in third.edus] == list(range(200, 250))


def test_duplicate_and_stale_inputs_are_ignored() -> None:
    q = DestinationQueue(DEST)
    send = only_send(q.add_pdus([pdu(1)]))
    assert q.add_pdus([pdu(1)]) == []  # already in flight
    assert q.transaction_sent("nope") == []
    assert q.transaction_failed("nope", "unreachable", now_ms=0) == []
    q.transaction_sent(send.txn_id)
    assert q.transaction_sent(send.txn_id) == []  # answered twice


# -- failures, retries and backoff -------------------------------------------------------------


def test_a_failed_transaction_is_retried_with_the_same_id_and_content() -> None:
    q = DestinationQueue(DEST)
    send = only_send(q.add_pdus([pdu(1), pdu(2)]))
    actions = fail(q, send, 1_000)
    assert actions == [SaveRetryState(1, 6_000), ScheduleWakeup(6_000)]
    assert q.add_pdus([pdu(3)]) == []  # backing off: accumulate
    assert q.tick(5_999) == [ScheduleWakeup(6_000)]  # woken early: sleep again
    retry = only_send(q.tick(6_000))
    assert retry == send  # same ID, same PDUs
    assert q.tick(6_001) == []  # in flight
    done = q.transaction_sent(send.txn_id)
    assert done[:2] == [MarkDelivered((1, 2), ()), SaveRetryState(0, 0)]
    assert streams(only_send(done)) == [3]
    assert not q.is_backing_off


def test_backoff_doubles_from_5s_to_a_24h_cap_with_jitter() -> None:
    q = DestinationQueue(DEST)
    send = only_send(q.add_pdus([pdu(1)]))
    now, delays = 0, []
    for _ in range(20):
        actions = fail(q, send, now)
        wakeup = of(ScheduleWakeup, actions)[0].at_ms
        delays.append(wakeup - now)
        now = wakeup
        assert only_send(q.tick(now)) == send
    assert delays[:5] == [5_000, 10_000, 20_000, 40_000, 80_000]
    assert delays[-1] == DAY_MS and max(delays) == DAY_MS
    assert delays.index(DAY_MS) == 15  # 5 s * 2**15 > 24 h

    policy = BackoffPolicy()
    assert policy.delay_ms(1, jitter=1.2) == 6_000
    assert policy.delay_ms(3, jitter=0.5) == 10_000
    assert policy.delay_ms(100, jitter=1.4) == DAY_MS  # jitter never exceeds the cap
    assert BackoffPolicy(min_ms=100, max_ms=1_000).delay_ms(5) == 1_000


def test_retry_after_from_the_server_replaces_the_computed_delay() -> None:
    q = DestinationQueue(DEST)
    send = only_send(q.add_pdus([pdu(1)]))
    actions = q.transaction_failed(send.txn_id, "server_error", now_ms=0, retry_after_ms=1_234)
    assert actions == [SaveRetryState(1, 1_234), ScheduleWakeup(1_234)]
    only_send(q.tick(1_234))
    actions = q.transaction_failed(send.txn_id, "server_error", now_ms=2_000, retry_after_ms=10 * DAY_MS)
    assert of(ScheduleWakeup, actions) == [ScheduleWakeup(2_000 + DAY_MS)]


def test_refused_transaction_is_dropped_and_the_queue_moves_on() -> None:
    q = DestinationQueue(DEST)
    first = only_send(q.add_pdus([pdu(i) for i in range(1, 61)]))
    only_send(q.tick(fail(q, first, 0)[1].at_ms))  # type: ignore[union-attr]
    assert q.is_backing_off
    actions = q.transaction_failed(first.txn_id, "rejected_4xx", now_ms=10_000)
    assert actions[0] == MarkDelivered(tuple(range(1, 51)), ())
    assert actions[1] == GiveUp(first.txn_id, "refused by destination", 50, 0)
    assert actions[2] == SaveRetryState(0, 0)  # it answered, so it is up
    nxt = only_send(actions)
    assert streams(nxt) == list(range(51, 61)) and nxt.txn_id != first.txn_id


def test_catch_up_after_a_long_outage_is_oldest_first_in_batches_of_50() -> None:
    q = DestinationQueue(DEST)
    send = only_send(q.add_pdus([pdu(1)]))
    now = 0
    # Down for days: PDUs keep coming (not always in stream order), retries keep failing.
    arriving = list(range(2, 1002))
    arriving[10], arriving[500] = arriving[500], arriving[10]
    for i, stream in enumerate(arriving):
        assert q.add_pdus([pdu(stream)]) == []
        if i % 50 == 0:
            wakeup = of(ScheduleWakeup, fail(q, send, now))[0].at_ms
            assert only_send(q.tick(wakeup)) == send
            now = wakeup
    assert now > DAY_MS
    # Back up: the transaction in flight first, then the rest oldest first.
    delivered: list[int] = []
    actions = q.transaction_sent(send.txn_id)
    delivered.extend(actions[0].pdu_streams)  # type: ignore[union-attr]
    sizes = []
    while sends := of(SendTransaction, actions):
        sizes.append(len(sends[0].pdus))
        actions = q.transaction_sent(sends[0].txn_id)
        delivered.extend(of(MarkDelivered, actions)[0].pdu_streams)
    assert delivered == list(range(1, 1002))
    assert sizes == [50] * 20


def test_a_long_outage_keeps_only_the_oldest_pdus_in_memory() -> None:
    stored: dict[int, Pdu] = {}  # stands for storage: every PDU is stored before it is queued

    def add(q: DestinationQueue, streams: list[int]) -> list[Action]:
        stored.update((s, pdu(s)) for s in streams)
        return q.add_pdus([pdu(s) for s in streams])

    def load(q: DestinationQueue, request: LoadPdus) -> list[Action]:
        rows = sorted(s for s in stored if s >= request.from_stream)
        return q.pdus_loaded([stored[s] for s in rows[: request.limit]], exhausted=len(rows) <= request.limit)

    q = DestinationQueue(DEST, max_pdus_in_memory=100)
    send = only_send(add(q, [1]))
    fail(q, send, 0)
    arriving = list(range(2, 1001))
    arriving[5], arriving[700] = arriving[700], arriving[5]  # 707 early, 7 late
    for stream in arriving:
        assert add(q, [stream]) == []
        assert q.pending_pdu_count <= 100
    only_send(q.tick(5_000))

    delivered: list[int] = []
    actions, loads, arrived_during_load = q.transaction_sent(send.txn_id), 0, False
    while actions:
        for action in actions:
            if isinstance(action, MarkDelivered):
                delivered.extend(action.pdu_streams)
                for s in action.pdu_streams:
                    del stored[s]
        nxt = [a for a in actions if isinstance(a, SendTransaction | LoadPdus)]
        if not nxt:
            break
        assert len(nxt) == 1
        if isinstance(nxt[0], LoadPdus):
            loads += 1
            if not arrived_during_load:  # a PDU comes in while storage is being read
                arrived_during_load = True
                assert add(q, [1001]) == []
            actions = load(q, nxt[0])
        else:
            assert len(nxt[0].pdus) == 50 or not stored.keys() - set(streams(nxt[0]))
            actions = q.transaction_sent(nxt[0].txn_id)
        assert q.pending_pdu_count <= 101
    assert delivered == list(range(1, 1002))
    assert loads >= 9 and stored == {}


# -- EDUs while backing off --------------------------------------------------------------------


def test_typing_is_dropped_while_backing_off_and_durable_edus_kept() -> None:
    q = DestinationQueue(DEST)
    send = only_send(q.add_edus([Edu("m.typing", {"room_id": "!r", "user_id": "@a", "typing": True})]))
    assert send.edus[0]["edu_type"] == "m.typing"
    # Typing queued behind the in-flight transaction is dropped when it fails.
    q.add_edus([Edu("m.typing", {"room_id": "!r2"}, key="!r2")])
    fail(q, send, 0)
    q.add_edus(
        [
            Edu("m.typing", {"room_id": "!r3"}),
            Edu("m.device_list_update", {"stream_id": 1}, edu_id=1),
            Edu("m.direct_to_device", {"message_id": "m"}, edu_id=2),
        ]
    )
    assert only_send(q.tick(5_000)) == send  # the retry keeps its content
    actions = q.transaction_sent(send.txn_id)
    nxt = only_send(actions)
    assert [e["edu_type"] for e in nxt.edus] == ["m.device_list_update", "m.direct_to_device"]
    assert of(MarkDelivered, q.transaction_sent(nxt.txn_id)) == [MarkDelivered((), (1, 2))]
    # Healthy again: typing flows.
    assert only_send(q.add_edus([Edu("m.typing", {"room_id": "!r4"})])).edus[0]["edu_type"] == "m.typing"


def test_live_edus_are_keyed_and_bounded_behind_a_slow_transaction() -> None:
    q = DestinationQueue(DEST)
    send = only_send(q.add_pdus([pdu(1)]))
    q.add_edus([Edu("m.typing", {"room_id": "!r", "n": n}, key="!r") for n in range(3)])
    q.add_edus([Edu("m.typing", {"n": n}) for n in range(150)])
    edus = only_send(q.transaction_sent(send.txn_id)).edus
    assert len(edus) == 100 and edus[0]["content"] == {"n": 50} and edus[-1]["content"] == {"n": 149}


def test_receipts_are_coalesced_per_room_and_user_while_backing_off() -> None:
    q = DestinationQueue(DEST)
    send = only_send(q.add_pdus([pdu(1)]))
    fail(q, send, 0)
    q.add_edus(
        [
            receipt("!a", "@u", "$1", edu_id=10),
            receipt("!a", "@v", "$2", edu_id=11),
            receipt("!a", "@u", "$3", edu_id=12),
            receipt("!b", "@u", "$4", edu_id=13),
            receipt("!a", "@u", "$5", edu_id=14),
            receipt("!a", "@u", "$t", edu_id=15, thread="$root"),
        ]
    )
    only_send(q.tick(5_000))
    actions = q.transaction_sent(send.txn_id)
    edus = only_send(actions).edus
    assert all(e["edu_type"] == "m.receipt" for e in edus)
    contents = [e["content"] for e in edus]
    assert contents[0] == {
        "!a": {
            "m.read": {
                "@u": {"event_ids": ["$5"], "data": {"ts": 1}},
                "@v": {"event_ids": ["$2"], "data": {"ts": 1}},
            }
        }
    }
    assert contents[1] == {"!b": {"m.read": {"@u": {"event_ids": ["$4"], "data": {"ts": 1}}}}}
    # A threaded receipt of the same user needs an EDU of its own.
    assert contents[2] == {"!a": {"m.read": {"@u": {"event_ids": ["$t"], "data": {"ts": 1, "thread_id": "$root"}}}}}
    assert len(edus) == 3
    final = q.transaction_sent(only_send(actions).txn_id)
    assert final == [MarkDelivered((), (10, 11, 12, 13, 14, 15))]


def test_keyed_edus_replace_each_other_and_durable_edus_are_bounded() -> None:
    q = DestinationQueue(DEST, max_durable_edus=3)
    send = only_send(q.add_pdus([pdu(1)]))
    q.add_edus([Edu("m.presence", {"v": 1}, key="@u", edu_id=1), Edu("m.presence", {"v": 2}, key="@u", edu_id=2)])
    assert q.durable_edu_count == 1
    assert q.add_edus([Edu("x.fifo", {"n": n}, edu_id=10 + n) for n in range(2)]) == []
    # Past the bound the oldest unkeyed EDU goes, and storage may forget it.
    assert q.add_edus([Edu("x.fifo", {"n": 2}, edu_id=12)]) == [MarkDelivered((), (10,))]
    actions = q.transaction_sent(send.txn_id)
    nxt = only_send(actions)
    assert [e["content"] for e in nxt.edus] == [{"v": 2}, {"n": 1}, {"n": 2}]
    assert q.transaction_sent(nxt.txn_id) == [MarkDelivered((), (1, 2, 11, 12))]


def test_restored_queue_continues_the_backoff() -> None:
    q = DestinationQueue.restore(
        DEST,
        pdus=[pdu(3), pdu(1), pdu(2)],
        edus=[Edu("m.typing", {}), Edu("m.device_list_update", {"n": 1}, edu_id=5)],
        failure_count=3,
        retry_at_ms=50_000,
        txn_id_base=99,
    )
    assert q.tick(10_000) == [ScheduleWakeup(50_000)]
    send = only_send(q.tick(50_000))
    assert streams(send) == [1, 2, 3] and send.txn_id == "99_1"
    assert send.edus == ({"edu_type": "m.device_list_update", "content": {"n": 1}},)
    assert of(ScheduleWakeup, fail(q, send, 50_000)) == [ScheduleWakeup(50_000 + 40_000)]  # 4th failure


def test_restored_queue_reads_the_rest_from_storage_when_the_retry_is_due() -> None:
    q = DestinationQueue.restore(
        DEST,
        pdus=[pdu(1), pdu(2)],
        edus=[],
        failure_count=1,
        retry_at_ms=5_000,
        txn_id_base=1,
        max_pdus_in_memory=2,
        more_pdus_from=3,
    )
    q.max_pdus = 3
    assert q.tick(0) == [ScheduleWakeup(5_000)]
    assert q.tick(5_000) == [LoadPdus(3, 3)]  # never fewer than a transaction's worth
    assert q.tick(5_001) == []  # loading
    assert q.pdus_loaded([], exhausted=False) == [LoadPdus(3, 3)]  # (rows of deleted events)
    send = only_send(q.pdus_loaded([pdu(3), pdu(4), pdu(5)], exhausted=False))
    assert streams(send) == [1, 2, 3]  # 4 and 5 past the bound: read again later
    assert q.pdus_loaded([pdu(5)], exhausted=True) == []  # not asked for
    actions = q.transaction_sent(send.txn_id)
    assert actions[-1] == LoadPdus(4, 3)
    assert q.pdus_load_failed(6_000) == [ScheduleWakeup(11_000)]
    assert q.tick(11_000) == [LoadPdus(4, 3)]
    assert streams(only_send(q.pdus_loaded([pdu(4), pdu(5)], exhausted=True))) == [4, 5]


def test_restored_idle_queue_asks_to_be_woken_when_work_arrives_during_backoff() -> None:
    q = DestinationQueue.restore(DEST, pdus=[], edus=[], failure_count=2, retry_at_ms=15_000, txn_id_base=1)
    assert q.tick(20_000) == []  # nothing to do
    assert q.add_pdus([pdu(1)]) == [ScheduleWakeup(15_000)]  # due already: wake at once
    assert q.add_pdus([pdu(2)]) == []  # asked already
    assert streams(only_send(q.tick(20_000))) == [1, 2]


def test_restore_beyond_the_bound_reports_what_it_dropped() -> None:
    q = DestinationQueue.restore(
        DEST,
        pdus=[],
        edus=[Edu("x", {"n": n}, edu_id=n) for n in range(5)],
        failure_count=0,
        retry_at_ms=0,
        txn_id_base=1,
        max_durable_edus=3,
    )
    actions = q.tick(0)
    assert actions[0] == MarkDelivered((), (0, 1))
    assert [e["content"]["n"] for e in only_send(actions).edus] == [2, 3, 4]


# -- the sender, with a fake transport and store -----------------------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.down: set[str] = set()
        self.refusing: set[str] = set()
        self.received: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        self.attempts = 0

    async def put_transaction(self, destination: str, txn_id: str, body: dict[str, Any]) -> None:
        self.attempts += 1
        if destination in self.down:
            raise DestinationUnreachable("connection refused")
        if destination in self.refusing:
            raise TransactionRejected(403)
        self.received.setdefault(destination, []).append((txn_id, body))

    def pdu_numbers(self, destination: str) -> list[int]:
        return [p["n"] for _, body in self.received.get(destination, []) for p in body["pdus"]]


class MemoryStore:
    """The QueueStore contract in memory; ``events`` stands for the events table."""

    def __init__(self) -> None:
        self.events: dict[str, dict[str, Any]] = {}
        self.pdus: dict[str, dict[int, str]] = {}
        self.edus: dict[int, tuple[str, str, Mapping[str, Any], str | None]] = {}
        self.retry: dict[str, tuple[int, int]] = {}
        self._next_edu = 0
        self.loads = 0

    async def enqueue_pdu(self, destinations: Collection[str], stream: int, event_id: str) -> None:
        for d in destinations:
            self.pdus.setdefault(d, {})[stream] = event_id

    async def enqueue_edu(
        self, destination: str, edu_type: str, content: Mapping[str, Any], key: str | None = None
    ) -> int:
        self._next_edu += 1
        self.edus[self._next_edu] = (destination, edu_type, content, key)
        return self._next_edu

    async def mark_delivered(self, destination: str, pdu_streams: Collection[int], edu_ids: Collection[int]) -> None:
        for s in pdu_streams:
            self.pdus.get(destination, {}).pop(s, None)
        for i in edu_ids:
            self.edus.pop(i, None)

    async def save_retry_state(self, destination: str, failure_count: int, retry_at_ms: int) -> None:
        self.retry[destination] = (failure_count, retry_at_ms)

    async def destinations_to_resume(self) -> list[str]:
        dests = {d for d, p in self.pdus.items() if p} | {e[0] for e in self.edus.values()}
        return sorted(dests | {d for d, (n, _) in self.retry.items() if n})

    async def get_pdus(self, destination: str, from_stream: int, limit: int) -> tuple[list[Pdu], bool]:
        self.loads += 1
        rows = [(s, e) for s, e in sorted(self.pdus.get(destination, {}).items()) if s >= from_stream]
        return [Pdu(s, self.events[e], e) for s, e in rows[:limit]], len(rows) <= limit

    async def load(
        self,
        destination: str,
        *,
        txn_id_base: int,
        backoff: BackoffPolicy | None = None,
        max_pdus_in_memory: int = 1_000,
    ) -> DestinationQueue:
        failures, retry_at = self.retry.get(destination, (0, 0))
        pdus, exhausted = await self.get_pdus(destination, 0, max_pdus_in_memory)
        return DestinationQueue.restore(
            destination,
            pdus=pdus,
            edus=[Edu(t, c, k, i) for i, (d, t, c, k) in sorted(self.edus.items()) if d == destination],
            failure_count=failures,
            retry_at_ms=retry_at,
            txn_id_base=txn_id_base,
            backoff=backoff,
            max_pdus_in_memory=max_pdus_in_memory,
            more_pdus_from=None if exhausted else pdus[-1].stream + 1,
        )


def make_sender(
    reactor: task.Clock, transport: FakeTransport, store: MemoryStore, max_pdus_in_memory: int = 1_000
) -> FederationSender:
    return FederationSender(
        Clock(reactor),
        transport,
        store,
        server_name="us.example",
        jitter=lambda: 1.0,
        max_pdus_in_memory=max_pdus_in_memory,
    )


async def send_events(sender: FederationSender, store: MemoryStore, numbers: range, dests: list[str]) -> None:
    for n in numbers:
        event = {"event_id": f"$e{n}", "n": n}
        store.events[f"$e{n}"] = event
        await sender.send_pdu(dests, event, n)


@pytest_twisted.ensureDeferred
async def test_sender_delivers_everything_in_order_once_the_destination_is_back() -> None:
    reactor, transport, store = task.Clock(), FakeTransport(), MemoryStore()
    sender = make_sender(reactor, transport, store)
    await sender.start()
    transport.down.add(DEST)
    await send_events(sender, store, range(1, 131), [DEST, "other.example", "us.example"])
    await sender.send_edu(DEST, "m.typing", {"room_id": "!r", "typing": True})
    await sender.send_edu(DEST, "m.device_list_update", {"stream_id": 7})
    assert transport.pdu_numbers("other.example") == list(range(1, 131))
    assert "us.example" not in transport.received
    assert transport.received.get(DEST) is None and store.retry[DEST] == (1, 5_000)

    reactor.advance(5)  # retry fails again: 10 s next
    reactor.advance(10)
    assert store.retry[DEST] == (3, 35_000) and transport.attempts == 130 + 3
    transport.down.clear()
    reactor.advance(20)
    await sender.wait_idle()
    assert transport.pdu_numbers(DEST) == list(range(1, 131))
    bodies = [body for _, body in transport.received[DEST]]
    assert [len(b["pdus"]) for b in bodies] == [1, 50, 50, 29]
    assert [e["edu_type"] for b in bodies for e in b["edus"]] == ["m.device_list_update"]  # typing dropped
    assert bodies[0]["origin"] == "us.example" and bodies[0]["origin_server_ts"] == 35_000
    assert store.pdus[DEST] == {} and store.edus == {} and store.retry[DEST] == (0, 0)
    sender.stop()


@pytest_twisted.ensureDeferred
async def test_a_restarted_sender_loses_nothing_and_keeps_the_backoff() -> None:
    reactor, transport, store = task.Clock(), FakeTransport(), MemoryStore()
    sender = make_sender(reactor, transport, store)
    await sender.start()
    transport.down.add(DEST)
    await send_events(sender, store, range(1, 61), [DEST])
    await sender.send_edu(DEST, "m.receipt", receipt("!a", "@u", "$1").content)
    await sender.send_edu(DEST, "m.receipt", receipt("!a", "@u", "$2").content)
    reactor.advance(5)
    assert store.retry[DEST] == (2, 15_000)
    sender.stop()  # "crash"

    transport.down.clear()
    reactor.advance(1)  # back up, but the new sender does not know yet
    restarted = make_sender(reactor, transport, store)
    await restarted.start()
    assert transport.received.get(DEST) is None  # still waiting for retry_at
    reactor.advance(9)
    await restarted.wait_idle()
    assert transport.pdu_numbers(DEST) == list(range(1, 61))
    edus = [e for _, body in transport.received[DEST] for e in body["edus"]]
    assert edus == [{"edu_type": "m.receipt", "content": receipt("!a", "@u", "$2").content}]
    assert store.pdus[DEST] == {} and store.edus == {} and store.retry[DEST] == (0, 0)
    restarted.stop()


@pytest_twisted.ensureDeferred
async def test_sender_reads_back_what_did_not_fit_in_memory() -> None:
    reactor, transport, store = task.Clock(), FakeTransport(), MemoryStore()
    sender = make_sender(reactor, transport, store, max_pdus_in_memory=60)
    transport.down.add(DEST)
    await send_events(sender, store, range(1, 301), [DEST])
    queue = sender.queue_for(DEST)
    assert queue is not None and queue.pending_pdu_count == 60
    transport.down.clear()
    reactor.advance(5)
    await sender.wait_idle()
    assert transport.pdu_numbers(DEST) == list(range(1, 301))
    assert store.loads >= 5 and store.pdus[DEST] == {}
    sender.stop()


@pytest_twisted.ensureDeferred
async def test_sender_resumes_a_backed_off_destination_with_nothing_pending() -> None:
    reactor, transport, store = task.Clock(), FakeTransport(), MemoryStore()
    store.retry[DEST] = (2, 15_000)
    reactor.advance(10)
    sender = make_sender(reactor, transport, store)
    await sender.start()
    await send_events(sender, store, range(1, 3), [DEST])
    assert transport.received == {}
    reactor.advance(5)
    await sender.wait_idle()
    assert transport.pdu_numbers(DEST) == [1, 2] and store.retry[DEST] == (0, 0)
    sender.stop()


@pytest_twisted.ensureDeferred
async def test_sender_drops_what_the_destination_refuses() -> None:
    reactor, transport, store = task.Clock(), FakeTransport(), MemoryStore()
    sender = make_sender(reactor, transport, store)
    transport.refusing.add(DEST)
    await send_events(sender, store, range(1, 3), [DEST])
    transport.refusing.clear()
    await send_events(sender, store, range(3, 4), [DEST])
    assert transport.pdu_numbers(DEST) == [3]
    assert store.pdus[DEST] == {} and DEST not in store.retry
    with pytest.raises(ValueError):
        await sender.send_pdu([DEST], {"no": "id"}, 9)


# -- the FederationClient adapter --------------------------------------------------------------


class FakeClient:
    def __init__(self, error: Exception | None) -> None:
        self.error = error
        self.calls: list[tuple[str, str, Any]] = []

    async def put_json(self, destination: str, path: str, content: Any) -> Any:
        self.calls.append((destination, path, content))
        if self.error is not None:
            raise self.error
        return {"pdus": {"$x": {"error": "bad"}}}


@pytest.mark.parametrize(
    ("error", "expected", "retry_after"),
    [
        (None, None, None),
        (InvalidResponseError("not json"), None, None),
        (RequestSendFailed("timeout"), DestinationUnreachable, None),
        (HttpResponseError(403, b'{"errcode":"M_FORBIDDEN"}'), TransactionRejected, None),
        (HttpResponseError(429, b'{"errcode":"M_LIMIT_EXCEEDED","retry_after_ms":2000}'), DestinationServerError, 2000),
        (HttpResponseError(502, b"bad gateway"), DestinationServerError, None),
    ],
)
def test_client_transport_maps_errors(error: Exception | None, expected: type | None, retry_after: int | None) -> None:
    client = FakeClient(error)
    d = defer.ensureDeferred(FederationClientTransport(client).put_transaction(DEST, "1/2", {"pdus": []}))
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert client.calls == [(DEST, "/_matrix/federation/v1/send/1%2F2", {"pdus": []})]
    if expected is None:
        assert failures == []
    else:
        assert failures and isinstance(failures[0].value, expected)
        assert getattr(failures[0].value, "retry_after_ms", None) == retry_after
