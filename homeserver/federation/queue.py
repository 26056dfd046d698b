"""What to send to one destination, and when: a sans-I/O state machine.

A :class:`DestinationQueue` is fed inputs (new PDUs and EDUs, the outcome of a
transaction, the passing of time) and answers each with a list of actions for an adapter
to carry out (:class:`SendTransaction`, :class:`ScheduleWakeup`, :class:`MarkDelivered`,
:class:`SaveRetryState`, :class:`GiveUp`).  It reads no clock, does no I/O and draws no
random numbers: the adapter passes ``now_ms`` and the backoff ``jitter`` in, so the same
inputs always give the same actions.  ``homeserver.federation.sender`` is the Twisted
adapter; the tests drive this class directly.

The rules (Server-Server API, "Transactions", and what Synapse does):

* one transaction in flight per destination, of at most 50 PDUs and 100 EDUs;
* a transaction that fails is retried with the same ID and the same content, after an
  exponential backoff (5 s doubling up to 24 h by default, times the jitter given);
* a 4xx answer other than 429 means the destination refuses that transaction: its PDUs
  and EDUs are dropped (:class:`GiveUp`) and the queue moves on;
* while backing off, PDUs and durable EDUs accumulate; once the destination answers
  again they go out oldest first (by stream position), 50 PDUs at a time.  Every PDU
  handed to the queue must already be stored: past ``max_pdus_in_memory`` the newest
  are left in storage and read back in order (:class:`LoadPdus`) as the queue drains;
* live-only EDUs (typing) are dropped while backing off; device-list updates, to-device
  messages and receipts are kept, receipts coalesced per (room, type, user, thread),
  EDUs with a key coalesced per (type, key), all bounded by ``max_durable_edus``.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

MAX_PDUS_PER_TRANSACTION = 50
MAX_EDUS_PER_TRANSACTION = 100

#: EDU types that only matter while they are fresh: dropped when the destination is down.
LIVE_ONLY_EDU_TYPES = frozenset({"m.typing"})
RECEIPT_EDU_TYPE = "m.receipt"

ErrorKind: TypeAlias = Literal["unreachable", "rejected_4xx", "server_error"]


# -- inputs ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pdu:
    """A PDU to send, with its position in our event stream (the order of catch-up)."""

    stream: int
    pdu: Mapping[str, Any]
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class Edu:
    """An EDU to send.

    ``key`` makes later EDUs of the same type and key replace earlier ones (presence per
    user, for instance).  ``edu_id`` is the storage ID of a durable EDU, reported back in
    :class:`MarkDelivered` once it is delivered or abandoned.
    """

    edu_type: str
    content: Mapping[str, Any]
    key: str | None = None
    edu_id: int | None = None

    @property
    def is_live_only(self) -> bool:
        return self.edu_type in LIVE_ONLY_EDU_TYPES


# -- actions -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendTransaction:
    """PUT /_matrix/federation/v1/send/{txn_id} with these PDUs and EDUs (as JSON)."""

    txn_id: str
    pdus: tuple[Mapping[str, Any], ...]
    edus: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True, slots=True)
class ScheduleWakeup:
    """Call :meth:`DestinationQueue.tick` at ``at_ms`` (replacing any earlier wakeup)."""

    at_ms: int


@dataclass(frozen=True, slots=True)
class MarkDelivered:
    """These PDUs (by stream position) and durable EDUs (by ID) are done with.

    Done means delivered, or abandoned (refused by the destination, or pushed out of a
    full EDU queue): either way storage can forget them.
    """

    pdu_streams: tuple[int, ...] = ()
    edu_ids: tuple[int, ...] = ()

    @property
    def up_to_stream(self) -> int | None:
        """The highest stream position among the PDUs done with, if any."""
        return max(self.pdu_streams) if self.pdu_streams else None


@dataclass(frozen=True, slots=True)
class SaveRetryState:
    """Persist the backoff state so a restart continues it (0, 0 once healthy again)."""

    failure_count: int
    retry_at_ms: int


@dataclass(frozen=True, slots=True)
class GiveUp:
    """A transaction was dropped: the destination refused it (for logs and metrics)."""

    txn_id: str
    reason: str
    pdu_count: int
    edu_count: int


@dataclass(frozen=True, slots=True)
class LoadPdus:
    """Read up to ``limit`` stored PDUs from ``from_stream`` on, oldest first, and pass them
    to :meth:`DestinationQueue.pdus_loaded` (or call ``pdus_load_failed``)."""

    from_stream: int
    limit: int


Action: TypeAlias = SendTransaction | ScheduleWakeup | MarkDelivered | SaveRetryState | GiveUp | LoadPdus


# -- policy ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """Exponential backoff: ``min_ms * multiplier ** (failures - 1) * jitter``, capped."""

    min_ms: int = 5_000
    max_ms: int = 24 * 60 * 60 * 1000
    multiplier: float = 2.0

    def delay_ms(self, failure_count: int, jitter: float = 1.0) -> int:
        """The wait after the ``failure_count``-th failure in a row (1 for the first)."""
        exponent = min(max(failure_count - 1, 0), 64)  # 2**64 * 5 s is past any cap already
        delay = min(self.min_ms * self.multiplier**exponent, float(self.max_ms))
        return min(int(delay * jitter), self.max_ms)


# -- the state machine -------------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    """A pending EDU, with the storage IDs it stands for (several once coalesced)."""

    json: dict[str, Any]
    ids: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class _Transaction:
    txn_id: str
    pdus: tuple[Pdu, ...]
    edus: tuple[Mapping[str, Any], ...]
    done_edu_ids: tuple[int, ...]

    def action(self) -> SendTransaction:
        return SendTransaction(self.txn_id, tuple(p.pdu for p in self.pdus), self.edus)

    def mark_delivered(self) -> MarkDelivered:
        return MarkDelivered(tuple(p.stream for p in self.pdus), self.done_edu_ids)


_ReceiptKey: TypeAlias = tuple[str, str, str, str | None]  # room, receipt type, user, thread


@dataclass(slots=True)
class DestinationQueue:
    """The outbound queue to one destination.  See the module docstring for the rules.

    ``txn_id_base`` makes transaction IDs unique across restarts (the adapter passes the
    time it created the queue); the queue numbers its transactions after it.
    """

    destination: str
    txn_id_base: int = 0
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    max_pdus: int = MAX_PDUS_PER_TRANSACTION
    max_edus: int = MAX_EDUS_PER_TRANSACTION
    max_durable_edus: int = 10_000
    max_pdus_in_memory: int = 1_000
    failure_count: int = 0
    retry_at_ms: int = 0

    _pdus: list[Pdu] = field(default_factory=list)  # sorted by stream
    _known_streams: set[int] = field(default_factory=set)  # pending or in flight
    _live: OrderedDict[tuple[str, object], dict[str, Any]] = field(default_factory=OrderedDict)
    _receipts: OrderedDict[_ReceiptKey, _Entry] = field(default_factory=OrderedDict)
    _keyed: OrderedDict[tuple[str, str], _Entry] = field(default_factory=OrderedDict)
    _fifo: deque[_Entry] = field(default_factory=deque)
    _refs: dict[int, int] = field(default_factory=dict)  # EDU storage ID -> pending entries
    _in_flight: _Transaction | None = None
    _awaiting_result: bool = False
    _txn_counter: int = 0
    _live_counter: int = 0
    _abandoned: list[int] = field(default_factory=list)
    # PDUs from this stream position on are in storage only (None: all are in memory).
    _stored_from: int | None = None
    _loading: bool = False
    _wakeup_requested: bool = False  # a ScheduleWakeup is out and tick not called since

    # -- observation ---------------------------------------------------------------------------

    @property
    def is_backing_off(self) -> bool:
        return self.failure_count > 0

    @property
    def in_flight_txn_id(self) -> str | None:
        return self._in_flight.txn_id if self._in_flight is not None and self._awaiting_result else None

    @property
    def pending_pdu_count(self) -> int:
        return len(self._pdus)

    @property
    def pending_edu_count(self) -> int:
        return len(self._live) + len(self._receipts) + len(self._keyed) + len(self._fifo)

    @property
    def durable_edu_count(self) -> int:
        return len(self._receipts) + len(self._keyed) + len(self._fifo)

    # -- inputs --------------------------------------------------------------------------------

    @classmethod
    def restore(
        cls,
        destination: str,
        *,
        pdus: Iterable[Pdu],
        edus: Iterable[Edu],
        failure_count: int,
        retry_at_ms: int,
        txn_id_base: int,
        backoff: BackoffPolicy | None = None,
        max_durable_edus: int = 10_000,
        max_pdus_in_memory: int = 1_000,
        more_pdus_from: int | None = None,
    ) -> DestinationQueue:
        """Rebuild a queue from storage; call :meth:`tick` next to get it going.

        ``more_pdus_from``: storage holds more PDUs than ``pdus``, from that position on.
        """
        queue = cls(
            destination,
            txn_id_base=txn_id_base,
            backoff=backoff or BackoffPolicy(),
            max_durable_edus=max_durable_edus,
            max_pdus_in_memory=max_pdus_in_memory,
            failure_count=failure_count,
            retry_at_ms=retry_at_ms,
        )
        queue._stored_from = more_pdus_from
        queue._enqueue_pdus(pdus)
        for edu in edus:
            if not edu.is_live_only:
                queue._add_durable(edu)
        for action in queue._enforce_edu_bound():
            if isinstance(action, MarkDelivered):
                queue._abandoned.extend(action.edu_ids)  # reported by the first tick
        return queue

    def add_pdus(self, pdus: Iterable[Pdu]) -> list[Action]:
        """Queue PDUs (duplicates by stream position are ignored); send if we may."""
        self._enqueue_pdus(pdus)
        return self._send_if_healthy()

    def add_edus(self, edus: Iterable[Edu]) -> list[Action]:
        """Queue EDUs; live-only ones are dropped while the destination is backed off."""
        actions: list[Action] = []
        for edu in edus:
            if edu.is_live_only:
                if not self.is_backing_off:
                    self._add_live(edu)
                continue
            self._add_durable(edu)
            actions.extend(self._enforce_edu_bound())
        return actions + self._send_if_healthy()

    def pdus_loaded(self, pdus: Iterable[Pdu], *, exhausted: bool) -> list[Action]:
        """The answer to :class:`LoadPdus`; ``exhausted`` if storage had no more than these."""
        if not self._loading:
            return []
        self._loading = False
        loaded = sorted(pdus, key=lambda p: p.stream)
        for pdu in loaded:
            if pdu.stream not in self._known_streams:
                self._known_streams.add(pdu.stream)
                bisect.insort(self._pdus, pdu, key=lambda p: p.stream)
        if exhausted:
            self._stored_from = None
        elif loaded:
            # What came in during the load past the last loaded PDU is in storage too.
            self._stored_from = loaded[-1].stream + 1
            while self._pdus and self._pdus[-1].stream >= self._stored_from:
                self._known_streams.discard(self._pdus.pop().stream)
        self._evict_overflow()
        return self._send_next()  # a load is only asked for when a transaction may go

    def pdus_load_failed(self, now_ms: int, retry_in_ms: int = 5_000) -> list[Action]:
        """:class:`LoadPdus` failed (storage trouble): try again a little later."""
        if not self._loading:
            return []
        self._loading = False
        return [self._wakeup(now_ms + retry_in_ms)]

    def transaction_sent(self, txn_id: str) -> list[Action]:
        """The destination accepted ``txn_id`` (a 200 answer)."""
        txn = self._settle(txn_id)
        if txn is None:
            return []
        actions: list[Action] = [txn.mark_delivered()]
        actions.extend(self._reset_backoff())
        return actions + self._send_next()

    def transaction_failed(
        self,
        txn_id: str,
        error_kind: ErrorKind,
        *,
        now_ms: int,
        retry_after_ms: int | None = None,
        jitter: float = 1.0,
    ) -> list[Action]:
        """``txn_id`` failed: back off and retry it, or drop it if the destination refused it.

        ``retry_after_ms`` (from a 429 answer) replaces the computed delay, still capped.
        """
        if error_kind == "rejected_4xx":
            txn = self._settle(txn_id)
            if txn is None:
                return []
            actions: list[Action] = [
                txn.mark_delivered(),
                GiveUp(txn.txn_id, "refused by destination", len(txn.pdus), len(txn.edus)),
            ]
            actions.extend(self._reset_backoff())  # it answered: it is up
            return actions + self._send_next()
        if self._in_flight is None or not self._awaiting_result or self._in_flight.txn_id != txn_id:
            return []
        self._awaiting_result = False  # the transaction stays, to be retried as it is
        self.failure_count += 1
        if retry_after_ms is not None:
            delay = min(max(retry_after_ms, 0), self.backoff.max_ms)
        else:
            delay = self.backoff.delay_ms(self.failure_count, jitter)
        self.retry_at_ms = now_ms + delay
        self._live.clear()
        return [SaveRetryState(self.failure_count, self.retry_at_ms), self._wakeup(self.retry_at_ms)]

    def tick(self, now_ms: int) -> list[Action]:
        """Time has passed: retry if the backoff is over (or ask to be woken when it is)."""
        if self._abandoned:
            abandoned = MarkDelivered(edu_ids=tuple(sorted(self._abandoned)))
            self._abandoned.clear()
            return [abandoned, *self.tick(now_ms)]
        self._wakeup_requested = False
        if self._awaiting_result or (self._in_flight is None and not self._has_pending()):
            return []
        if self.is_backing_off and now_ms < self.retry_at_ms:
            return [self._wakeup(self.retry_at_ms)]
        return self._send_next()

    time_passed = tick

    def wake(self, now_ms: int) -> list[Action]:
        """The destination showed signs of life (it sent us a request): retry now instead
        of at the end of the backoff, which after a long outage can be hours away."""
        if not self.is_backing_off or self.retry_at_ms <= now_ms:
            return []
        self.retry_at_ms = now_ms
        return self.tick(now_ms)

    # -- internals -----------------------------------------------------------------------------

    def _enqueue_pdus(self, pdus: Iterable[Pdu]) -> None:
        """Keep the oldest PDUs in memory, at most ``max_pdus_in_memory`` of them.

        Every PDU given to the queue is already stored, so one past the memory bound is
        simply left to a later :class:`LoadPdus`.
        """
        for pdu in pdus:
            if pdu.stream in self._known_streams:
                continue
            if self._stored_from is not None and pdu.stream >= self._stored_from and not self._loading:
                continue
            self._known_streams.add(pdu.stream)
            bisect.insort(self._pdus, pdu, key=lambda p: p.stream)
        self._evict_overflow()

    def _evict_overflow(self) -> None:
        if self._loading:
            return  # pdus_loaded sorts it out
        # At least a transaction's worth, or loading and evicting would chase each other.
        while len(self._pdus) > max(self.max_pdus_in_memory, self.max_pdus):
            newest = self._pdus.pop()
            self._known_streams.discard(newest.stream)
            self._stored_from = newest.stream

    def _has_pending(self) -> bool:
        return bool(self._pdus) or self._stored_from is not None or self.pending_edu_count > 0

    def _send_if_healthy(self) -> list[Action]:
        if self.is_backing_off:
            if self._wakeup_requested or self._awaiting_result or self._loading:
                return []  # the wakeup (or answer) to come will send
            return [self._wakeup(self.retry_at_ms)]  # e.g. restored with nothing pending
        return self._send_next()

    def _wakeup(self, at_ms: int) -> ScheduleWakeup:
        self._wakeup_requested = True
        return ScheduleWakeup(at_ms)

    def _send_next(self) -> list[Action]:
        """Send the failed transaction again, or the next batch; nothing if one is in flight."""
        if self._awaiting_result or self._loading:
            return []
        if self._in_flight is None:
            if self._stored_from is not None and len(self._pdus) < self.max_pdus:
                self._loading = True
                return [LoadPdus(self._stored_from, max(self.max_pdus_in_memory, self.max_pdus))]
            self._in_flight = self._build_transaction()
            if self._in_flight is None:
                return []
        self._awaiting_result = True
        return [self._in_flight.action()]

    def _settle(self, txn_id: str) -> _Transaction | None:
        txn = self._in_flight
        if txn is None or not self._awaiting_result or txn.txn_id != txn_id:
            return None  # a stale or unknown answer
        self._in_flight = None
        self._awaiting_result = False
        self._known_streams.difference_update(p.stream for p in txn.pdus)
        return txn

    def _reset_backoff(self) -> list[Action]:
        if not self.is_backing_off and self.retry_at_ms == 0:
            return []
        self.failure_count = 0
        self.retry_at_ms = 0
        return [SaveRetryState(0, 0)]

    def _build_transaction(self) -> _Transaction | None:
        pdus = tuple(self._pdus[: self.max_pdus])
        del self._pdus[: self.max_pdus]
        edus: list[Mapping[str, Any]] = []
        done: list[int] = []
        room = self.max_edus
        while self._live and room > 0:
            edus.append(self._live.popitem(last=False)[1])
            room -= 1
        receipts = self._take_receipts(room, done)
        edus.extend(receipts)
        room -= len(receipts)
        for entries in (self._keyed, self._fifo):
            while entries and room > 0:
                entry = entries.popitem(last=False)[1] if isinstance(entries, OrderedDict) else entries.popleft()
                edus.append(entry.json)
                done.extend(self._release(entry.ids))
                room -= 1
        if not pdus and not edus:
            return None
        self._txn_counter += 1
        return _Transaction(f"{self.txn_id_base}_{self._txn_counter}", pdus, tuple(edus), tuple(sorted(done)))

    def _take_receipts(self, limit: int, done: list[int]) -> list[dict[str, Any]]:
        """Up to ``limit`` m.receipt EDUs, one room each, oldest receipts first.

        A (room, type, user) can carry one receipt per EDU, so receipts for several
        threads of the same user go in separate EDUs.
        """
        built: list[dict[str, Any]] = []
        by_room: dict[str, list[dict[str, Any]]] = {}
        for key in list(self._receipts):
            room_id, receipt_type, user_id, _thread = key
            target = None
            for content in by_room.get(room_id, []):
                if user_id not in content[room_id].get(receipt_type, {}):
                    target = content
                    break
            if target is None:
                if len(built) >= limit:
                    continue
                target = {room_id: {receipt_type: {}}}
                by_room.setdefault(room_id, []).append(target)
                built.append({"edu_type": RECEIPT_EDU_TYPE, "content": target})
            entry = self._receipts.pop(key)
            target[room_id].setdefault(receipt_type, {})[user_id] = entry.json
            done.extend(self._release(entry.ids))
        return built

    def _add_live(self, edu: Edu) -> None:
        self._live_counter += 1
        key: tuple[str, object] = (edu.edu_type, edu.key if edu.key is not None else self._live_counter)
        self._live.pop(key, None)
        self._live[key] = {"edu_type": edu.edu_type, "content": dict(edu.content)}
        while len(self._live) > self.max_edus:  # stale by now anyway
            self._live.popitem(last=False)

    def _add_durable(self, edu: Edu) -> None:
        ids = frozenset() if edu.edu_id is None else frozenset({edu.edu_id})
        if edu.edu_type == RECEIPT_EDU_TYPE:
            for key, receipt in _split_receipts(edu.content):
                self._coalesce(self._receipts, key, _Entry(receipt, ids))
        elif edu.key is not None:
            json = {"edu_type": edu.edu_type, "content": dict(edu.content)}
            self._coalesce(self._keyed, (edu.edu_type, edu.key), _Entry(json, ids))
        else:
            self._retain(ids)
            self._fifo.append(_Entry({"edu_type": edu.edu_type, "content": dict(edu.content)}, ids))

    def _coalesce(self, entries: OrderedDict[Any, _Entry], key: Any, entry: _Entry) -> None:
        """The newest wins; it takes over the older entry's IDs (done when it is sent)."""
        old = entries.pop(key, None)
        if old is not None:
            self._retain(entry.ids - old.ids)
            entry.ids = entry.ids | old.ids
        else:
            self._retain(entry.ids)
        entries[key] = entry

    def _retain(self, ids: Iterable[int]) -> None:
        for i in ids:
            self._refs[i] = self._refs.get(i, 0) + 1

    def _release(self, ids: Iterable[int]) -> list[int]:
        done = []
        for i in ids:
            left = self._refs.get(i, 1) - 1
            if left <= 0:
                self._refs.pop(i, None)
                done.append(i)
            else:
                self._refs[i] = left
        return done

    def _enforce_edu_bound(self) -> list[Action]:
        """Drop the oldest durable EDUs beyond ``max_durable_edus``."""
        dropped: list[int] = []
        while self.durable_edu_count > self.max_durable_edus:
            if self._fifo:
                entry = self._fifo.popleft()
            elif self._receipts:
                entry = self._receipts.popitem(last=False)[1]
            else:
                entry = self._keyed.popitem(last=False)[1]
            dropped.extend(self._release(entry.ids))
        return [MarkDelivered(edu_ids=tuple(sorted(dropped)))] if dropped else []


def _split_receipts(content: Mapping[str, Any]) -> list[tuple[_ReceiptKey, dict[str, Any]]]:
    """An m.receipt EDU's content as one item per (room, type, user, thread)."""
    items: list[tuple[_ReceiptKey, dict[str, Any]]] = []
    for room_id, by_type in content.items():
        if not isinstance(by_type, Mapping):
            continue
        for receipt_type, by_user in by_type.items():
            if not isinstance(by_user, Mapping):
                continue
            for user_id, receipt in by_user.items():
                if not isinstance(receipt, Mapping):
                    continue
                data = receipt.get("data")
                thread = data.get("thread_id") if isinstance(data, Mapping) else None
                key = (str(room_id), str(receipt_type), str(user_id), thread if isinstance(thread, str) else None)
                items.append((key, dict(receipt)))
    return items
