"""Typing notifications (in memory, with timeouts) and read receipts.

Local changes are handed to a listener (``on_local_typing``, ``on_local_receipt``: the
federation sender, which tells the other servers in the room); changes received from
other servers come in through ``set_remote_typing`` and ``apply_remote_receipt``, once
the caller checked that the origin owns the user and the user is in the room.
"""

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

# How long a remote user's typing lasts without news (as in Synapse: remote servers only
# refresh it now and then).
REMOTE_TYPING_TIMEOUT_MS = 60_000
# A local user still typing is re-announced to other servers at most this often.
TYPING_REFRESH_MS = 20_000

JoinedUsers = Callable[[str], Awaitable[Collection[str]]]
# (room_id, user_id, typing)
TypingListener = Callable[[str, str, bool], Awaitable[None]]
# (room_id, receipt_type, user_id, event_id, data)
ReceiptListener = Callable[[str, str, str, str, dict[str, Any]], Awaitable[None]]


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
        self._remote: set[tuple[str, str]] = set()  # (room, user) typing on another server
        self._last_announced: dict[tuple[str, str], int] = {}  # (room, local user) -> ms
        self.on_local_typing: TypingListener | None = None

    @property
    def position(self) -> int:
        return self._position

    async def set_typing(self, room_id: str, user_id: str, typing: bool, timeout_ms: int | None) -> None:
        members = await self._joined_users(room_id)
        if user_id not in members:
            raise forbidden(f"User {user_id} not in room {room_id}")
        timeout = min(max(timeout_ms or 30_000, 0), MAX_TYPING_TIMEOUT_MS)
        if not self._update(room_id, user_id, typing, timeout):
            if (
                typing
                and self._clock.time_msec() - self._last_announced.get((room_id, user_id), 0) >= TYPING_REFRESH_MS
            ):
                await self._announce(room_id, user_id, True)  # still typing: remind the other servers
            return
        await self._changed(room_id)
        await self._announce(room_id, user_id, typing)

    async def set_remote_typing(self, room_id: str, user_id: str, typing: bool) -> None:
        """A user of another server started or stopped typing (membership already checked)."""
        if self._update(room_id, user_id, typing, REMOTE_TYPING_TIMEOUT_MS, remote=True):
            await self._changed(room_id)

    def _update(self, room_id: str, user_id: str, typing: bool, timeout: int, *, remote: bool = False) -> bool:
        """Record the change; True if who is typing in the room changed."""
        room = self._typing.setdefault(room_id, {})
        if typing:
            expiry = self._clock.time_msec() + timeout
            was_typing = user_id in room
            room[user_id] = expiry
            if remote:
                self._remote.add((room_id, user_id))
            self._clock.call_later(timeout / 1000.0, self._expire, room_id, user_id, expiry)
            return not was_typing
        self._remote.discard((room_id, user_id))
        return room.pop(user_id, None) is not None

    async def _announce(self, room_id: str, user_id: str, typing: bool) -> None:
        if typing:
            self._last_announced[(room_id, user_id)] = self._clock.time_msec()
        else:
            self._last_announced.pop((room_id, user_id), None)
        if self.on_local_typing is not None:
            await self.on_local_typing(room_id, user_id, typing)

    def _expire(self, room_id: str, user_id: str, expiry: int) -> None:
        room = self._typing.get(room_id, {})
        if room.get(user_id) == expiry:
            del room[user_id]
            local = (room_id, user_id) not in self._remote
            self._remote.discard((room_id, user_id))

            async def changed() -> None:
                await self._changed(room_id)
                if local:  # other servers hear that it stopped, as when the user says so
                    await self._announce(room_id, user_id, False)

            defer.ensureDeferred(changed())

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
        self.on_local_receipt: ReceiptListener | None = None

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
        if receipt_type == "m.read" and self.on_local_receipt is not None:
            await self.on_local_receipt(room_id, receipt_type, user_id, event_id, data)

    async def apply_remote_receipt(
        self, room_id: str, receipt_type: str, user_id: str, event_ids: Collection[str], data: dict[str, Any]
    ) -> bool:
        """A public receipt of a user of another server (origin and membership already
        checked): stored against the latest of ``event_ids`` we have in the room.

        Returns False when none of them is known here (or the receipt would go backwards).
        """
        if receipt_type != "m.read":
            return False
        latest = None
        for event_id in event_ids:
            stored = await self._events.get_event(event_id)
            if stored is None or stored.event.room_id != room_id or stored.outlier:
                continue
            if latest is None or stored.stream_ordering > latest.stream_ordering:
                latest = stored
        if latest is None:
            return False
        thread_id = data.get("thread_id")
        stream_id = await self._receipts.put(
            room_id,
            receipt_type,
            user_id,
            thread_id if isinstance(thread_id, str) else "",
            latest.event.event_id,
            latest.stream_ordering,
            data,
        )
        if stream_id is None:
            return False
        self._notifier.notify("receipts", stream_id, await self._joined_users(room_id))
        return True

    async def receipt_events(
        self, room_ids: Collection[str], user_id: str, after: int, upto: int
    ) -> dict[str, dict[str, Any]]:
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
