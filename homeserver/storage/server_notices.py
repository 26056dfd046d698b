"""The one lookup server notices need: a user's notices room, in one query."""

from __future__ import annotations

from homeserver.storage.database import Database


class ServerNoticesStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def notice_room_for(self, user_id: str, system_user_id: str) -> str | None:
        """A room ``user_id`` is joined or invited to (and has not forgotten) where
        ``system_user_id`` is joined; the most recent one if several."""
        row = await self._db.run_interaction(
            "server_notice_room",
            lambda txn: txn.select_one(
                "SELECT u.room_id FROM room_memberships u"
                " JOIN room_memberships s ON s.room_id = u.room_id AND s.user_id = ? AND s.membership = 'join'"
                " WHERE u.user_id = ? AND u.membership IN ('join', 'invite') AND u.forgotten = 0"
                " ORDER BY s.stream_ordering DESC LIMIT 1",
                (system_user_id, user_id),
            ),
        )
        return None if row is None else str(row[0])
