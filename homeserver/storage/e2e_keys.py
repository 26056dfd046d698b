"""Device keys, one-time and fallback keys, cross-signing keys, signatures, device list changes."""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from homeserver.storage.database import Database, Transaction
from homeserver.storage.streams import StreamIdAllocator

JsonDict = dict[str, Any]


def _chunks(values: list[str], size: int = 200) -> list[list[str]]:
    return [values[i : i + size] for i in range(0, len(values), size)]


class E2EKeyRepository:
    def __init__(self, db: Database) -> None:
        self._db = db
        self.device_list_ids = StreamIdAllocator(db, "device_list_changes")

    # -- device keys -------------------------------------------------------------------

    async def get_device_keys(self, user_id: str, device_id: str) -> JsonDict | None:
        row = await self._db.run_interaction(
            "get_device_keys",
            lambda txn: txn.select_one(
                "SELECT key_json FROM e2e_device_keys WHERE user_id = ? AND device_id = ?", (user_id, device_id)
            ),
        )
        return None if row is None else dict(json.loads(row[0]))

    async def set_device_keys(self, user_id: str, device_id: str, keys: JsonDict) -> None:
        await self._db.run_interaction(
            "set_device_keys",
            lambda txn: txn.execute(
                "INSERT INTO e2e_device_keys (user_id, device_id, key_json) VALUES (?, ?, ?)"
                " ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = excluded.key_json",
                (user_id, device_id, json.dumps(keys)),
            ),
        )

    async def query_devices(
        self, wanted: dict[str, list[str]]
    ) -> dict[str, dict[str, tuple[JsonDict | None, str | None]]]:
        """user -> device -> (device keys or None, display name) for existing devices.

        An empty device list means every device of that user."""

        def txn_fn(txn: Transaction) -> dict[str, dict[str, tuple[JsonDict | None, str | None]]]:
            out: dict[str, dict[str, tuple[JsonDict | None, str | None]]] = {}
            for user_id, device_ids in wanted.items():
                sql = (
                    "SELECT d.device_id, k.key_json, d.display_name FROM devices AS d LEFT JOIN e2e_device_keys AS k"
                    " ON k.user_id = d.user_id AND k.device_id = d.device_id WHERE d.user_id = ?"
                )
                params: list[Any] = [user_id]
                if device_ids:
                    sql += f" AND d.device_id IN ({','.join('?' * len(device_ids))})"
                    params += device_ids
                devices = out.setdefault(user_id, {})
                for device_id, key_json, display_name in txn.select_all(sql, params):
                    devices[str(device_id)] = (json.loads(key_json) if key_json else None, display_name)
            return out

        return await self._db.run_interaction("query_devices", txn_fn)

    # -- one-time and fallback keys ----------------------------------------------------

    async def add_one_time_keys(self, user_id: str, device_id: str, keys: list[tuple[str, str, JsonDict]]) -> list[str]:
        """Store (algorithm, key_id, key); returns the IDs that already existed with other content."""

        def txn_fn(txn: Transaction) -> list[str]:
            conflicts = []
            for algorithm, key_id, key in keys:
                encoded = json.dumps(key, sort_keys=True)
                row = txn.select_one(
                    "SELECT key_json FROM e2e_one_time_keys WHERE user_id = ? AND device_id = ? AND algorithm = ?"
                    " AND key_id = ?",
                    (user_id, device_id, algorithm, key_id),
                )
                if row is not None:
                    if json.loads(row[0]) != key:
                        conflicts.append(f"{algorithm}:{key_id}")
                    continue
                txn.execute(
                    "INSERT INTO e2e_one_time_keys (user_id, device_id, algorithm, key_id, key_json)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (user_id, device_id, algorithm, key_id, encoded),
                )
            if conflicts:
                raise _Conflict(conflicts)  # rolls the whole upload back
            return []

        try:
            return await self._db.run_interaction("add_one_time_keys", txn_fn)
        except _Conflict as e:
            return e.ids

    async def count_one_time_keys(self, user_id: str, device_id: str) -> dict[str, int]:
        rows = await self._db.run_interaction(
            "count_otks",
            lambda txn: txn.select_all(
                "SELECT algorithm, COUNT(*) FROM e2e_one_time_keys WHERE user_id = ? AND device_id = ? GROUP BY algorithm",
                (user_id, device_id),
            ),
        )
        return {str(a): int(c) for a, c in rows}

    async def set_fallback_keys(self, user_id: str, device_id: str, keys: list[tuple[str, str, JsonDict]]) -> None:
        def txn_fn(txn: Transaction) -> None:
            for algorithm, key_id, key in keys:
                txn.execute(
                    "INSERT INTO e2e_fallback_keys (user_id, device_id, algorithm, key_id, key_json, used)"
                    " VALUES (?, ?, ?, ?, ?, 0) ON CONFLICT (user_id, device_id, algorithm) DO UPDATE SET"
                    " key_id = excluded.key_id, key_json = excluded.key_json, used = 0",
                    (user_id, device_id, algorithm, key_id, json.dumps(key)),
                )

        await self._db.run_interaction("set_fallback_keys", txn_fn)

    async def unused_fallback_key_types(self, user_id: str, device_id: str) -> list[str]:
        rows = await self._db.run_interaction(
            "unused_fallback_types",
            lambda txn: txn.select_all(
                "SELECT algorithm FROM e2e_fallback_keys WHERE user_id = ? AND device_id = ? AND used = 0",
                (user_id, device_id),
            ),
        )
        return sorted(str(r[0]) for r in rows)

    async def key_counts(self, user_id: str, device_id: str) -> tuple[dict[str, int], list[str]]:
        """:meth:`count_one_time_keys` and :meth:`unused_fallback_key_types` in one round
        trip (every /sync of an E2EE device reports both)."""

        def txn_fn(txn: Transaction) -> tuple[dict[str, int], list[str]]:
            counts = txn.select_all(
                "SELECT algorithm, COUNT(*) FROM e2e_one_time_keys WHERE user_id = ? AND device_id = ? GROUP BY algorithm",
                (user_id, device_id),
            )
            fallbacks = txn.select_all(
                "SELECT algorithm FROM e2e_fallback_keys WHERE user_id = ? AND device_id = ? AND used = 0",
                (user_id, device_id),
            )
            return {str(a): int(c) for a, c in counts}, sorted(str(r[0]) for r in fallbacks)

        return await self._db.run_interaction("key_counts", txn_fn)

    async def claim_keys(self, wanted: list[tuple[str, str, str]]) -> dict[tuple[str, str], tuple[str, JsonDict]]:
        """For each (user, device, algorithm): pop one one-time key, else use the fallback key.

        Returns (user, device) -> ("algorithm:key_id", key).  Each one-time key is handed out
        once: it is deleted in the same statement that picks it (DELETE ... RETURNING), so
        concurrent claims can't both get it.
        """

        def txn_fn(txn: Transaction) -> dict[tuple[str, str], tuple[str, JsonDict]]:
            out: dict[tuple[str, str], tuple[str, JsonDict]] = {}
            # PostgreSQL: concurrent claims skip each other's locked keys instead of
            # queueing for the same one.  (SQLite has a single writer: nothing to skip.)
            skip_locked = " FOR UPDATE SKIP LOCKED" if txn.engine.name == "postgres" else ""
            for user_id, device_id, algorithm in wanted:
                row = None
                # Under PostgreSQL's READ COMMITTED a concurrent claim may take the key our
                # subquery picked; the DELETE then matches nothing and we pick again.
                for _ in range(10):
                    txn.execute(
                        "DELETE FROM e2e_one_time_keys WHERE user_id = ? AND device_id = ? AND algorithm = ?"
                        " AND key_id = (SELECT key_id FROM e2e_one_time_keys WHERE user_id = ? AND device_id = ?"
                        f" AND algorithm = ? ORDER BY key_id LIMIT 1{skip_locked}) RETURNING key_id, key_json",
                        (user_id, device_id, algorithm, user_id, device_id, algorithm),
                    )
                    row = txn.fetchone()
                    if (
                        row is not None
                        or txn.select_one(
                            "SELECT 1 FROM e2e_one_time_keys WHERE user_id = ? AND device_id = ? AND algorithm = ?",
                            (user_id, device_id, algorithm),
                        )
                        is None
                    ):
                        break
                if row is None:
                    row = txn.select_one(
                        "SELECT key_id, key_json FROM e2e_fallback_keys WHERE user_id = ? AND device_id = ?"
                        " AND algorithm = ?",
                        (user_id, device_id, algorithm),
                    )
                    if row is not None:
                        txn.execute(
                            "UPDATE e2e_fallback_keys SET used = 1 WHERE user_id = ? AND device_id = ? AND algorithm = ?",
                            (user_id, device_id, algorithm),
                        )
                if row is not None:
                    out[(user_id, device_id)] = (f"{algorithm}:{row[0]}", json.loads(row[1]))
            return out

        return await self._db.run_interaction("claim_keys", txn_fn)

    # -- cross-signing -----------------------------------------------------------------

    async def get_cross_signing_keys(self, user_ids: Collection[str]) -> dict[str, dict[str, JsonDict]]:
        ids = list(user_ids)

        def txn_fn(txn: Transaction) -> dict[str, dict[str, JsonDict]]:
            out: dict[str, dict[str, JsonDict]] = {}
            for chunk in _chunks(ids):
                marks = ",".join("?" * len(chunk))
                for user_id, key_type, key_json in txn.select_all(
                    f"SELECT user_id, key_type, key_json FROM e2e_cross_signing_keys WHERE user_id IN ({marks})", chunk
                ):
                    out.setdefault(str(user_id), {})[str(key_type)] = json.loads(key_json)
            return out

        return await self._db.run_interaction("get_cross_signing_keys", txn_fn) if ids else {}

    async def set_cross_signing_key(self, user_id: str, key_type: str, key: JsonDict) -> None:
        await self._db.run_interaction(
            "set_cross_signing_key",
            lambda txn: txn.execute(
                "INSERT INTO e2e_cross_signing_keys (user_id, key_type, key_json, stream_id) VALUES (?, ?, ?, 0)"
                " ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = excluded.key_json",
                (user_id, key_type, json.dumps(key)),
            ),
        )

    async def add_signatures(self, rows: list[tuple[str, str, str, str, str]]) -> None:
        """(target_user, target_key_id, signer_user, signer_key_id, signature)."""
        await self._db.run_interaction(
            "add_signatures",
            lambda txn: txn.execute_many(
                "INSERT INTO e2e_signatures (target_user_id, target_key_id, signer_user_id, signer_key_id, signature)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (target_user_id, target_key_id, signer_user_id, signer_key_id)"
                " DO UPDATE SET signature = excluded.signature",
                rows,
            ),
        )

    async def get_signatures(self, user_ids: Collection[str]) -> dict[tuple[str, str], list[tuple[str, str, str]]]:
        """(target_user, target_key_id) -> [(signer_user, signer_key_id, signature)]."""
        ids = list(user_ids)

        def txn_fn(txn: Transaction) -> dict[tuple[str, str], list[tuple[str, str, str]]]:
            out: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
            for chunk in _chunks(ids):
                marks = ",".join("?" * len(chunk))
                for tu, tk, su, sk, sig in txn.select_all(
                    "SELECT target_user_id, target_key_id, signer_user_id, signer_key_id, signature FROM e2e_signatures"
                    f" WHERE target_user_id IN ({marks})",
                    chunk,
                ):
                    out.setdefault((str(tu), str(tk)), []).append((str(su), str(sk), str(sig)))
            return out

        return await self._db.run_interaction("get_signatures", txn_fn) if ids else {}

    # -- device list changes -----------------------------------------------------------

    async def mark_device_list_changed(
        self, user_id: str, device_ids: Collection[str | None] = (None,)
    ) -> list[tuple[str | None, int, int | None]]:
        """Record a change per device (None: the cross-signing keys), each at its own stream ID.

        Returns (device_id, stream_id, prev_id) per change, where prev_id is the stream ID of
        the user's previous *device* change: m.device_list_update EDUs are chained by it."""
        out: list[tuple[str | None, int, int | None]] = []
        async with self.device_list_ids.lock:
            first = await self.device_list_ids.next_id()

            def txn_fn(txn: Transaction) -> None:
                row = txn.select_one(
                    "SELECT MAX(stream_id) FROM device_list_changes WHERE user_id = ? AND device_id IS NOT NULL",
                    (user_id,),
                )
                prev = None if row is None or row[0] is None else int(row[0])
                for offset, device_id in enumerate(device_ids):
                    stream_id = first + offset
                    txn.execute(
                        "INSERT INTO device_list_changes (stream_id, user_id, device_id) VALUES (?, ?, ?)",
                        (stream_id, user_id, device_id),
                    )
                    out.append((device_id, stream_id, prev))
                    if device_id is not None:
                        prev = stream_id

            await self._db.run_interaction("mark_device_list_changed", txn_fn)
            self.device_list_ids.advance(first + len(device_ids) - 1)
        return out

    async def last_device_change(self, user_id: str) -> int | None:
        """The stream ID of the user's latest device change (what /user/devices reports)."""
        row = await self._db.run_interaction(
            "last_device_change",
            lambda txn: txn.select_one(
                "SELECT MAX(stream_id) FROM device_list_changes WHERE user_id = ? AND device_id IS NOT NULL",
                (user_id,),
            ),
        )
        return None if row is None or row[0] is None else int(row[0])

    async def users_changed_between(self, user_ids: Collection[str], after: int, upto: int) -> set[str]:
        ids = list(user_ids)
        if not ids or after >= upto:
            return set()

        def txn_fn(txn: Transaction) -> set[str]:
            out: set[str] = set()
            for chunk in _chunks(ids):
                marks = ",".join("?" * len(chunk))
                for (user_id,) in txn.select_all(
                    "SELECT DISTINCT user_id FROM device_list_changes WHERE stream_id > ? AND stream_id <= ?"
                    f" AND user_id IN ({marks})",
                    (after, upto, *chunk),
                ):
                    out.add(str(user_id))
            return out

        return await self._db.run_interaction("users_changed", txn_fn)


class _Conflict(Exception):
    def __init__(self, ids: list[str]) -> None:
        super().__init__(ids)
        self.ids = ids
