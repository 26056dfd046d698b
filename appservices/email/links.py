"""Which room has which address and which outbound recipients (``<data_dir>/email.db``)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Link:
    name: str
    room_id: str
    recipients: tuple[str, ...]


class LinkStore:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS links (name TEXT PRIMARY KEY, room_id TEXT NOT NULL UNIQUE,"
            " recipients TEXT NOT NULL)"
        )

    def close(self) -> None:
        self._db.close()

    @staticmethod
    def _row(row: tuple[str, str, str] | None) -> Link | None:
        return Link(row[0], row[1], tuple(json.loads(row[2]))) if row else None

    def put(self, link: Link) -> None:
        self._db.execute("DELETE FROM links WHERE room_id = ? AND name != ?", (link.room_id, link.name))
        self._db.execute(
            "INSERT INTO links (name, room_id, recipients) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE"
            " SET room_id = excluded.room_id, recipients = excluded.recipients",
            (link.name, link.room_id, json.dumps(list(link.recipients))),
        )

    def by_name(self, name: str) -> Link | None:
        return self._row(self._db.execute("SELECT * FROM links WHERE name = ?", (name,)).fetchone())

    def by_room(self, room_id: str) -> Link | None:
        return self._row(self._db.execute("SELECT * FROM links WHERE room_id = ?", (room_id,)).fetchone())

    def delete(self, room_id: str) -> None:
        self._db.execute("DELETE FROM links WHERE room_id = ?", (room_id,))
