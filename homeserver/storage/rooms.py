"""Room membership lookups, aliases and the room directory."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from homeserver.storage.database import Database, Transaction
from homeserver.storage.stream_changes import StreamChanges


@dataclass(frozen=True, slots=True)
class Membership:
    room_id: str
    user_id: str
    membership: str
    event_id: str
    stream_ordering: int
    sender: str
    displayname: str | None
    avatar_url: str | None


_MEMBERSHIP_COLUMNS = "room_id, user_id, membership, event_id, stream_ordering, sender, displayname, avatar_url"


def _membership(row: tuple[object, ...]) -> Membership:
    return Membership(*row)  # type: ignore[arg-type]


#: Room IDs remembered as existing (the set starts over when full).
_KNOWN_ROOMS = 20_000


class RoomRepository:
    def __init__(self, db: Database, changes: StreamChanges | None = None) -> None:
        self._db = db
        self._changes = changes
        self._known_rooms: set[str] = set()

    # -- membership --------------------------------------------------------------------

    async def rooms_for_user(self, user_id: str, memberships: tuple[str, ...] = ("join",)) -> list[Membership]:
        marks = ",".join("?" * len(memberships))

        def txn_fn(txn: Transaction) -> list[Membership]:
            rows = txn.select_all(
                f"SELECT {_MEMBERSHIP_COLUMNS} FROM room_memberships WHERE user_id = ? AND membership IN ({marks})"
                " AND forgotten = 0",
                (user_id, *memberships),
            )
            return [_membership(r) for r in rows]

        return await self._db.run_interaction("rooms_for_user", txn_fn)

    async def get_membership(self, room_id: str, user_id: str) -> Membership | None:
        def txn_fn(txn: Transaction) -> Membership | None:
            row = txn.select_one(
                f"SELECT {_MEMBERSHIP_COLUMNS} FROM room_memberships WHERE room_id = ? AND user_id = ?",
                (room_id, user_id),
            )
            return _membership(row) if row else None

        return await self._db.run_interaction("get_membership", txn_fn)

    async def members(self, room_id: str, memberships: tuple[str, ...] = ("join",)) -> list[Membership]:
        marks = ",".join("?" * len(memberships))

        def txn_fn(txn: Transaction) -> list[Membership]:
            rows = txn.select_all(
                f"SELECT {_MEMBERSHIP_COLUMNS} FROM room_memberships WHERE room_id = ? AND membership IN ({marks})",
                (room_id, *memberships),
            )
            return [_membership(r) for r in rows]

        return await self._db.run_interaction("members", txn_fn)

    async def summaries(
        self, room_ids: Collection[str], user_id: str, heroes: int = 5
    ) -> dict[str, tuple[list[str], int, int]]:
        """room -> (heroes, joined count, invited count) for many rooms in one transaction.

        Heroes are the first ``heroes`` joined or invited members other than ``user_id``, by
        user ID in code-point order (the C collation on PostgreSQL).
        """
        ids = list(room_ids)
        if not ids:
            return {}

        def txn_fn(txn: Transaction) -> dict[str, tuple[list[str], int, int]]:
            out: dict[str, tuple[list[str], int, int]] = {room_id: ([], 0, 0) for room_id in ids}
            collate = ' COLLATE "C"' if txn.engine.name == "postgres" else ""
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                counts: dict[str, dict[str, int]] = {}
                for room_id, membership, count in txn.select_all(
                    "SELECT room_id, membership, COUNT(*) FROM room_memberships"
                    f" WHERE room_id IN ({marks}) AND membership IN ('join', 'invite') GROUP BY room_id, membership",
                    chunk,
                ):
                    counts.setdefault(str(room_id), {})[str(membership)] = int(count)
                found: dict[str, list[str]] = {}
                for room_id, member in txn.select_all(
                    "SELECT room_id, user_id FROM (SELECT room_id, user_id, ROW_NUMBER() OVER"
                    f" (PARTITION BY room_id ORDER BY user_id{collate}) AS n FROM room_memberships"
                    f" WHERE room_id IN ({marks}) AND membership IN ('join', 'invite') AND user_id != ?) AS m"
                    " WHERE n <= ?",
                    (*chunk, user_id, heroes),
                ):
                    found.setdefault(str(room_id), []).append(str(member))
                for room_id in chunk:
                    by_membership = counts.get(room_id, {})
                    out[room_id] = (
                        sorted(found.get(room_id, [])),
                        by_membership.get("join", 0),
                        by_membership.get("invite", 0),
                    )
            return out

        return await self._db.run_interaction("room_summaries", txn_fn)

    async def membership_changes_since(self, user_id: str, after: int, upto: int) -> list[tuple[str, str, str, int]]:
        """(room_id, membership, event_id, stream) of the user's membership changes in (after, upto]."""

        def txn_fn(txn: Transaction) -> list[tuple[str, str, str, int]]:
            rows = txn.select_all(
                "SELECT room_id, membership, event_id, stream_ordering FROM membership_history"
                " WHERE user_id = ? AND stream_ordering > ? AND stream_ordering <= ? ORDER BY stream_ordering",
                (user_id, after, upto),
            )
            return [(str(a), str(b), str(c), int(d)) for a, b, c, d in rows]

        if after >= upto or (self._changes is not None and not self._changes.changed_since(("membership", user_id), after)):
            return []
        return await self._db.run_interaction("membership_changes", txn_fn)

    async def member_changes_in_rooms_of(self, user_id: str, after: int, upto: int) -> list[tuple[str, str]]:
        """(other user, membership) for membership changes in (after, upto] in the rooms
        ``user_id`` is joined to now."""

        def txn_fn(txn: Transaction) -> list[tuple[str, str]]:
            rows = txn.select_all(
                "SELECT h.user_id, h.membership FROM membership_history AS h JOIN room_memberships AS m"
                " ON m.room_id = h.room_id WHERE m.user_id = ? AND m.membership = 'join'"
                " AND h.stream_ordering > ? AND h.stream_ordering <= ? AND h.user_id != ? ORDER BY h.stream_ordering",
                (user_id, after, upto, user_id),
            )
            return [(str(a), str(b)) for a, b in rows]

        if after >= upto or (self._changes is not None and not self._changes.changed_since(("members", "*"), after)):
            return []
        return await self._db.run_interaction("member_changes_in_rooms", txn_fn)

    async def join_positions(self, room_id: str) -> dict[str, int]:
        """For each user joined to the room now: the stream position of the join that began
        their current stay (profile changes, join -> join, do not restart it)."""

        def txn_fn(txn: Transaction) -> dict[str, int]:
            rows = txn.select_all(
                "SELECT user_id, membership, stream_ordering FROM membership_history"
                " WHERE room_id = ? ORDER BY stream_ordering",
                (room_id,),
            )
            since: dict[str, int] = {}
            for user_id, membership, stream in rows:
                if membership != "join":
                    since.pop(str(user_id), None)
                elif str(user_id) not in since:
                    since[str(user_id)] = int(stream)
            return since

        return await self._db.run_interaction("join_positions", txn_fn)

    async def membership_at(self, room_id: str, user_id: str, stream: int) -> tuple[str, str] | None:
        """The user's (membership, event_id) in the room as of stream position ``stream``."""

        def txn_fn(txn: Transaction) -> tuple[str, str] | None:
            row = txn.select_one(
                "SELECT membership, event_id FROM membership_history WHERE room_id = ? AND user_id = ?"
                " AND stream_ordering <= ? ORDER BY stream_ordering DESC LIMIT 1",
                (room_id, user_id, stream),
            )
            return None if row is None else (str(row[0]), str(row[1]))

        return await self._db.run_interaction("membership_at", txn_fn)

    async def forget(self, room_id: str, user_id: str) -> None:
        await self._db.run_interaction(
            "forget_room",
            lambda txn: txn.execute(
                "UPDATE room_memberships SET forgotten = 1 WHERE room_id = ? AND user_id = ?", (room_id, user_id)
            ),
        )

    async def shared_room_users(self, user_id: str) -> set[str]:
        """Users who share a joined room with ``user_id`` (themselves included)."""

        def txn_fn(txn: Transaction) -> set[str]:
            rows = txn.select_all(
                "SELECT DISTINCT b.user_id FROM room_memberships AS a JOIN room_memberships AS b"
                " ON a.room_id = b.room_id WHERE a.user_id = ? AND a.membership = 'join' AND b.membership = 'join'",
                (user_id,),
            )
            return {str(r[0]) for r in rows}

        return await self._db.run_interaction("shared_room_users", txn_fn)

    # -- aliases -----------------------------------------------------------------------

    async def create_alias(self, alias: str, room_id: str, creator: str, now_ms: int) -> bool:
        def txn_fn(txn: Transaction) -> bool:
            txn.execute(
                "INSERT INTO room_aliases (room_alias, room_id, creator, created_ts) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (room_alias) DO NOTHING",
                (alias, room_id, creator, now_ms),
            )
            return txn.rowcount == 1

        return await self._db.run_interaction("create_alias", txn_fn)

    async def get_alias(self, alias: str) -> tuple[str, str] | None:
        """(room_id, creator) for the alias."""
        row = await self._db.run_interaction(
            "get_alias",
            lambda txn: txn.select_one("SELECT room_id, creator FROM room_aliases WHERE room_alias = ?", (alias,)),
        )
        return None if row is None else (str(row[0]), str(row[1]))

    async def delete_alias(self, alias: str) -> bool:
        def txn_fn(txn: Transaction) -> bool:
            txn.execute("DELETE FROM room_aliases WHERE room_alias = ?", (alias,))
            return txn.rowcount == 1

        return await self._db.run_interaction("delete_alias", txn_fn)

    async def aliases_for_room(self, room_id: str) -> list[str]:
        rows = await self._db.run_interaction(
            "aliases_for_room",
            lambda txn: txn.select_all(
                "SELECT room_alias FROM room_aliases WHERE room_id = ? ORDER BY room_alias", (room_id,)
            ),
        )
        return [str(r[0]) for r in rows]

    # -- directory ---------------------------------------------------------------------

    async def set_published(self, room_id: str, published: bool) -> None:
        await self._db.run_interaction(
            "set_published",
            lambda txn: txn.execute("UPDATE rooms SET is_public = ? WHERE room_id = ?", (int(published), room_id)),
        )

    async def is_published(self, room_id: str) -> bool:
        row = await self._db.run_interaction(
            "is_published", lambda txn: txn.select_one("SELECT is_public FROM rooms WHERE room_id = ?", (room_id,))
        )
        return bool(row and row[0])

    async def published_rooms(self) -> list[str]:
        rows = await self._db.run_interaction(
            "published_rooms",
            lambda txn: txn.select_all("SELECT room_id FROM rooms WHERE is_public = 1 ORDER BY room_id"),
        )
        return [str(r[0]) for r in rows]

    async def room_exists(self, room_id: str) -> bool:
        # Rooms are never deleted: a room once found is known (checked on every send).
        if room_id in self._known_rooms:
            return True
        row = await self._db.run_interaction(
            "room_exists", lambda txn: txn.select_one("SELECT 1 FROM rooms WHERE room_id = ?", (room_id,))
        )
        if row is not None:
            if len(self._known_rooms) >= _KNOWN_ROOMS:
                self._known_rooms.clear()
            self._known_rooms.add(room_id)
        return row is not None
