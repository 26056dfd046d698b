"""Monotonic stream IDs for a table, allocated in process (one writer process per database)."""

from __future__ import annotations

from twisted.internet import defer

from homeserver.storage.database import Database


class StreamIdAllocator:
    """Hands out increasing IDs for ``table.column``; writes using them are serialised."""

    def __init__(self, db: Database, table: str, column: str = "stream_id") -> None:
        self._db = db
        self._sql = f"SELECT MAX({column}) FROM {table}"
        self._current: int | None = None
        self.lock = defer.DeferredLock()

    async def current(self) -> int:
        if self._current is None:
            row = await self._db.run_interaction("max_stream_id", lambda txn: txn.select_one(self._sql))
            self._current = int(row[0]) if row and row[0] is not None else 0
        return self._current

    async def next_id(self) -> int:
        """Call with :attr:`lock` held; the ID becomes current once the caller's write is done."""
        return await self.current() + 1

    def advance(self, stream_id: int) -> None:
        self._current = max(self._current or 0, stream_id)
