"""Pushing each service's queue as transactions: in order, batched, retried with backoff.

One :class:`TransactionSender` per service.  A transaction's ID and content are fixed in
the database before it is first sent (``begin_transaction``), so a retry, even after a
restart of the homeserver, sends the same ID with the same events and the service can
drop a duplicate.  Failures back off exponentially (``backoff_base_s * 2**n``, capped);
a successful ping from the service resets the backoff at once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall

from homeserver.appservice.client import AppServiceClient, AppServiceUnavailable
from homeserver.appservice.registration import ApplicationService
from homeserver.core.clock import Clock
from homeserver.events.model import Event
from homeserver.services.serialize import client_event
from homeserver.storage.appservice import AppServiceQueueRepository, QueueItem
from homeserver.storage.events import StoredEvent

logger = logging.getLogger(__name__)

MAX_EVENTS_PER_TRANSACTION = 100
MAX_BACKOFF_S = 300.0

# (user_id, device_id) -> {algorithm: count}
OtkCounts = Callable[[str, str], Awaitable[dict[str, int]]]
UserDevices = Callable[[str], Awaitable[list[str]]]


class EventLoader(Protocol):
    async def get_events(self, event_ids: Any) -> dict[str, StoredEvent]: ...


class TransactionSender:
    def __init__(
        self,
        *,
        service: ApplicationService,
        clock: Clock,
        queue: AppServiceQueueRepository,
        client: AppServiceClient,
        events: EventLoader,
        otk_counts: OtkCounts | None = None,
        user_devices: UserDevices | None = None,
        backoff_base_s: float = 1.0,
    ) -> None:
        self.service = service
        self._clock = clock
        self._queue = queue
        self._client = client
        self._events = events
        self._otk_counts = otk_counts
        self._user_devices = user_devices
        self.backoff_base_s = backoff_base_s
        self._running: defer.Deferred[None] | None = None
        self._dirty = False
        self._timer: IDelayedCall | None = None
        self._stopped = False

    def kick(self) -> None:
        """Something was queued (or the retry time came): send what is due."""
        if self._stopped or self.service.url is None:
            return
        self._dirty = True
        if self._running is None:
            self._running = defer.ensureDeferred(self._run())
            self._running.addBoth(self._finished)

    def _finished(self, result: Any) -> None:
        self._running = None
        if isinstance(result, Exception) or hasattr(result, "getTraceback"):
            logger.error("application service %s: sender failed: %s", self.service.id, result)
            self._schedule(self.backoff_base_s * 8)

    def stop(self) -> defer.Deferred[None]:
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        return self._running if self._running is not None else defer.succeed(None)

    def _schedule(self, delay_s: float) -> None:
        if self._stopped:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self._clock.call_later(max(delay_s, 0.0), self.kick)

    async def _run(self) -> None:
        sid = self.service.id
        while self._dirty and not self._stopped:
            self._dirty = False
            state = await self._queue.state(sid)
            now = self._clock.time_msec()
            if state.retry_at_ms > now:
                self._schedule((state.retry_at_ms - now) / 1000.0)
                return
            if state.inflight_txn_id is not None and state.inflight_upto_seq is not None:
                txn_id, upto = state.inflight_txn_id, state.inflight_upto_seq
                items = await self._queue.items(sid, upto_seq=upto, limit=1_000_000)
            else:
                items = await self._queue.items(sid, upto_seq=None, limit=MAX_EVENTS_PER_TRANSACTION)
                if not items:
                    continue  # nothing to send (loop ends unless kicked meanwhile)
                upto = items[-1].seq
                txn_id = await self._queue.begin_transaction(sid, upto)
            body = await self.build_body(items)
            try:
                await self._client.push_transaction(self.service, str(txn_id), body)
            except AppServiceUnavailable as e:
                failures = state.failure_count + 1
                delay = min(self.backoff_base_s * 2 ** (failures - 1), MAX_BACKOFF_S)
                await self._queue.record_failure(sid, self._clock.time_msec() + int(delay * 1000), str(e))
                depth = await self._queue.depth(sid)
                logger.warning(
                    "application service %s: transaction %s failed (%s); %d in a row, retry in %.1fs, queue depth %d",
                    sid,
                    txn_id,
                    e,
                    failures,
                    delay,
                    depth,
                )
                self._schedule(delay)
                return
            await self._queue.complete_transaction(sid, upto)
            if state.failure_count:
                logger.info("application service %s is reachable again (transaction %s)", sid, txn_id)
            self._dirty = True  # there may be more

    async def reset_backoff(self) -> None:
        await self._queue.reset_backoff(self.service.id)
        self.kick()

    # -- the transaction body ------------------------------------------------------------

    async def build_body(self, items: list[QueueItem]) -> dict[str, Any]:
        event_ids = [i.event_id for i in items if i.kind == "pdu" and i.event_id]
        stored = await self._events.get_events(event_ids) if event_ids else {}
        extra_ids = set()
        for s in stored.values():
            if s.redacted_by:
                extra_ids.add(s.redacted_by)
            if s.replaces_state:
                extra_ids.add(s.replaces_state)
        extra = await self._events.get_events(list(extra_ids)) if extra_ids else {}
        now = self._clock.time_msec()
        events: list[dict[str, Any]] = []
        ephemeral: list[Any] = []
        to_device: list[Any] = []
        changed: set[str] = set()
        left: set[str] = set()
        for item in items:
            if item.kind == "pdu":
                found = stored.get(item.event_id or "")
                if found is not None:
                    events.append(self._serialize(found, extra, now))
            elif item.kind == "ephemeral":
                ephemeral.append(item.content)
            elif item.kind == "to_device":
                to_device.append(item.content)
            elif item.kind == "device_lists" and isinstance(item.content, dict):
                changed.update(item.content.get("changed", ()))
                left.update(item.content.get("left", ()))
        body: dict[str, Any] = {"events": events}
        if ephemeral:
            body["ephemeral"] = ephemeral
            body["de.sorunome.msc2409.ephemeral"] = ephemeral
        if self.service.msc3202:
            if to_device:
                body["de.sorunome.msc2409.to_device"] = to_device
            if changed or left:
                body["org.matrix.msc3202.device_lists"] = {"changed": sorted(changed), "left": sorted(left - changed)}
            recipients = {m.get("to_user_id") for m in to_device if isinstance(m, dict)}
            counts = await self._device_otk_counts({u for u in recipients if isinstance(u, str)})
            if counts:
                # Both spellings, as Synapse sends them (mautrix reads the second).
                body["org.matrix.msc3202.device_one_time_key_counts"] = counts
                body["org.matrix.msc3202.device_one_time_keys_count"] = counts
        return body

    def _serialize(self, s: StoredEvent, extra: dict[str, StoredEvent], now: int) -> dict[str, Any]:
        redaction: Event | None = None
        if s.redacted_by and s.redacted_by in extra:
            redaction = extra[s.redacted_by].event
        prev = extra.get(s.replaces_state) if s.replaces_state else None
        return client_event(
            s.event,
            now_ms=now,
            redaction=redaction,
            prev_content=prev.event.content if prev is not None else None,
            prev_sender=prev.event.sender if prev is not None else None,
        )

    async def _device_otk_counts(self, recipients: set[str]) -> dict[str, dict[str, dict[str, int]]]:
        """One-time-key counts of the bot's devices and of the devices that to-device
        messages in this transaction went to, so an encrypting bridge tops them up."""
        if self._otk_counts is None or self._user_devices is None:
            return {}
        out: dict[str, dict[str, dict[str, int]]] = {}
        users = [self.service.sender, *sorted(u for u in recipients if self.service.is_interested_in_user(u))]
        for user_id in dict.fromkeys(users):
            for device_id in await self._user_devices(user_id):
                out.setdefault(user_id, {})[device_id] = await self._otk_counts(user_id, device_id)
        return out
