"""The hooks, in the bridge's own SQLite file (``<data_dir>/webhooks.db``)."""

from __future__ import annotations

import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Hook:
    id: str
    room_id: str
    secret: str
    name: str
    callback_url: str | None
    created_by: str


class HookStore:
    """A few rows, read on every POST: plain sqlite3 (each query well under a millisecond)."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS hooks (id TEXT PRIMARY KEY, room_id TEXT NOT NULL, secret TEXT NOT NULL,"
            " name TEXT NOT NULL, callback_url TEXT, created_by TEXT NOT NULL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS hooks_room ON hooks (room_id)")

    def close(self) -> None:
        self._db.close()

    def create(self, room_id: str, name: str, created_by: str) -> Hook:
        hook = Hook(
            id=secrets.token_hex(6),
            room_id=room_id,
            secret=secrets.token_urlsafe(24),
            name=name,
            callback_url=None,
            created_by=created_by,
        )
        self.put(hook)
        return hook

    def put(self, hook: Hook) -> None:
        self._db.execute(
            "INSERT INTO hooks (id, room_id, secret, name, callback_url, created_by) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET room_id = excluded.room_id, secret = excluded.secret,"
            " name = excluded.name, callback_url = excluded.callback_url",
            (hook.id, hook.room_id, hook.secret, hook.name, hook.callback_url, hook.created_by),
        )

    def get(self, hook_id: str) -> Hook | None:
        row = self._db.execute("SELECT * FROM hooks WHERE id = ?", (hook_id,)).fetchone()
        return Hook(*row) if row else None

    def in_room(self, room_id: str) -> list[Hook]:
        rows = self._db.execute("SELECT * FROM hooks WHERE room_id = ? ORDER BY id", (room_id,)).fetchall()
        return [Hook(*row) for row in rows]

    def set_callback(self, hook_id: str, url: str | None) -> None:
        self._db.execute("UPDATE hooks SET callback_url = ? WHERE id = ?", (url, hook_id))

    def delete(self, hook_id: str) -> None:
        self._db.execute("DELETE FROM hooks WHERE id = ?", (hook_id,))
