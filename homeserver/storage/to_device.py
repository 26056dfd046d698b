"""To-device messages: an inbox per device, kept until the device acknowledges them."""

from __future__ import annotations

import json
from typing import Any

from homeserver.storage.database import Database, Transaction
from homeserver.storage.streams import StreamIdAllocator

JsonDict = dict[str, Any]


class ToDeviceRepository:
    def __init__(self, db: Database) -> None:
        self._db = db
        self.ids = StreamIdAllocator(db, "device_inbox")

    async def add_messages(
        self, messages: list[tuple[str, str, JsonDict]], txn_key: tuple[str, str, str] | None, now_ms: int
    ) -> int | None:
        """Queue (user, device, message) rows; with ``txn_key`` a repeated request stores nothing.

        Returns the stream ID used, or None for a repeated transaction.
        """
        async with self.ids.lock:
            stream_id = await self.ids.next_id()

            def txn_fn(txn: Transaction) -> bool:
                if txn_key is not None:
                    txn.execute(
                        "INSERT INTO to_device_txns (user_id, device_id, txn_id, created_ts) VALUES (?, ?, ?, ?)"
                        " ON CONFLICT DO NOTHING",
                        (*txn_key, now_ms),
                    )
                    if txn.rowcount != 1:
                        return False
                if messages:
                    txn.execute_many(
                        "INSERT INTO device_inbox (stream_id, user_id, device_id, message_json) VALUES (?, ?, ?, ?)",
                        [(stream_id, u, d, json.dumps(m)) for u, d, m in messages],
                    )
                return True

            if not await self._db.run_interaction("add_to_device", txn_fn):
                return None
            self.ids.advance(stream_id)
        return stream_id

    async def get_messages(self, user_id: str, device_id: str, upto: int, limit: int) -> tuple[list[JsonDict], int]:
        """Pending messages up to ``upto`` (oldest first, at most ``limit``) and the stream
        position they reach (so the next token acknowledges exactly these)."""

        def txn_fn(txn: Transaction) -> tuple[list[JsonDict], int]:
            rows = txn.select_all(
                "SELECT stream_id, message_json FROM device_inbox WHERE user_id = ? AND device_id = ?"
                " AND stream_id <= ? ORDER BY stream_id LIMIT ?",
                (user_id, device_id, upto, limit),
            )
            # (user, device, stream_id) is unique, so a page never splits a stream position.
            reached = upto if len(rows) < limit else int(rows[-1][0])
            return [json.loads(r[1]) for r in rows], reached

        return await self._db.run_interaction("get_to_device", txn_fn)

    async def delete_upto(self, user_id: str, device_id: str, upto: int) -> None:
        """The device acknowledged everything up to ``upto`` (its next /sync's since token)."""
        await self._db.run_interaction(
            "ack_to_device",
            lambda txn: txn.execute(
                "DELETE FROM device_inbox WHERE user_id = ? AND device_id = ? AND stream_id <= ?",
                (user_id, device_id, upto),
            ),
        )
