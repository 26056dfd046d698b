"""The user directory's tables (migration 0022): one entry per user who may be found, the
words it is found by, and the rooms this server is joined to.

- Local users' entries follow their global profile: :func:`refresh_local_user_txn` runs in
  the transactions that create an account or change a profile.
- Remote users' entries follow their member events (the directory service calls
  :meth:`UserDirectoryRepository.set_remote_profile` after each one is persisted).
- Who may see whom is decided when searching, from ``room_memberships`` (current state):
  users sharing a joined room with the searcher, and members of the public rooms this
  server is in (``user_directory_rooms``), as Synapse's ``users_who_share_private_rooms``
  and ``users_in_public_rooms`` do, without storing a row per pair of users.

Words are the localpart's, the server name's and the display name's, lower-cased, in
Unicode compatibility form and without accents ("Hélène" is found by "helene"), split at
anything but letters and digits; a query matches entries holding, for each of its words,
a word starting with it (Synapse's prefix search), exact words ranking first.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from homeserver.storage.database import Database, Transaction

MAX_QUERY_WORDS = 10  # as Synapse: longer queries are cut, not refused
MAX_WORD_LENGTH = 64
MAX_WORDS_PER_ENTRY = 64

_WORD = re.compile(r"[^\W_]+")


def fold(text: str) -> str:
    """Lower-case, compatibility-normalised text without combining accents."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return unicodedata.normalize("NFKC", "".join(c for c in decomposed if not unicodedata.combining(c)))


def words_of(text: str) -> list[str]:
    return [w[:MAX_WORD_LENGTH] for w in _WORD.findall(fold(text))]


def entry_words(user_id: str, display_name: str | None) -> list[str]:
    """The words an entry is found by: its localpart's, server name's and display name's."""
    localpart, _, server = user_id.removeprefix("@").partition(":")
    found = dict.fromkeys([*words_of(localpart), *words_of(display_name or ""), *words_of(server)])
    return list(found)[:MAX_WORDS_PER_ENTRY]


def query_words(term: str) -> list[str]:
    """The distinct words of a search term (at most :data:`MAX_QUERY_WORDS`)."""
    return list(dict.fromkeys(words_of(term)))[:MAX_QUERY_WORDS]


def _prefix_end(prefix: str) -> str:
    """The smallest string above every string starting with ``prefix`` (code point order,
    which is SQLite's BINARY and PostgreSQL's "C" collation on UTF-8)."""
    following = ord(prefix[-1]) + 1
    if 0xD800 <= following <= 0xDFFF:  # surrogates cannot be stored
        following = 0xE000
    return prefix[:-1] + chr(min(following, 0x10FFFF))


def _localpart(user_id: str) -> str:
    return user_id.removeprefix("@").partition(":")[0]


def write_entry_txn(
    txn: Transaction, user_id: str, is_local: bool, display_name: str | None, avatar_url: str | None
) -> None:
    """Create or update ``user_id``'s entry and its words (nothing is written if unchanged)."""
    row = txn.select_one("SELECT is_local, display_name, avatar_url FROM user_directory WHERE user_id = ?", (user_id,))
    if row is not None and (bool(row[0]), row[1], row[2]) == (is_local, display_name, avatar_url):
        return
    txn.execute(
        "INSERT INTO user_directory (user_id, is_local, display_name, avatar_url, sort_name) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (user_id) DO UPDATE SET is_local = excluded.is_local, display_name = excluded.display_name,"
        " avatar_url = excluded.avatar_url, sort_name = excluded.sort_name",
        (user_id, int(is_local), display_name, avatar_url, fold(display_name or _localpart(user_id))),
    )
    if row is None or row[1] != display_name:
        txn.execute("DELETE FROM user_directory_search WHERE user_id = ?", (user_id,))
        txn.execute_many(
            "INSERT INTO user_directory_search (token, user_id) VALUES (?, ?)",
            [(word, user_id) for word in entry_words(user_id, display_name)],
        )


def refresh_local_user_txn(txn: Transaction, user_id: str) -> None:
    """Bring a local account's entry in line with its profile (called where accounts are
    created and profiles written, in the same transaction)."""
    row = txn.select_one(
        "SELECT p.displayname, p.avatar_url FROM users u LEFT JOIN profiles p ON p.user_id = u.user_id"
        " WHERE u.user_id = ?",
        (user_id,),
    )
    if row is not None:
        write_entry_txn(txn, user_id, True, row[0], row[1])


