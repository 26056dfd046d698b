"""Other servers' signing keys: the per-key cache and the key responses we serve as a notary."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from homeserver.events.signing import decode_verify_key_base64
from homeserver.federation.server_keys import FetchedKey, ServerKeysResponse
from homeserver.storage.database import Database, Transaction


@dataclass(frozen=True, slots=True)
class StoredKeyResponse:
    """A key response as received from ``source``, with its own (uncapped) validity."""

    server_name: str
    source: str
    valid_until_ts: int
    fetched_ts: int
    key_json: dict[str, Any]


def _row_to_key(server_name: str, row: tuple[Any, ...]) -> FetchedKey | None:
    kid, key_b64, valid_until_ts, fetched_ts, source = row
    try:
        verify_key = decode_verify_key_base64("ed25519", str(kid).split(":", 1)[1], str(key_b64))
    except (ValueError, IndexError):
        return None  # never stored by us; ignore rather than fail every verification
    return FetchedKey(server_name, str(kid), verify_key, int(valid_until_ts), int(fetched_ts), str(source))


class ServerKeyRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_keys(self, server_name: str, key_ids: Collection[str]) -> dict[str, FetchedKey]:
        """The cached keys of ``server_name`` among ``key_ids`` (all of them when empty)."""
        ids = list(key_ids)

        def txn_fn(txn: Transaction) -> list[tuple[Any, ...]]:
            sql = "SELECT key_id, verify_key, valid_until_ts, fetched_ts, source FROM server_keys WHERE server_name = ?"
            if not ids:
                return txn.select_all(sql, (server_name,))
            marks = ",".join("?" * len(ids))
            return txn.select_all(sql + f" AND key_id IN ({marks})", (server_name, *ids))

        rows = await self._db.run_interaction("get_server_keys", txn_fn)
        keys = (_row_to_key(server_name, row) for row in rows)
        return {k.key_id: k for k in keys if k is not None}

    async def store_response(self, response: ServerKeysResponse, *, source: str, fetched_ts: int) -> None:
        """Store a checked key response: its keys, and the JSON for notary answers.

        A key already known keeps whichever validity is longer (as Synapse does): a
        notary's older copy of a response must not shorten what the server told us.
        """
        key_json = json.dumps(response.json, ensure_ascii=False, separators=(",", ":"))

        def txn_fn(txn: Transaction) -> None:
            txn.execute_many(
                "INSERT INTO server_keys (server_name, key_id, verify_key, valid_until_ts, fetched_ts, source)"
                " VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (server_name, key_id) DO UPDATE SET verify_key = excluded.verify_key,"
                " valid_until_ts = excluded.valid_until_ts, fetched_ts = excluded.fetched_ts,"
                " source = excluded.source"
                " WHERE server_keys.valid_until_ts <= excluded.valid_until_ts",
                [
                    (response.server_name, k.key_id, k.key_base64, k.valid_until_ts, fetched_ts, source)
                    for k in response.keys.values()
                ],
            )
            txn.execute(
                "INSERT INTO server_key_responses (server_name, source, valid_until_ts, fetched_ts, key_json)"
                " VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (server_name, source) DO UPDATE SET valid_until_ts = excluded.valid_until_ts,"
                " fetched_ts = excluded.fetched_ts, key_json = excluded.key_json",
                (response.server_name, source, response.valid_until_ts, fetched_ts, key_json),
            )

        await self._db.run_interaction("store_server_key_response", txn_fn)

    async def get_responses(self, server_name: str) -> list[StoredKeyResponse]:
        """Every stored key response for ``server_name``, the most recently fetched first."""

        def txn_fn(txn: Transaction) -> list[tuple[Any, ...]]:
            return txn.select_all(
                "SELECT source, valid_until_ts, fetched_ts, key_json FROM server_key_responses"
                " WHERE server_name = ? ORDER BY fetched_ts DESC",
                (server_name,),
            )

        rows = await self._db.run_interaction("get_server_key_responses", txn_fn)
        return [
            StoredKeyResponse(server_name, str(source), int(until), int(fetched), json.loads(raw))
            for source, until, fetched, raw in rows
        ]
