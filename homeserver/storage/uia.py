"""User-interactive authentication sessions, persisted so they survive a restart."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from homeserver.storage.database import Database, Transaction


@dataclass(frozen=True, slots=True)
class UIASession:
    session_id: str
    created_ts: int
    uri: str
    method: str
    description: str
    serverdict: dict[str, Any]
    user_id: str | None


class UIARepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_session(
        self,
        session_id: str,
        now_ms: int,
        uri: str,
        method: str,
        description: str,
        serverdict: dict[str, Any],
        user_id: str | None,
    ) -> None:
        await self._db.run_interaction(
            "uia_create",
            lambda txn: txn.execute(
                "INSERT INTO ui_auth_sessions (session_id, created_ts, uri, method, description,"
                " serverdict, user_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (session_id, now_ms, uri, method, description, json.dumps(serverdict), user_id),
            ),
        )

    async def get_session(self, session_id: str) -> UIASession | None:
        def txn_fn(txn: Transaction) -> UIASession | None:
            row = txn.select_one(
                "SELECT session_id, created_ts, uri, method, description, serverdict, user_id"
                " FROM ui_auth_sessions WHERE session_id = ?",
                (session_id,),
            )
            if row is None:
                return None
            return UIASession(
                session_id=str(row[0]),
                created_ts=int(row[1]),
                uri=str(row[2]),
                method=str(row[3]),
                description=str(row[4]),
                serverdict=json.loads(row[5]),
                user_id=None if row[6] is None else str(row[6]),
            )

        return await self._db.run_interaction("uia_get", txn_fn)

    async def set_serverdict(self, session_id: str, serverdict: dict[str, Any]) -> None:
        await self._db.run_interaction(
            "uia_set_serverdict",
            lambda txn: txn.execute(
                "UPDATE ui_auth_sessions SET serverdict = ? WHERE session_id = ?",
                (json.dumps(serverdict), session_id),
            ),
        )

    async def mark_stage_complete(self, session_id: str, stage_type: str, result: Any) -> None:
        await self._db.run_interaction(
            "uia_mark_stage",
            lambda txn: txn.execute(
                "INSERT INTO ui_auth_session_stages (session_id, stage_type, result) VALUES (?, ?, ?)"
                " ON CONFLICT (session_id, stage_type) DO UPDATE SET result = excluded.result",
                (session_id, stage_type, json.dumps(result)),
            ),
        )

    async def get_completed_stages(self, session_id: str) -> dict[str, Any]:
        def txn_fn(txn: Transaction) -> dict[str, Any]:
            rows = txn.select_all(
                "SELECT stage_type, result FROM ui_auth_session_stages WHERE session_id = ?", (session_id,)
            )
            return {str(r[0]): json.loads(r[1]) for r in rows}

        return await self._db.run_interaction("uia_get_stages", txn_fn)

    async def delete_session(self, session_id: str) -> None:
        def txn_fn(txn: Transaction) -> None:
            txn.execute("DELETE FROM ui_auth_session_stages WHERE session_id = ?", (session_id,))
            txn.execute("DELETE FROM ui_auth_sessions WHERE session_id = ?", (session_id,))

        await self._db.run_interaction("uia_delete", txn_fn)

    async def delete_expired(self, before_ts: int) -> None:
        def txn_fn(txn: Transaction) -> None:
            txn.execute(
                "DELETE FROM ui_auth_session_stages WHERE session_id IN"
                " (SELECT session_id FROM ui_auth_sessions WHERE created_ts < ?)",
                (before_ts,),
            )
            txn.execute("DELETE FROM ui_auth_sessions WHERE created_ts < ?", (before_ts,))

        await self._db.run_interaction("uia_delete_expired", txn_fn)
