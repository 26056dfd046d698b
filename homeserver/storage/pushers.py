"""Users' pushers (spec "Push Notifications"), keyed by (user, app_id, pushkey).

A pusher remembers the device whose access token created it; once that device is gone
(logout, password change, deletion) the pusher no longer counts, even before the
device-deletion listener has removed its row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from homeserver.storage.database import Database, Row, Transaction


@dataclass(frozen=True, slots=True)
class PusherRecord:
    user_id: str
    app_id: str
    pushkey: str
    kind: str
    app_display_name: str
    device_display_name: str
    profile_tag: str
    lang: str
    data: dict[str, Any]
    device_id: str | None
    pushkey_ts: int

    def to_client_json(self) -> dict[str, Any]:
        """The pusher as GET /pushers lists it."""
        return {
            "pushkey": self.pushkey,
            "kind": self.kind,
            "app_id": self.app_id,
            "app_display_name": self.app_display_name,
            "device_display_name": self.device_display_name,
            "profile_tag": self.profile_tag,
            "lang": self.lang,
            "data": self.data,
        }


_COLUMNS = (
    "p.user_id, p.app_id, p.pushkey, p.kind, p.app_display_name, p.device_display_name,"
    " p.profile_tag, p.lang, p.data, p.device_id, p.pushkey_ts"
)
# A pusher whose creating device was deleted is dead even if its row is still there.
_LIVE = (
    "(p.device_id IS NULL OR EXISTS (SELECT 1 FROM devices AS d"
    " WHERE d.user_id = p.user_id AND d.device_id = p.device_id))"
)


def _record(row: Row) -> PusherRecord:
    data = json.loads(str(row[8]))
    return PusherRecord(
        user_id=str(row[0]),
        app_id=str(row[1]),
        pushkey=str(row[2]),
        kind=str(row[3]),
        app_display_name=str(row[4]),
        device_display_name=str(row[5]),
        profile_tag=str(row[6]),
        lang=str(row[7]),
        data=data if isinstance(data, dict) else {},
        device_id=None if row[9] is None else str(row[9]),
        pushkey_ts=int(row[10]),
    )


class PusherRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def upsert(self, pusher: PusherRecord, *, remove_for_other_users: bool) -> None:
        """Create or replace the user's pusher for (app_id, pushkey); with
        ``remove_for_other_users`` (a set without ``append``), other users' pushers for the
        same (app_id, pushkey) go, in the same transaction."""

        def txn_fn(txn: Transaction) -> None:
            if remove_for_other_users:
                txn.execute(
                    "DELETE FROM pushers WHERE app_id = ? AND pushkey = ? AND user_id <> ?",
                    (pusher.app_id, pusher.pushkey, pusher.user_id),
                )
            txn.execute(
                "DELETE FROM pushers WHERE user_id = ? AND app_id = ? AND pushkey = ?",
                (pusher.user_id, pusher.app_id, pusher.pushkey),
            )
            txn.execute(
                "INSERT INTO pushers (user_id, app_id, pushkey, kind, app_display_name, device_display_name,"
                " profile_tag, lang, data, device_id, pushkey_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    pusher.user_id,
                    pusher.app_id,
                    pusher.pushkey,
                    pusher.kind,
                    pusher.app_display_name,
                    pusher.device_display_name,
                    pusher.profile_tag,
                    pusher.lang,
                    json.dumps(pusher.data),
                    pusher.device_id,
                    pusher.pushkey_ts,
                ),
            )

        await self._db.run_interaction("upsert_pusher", txn_fn)

    async def delete(self, user_id: str, app_id: str, pushkey: str) -> bool:
        """Remove one of the user's pushers; True if there was one."""

        def txn_fn(txn: Transaction) -> bool:
            txn.execute(
                "DELETE FROM pushers WHERE user_id = ? AND app_id = ? AND pushkey = ?", (user_id, app_id, pushkey)
            )
            return txn.rowcount > 0

        return await self._db.run_interaction("delete_pusher", txn_fn)

    async def delete_for_devices(self, user_id: str, device_ids: list[str]) -> None:
        def txn_fn(txn: Transaction) -> None:
            txn.execute_many(
                "DELETE FROM pushers WHERE user_id = ? AND device_id = ?", [(user_id, d) for d in device_ids]
            )

        await self._db.run_interaction("delete_pushers_for_devices", txn_fn)

    async def for_user(self, user_id: str) -> list[PusherRecord]:
        """The user's live pushers, oldest first."""
        rows = await self._db.run_interaction(
            "pushers_for_user",
            lambda txn: txn.select_all(
                f"SELECT {_COLUMNS} FROM pushers AS p WHERE p.user_id = ? AND {_LIVE}"
                " ORDER BY p.pushkey_ts, p.app_id, p.pushkey",
                (user_id,),
            ),
        )
        return [_record(r) for r in rows]

    async def for_users(self, user_ids: list[str]) -> dict[str, list[PusherRecord]]:
        """The live pushers of many users in one transaction (users without any: absent)."""

        def txn_fn(txn: Transaction) -> dict[str, list[PusherRecord]]:
            found: dict[str, list[PusherRecord]] = {}
            for start in range(0, len(user_ids), 500):
                chunk = user_ids[start : start + 500]
                marks = ", ".join("?" for _ in chunk)
                for row in txn.select_all(
                    f"SELECT {_COLUMNS} FROM pushers AS p WHERE p.user_id IN ({marks}) AND {_LIVE}"
                    " ORDER BY p.pushkey_ts, p.app_id, p.pushkey",
                    chunk,
                ):
                    record = _record(row)
                    found.setdefault(record.user_id, []).append(record)
            return found

        return await self._db.run_interaction("pushers_for_users", txn_fn)

    async def get(self, user_id: str, app_id: str, pushkey: str) -> PusherRecord | None:
        row = await self._db.run_interaction(
            "get_pusher",
            lambda txn: txn.select_one(
                f"SELECT {_COLUMNS} FROM pushers AS p WHERE p.user_id = ? AND p.app_id = ? AND p.pushkey = ?"
                f" AND {_LIVE}",
                (user_id, app_id, pushkey),
            ),
        )
        return _record(row) if row else None

    async def unread_badge(self, user_id: str) -> int:
        """How many rooms hold notifications after the user's read receipt (the badge Synapse
        sends as ``counts.unread``)."""
        row = await self._db.run_interaction(
            "pusher_badge",
            lambda txn: txn.select_one(
                "SELECT COUNT(DISTINCT p.room_id) FROM event_push_actions AS p"
                " WHERE p.user_id = ? AND p.notif = 1 AND p.stream_ordering > COALESCE(("
                " SELECT MAX(r.event_stream_ordering) FROM receipts AS r WHERE r.user_id = p.user_id"
                " AND r.room_id = p.room_id AND r.receipt_type IN ('m.read', 'm.read.private')), 0)",
                (user_id,),
            ),
        )
        return int(row[0]) if row else 0
