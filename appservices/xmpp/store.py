"""The bridge's own state (``<data_dir>/xmpp.db``): direct-chat portals, MUC portals and the
XMPP contacts subscribed to a Matrix user's presence."""

from __future__ import annotations

import sqlite3
from pathlib import Path


class XmppStore:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.executescript(
            "CREATE TABLE IF NOT EXISTS direct (jid TEXT NOT NULL, mxid TEXT NOT NULL, room_id TEXT NOT NULL UNIQUE,"
            " PRIMARY KEY (jid, mxid));"
            "CREATE TABLE IF NOT EXISTS muc (room_jid TEXT PRIMARY KEY, room_id TEXT NOT NULL UNIQUE);"
            "CREATE TABLE IF NOT EXISTS subscribers (local_jid TEXT NOT NULL, contact TEXT NOT NULL,"
            " PRIMARY KEY (local_jid, contact));"
        )

    def close(self) -> None:
        self._db.close()

    def direct_room(self, jid: str, mxid: str) -> str | None:
        row = self._db.execute("SELECT room_id FROM direct WHERE jid = ? AND mxid = ?", (jid, mxid)).fetchone()
        return str(row[0]) if row else None

    def direct_of_room(self, room_id: str) -> tuple[str, str] | None:
        row = self._db.execute("SELECT jid, mxid FROM direct WHERE room_id = ?", (room_id,)).fetchone()
        return (str(row[0]), str(row[1])) if row else None

    def put_direct(self, jid: str, mxid: str, room_id: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO direct (jid, mxid, room_id) VALUES (?, ?, ?)", (jid, mxid, room_id))

    def muc_room(self, room_jid: str) -> str | None:
        row = self._db.execute("SELECT room_id FROM muc WHERE room_jid = ?", (room_jid,)).fetchone()
        return str(row[0]) if row else None

    def muc_of_room(self, room_id: str) -> str | None:
        row = self._db.execute("SELECT room_jid FROM muc WHERE room_id = ?", (room_id,)).fetchone()
        return str(row[0]) if row else None

    def mucs(self) -> list[tuple[str, str]]:
        return [(str(a), str(b)) for a, b in self._db.execute("SELECT room_jid, room_id FROM muc")]

    def put_muc(self, room_jid: str, room_id: str) -> None:
        self._db.execute("DELETE FROM muc WHERE room_id = ?", (room_id,))
        self._db.execute("INSERT OR REPLACE INTO muc (room_jid, room_id) VALUES (?, ?)", (room_jid, room_id))

    def add_subscriber(self, local_jid: str, contact: str) -> None:
        self._db.execute("INSERT OR IGNORE INTO subscribers (local_jid, contact) VALUES (?, ?)", (local_jid, contact))

    def subscribers(self, local_jid: str) -> list[str]:
        rows = self._db.execute("SELECT contact FROM subscribers WHERE local_jid = ?", (local_jid,))
        return [str(r[0]) for r in rows]