def _prune_remote_txn(txn: Transaction, user_ids: Iterable[str]) -> None:
    """Drop the entries of remote users no longer joined to any room this server is in."""
    for user_id in user_ids:
        still = txn.select_one(
            "SELECT 1 FROM room_memberships m JOIN user_directory_rooms r ON r.room_id = m.room_id"
            " WHERE m.user_id = ? AND m.membership = 'join'",
            (user_id,),
        )
        if still is None:
            txn.execute("DELETE FROM user_directory WHERE user_id = ? AND is_local = 0", (user_id,))
            if txn.rowcount:
                txn.execute("DELETE FROM user_directory_search WHERE user_id = ?", (user_id,))


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    user_id: str
    display_name: str | None
    avatar_url: str | None


@dataclass(frozen=True, slots=True)
class SearchScope:
    """Whom a search may return (``user_directory`` settings)."""

    search_all_users: bool = False
    exclude_remote_users: bool = False
    prefer_local_users: bool = False


class UserDirectoryRepository:
    def __init__(self, db: Database, server_name: str) -> None:
        self._db = db
        self._suffix = ":" + server_name

    def _is_local(self, user_id: str) -> bool:
        return user_id.endswith(self._suffix)

    # -- building ----------------------------------------------------------------------

    async def is_populated(self) -> bool:
        row = await self._db.run_interaction(
            "user_directory_populated", lambda txn: txn.select_one("SELECT populated FROM user_directory_state")
        )
        return row is None or bool(row[0])

    async def mark_populated(self) -> None:
        await self._db.run_interaction(
            "user_directory_mark_populated", lambda txn: txn.execute("UPDATE user_directory_state SET populated = 1")
        )

    async def index_local_users(self, batch: int = 500) -> int:
        """(Re)index every local account; returns how many."""
        after, count = "", 0
        while True:

            def txn_fn(txn: Transaction, after: str = after) -> list[str]:
                rows = txn.select_all(
                    "SELECT user_id FROM users WHERE user_id > ? ORDER BY user_id LIMIT ?", (after, batch)
                )
                ids = [str(r[0]) for r in rows]
                for user_id in ids:
                    refresh_local_user_txn(txn, user_id)
                return ids

            ids = await self._db.run_interaction("user_directory_index_local", txn_fn)
            count += len(ids)
            if len(ids) < batch:
                return count
            after = ids[-1]

    async def rooms_with_local_members(self) -> list[str]:
        rows = await self._db.run_interaction(
            "user_directory_local_rooms",
            lambda txn: txn.select_all(
                "SELECT DISTINCT room_id, user_id FROM room_memberships WHERE membership = 'join' AND user_id LIKE ?",
                ("%" + self._suffix,),
            ),
        )
        return sorted({str(r[0]) for r in rows if self._is_local(str(r[1]))})

    def _has_local_member_txn(self, txn: Transaction, room_id: str) -> bool:
        rows = txn.select_all(
            "SELECT user_id FROM room_memberships WHERE room_id = ? AND membership = 'join' AND user_id LIKE ?",
            (room_id, "%" + self._suffix),
        )
        return any(self._is_local(str(r[0])) for r in rows)

    async def apply_membership(self, room_id: str, user_id: str) -> bool:
        """Follow ``user_id``'s current membership of ``room_id`` (after a member event was
        persisted; the current one, as a received event may not win the state), in one
        transaction.  Returns True when this server turns out to be in a room it does not
        track yet (a join, maybe bringing the room's whole state over federation): the
        caller then calls :meth:`track_room` with the room's publicity."""

        def txn_fn(txn: Transaction) -> bool:
            row = txn.select_one(
                "SELECT membership, displayname, avatar_url FROM room_memberships WHERE room_id = ? AND user_id = ?",
                (room_id, user_id),
            )
            joined = row is not None and row[0] == "join"
            tracked = txn.select_one("SELECT 1 FROM user_directory_rooms WHERE room_id = ?", (room_id,)) is not None
            if self._is_local(user_id):
                # local entries follow the profile; the question is whether we are in the room
                in_room = joined or self._has_local_member_txn(txn, room_id)
                if in_room and not tracked:
                    return True
                if tracked and not in_room:
                    self._untrack_txn(txn, room_id)
            elif joined and tracked:
                assert row is not None
                write_entry_txn(txn, user_id, False, _str_or_none(row[1]), _str_or_none(row[2]))
            elif not joined:
                _prune_remote_txn(txn, [user_id])
            return False

        return bool(await self._db.run_interaction("user_directory_membership", txn_fn))

    # -- rooms -------------------------------------------------------------------------

    async def room_publicity(self, room_id: str) -> bool | None:
        """Whether a room this server is in is public; None if it is not in it."""
        row = await self._db.run_interaction(
            "user_directory_room",
            lambda txn: txn.select_one("SELECT is_public FROM user_directory_rooms WHERE room_id = ?", (room_id,)),
        )
        return None if row is None else bool(row[0])

    async def track_room(self, room_id: str, is_public: bool, *, index_members: bool) -> None:
        """Record a room this server is in; with ``index_members``, add its remote members."""

        def txn_fn(txn: Transaction) -> None:
            txn.execute(
                "INSERT INTO user_directory_rooms (room_id, is_public) VALUES (?, ?)"
                " ON CONFLICT (room_id) DO UPDATE SET is_public = excluded.is_public",
                (room_id, int(is_public)),
            )
            if not index_members:
                return
            rows = txn.select_all(
                "SELECT user_id, displayname, avatar_url FROM room_memberships WHERE room_id = ? AND membership = 'join'",
                (room_id,),
            )
            for user_id, name, avatar in rows:
                if not self._is_local(str(user_id)):
                    write_entry_txn(txn, str(user_id), False, _str_or_none(name), _str_or_none(avatar))

        await self._db.run_interaction("user_directory_track_room", txn_fn)

    def _untrack_txn(self, txn: Transaction, room_id: str) -> None:
        """This server left the room: forget it, and the remote members seen only there."""
        txn.execute("DELETE FROM user_directory_rooms WHERE room_id = ?", (room_id,))
        rows = txn.select_all(
            "SELECT user_id FROM room_memberships WHERE room_id = ? AND membership = 'join'", (room_id,)
        )
        _prune_remote_txn(txn, [str(r[0]) for r in rows if not self._is_local(str(r[0]))])

    # -- searching ---------------------------------------------------------------------

    async def search(
        self, searcher: str, words: Sequence[str], scope: SearchScope, *, limit: int, offset: int = 0
    ) -> list[DirectoryEntry]:
        """Entries matching every word (by prefix) that ``searcher`` may see, best first."""
        if not words:
            return []
        matches = " UNION ALL ".join(
            "SELECT user_id, MAX(CASE WHEN token = ? THEN 1 ELSE 0 END) AS exact FROM user_directory_search"
            " WHERE token >= ? AND token < ? GROUP BY user_id"
            for _ in words
        )
        params: list[object] = [p for w in words for p in (w, w, _prefix_end(w))]
        params += [len(words), searcher]
        # Local accounts: active, neither a support account nor an application service's
        # (as Synapse's should_include_local_user_in_dir).
        conditions = [
            "(d.is_local = 0 OR (u.deactivated = 0 AND u.appservice_id IS NULL"
            " AND (u.user_type IS NULL OR u.user_type <> 'support')))"
        ]
        in_our_rooms = (
            "EXISTS (SELECT 1 FROM room_memberships b JOIN user_directory_rooms r ON r.room_id = b.room_id"
            " WHERE b.user_id = d.user_id AND b.membership = 'join'{})"
        )
        if scope.search_all_users:
            conditions.append(f"(d.is_local = 1 OR {in_our_rooms.format('')})")
        else:
            conditions.append(
                "(EXISTS (SELECT 1 FROM room_memberships b JOIN room_memberships a ON a.room_id = b.room_id"
                " WHERE b.user_id = d.user_id AND b.membership = 'join' AND a.user_id = ? AND a.membership = 'join')"
                f" OR {in_our_rooms.format(' AND r.is_public = 1')})"
            )
            params.append(searcher)
        if scope.exclude_remote_users:
            conditions.append("d.is_local = 1")
        local_first = "d.is_local DESC, " if scope.prefer_local_users else ""
        sql = (
            "SELECT d.user_id, d.display_name, d.avatar_url FROM"
            f" (SELECT user_id, SUM(exact) AS exact FROM ({matches}) AS w GROUP BY user_id HAVING COUNT(*) = ?) AS m"
            " JOIN user_directory d ON d.user_id = m.user_id LEFT JOIN users u ON u.user_id = d.user_id"
            f" WHERE d.user_id <> ? AND {' AND '.join(conditions)}"
            f" ORDER BY {local_first}m.exact DESC, d.display_name IS NULL, d.avatar_url IS NULL, d.sort_name, d.user_id"
            " LIMIT ? OFFSET ?"
        )
        params += [limit, offset]
        rows = await self._db.run_interaction("search_user_directory", lambda txn: txn.select_all(sql, params))
        return [DirectoryEntry(str(r[0]), r[1], r[2]) for r in rows]


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
