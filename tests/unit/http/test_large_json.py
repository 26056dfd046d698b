"""LargeJSON (big responses encoded piece by piece) gives exactly json.dumps's bytes."""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

import pytest

from homeserver.core.response_json import EncodedJSON, LargeJSON, encode_json

BODIES: list[Any] = [
    {},
    [],
    "text",
    None,
    {"next_batch": "s1", "rooms": {"join": {}, "invite": {}, "leave": {}}},
    {"a": {"b": {"c": {"d": [1, "é", None, 1.5, True]}}, "x": {}}, "u": "\u2028\U0001f600"},
    {"n": {1: 2, "k": {"deep": ["é"]}}},  # a non-string key: json.dumps converts it itself
    {"rooms": {"join": {"!r:x": {"timeline": {"events": [{"type": "m.room.message"}], "limited": False}}}}},
]


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("depth", [0, 1, 2, 3, 4])
def test_same_bytes_as_json_dumps(body: Any, depth: int) -> None:
    pieces = LargeJSON(body, depth).encode()
    assert b"".join(pieces) == encode_json(body)
    assert json.loads(b"".join(pieces)) == json.loads(json.dumps(body))


def _sync_like(rooms: int) -> dict[str, Any]:
    event = {
        "type": "m.room.member",
        "sender": "@someone_12:gouv.example",
        "state_key": "@someone_12:gouv.example",
        "content": {"membership": "join", "displayname": "Someone"},
        "origin_server_ts": 1763812345678,
        "event_id": "$abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ",
        "unsigned": {"age": 1234},
    }
    return {
        "next_batch": "s1_2_3",
        "rooms": {
            "join": {
                f"!room{i}:gouv.example": {
                    "state": {"events": [dict(event) for _ in range(8)]},
                    "timeline": {"events": [dict(event) for _ in range(10)], "limited": False, "prev_batch": "t1"},
                }
                for i in range(rooms)
            }
        },
    }


def test_encoding_peak_is_a_fraction_of_json_dumps() -> None:
    """The point of it: json.dumps of a 200-room body holds ~3x the response size in
    intermediate strings; piece by piece holds about the response plus one room."""
    body = _sync_like(200)
    size = len(encode_json(body))
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        encode_json(body)
        whole_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        pieces = LargeJSON(body, 3).encode()
        pieces_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(len(p) for p in pieces) == size
    assert whole_peak > 2.5 * size
    assert pieces_peak < 1.5 * size


def test_encoded_values_are_spliced_in() -> None:
    rooms = {f"!r{i}:x": {"timeline": {"events": [{"body": "é" * i}]}} for i in range(5)}
    plain = {"next_batch": "s", "rooms": {"join": rooms, "leave": {}}}
    encoded = {
        "next_batch": "s",
        "rooms": {"join": {k: EncodedJSON(encode_json(v)) for k, v in rooms.items()}, "leave": {}},
    }
    assert b"".join(LargeJSON(encoded, 3).encode()) == encode_json(plain)
