"""Typing notifications (in memory, with timeouts) and read receipts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any

from twisted.internet import defer

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError, forbidden, not_found
from homeserver.services.notifier import Notifier
from homeserver.storage.events import EventRepository
from homeserver.storage.receipts import ReceiptRepository

MAX_TYPING_TIMEOUT_MS = 120_000
RECEIPT_TYPES = ("m.read", "m.read.private", "m.fully_read")

JoinedUsers = Callable[[str], Awaitable[Collection[str]]]


class TypingService:
    """Who is typing where.  Typing is ephemeral: it lives in memory and expires."""

    def __init__(self, *, clock: Clock, notifier: Notifier, joined_users: JoinedUsers) -> None:
        self._clock = clock
        self._notifier = notifier
        self._joined_users = joined_users
        # room -> user -> expiry (ms)
        self._typing: dict[str, dict[str, int]] = {}
        self._room_serial: dict[str, int] = {}
        self._position = 0

    @property
    def position(self) -> int:
        return self._position

    async def set_typing(self, room_id: str, user_id: str, typing: bool, timeout_ms: int | None) -> None:
        members = await self._joined_users(room_id)
        if user_id not in members:
            raise forbidden(f"User {user_id} not in room {room_id}")
        room = self._typing.setdefault(room_id, {})
        if typing:
            timeout = min(max(timeout_ms or 30_000, 0), MAX_TYPING_TIMEOUT_MS)
            expiry = self._clock.time_msec() + timeout
            was_typing = user_id in room
            room[user_id] = expiry
            self._clock.call_later(timeout / 1000.0, self._expire, room_id, user_id, expiry)
            if was_typing:
                return
        elif room.pop(user_id, None) is None:
            return
        await self._changed(room_id)

    def _expire(self, room_id: str, user_id: str, expiry: int) -> None:
        room = self._typing.get(room_id, {})
        if room.get(user_id) == expiry:
            del room[user_id]
            defer.ensureDeferred(self._changed(room_id))

    async def _changed(self, room_id: str) -> None:
        self._position += 1
        self._room_serial[room_id] = self._position
        self._notifier.notify("typing", self._position, await self._joined_users(room_id))

    def typing_event(self, room_id: str, since: int) -> dict[str, Any] | None:
        """The room's m.typing event if it changed after ``since`` (always when since is 0)."""
        serial = self._room_serial.get(room_id)
        if serial is None or (since and serial <= since):
            return None
        return {"type": "m.typing", "content": {"user_ids": sorted(self._typing.get(room_id, {}))}}


class ReceiptService:
    def __init__(
        self,
        *,
        clock: Clock,
        notifier: Notifier,
        receipts: ReceiptRepository,
        events: EventRepository,
        joined_users: JoinedUsers,
    ) -> None:
        self._clock = clock
        self._notifier = notifier
        self._receipts = receipts
        self._events = events
        self._joined_users = joined_users

    async def send_receipt(
        self, room_id: str, user_id: str, receipt_type: str, event_id: str, thread_id: str | None
    ) -> None:
        if receipt_type not in ("m.read", "m.read.private"):
            raise MatrixError(400, Codes.INVALID_PARAM, f"Unknown receipt type {receipt_type}")
        if user_id not in await self._joined_users(room_id):
            raise forbidden(f"User {user_id} not in room {room_id}")
        stored = await self._events.get_event(event_id)
        if stored is None or stored.event.room_id != room_id:
            raise not_found("Event not found")
        if thread_id is not None and (not isinstance(thread_id, str) or not thread_id):
            raise MatrixError(400, Codes.INVALID_PARAM, "Parameter thread_id must be a non-empty string")
        data: dict[str, Any] = {"ts": self._clock.time_msec()}
        if thread_id is not None:
            data["thread_id"] = thread_id
        stream_id = await self._receipts.put(
            room_id, receipt_type, user_id, thread_id or "", event_id, stored.stream_ordering, data
        )
        if stream_id is None:
            return
        # Private receipts concern only their owner.
        wake = {user_id} if receipt_type == "m.read.private" else await self._joined_users(room_id)
        self._notifier.notify("receipts", stream_id, wake)

    async def receipt_events(self, room_ids: Collection[str], user_id: str, after: int, upto: int) -> dict[str, dict[str, Any]]:
        """room_id -> m.receipt event of receipts that changed in (after, upto]."""
        by_room: dict[str, dict[str, Any]] = {}
        for room_id, rtype, receipt_user, _thread, event_id, data in await self._receipts.changed_since(
            room_ids, after, upto
        ):
            if rtype == "m.read.private" and receipt_user != user_id:
                continue
            content = by_room.setdefault(room_id, {})
            content.setdefault(event_id, {}).setdefault(rtype, {})[receipt_user] = data
        return {room: {"type": "m.receipt", "content": content} for room, content in by_room.items()}

    async def current_position(self) -> int:
        return await self._receipts.ids.current()
