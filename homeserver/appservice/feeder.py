"""Sorting what happens on the server into the services' queues.

:class:`EventFeeder` reads the event stream from the position it last reached (kept in
the database, moved in the same transaction that queues the events), so events persisted
while it was not running (a crash, a restart) are queued when it next runs, in stream order.

:class:`EphemeralFeeder` listens to the notifier: typing, receipts and presence for
services with ``receive_ephemeral``; to-device messages and device-list changes for
services with ``org.matrix.msc3202`` (encrypting bridges).  Once queued they are as durable
as events (same table, same transactions, retried until acknowledged, kept across restarts).
What is not replayed: typing, receipts, presence and device-list changes that happened while
the host was not running (it starts from the streams' current positions).  To-device
messages are never lost: they wait in the device inboxes, which are read again at start-up.
Synapse keeps less: its transactions store event IDs only, so ephemeral data and to-device
messages of a transaction that fails, or that is still queued in memory when it stops,
are dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from functools import partial
from typing import Any, Protocol

from twisted.internet import defer

from homeserver.appservice.registration import ApplicationService
from homeserver.events.model import Event
from homeserver.services.auth import Requester
from homeserver.services.streams import StreamToken
from homeserver.storage.appservice import EVENTS_STREAM, AppServiceQueueRepository
from homeserver.storage.events import StoredEvent

logger = logging.getLogger(__name__)

BATCH = 200
# Users of one notification looked at for device-list changes (bounded work per change).
MAX_DEVICE_LIST_USERS = 50
# A to-device stream position past any real one: "everything in the inbox".
ALL_OF_THE_INBOX = 2**62


class EventSource(Protocol):
    async def get_events(self, event_ids: Any) -> dict[str, StoredEvent]: ...


class SerialRunner:
    """Runs ``fn`` again whenever kicked, never two at once, never missing a kick."""

    def __init__(self, fn: Callable[[], Awaitable[None]], name: str) -> None:
        self._fn = fn
        self._name = name
        self._dirty = False
        self._running: defer.Deferred[None] | None = None
        self.stopped = False

    def kick(self) -> None:
        if self.stopped:
            return
        self._dirty = True
        if self._running is None:
            self._running = defer.ensureDeferred(self._loop())

    async def _loop(self) -> None:
        try:
            while self._dirty and not self.stopped:
                self._dirty = False
                try:
                    await self._fn()
                except Exception:
                    logger.exception("application services: %s failed", self._name)
        finally:
            self._running = None

    def stop(self) -> defer.Deferred[None]:
        self.stopped = True
        return self._running if self._running is not None else defer.succeed(None)


class EventFeeder:
    def __init__(
        self,
        *,
        services: Sequence[ApplicationService],
        queue: AppServiceQueueRepository,
        events: EventSource,
        joined_users: Callable[[str], Awaitable[Collection[str]]],
        room_aliases: Callable[[str], Awaitable[list[str]]],
        on_queued: Callable[[set[str]], None],
    ) -> None:
        self._services = [s for s in services if s.url is not None]
        self._queue = queue
        self._events = events
        self._joined_users = joined_users
        self._room_aliases = room_aliases
        self._on_queued = on_queued
        self.runner = SerialRunner(self._catch_up, "event feeder")

    async def start(self) -> None:
        """A first run: from where the last process stopped (or from now, the first time)."""
        if await self._queue.stream_position() is None:
            await self._queue.enqueue([], stream_position=(EVENTS_STREAM, await self._queue.max_event_stream()))
        self.runner.kick()

    def on_event(self, event: Event, stream: int, state_after: Any) -> None:
        """The post-persist hook: only a wake-up, the stream itself is read from the database."""
        self.runner.kick()

    async def _catch_up(self) -> None:
        if not self._services:
            return
        while True:
            position = await self._queue.stream_position()
            if position is None:
                return
            batch = await self._queue.events_after(position, BATCH)
            if not batch:
                return
            stored = await self._events.get_events([e for _, e in batch])
            rows: list[tuple[str, str, str | None, Any]] = []
            for _, event_id in batch:
                s = stored.get(event_id)
                if s is None:
                    continue
                for svc in await self.interested_services(s.event):
                    rows.append((svc.id, "pdu", event_id, None))
            await self._queue.enqueue(rows, stream_position=(EVENTS_STREAM, batch[-1][0]))
            if rows:
                self._on_queued({r[0] for r in rows})

    async def interested_services(self, event: Event) -> list[ApplicationService]:
        """The spec's interest rules: sender or state_key in the user namespace, the room in
        the rooms namespace, an alias of the room in the alias namespace, or a member of the
        room in the user namespace."""
        out: list[ApplicationService] = []
        members: Collection[str] | None = None
        aliases: list[str] | None = None
        for svc in self._services:
            if svc.is_interested_in_user(event.sender) or svc.is_interested_in_room_id(event.room_id):
                out.append(svc)
                continue
            if event.type == "m.room.member" and event.state_key and svc.is_interested_in_user(event.state_key):
                out.append(svc)
                continue
            if svc.aliases:
                if aliases is None:
                    aliases = await self._room_aliases(event.room_id)
                if any(svc.is_interested_in_alias(a) for a in aliases):
                    out.append(svc)
                    continue
            if svc.users:
                if members is None:
                    members = await self._joined_users(event.room_id)
                if any(svc.is_interested_in_user(m) for m in members):
                    out.append(svc)
        return out


class TypingSource(Protocol):
    @property
    def position(self) -> int: ...
    def typing_event(self, room_id: str, since: int) -> dict[str, Any] | None: ...


class ReceiptSource(Protocol):
    async def receipt_events(
        self, room_ids: Collection[str], user_id: str, after: int, upto: int
    ) -> dict[str, dict[str, Any]]: ...
    async def current_position(self) -> int: ...


class PresenceSource(Protocol):
    async def current_position(self) -> int: ...
    async def sync_extension(
        self, requester: Requester, since: StreamToken | None, now: StreamToken, body: dict[str, Any]
    ) -> None: ...


class ToDeviceInbox(Protocol):
    async def get_messages(self, user_id: str, device_id: str, upto: int, limit: int) -> tuple[list[Any], int]: ...
    async def delete_upto(self, user_id: str, device_id: str, upto: int) -> None: ...


class DeviceListSource(Protocol):
    async def current_position(self) -> int: ...
    async def device_list_delta(
        self, user_id: str, since: StreamToken, now: StreamToken
    ) -> tuple[set[str], set[str]]: ...


class EphemeralFeeder:
    def __init__(
        self,
        *,
        services: Sequence[ApplicationService],
        queue: AppServiceQueueRepository,
        joined_rooms: Callable[[str], Awaitable[list[str]]],
        user_devices: Callable[[str], Awaitable[list[str]]],
        typing: TypingSource,
        receipts: ReceiptSource,
        presence: PresenceSource,
        to_device: ToDeviceInbox,
        device_lists: DeviceListSource,
        on_queued: Callable[[set[str]], None],
        pending_to_device_users: Callable[[], Awaitable[list[str]]] | None = None,
    ) -> None:
        self._pending_to_device_users = pending_to_device_users
        self._ephemeral = [s for s in services if s.url is not None and s.receive_ephemeral]
        self._msc3202 = [s for s in services if s.url is not None and s.msc3202]
        self._queue = queue
        self._joined_rooms = joined_rooms
        self._user_devices = user_devices
        self._typing = typing
        self._receipts = receipts
        self._presence = presence
        self._to_device = to_device
        self._device_lists = device_lists
        self._on_queued = on_queued
        # stream -> position handled; notifications arrive as (stream, position, users)
        self._done: dict[str, int] = {}
        self._pending: dict[str, tuple[int, set[str]]] = {}
        self.runner = SerialRunner(self._drain, "ephemeral feeder")

    async def start(self) -> None:
        self._done = {
            "typing": self._typing.position,
            "receipts": await self._receipts.current_position(),
            "presence": await self._presence.current_position(),
            "device_lists": await self._device_lists.current_position(),
            "to_device": 0,  # the inboxes themselves say what is left to deliver
        }
        # To-device messages for the services' users still in the inboxes (sent while the
        # host was stopped, or queued by no one before a crash) go out now, not at the
        # next message for the same user.
        if self._msc3202 and self._pending_to_device_users is not None:
            users = {
                u
                for u in await self._pending_to_device_users()
                if any(s.is_interested_in_user(u) for s in self._msc3202)
            }
            if users:
                self._pending["to_device"] = (ALL_OF_THE_INBOX, users)
                self.runner.kick()

    def on_notify(self, stream: str, position: int, users: Collection[str]) -> None:
        """The notifier's listener (synchronous: it only records and wakes the runner)."""
        if self.runner.stopped:
            return  # shutting down: to-device messages stay in the inboxes, read at start-up
        if stream in ("typing", "receipts", "presence"):
            wanted = self._ephemeral
        elif stream in ("to_device", "device_lists"):
            wanted = self._msc3202
        else:
            return
        if not wanted or not any(s.is_interested_in_user(u) for s in wanted for u in users):
            return
        previous = self._pending.get(stream, (0, set()))
        self._pending[stream] = (max(previous[0], position), previous[1] | set(users))
        self.runner.kick()

    async def flush(self) -> None:
        """Queue (durably) what was notified but not yet drained: called once the runner
        has stopped, when the homeserver shuts down."""
        if self._pending:
            await self._drain()

    async def _drain(self) -> None:
        pending, self._pending = self._pending, {}
        rows: list[tuple[str, str, str | None, Any]] = []
        for stream, (position, users) in pending.items():
            after = self._done.get(stream, 0)
            if stream == "to_device":
                rows += await self._to_device_rows(position, users)
            elif position > after:
                if stream == "typing":
                    rows += await self._room_rows(users, partial(self._typing_events, after=after))
                elif stream == "receipts":
                    rows += await self._room_rows(users, partial(self._receipt_events, after=after, upto=position))
                elif stream == "presence":
                    rows += await self._presence_rows(users, after, position)
                elif stream == "device_lists":
                    rows += await self._device_list_rows(users, after, position)
            self._done[stream] = max(after, position)
        if rows:
            await self._queue.enqueue(rows)
            self._on_queued({r[0] for r in rows})

    async def _room_rows(
        self, users: set[str], fetch: Callable[[set[str]], Awaitable[list[dict[str, Any]]]]
    ) -> list[tuple[str, str, str | None, Any]]:
        rows: list[tuple[str, str, str | None, Any]] = []
        for svc in self._ephemeral:
            rooms: set[str] = set()
            for user_id in sorted(u for u in users if svc.is_interested_in_user(u))[:MAX_DEVICE_LIST_USERS]:
                rooms.update(await self._joined_rooms(user_id))
            if rooms:
                rows += [(svc.id, "ephemeral", None, e) for e in await fetch(rooms)]
        return rows

    async def _typing_events(self, rooms: set[str], after: int) -> list[dict[str, Any]]:
        out = []
        for room_id in sorted(rooms):
            event = self._typing.typing_event(room_id, after) if after else self._typing.typing_event(room_id, 0)
            if event is not None:
                out.append({**event, "room_id": room_id})
        return out

    async def _receipt_events(self, rooms: set[str], after: int, upto: int) -> list[dict[str, Any]]:
        # An empty user ID: nobody's private receipts.
        by_room = await self._receipts.receipt_events(rooms, "", after, upto)
        return [{**event, "room_id": room_id} for room_id, event in sorted(by_room.items())]

    async def _presence_rows(self, users: set[str], after: int, upto: int) -> list[tuple[str, str, str | None, Any]]:
        rows: list[tuple[str, str, str | None, Any]] = []
        for svc in self._ephemeral:
            seen: set[str] = set()
            for user_id in sorted(u for u in users if svc.is_interested_in_user(u))[:MAX_DEVICE_LIST_USERS]:
                body: dict[str, Any] = {"presence": {"events": []}}
                await self._presence.sync_extension(
                    Requester(user_id, None, False, ""), StreamToken(presence=after), StreamToken(presence=upto), body
                )
                for event in body["presence"]["events"]:
                    if event.get("sender") not in seen:
                        seen.add(event.get("sender"))
                        rows.append((svc.id, "ephemeral", None, event))
        return rows

    async def _to_device_rows(self, upto: int, users: set[str]) -> list[tuple[str, str, str | None, Any]]:
        rows: list[tuple[str, str, str | None, Any]] = []
        for svc in self._msc3202:
            for user_id in sorted(u for u in users if svc.is_interested_in_user(u)):
                for device_id in await self._user_devices(user_id):
                    messages, reached = await self._to_device.get_messages(user_id, device_id, upto, 1000)
                    rows += [
                        (svc.id, "to_device", None, {**m, "to_user_id": user_id, "to_device_id": device_id})
                        for m in messages
                    ]
                    if messages:
                        # Queued durably below before the inbox forgets them: if we crash
                        # in between, they are delivered twice rather than never.
                        await self._queue.enqueue(rows)
                        rows = []
                        await self._to_device.delete_upto(user_id, device_id, reached)
                        self._on_queued({svc.id})
        return rows

    async def _device_list_rows(self, users: set[str], after: int, upto: int) -> list[tuple[str, str, str | None, Any]]:
        rows: list[tuple[str, str, str | None, Any]] = []
        for svc in self._msc3202:
            changed: set[str] = set()
            left: set[str] = set()
            viewers = [svc.sender, *sorted(u for u in users if svc.is_user_in_namespace(u))][:MAX_DEVICE_LIST_USERS]
            for viewer in viewers:
                c, gone = await self._device_lists.device_list_delta(
                    viewer, StreamToken(device_lists=after), StreamToken(device_lists=upto)
                )
                changed |= c
                left |= gone
            if changed or left:
                rows.append((svc.id, "device_lists", None, {"changed": sorted(changed), "left": sorted(left)}))
        return rows
