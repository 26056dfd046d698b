"""Row writers of event persistence (:mod:`homeserver.storage.events`): the ``events``
row, the tables derived from an event (relations, search, redactions), and the room's
current state with its memberships, written in a few statements whatever their size."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from homeserver.core.json import encode_canonical_json
from homeserver.events.model import Event
from homeserver.storage.database import Transaction
from homeserver.storage.search import SEARCHABLE, index_event_txn
from homeserver.storage.state import StateKey, insert_rows_txn

_CHUNK = 200
EVENT_ROW_INSERT = (
    "INSERT INTO events (stream_ordering, event_id, room_id, type, state_key, sender, depth,"
    " origin_server_ts, received_ts, json, outlier, rejected_reason)"
)


def relation_of(event: Event) -> tuple[str, str, str | None] | None:
    relates = event.content.get("m.relates_to")
    if not isinstance(relates, dict):
        return None
    rel_type, target = relates.get("rel_type"), relates.get("event_id")
    if not isinstance(rel_type, str) or not isinstance(target, str):
        return None
    key = relates.get("key") if rel_type == "m.annotation" else None
    return target, rel_type, key if isinstance(key, str) else None


def event_row(
    event: Event, stream: int, received_ts: int, outlier: int, rejected_reason: str | None
) -> tuple[Any, ...]:
    return (
        stream,
        event.event_id,
        event.room_id,
        event.type,
        event.state_key,
        event.sender,
        event.depth,
        event.origin_server_ts,
        received_ts,
        encode_canonical_json(event.dict).decode("utf-8"),
        outlier,
        rejected_reason,
    )


def store_derived_txn(txn: Transaction, event: Event, stream: int) -> None:
    relation = relation_of(event)
    if relation is not None:
        target, rel_type, key = relation
        txn.execute(
            "INSERT INTO event_relations (event_id, relates_to_id, relation_type, aggregation_key, room_id,"
            " sender, type, stream_ordering) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (event.event_id, target, rel_type, key, event.room_id, event.sender, event.type, stream),
        )
    searchable = SEARCHABLE.get(event.type)
    if searchable is not None:
        value = event.content.get(searchable[1])
        if isinstance(value, str) and value:
            index_event_txn(txn, event.event_id, event.room_id, searchable[0], value, stream)
    if event.type == "m.room.redaction" and event.redacts:
        txn.execute(
            "INSERT INTO redactions (event_id, redacts) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (event.event_id, event.redacts),
        )


def update_current_state_txn(
    txn: Transaction,
    room_id: str,
    delta: Mapping[StateKey, str | None],
    stream: int,
    known_members: Mapping[str, tuple[Mapping[str, Any], str]],
) -> None:
    """Apply ``delta`` to the room's current state and memberships, in a few
    statements whatever its size (a join brings the whole state at once).
    ``known_members``: (content, sender) of membership events already in memory."""
    removed = [key for key, event_id in delta.items() if event_id is None]
    for type_, state_key in removed:
        txn.execute(
            "DELETE FROM current_state WHERE room_id = ? AND type = ? AND state_key = ?",
            (room_id, type_, state_key),
        )
        if type_ == "m.room.member":
            txn.execute("DELETE FROM room_memberships WHERE room_id = ? AND user_id = ?", (room_id, state_key))
    set_rows = [(room_id, k[0], k[1], e) for k, e in delta.items() if e is not None]
    insert_rows_txn(
        txn,
        "INSERT INTO current_state (room_id, type, state_key, event_id)",
        set_rows,
        "ON CONFLICT (room_id, type, state_key) DO UPDATE SET event_id = excluded.event_id",
    )
    members = {e: k[1] for k, e in delta.items() if e is not None and k[0] == "m.room.member"}
    found: dict[str, tuple[Mapping[str, Any], str]] = {e: known_members[e] for e in members if e in known_members}
    unknown = [e for e in members if e not in found]
    for start in range(0, len(unknown), _CHUNK):
        chunk = unknown[start : start + _CHUNK]
        for event_id, json_text, sender in txn.select_all(
            f"SELECT event_id, json, sender FROM events WHERE event_id IN ({','.join('?' * len(chunk))})", chunk
        ):
            content = json.loads(json_text).get("content", {})
            found[str(event_id)] = (content if isinstance(content, dict) else {}, str(sender))
    rows = []
    for event_id, state_key in members.items():
        if event_id not in found:
            continue
        content, sender = found[event_id]
        displayname = content.get("displayname")
        avatar_url = content.get("avatar_url")
        rows.append(
            (
                room_id,
                state_key,
                str(content.get("membership")),
                event_id,
                stream,
                sender,
                displayname if isinstance(displayname, str) else None,
                avatar_url if isinstance(avatar_url, str) else None,
                0,
            )
        )
    insert_rows_txn(
        txn,
        "INSERT INTO room_memberships (room_id, user_id, membership, event_id, stream_ordering, sender,"
        " displayname, avatar_url, forgotten)",
        rows,
        "ON CONFLICT (room_id, user_id) DO UPDATE SET membership = excluded.membership,"
        " event_id = excluded.event_id, stream_ordering = excluded.stream_ordering,"
        " sender = excluded.sender, displayname = excluded.displayname,"
        " avatar_url = excluded.avatar_url, forgotten = 0",
    )
