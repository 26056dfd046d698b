"""JSON for responses: one call for small bodies, piece by piece for large ones.

``json.dumps`` of a whole body holds a list of every token and then their join, about
three times the size of the response, on top of the response itself.  A :class:`LargeJSON`
body (an initial /sync of hundreds of rooms) is encoded piece by piece instead, and an
:class:`EncodedJSON` value inside it (a room already encoded while the sync was computed,
so that its dicts could be freed) is spliced in as it is.  The bytes are the same as
``json.dumps(body, ensure_ascii=False, separators=(",", ":"))`` gives.
"""

from __future__ import annotations

import json
from typing import Any


def encode_json(body: Any) -> bytes:
    if type(body) is EncodedJSON:
        return body.data
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class EncodedJSON:
    """A value already encoded (by :func:`encode_json`); only a LargeJSON can hold one."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class LargeJSON:
    """A response body encoded piece by piece: the dicts of its first ``depth`` levels key
    by key, each value below them on its own."""

    __slots__ = ("body", "depth")

    def __init__(self, body: Any, depth: int) -> None:
        self.body = body
        self.depth = depth

    def encode(self) -> list[bytes]:
        out: list[bytes] = []
        _encode_pieces(self.body, self.depth, out)
        return out


def _encode_pieces(value: Any, depth: int, out: list[bytes]) -> None:
    if depth <= 0 or type(value) is not dict or not value:
        out.append(encode_json(value))
        return
    if not all(type(key) is str for key in value):
        out.append(encode_json(value))  # json.dumps converts other keys (ints...) itself
        return
    sep = b"{"
    for key, item in value.items():
        out.append(sep + encode_json(key) + b":")
        _encode_pieces(item, depth - 1, out)
        sep = b","
    out.append(b"}")
