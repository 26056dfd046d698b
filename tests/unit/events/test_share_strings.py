"""share_strings: events read from the database share their repeated strings."""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

from homeserver.events.model import Event, share_strings
from homeserver.events.room_versions import get_room_version


def _message(i: int) -> str:
    return json.dumps(
        {
            "auth_events": ["$" + "A" * 43, "$" + "B" * 43, "$" + "C" * 43],
            "content": {"body": f"message {i}", "msgtype": "m.text", "m.relates_to": {"rel_type": "m.thread"}},
            "depth": 10 + i,
            "hashes": {"sha256": str(i).rjust(43, "x")},
            "origin_server_ts": 1763812345678 + i,
            "prev_events": [str(i).rjust(44, "$")],
            "room_id": "!" + "R" * 43,
            "sender": "@agent:ministere.gouv.example",
            "signatures": {"ministere.gouv.example": {"ed25519:a_abcd": str(i).rjust(86, "s")}},
            "type": "m.room.message",
            "unsigned": {"age_ts": 1763812345678},
        }
    )


def test_equal_and_shared() -> None:
    a = share_strings(json.loads(_message(1)))
    b = share_strings(json.loads(_message(2)))
    assert a == json.loads(_message(1))
    for key in ("room_id", "sender", "type"):
        assert a[key] is b[key]
    assert a["auth_events"][0] is b["auth_events"][0]
    key_a, key_b = (next(iter(e["signatures"]["ministere.gouv.example"])) for e in (a, b))
    assert key_a is key_b
    # the event built on it has the same ID as one built on the parsed dict
    version = get_room_version("12")
    assert Event(a, version).event_id == Event(json.loads(_message(1)), version).event_id


def test_odd_shapes_left_alone() -> None:
    deep: dict[str, Any] = {"type": "x", "content": {"a": {"b": {"c": {"d": 1}}}}, "auth_events": [1, "$x"]}
    assert share_strings(deep) == deep
    assert share_strings({}) == {}


def test_uses_less_memory() -> None:
    texts = [_message(i) for i in range(500)]
    tracemalloc.start()
    try:
        plain = [json.loads(t) for t in texts]
        plain_size = tracemalloc.get_traced_memory()[0]
        del plain
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        shared = [share_strings(json.loads(t)) for t in texts]
        shared_size = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(shared) == 500
    assert shared_size < 0.75 * plain_size
