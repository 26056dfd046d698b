"""Presence: online / unavailable / offline with a status message, shared with room-mates.

Kept simple and cheap: a state change is stored and pushed to users who share a room;
"online" decays to "unavailable" after idle time when read, not by timers.  A local
change is also handed to ``on_local_presence`` (the federation sender, for the servers
sharing a room with the user); other servers' changes come in through
:meth:`PresenceService.apply_remote_presence`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError, forbidden
from homeserver.services.auth import Requester
from homeserver.services.notifier import Notifier
from homeserver.services.streams import StreamToken
from homeserver.storage.database import Database, Transaction
from homeserver.storage.rooms import RoomRepository
from homeserver.storage.stream_changes import StreamChanges
from homeserver.storage.streams import StreamIdAllocator

STATES = ("online", "unavailable", "offline")
IDLE_AFTER_MS = 5 * 60 * 1000
# Re-announcing an unchanged "online" more often than this is pointless churn.
_REFRESH_MS = 60 * 1000
# Presence changes remembered for /sync (older ones: read from the database).
_RECENT_CHANGES = 10_000

# (user_id, m.presence content as other servers see it)
PresenceListener = Callable[[str, dict[str, Any]], Awaitable[None]]


class PresenceService:
    def __init__(self, *, clock: Clock, db: Database, notifier: Notifier, rooms: RoomRepository, enabled: bool) -> None:
        self._clock = clock
        self._db = db
        self._notifier = notifier
        self._rooms = rooms
        self.enabled = enabled
        self.ids = StreamIdAllocator(db, "presence")
        self._last: dict[str, tuple[str, str | None, int]] = {}
        # Whose presence changed recently: a /sync with no change in its window skips the
        # query (most presence updates are refreshes of users who share no room with it).
        self._changes = StreamChanges(_RECENT_CHANGES)
        self.on_local_presence: PresenceListener | None = None

    async def current_position(self) -> int:
        return await self.ids.current()

    async def set_presence(
        self, user_id: str, state: str, status_msg: str | None = None, *, from_sync: bool = False
    ) -> None:
        if state not in STATES:
            raise MatrixError(400, Codes.INVALID_PARAM, "Parameter presence must be online, unavailable or offline")
        if not self.enabled:
            return
        now = self._clock.time_msec()
        previous = self._last.get(user_id)
        if from_sync and previous is not None:
            if previous[0] == state and now - previous[2] < _REFRESH_MS:
                return
            status_msg = previous[1]
        self._last[user_id] = (state, status_msg, now)
        await self._store(user_id, state, status_msg, now)
        if self.on_local_presence is not None:
            await self.on_local_presence(user_id, self._content(state, status_msg, now))

    async def apply_remote_presence(
        self, user_id: str, state: str, status_msg: str | None, last_active_ago: int
    ) -> None:
        """The presence of a user of another server (the caller checked the origin)."""
        if not self.enabled or state not in STATES:
            return
        await self._store(user_id, state, status_msg, self._clock.time_msec() - max(last_active_ago, 0))

    async def _store(self, user_id: str, state: str, status_msg: str | None, now: int) -> None:
        async with self.ids.lock:
            stream_id = await self.ids.next_id()
            self._changes.start(stream_id - 1)  # first write: every later one is noted

            def txn_fn(txn: Transaction) -> None:
                txn.execute(
                    "INSERT INTO presence (user_id, state, status_msg, last_active_ts, stream_id) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (user_id) DO UPDATE SET state = excluded.state, status_msg = excluded.status_msg,"
                    " last_active_ts = excluded.last_active_ts, stream_id = excluded.stream_id",
                    (user_id, state, status_msg, now, stream_id),
                )

            await self._db.run_interaction("set_presence", txn_fn)
            self._changes.note([("presence", user_id)], stream_id)
            self.ids.advance(stream_id)
        self._notifier.notify("presence", stream_id, await self._rooms.shared_room_users(user_id) | {user_id})

    async def get_presence(self, requester: Requester, user_id: str) -> dict[str, Any]:
        if requester.user_id != user_id and user_id not in await self._rooms.shared_room_users(requester.user_id):
            raise forbidden("You do not share a room with this user")
        row = await self._db.run_interaction(
            "get_presence",
            lambda txn: txn.select_one(
                "SELECT state, status_msg, last_active_ts FROM presence WHERE user_id = ?", (user_id,)
            ),
        )
        if row is None:
            return {"presence": "offline"}
        return self._content(str(row[0]), row[1], int(row[2]))

    def _content(self, state: str, status_msg: str | None, last_active: int) -> dict[str, Any]:
        now = self._clock.time_msec()
        if state == "online" and now - last_active > IDLE_AFTER_MS:
            state = "unavailable"
        content: dict[str, Any] = {
            "presence": state,
            "last_active_ago": max(0, now - last_active),
            "currently_active": state == "online",
        }
        if status_msg:
            content["status_msg"] = status_msg
        return content

    async def sync_extension(
        self, requester: Requester, since: StreamToken | None, now: StreamToken, body: dict[str, Any]
    ) -> None:
        if not self.enabled or (since is not None and since.presence >= now.presence):
            return
        after = since.presence if since else 0
        recent = self._changes.changed_after(after)
        if recent is not None and not any(position <= now.presence for position in recent.values()):
            return
        user_id = requester.user_id

        def txn_fn(txn: Transaction) -> list[tuple[Any, ...]]:
            # Users who share a joined room with the requester (themselves included).
            return txn.select_all(
                "SELECT p.user_id, p.state, p.status_msg, p.last_active_ts FROM presence AS p"
                " WHERE p.stream_id > ? AND p.stream_id <= ? AND EXISTS (SELECT 1 FROM room_memberships AS a"
                " JOIN room_memberships AS b ON b.room_id = a.room_id WHERE a.user_id = ? AND a.membership = 'join'"
                " AND b.user_id = p.user_id AND b.membership = 'join')",
                (after, now.presence, user_id),
            )

        rows = await self._db.run_interaction("presence_since", txn_fn)
        body["presence"]["events"] = [
            {"type": "m.presence", "sender": str(r[0]), "content": self._content(str(r[1]), r[2], int(r[3]))}
            for r in rows
        ]
