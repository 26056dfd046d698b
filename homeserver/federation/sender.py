"""Sending PDUs and EDUs to other servers: the Twisted adapter over :mod:`.queue`.

:class:`FederationSender` keeps one :class:`~homeserver.federation.queue.DestinationQueue`
per destination, feeds it (new PDUs and EDUs, transaction outcomes, wakeups) and carries
out the actions it answers with: PUT /send through a :class:`TransactionTransport`,
timers through the :class:`~homeserver.core.clock.Clock`, progress through a
:class:`QueueStore` (:class:`~homeserver.storage.federation_queue.FederationQueueRepository`).
Every decision is the state machine's; this module only does the I/O.

Delivery is at least once: what is queued is stored before it is handed to the queue and
forgotten only after the destination accepted it, so a restart (``await start()``) resends
whatever was not acknowledged; receivers deduplicate PDUs by event ID.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping
from typing import Any, Protocol
from urllib.parse import quote

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from homeserver.core.clock import Clock
from homeserver.federation.queue import (
    Action,
    BackoffPolicy,
    DestinationQueue,
    Edu,
    ErrorKind,
    GiveUp,
    LoadPdus,
    MarkDelivered,
    Pdu,
    SaveRetryState,
    ScheduleWakeup,
    SendTransaction,
)
from homeserver.federation.transport import (
    FederationDeniedError,
    HttpResponseError,
    InvalidResponseError,
    RequestSendFailed,
)

logger = logging.getLogger(__name__)


# -- what the adapter talks to -------------------------------------------------------------------


class TransactionError(Exception):
    """A transaction was not accepted; the subclass says what the queue should do."""


class DestinationUnreachable(TransactionError):
    """No answer (DNS, connection, TLS, timeout): back off and retry."""


class TransactionRejected(TransactionError):
    """A 4xx answer other than 429: the destination refuses this transaction."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(f"HTTP {code} {message}".strip())
        self.code = code


