"""Server-side search: FTS5 on SQLite, tsvector on PostgreSQL (the one dialect-specific store)."""

from __future__ import annotations

import re
from collections.abc import Collection

from homeserver.storage.database import Database, Transaction

SEARCHABLE = {"m.room.message": ("content.body", "body"), "m.room.name": ("content.name", "name"), "m.room.topic": ("content.topic", "topic")}
_WORD = re.compile(r"\w+", re.UNICODE)


def _sqlite_query(term: str) -> str:
    # Each word as a prefix match, ANDed: "bonj mon" finds "Bonjour le monde".
    return " ".join(f'"{w}"*' for w in _WORD.findall(term))


def _postgres_query(term: str) -> str:
    return " & ".join(f"{w}:*" for w in _WORD.findall(term.lower()))


def index_event_txn(txn: Transaction, event_id: str, room_id: str, key: str, value: str, stream: int) -> None:
    if txn.engine.name == "sqlite":
        txn.execute(
            "INSERT INTO event_search (event_id, room_id, key, value, stream_ordering) VALUES (?, ?, ?, ?, ?)",
            (event_id, room_id, key, value, stream),
        )
    else:
        txn.execute(
            "INSERT INTO event_search (event_id, room_id, key, vector, stream_ordering)"
            " VALUES (?, ?, ?, to_tsvector('simple', ?), ?)",
            (event_id, room_id, key, value, stream),
        )


class SearchRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def search(
        self, room_ids: Collection[str], term: str, keys: Collection[str], *, before_stream: int | None, limit: int, by_rank: bool
    ) -> tuple[list[tuple[str, float, int]], int]:
        """(event_id, rank, stream) matches, newest (or best) first, and the total count."""
        ids = list(room_ids)
        if not ids or not _WORD.search(term):
            return [], 0
        marks = ",".join("?" * len(ids))
        key_marks = ",".join("?" * len(keys))

        def txn_fn(txn: Transaction) -> tuple[list[tuple[str, float, int]], int]:
            if txn.engine.name == "sqlite":
                match, rank = "event_search MATCH ?", "-bm25(event_search)"
                query = _sqlite_query(term)
            else:
                match, rank = "vector @@ to_tsquery('simple', ?)", "ts_rank_cd(vector, to_tsquery('simple', ?))"
                query = _postgres_query(term)
            where = f"{match} AND room_id IN ({marks}) AND key IN ({key_marks})"
            params: list[object] = [query, *ids, *keys]
            count_row = txn.select_one(f"SELECT COUNT(*) FROM event_search WHERE {where}", params)
            if before_stream is not None:
                where += " AND stream_ordering < ?"
                params.append(before_stream)
            order = "rank DESC, stream_ordering DESC" if by_rank else "stream_ordering DESC"
            rank_params: list[object] = [query] if txn.engine.name != "sqlite" else []
            rows = txn.select_all(
                f"SELECT event_id, {rank} AS rank, stream_ordering FROM event_search WHERE {where} ORDER BY {order} LIMIT ?",
                [*rank_params, *params, limit],
            )
            return [(str(r[0]), float(r[1]), int(r[2])) for r in rows], int(count_row[0]) if count_row else 0

        return await self._db.run_interaction("search", txn_fn)
