"""Canonical JSON (spec appendix "Canonical JSON") and strict JSON parsing.

Canonical JSON is the byte form that hashes and signatures are computed over: UTF-8,
no insignificant whitespace, keys sorted by code point, integers only, in the range
``[-(2**53)+1, (2**53)-1]``.  The encoding itself comes from python-canonicaljson; this
module adds the value checks the spec requires, so that we never produce bytes another
server would refuse.

Room versions 1 to 5 predate strict canonical JSON and may carry floats or big integers;
hashing such events needs ``encode_canonical_json(obj, strict=False)``, which encodes
exactly as python-canonicaljson (and so Synapse) does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import canonicaljson

CANONICAL_JSON_MAX_INT = (2**53) - 1
CANONICAL_JSON_MIN_INT = -CANONICAL_JSON_MAX_INT


class CanonicalJSONError(ValueError):
    """A value that has no canonical JSON form (float, out-of-range integer, bad key...)."""


def check_canonical_json_values(obj: object) -> None:
    """Check that ``obj`` can be encoded as canonical JSON, without encoding it.

    Raises :class:`CanonicalJSONError` naming the offending path for floats (including
    NaN and infinities), integers out of range, non-string keys, strings that are not
    valid Unicode (lone surrogates) and any non-JSON type.
    """
    # An explicit stack rather than recursion: events are small, but client input to
    # other endpoints is not, and a deeply nested body must not blow the Python stack.
    stack: list[tuple[object, str]] = [(obj, "")]
    while stack:
        value, path = stack.pop()
        if value is None or value is True or value is False:
            continue
        if type(value) is int:
            if not CANONICAL_JSON_MIN_INT <= value <= CANONICAL_JSON_MAX_INT:
                raise CanonicalJSONError(f"integer out of range at {path or '.'}")
        elif isinstance(value, str):
            _check_string(value, path)
        elif isinstance(value, float):
            raise CanonicalJSONError(f"float not allowed at {path or '.'}")
        elif isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise CanonicalJSONError(f"non-string key {key!r} at {path or '.'}")
                _check_string(key, path)
                stack.append((item, f"{path}.{key}"))
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                stack.append((item, f"{path}[{index}]"))
        else:
            raise CanonicalJSONError(f"value of type {type(value).__name__} is not JSON at {path or '.'}")


def _check_string(value: str, path: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise CanonicalJSONError(f"invalid Unicode string at {path or '.'}") from e


def encode_canonical_json(obj: object, *, strict: bool = True) -> bytes:
    """Encode ``obj`` as canonical JSON bytes.

    With ``strict`` (the default) the value checks of :func:`check_canonical_json_values`
    apply first.  ``strict=False`` is for hashing and signing events of room versions
    that do not enforce canonical JSON; it still refuses NaN and infinities.
    """
    if strict:
        check_canonical_json_values(obj)
    try:
        return canonicaljson.encode_canonical_json(obj)
    except (ValueError, TypeError, RecursionError) as e:  # NaN, surrogates, unknown types, depth
        raise CanonicalJSONError(str(e)) from e


def _reject_constant(name: str) -> Any:
    raise ValueError(f"JSON constant {name} is not allowed")


# Python's json module accepts the non-standard NaN, Infinity and -Infinity; Matrix does not.
json_decoder = json.JSONDecoder(parse_constant=_reject_constant)


def parse_json_strict(data: bytes | str) -> Any:
    """Parse JSON text (UTF-8 bytes or str), rejecting NaN/Infinity/-Infinity.

    Raises ``ValueError`` (``json.JSONDecodeError``, ``UnicodeDecodeError`` or our own)
    on anything that is not valid JSON.  Floats are returned as floats: whether they are
    acceptable depends on where the JSON is used (see :func:`check_canonical_json_values`).
    """
    text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    try:
        return json_decoder.decode(text)
    except RecursionError as e:  # absurdly deep nesting: bad input, not a server error
        raise ValueError("JSON is nested too deeply") from e