class DestinationServerError(TransactionError):
    """A 5xx or 429 answer: back off (for ``retry_after_ms`` when the server said so)."""

    def __init__(self, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class TransactionTransport(Protocol):
    async def put_transaction(self, destination: str, txn_id: str, body: dict[str, Any]) -> None:
        """PUT /_matrix/federation/v1/send/{txn_id}; raise a :class:`TransactionError`."""


class QueueStore(Protocol):
    async def enqueue_pdu(self, destinations: Collection[str], stream: int, event_id: str) -> None: ...

    async def enqueue_edu(
        self, destination: str, edu_type: str, content: Mapping[str, Any], key: str | None = None
    ) -> int: ...

    async def mark_delivered(
        self, destination: str, pdu_streams: Collection[int], edu_ids: Collection[int]
    ) -> None: ...

    async def save_retry_state(self, destination: str, failure_count: int, retry_at_ms: int) -> None: ...

    async def destinations_to_resume(self) -> list[str]: ...

    async def get_pdus(self, destination: str, from_stream: int, limit: int) -> tuple[list[Pdu], bool]: ...

    async def load(
        self,
        destination: str,
        *,
        txn_id_base: int,
        backoff: BackoffPolicy | None = None,
        max_pdus_in_memory: int = 1_000,
    ) -> DestinationQueue: ...


class JsonPutter(Protocol):
    async def put_json(self, destination: str, path: str, content: Any) -> Any: ...


class FederationClientTransport:
    """:class:`TransactionTransport` over :class:`~homeserver.federation.transport.FederationClient`."""

    def __init__(self, client: JsonPutter) -> None:
        self._client = client

    async def put_transaction(self, destination: str, txn_id: str, body: dict[str, Any]) -> None:
        path = f"/_matrix/federation/v1/send/{quote(txn_id, safe='')}"
        try:
            response = await self._client.put_json(destination, path, body)
        except FederationDeniedError as e:
            raise TransactionRejected(403, str(e)) from e
        except RequestSendFailed as e:
            raise DestinationUnreachable(str(e)) from e
        except InvalidResponseError as e:
            # A 2xx whose body we could not read: the transaction was accepted.
            logger.info("transaction %s to %s: unreadable answer (%s)", txn_id, destination, e)
            return
        except HttpResponseError as e:
            if e.code == 429:
                raise DestinationServerError(str(e), _retry_after_ms(e.body)) from e
            if 400 <= e.code < 500:
                raise TransactionRejected(e.code, e.errcode or "") from e
            raise DestinationServerError(str(e)) from e
        _log_pdu_errors(destination, txn_id, response)


def _retry_after_ms(body: bytes) -> int | None:
    try:
        value = json.loads(body).get("retry_after_ms")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _log_pdu_errors(destination: str, txn_id: str, response: Any) -> None:
    pdus = response.get("pdus") if isinstance(response, dict) else None
    if not isinstance(pdus, dict):
        return
    for event_id, result in pdus.items():
        if isinstance(result, dict) and "error" in result:
            logger.info("%s rejected %s in transaction %s: %s", destination, event_id, txn_id, result["error"])


def pdu_for_transaction(pdu: Mapping[str, Any], now_ms: int) -> dict[str, Any]:
    """The stored event JSON as a PDU in a transaction sent at ``now_ms``.

    ``unsigned`` is covered by neither hashes nor signatures, and the Server-Server API
    defines only ``age`` in it for PDUs: whatever else we keep there locally (a client's
    transaction ID, stripped state for invitees, ...) stays here.  ``age`` is computed at
    sending time, so a PDU that waited out an outage says how old it really is.
    """
    out = dict(pdu)
    origin_ts = pdu.get("origin_server_ts")
    if isinstance(origin_ts, int) and not isinstance(origin_ts, bool):
        out["unsigned"] = {"age": max(0, now_ms - origin_ts)}
    else:
        out.pop("unsigned", None)
    return out


# -- the sender ------------------------------------------------------------------------------


class FederationSender:
    """Delivers PDUs and EDUs to destinations, one :class:`DestinationQueue` each.

    Call :meth:`start` once before use: it resumes the queues storage remembers.
    ``jitter`` returns the factor applied to each backoff delay; ``max_pdus_in_memory``
    bounds each queue's memory during a long outage (the rest is read back from storage).
    """

    def __init__(
        self,
        clock: Clock,
        client: TransactionTransport,
        repo: QueueStore,
        *,
        server_name: str,
        backoff: BackoffPolicy | None = None,
        jitter: Callable[[], float] | None = None,
        max_pdus_in_memory: int = 1_000,
    ) -> None:
        self._clock = clock
        self._client = client
        self._repo = repo
        self._server_name = server_name
        self._backoff = backoff or BackoffPolicy()
        self._max_pdus_in_memory = max_pdus_in_memory
        self._jitter = jitter or (lambda: random.uniform(0.8, 1.4))
        self._queues: dict[str, DestinationQueue] = {}
        self._wakeups: dict[str, IDelayedCall] = {}
        self._tasks: set[defer.Deferred[None]] = set()
        self._woken: dict[str, int] = {}  # destination -> when it was last woken (ms)
        self._stopped = False

    async def start(self) -> None:
        """Resume every destination with something pending or a backoff running."""
        now = self._clock.time_msec()
        for destination in await self._repo.destinations_to_resume():
            if destination in self._queues or destination == self._server_name:
                continue
            queue = await self._repo.load(
                destination, txn_id_base=now, backoff=self._backoff, max_pdus_in_memory=self._max_pdus_in_memory
            )
            self._queues[destination] = queue
            await self._execute(destination, queue.tick(now))

    def stop(self) -> None:
        """Cancel the timers and set no more (transactions in flight finish on their own)."""
        self._stopped = True
        for call in self._wakeups.values():
            if call.active():
                call.cancel()
        self._wakeups.clear()

    async def send_pdu(
        self, destinations: Iterable[str], pdu_json: Mapping[str, Any], stream: int, *, event_id: str | None = None
    ) -> None:
        """Queue a PDU (at ``stream`` in our event stream) for each destination.

        ``event_id`` is needed for room versions whose PDUs do not carry one; the PDU
        must be ``events.json`` of that event (it is read back from there after a restart).
        """
        if event_id is None:
            found = pdu_json.get("event_id")
            if not isinstance(found, str):
                raise ValueError("send_pdu needs the event ID of a PDU that carries none")
            event_id = found
        targets = sorted({d for d in destinations if d != self._server_name})
        if not targets:
            return
        await self._repo.enqueue_pdu(targets, stream, event_id)
        pdu = Pdu(stream, pdu_json, event_id)
        for destination in targets:
            await self._execute(destination, self._queue(destination).add_pdus([pdu]))

    async def send_edu(
        self, destination: str, edu_type: str, content: Mapping[str, Any], key: str | None = None
    ) -> None:
        """Queue an EDU; all but live-only ones (typing) are stored until delivered."""
        if destination == self._server_name:
            return
        edu = Edu(edu_type, content, key)
        if not edu.is_live_only:
            edu_id = await self._repo.enqueue_edu(destination, edu_type, content, key)
            edu = Edu(edu_type, content, key, edu_id)
        await self._execute(destination, self._queue(destination).add_edus([edu]))

    def wake(self, destination: str) -> None:
        """``destination`` just sent us a request: if it is backed off, retry it now (at
        most once per minimum backoff interval, in case it can reach us but we not it)."""
        queue = self._queues.get(destination)
        if queue is None or not queue.is_backing_off or self._stopped:
            return
        now = self._clock.time_msec()
        last = self._woken.get(destination)
        if last is not None and now - last < self._backoff.min_ms:
            return
        self._woken[destination] = now
        self._spawn(self._execute(destination, queue.wake(now)))

    def queue_for(self, destination: str) -> DestinationQueue | None:
        """The queue of ``destination``, if it has one (for status and tests)."""
        return self._queues.get(destination)

    async def wait_idle(self) -> None:
        """Wait until no transaction or bookkeeping is running (timers aside)."""
        while self._tasks:
            await defer.DeferredList(list(self._tasks))

    # -- carrying out actions -----------------------------------------------------------------

    def _queue(self, destination: str) -> DestinationQueue:
        queue = self._queues.get(destination)
        if queue is None:
            queue = DestinationQueue(
                destination,
                txn_id_base=self._clock.time_msec(),
                backoff=self._backoff,
                max_pdus_in_memory=self._max_pdus_in_memory,
            )
            self._queues[destination] = queue
        return queue

    async def _execute(self, destination: str, actions: list[Action]) -> None:
        for action in actions:
            try:
                if isinstance(action, SendTransaction):
                    self._spawn(self._send(destination, action))
                elif isinstance(action, ScheduleWakeup):
                    self._schedule(destination, action.at_ms)
                elif isinstance(action, MarkDelivered):
                    await self._repo.mark_delivered(destination, action.pdu_streams, action.edu_ids)
                elif isinstance(action, SaveRetryState):
                    await self._repo.save_retry_state(destination, action.failure_count, action.retry_at_ms)
                elif isinstance(action, LoadPdus):
                    await self._load_pdus(destination, action)
                elif isinstance(action, GiveUp):
                    logger.warning(
                        "dropped transaction %s to %s (%d PDUs, %d EDUs): %s",
                        action.txn_id,
                        destination,
                        action.pdu_count,
                        action.edu_count,
                        action.reason,
                    )
            except Exception:
                # Storage trouble: what was not forgotten is resent after a restart.
                logger.exception("federation queue of %s: %r failed", destination, action)

    async def _load_pdus(self, destination: str, action: LoadPdus) -> None:
        queue = self._queues[destination]
        try:
            pdus, exhausted = await self._repo.get_pdus(destination, action.from_stream, action.limit)
        except Exception:
            logger.exception("federation queue of %s: cannot read queued PDUs", destination)
            actions = queue.pdus_load_failed(self._clock.time_msec())
        else:
            actions = queue.pdus_loaded(pdus, exhausted=exhausted)
        await self._execute(destination, actions)

    async def _send(self, destination: str, action: SendTransaction) -> None:
        queue = self._queues[destination]
        now = self._clock.time_msec()
        body = {
            "origin": self._server_name,
            "origin_server_ts": now,
            "pdus": [pdu_for_transaction(pdu, now) for pdu in action.pdus],
            "edus": list(action.edus),
        }
        kind: ErrorKind
        retry_after_ms = None
        try:
            await self._client.put_transaction(destination, action.txn_id, body)
        except DestinationUnreachable as e:
            kind = "unreachable"
            logger.info("transaction %s to %s: unreachable (%s)", action.txn_id, destination, e)
        except TransactionRejected as e:
            kind = "rejected_4xx"
            logger.info("transaction %s to %s: refused (%s)", action.txn_id, destination, e)
        except DestinationServerError as e:
            kind, retry_after_ms = "server_error", e.retry_after_ms
            logger.info("transaction %s to %s: server error (%s)", action.txn_id, destination, e)
        except Exception:
            kind = "server_error"
            logger.exception("transaction %s to %s failed", action.txn_id, destination)
        else:
            await self._execute(destination, queue.transaction_sent(action.txn_id))
            return
        actions = queue.transaction_failed(
            action.txn_id, kind, now_ms=self._clock.time_msec(), retry_after_ms=retry_after_ms, jitter=self._jitter()
        )
        await self._execute(destination, actions)

    def _schedule(self, destination: str, at_ms: int) -> None:
        if self._stopped:
            return
        previous = self._wakeups.pop(destination, None)
        if previous is not None and previous.active():
            previous.cancel()
        delay = max(0, at_ms - self._clock.time_msec()) / 1000
        self._wakeups[destination] = self._clock.call_later(delay, self._wake, destination)

    def _wake(self, destination: str) -> None:
        self._wakeups.pop(destination, None)
        queue = self._queues.get(destination)
        if queue is not None:
            self._spawn(self._execute(destination, queue.tick(self._clock.time_msec())))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        d = defer.Deferred.fromCoroutine(coroutine)
        if d.called:
            d.addErrback(lambda f: logger.error("federation sender task failed: %s", f.getTraceback()))
            return
        self._tasks.add(d)

        def done(result: Any) -> None:
            self._tasks.discard(d)
            if isinstance(result, Failure):
                logger.error("federation sender task failed: %s", result.getTraceback())

        d.addBoth(done)
