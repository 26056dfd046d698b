"""Our copy of remote users' device lists and cross-signing keys (the device list cache).

A copy is kept while a local user shares a room with the remote user; its ``stream_id``
is the remote server's device-list position it reflects, so an m.device_list_update EDU
can be applied as a delta when its ``prev_id`` is known.  A stale copy is never served.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from homeserver.storage.database import Database, Transaction

JsonDict = dict[str, Any]
CROSS_SIGNING_KEY_TYPES = ("master", "self_signing")


@dataclass(frozen=True, slots=True)
class CachedList:
    stream_id: int | None
    stale: bool


@dataclass(frozen=True, slots=True)
class RemoteDevice:
    device_id: str
    keys: JsonDict | None
    display_name: str | None


def _chunks(values: list[str], size: int = 200) -> list[list[str]]:
    return [values[i : i + size] for i in range(0, len(values), size)]


class RemoteDeviceRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def cached_lists(self, user_ids: Collection[str]) -> dict[str, CachedList]:
        ids = list(user_ids)

        def txn_fn(txn: Transaction) -> dict[str, CachedList]:
            out: dict[str, CachedList] = {}
            for chunk in _chunks(ids):
                marks = ",".join("?" * len(chunk))
                for user_id, stream_id, stale in txn.select_all(
                    f"SELECT user_id, stream_id, stale FROM e2e_remote_device_lists WHERE user_id IN ({marks})", chunk
                ):
                    out[str(user_id)] = CachedList(None if stream_id is None else int(stream_id), bool(stale))
            return out

        return await self._db.run_interaction("cached_device_lists", txn_fn) if ids else {}

    async def get_devices(self, wanted: dict[str, list[str]]) -> dict[str, list[RemoteDevice]]:
        """user -> cached devices (all of them for an empty device list)."""

        def txn_fn(txn: Transaction) -> dict[str, list[RemoteDevice]]:
            out: dict[str, list[RemoteDevice]] = {}
            for user_id, device_ids in wanted.items():
                sql = "SELECT device_id, key_json, display_name FROM e2e_remote_devices WHERE user_id = ?"
                params: list[Any] = [user_id]
                if device_ids:
                    sql += f" AND device_id IN ({','.join('?' * len(device_ids))})"
                    params += device_ids
                out[user_id] = [
                    RemoteDevice(str(d), json.loads(k) if k else None, n)
                    for d, k, n in txn.select_all(sql + " ORDER BY device_id", params)
                ]
            return out

        return await self._db.run_interaction("get_remote_devices", txn_fn)

    async def replace_list(
        self,
        user_id: str,
        devices: list[RemoteDevice],
        cross_signing: dict[str, JsonDict],
        stream_id: int | None,
        now_ms: int,
    ) -> None:
        """A full resync: the user's devices and cross-signing keys become exactly these."""

        def txn_fn(txn: Transaction) -> None:
            txn.execute("DELETE FROM e2e_remote_devices WHERE user_id = ?", (user_id,))
            txn.execute_many(
                "INSERT INTO e2e_remote_devices (user_id, device_id, key_json, display_name) VALUES (?, ?, ?, ?)",
                [(user_id, d.device_id, json.dumps(d.keys) if d.keys else None, d.display_name) for d in devices],
            )
            for key_type in CROSS_SIGNING_KEY_TYPES:
                key = cross_signing.get(key_type)
                if key is None:
                    txn.execute(
                        "DELETE FROM e2e_cross_signing_keys WHERE user_id = ? AND key_type = ?", (user_id, key_type)
                    )
                else:
                    _set_cross_signing_txn(txn, user_id, key_type, key)
            txn.execute(
                "INSERT INTO e2e_remote_device_lists (user_id, stream_id, stale, updated_ts) VALUES (?, ?, 0, ?)"
                " ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id, stale = 0,"
                " updated_ts = excluded.updated_ts",
                (user_id, stream_id, now_ms),
            )

        await self._db.run_interaction("replace_remote_device_list", txn_fn)

    async def apply_update(
        self, user_id: str, device: RemoteDevice, deleted: bool, stream_id: int, now_ms: int
    ) -> None:
        """One m.device_list_update applied as a delta to a copy that is up to date."""

        def txn_fn(txn: Transaction) -> None:
            if deleted:
                txn.execute(
                    "DELETE FROM e2e_remote_devices WHERE user_id = ? AND device_id = ?", (user_id, device.device_id)
                )
            else:
                txn.execute(
                    "INSERT INTO e2e_remote_devices (user_id, device_id, key_json, display_name) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = excluded.key_json,"
                    " display_name = excluded.display_name",
                    (user_id, device.device_id, json.dumps(device.keys) if device.keys else None, device.display_name),
                )
            txn.execute(
                "UPDATE e2e_remote_device_lists SET stream_id = ?, updated_ts = ? WHERE user_id = ?",
                (stream_id, now_ms, user_id),
            )

        await self._db.run_interaction("apply_remote_device_update", txn_fn)

    async def set_cross_signing_keys(self, user_id: str, keys: dict[str, JsonDict]) -> None:
        def txn_fn(txn: Transaction) -> None:
            for key_type, key in keys.items():
                _set_cross_signing_txn(txn, user_id, key_type, key)

        await self._db.run_interaction("set_remote_cross_signing", txn_fn)

    async def mark_stale(self, user_ids: Collection[str]) -> None:
        """These copies may have missed updates: resync before serving them again."""
        ids = list(user_ids)

        def txn_fn(txn: Transaction) -> None:
            for chunk in _chunks(ids):
                marks = ",".join("?" * len(chunk))
                txn.execute(f"UPDATE e2e_remote_device_lists SET stale = 1 WHERE user_id IN ({marks})", chunk)

        if ids:
            await self._db.run_interaction("mark_remote_lists_stale", txn_fn)

    async def users_sharing_a_room_with_us(self, user_ids: Collection[str], server_name: str) -> set[str]:
        """Those of ``user_ids`` joined to a room where a user of ``server_name`` is joined."""
        ids = list(user_ids)
        suffix = f"%:{server_name}"

        def txn_fn(txn: Transaction) -> set[str]:
            out: set[str] = set()
            for chunk in _chunks(ids):
                marks = ",".join("?" * len(chunk))
                for (user_id,) in txn.select_all(
                    "SELECT DISTINCT a.user_id FROM room_memberships AS a JOIN room_memberships AS b"
                    f" ON a.room_id = b.room_id WHERE a.user_id IN ({marks}) AND a.membership = 'join'"
                    " AND b.membership = 'join' AND b.user_id LIKE ?",
                    (*chunk, suffix),
                ):
                    out.add(str(user_id))
            return out

        return await self._db.run_interaction("users_sharing_rooms", txn_fn) if ids else set()


def _set_cross_signing_txn(txn: Transaction, user_id: str, key_type: str, key: JsonDict) -> None:
    txn.execute(
        "INSERT INTO e2e_cross_signing_keys (user_id, key_type, key_json, stream_id) VALUES (?, ?, ?, 0)"
        " ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = excluded.key_json",
        (user_id, key_type, json.dumps(key)),
    )
