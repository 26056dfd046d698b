"""Request parsing: the one validation approach for every servlet.

Hand-written typed readers that name the offending field in the error:
``M_NOT_JSON`` for a body that is not JSON, ``M_BAD_JSON`` for a body of the wrong shape,
``M_MISSING_PARAM`` for an absent required field and ``M_INVALID_PARAM`` for a present
field with a wrong value.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web import server

from homeserver.core.errors import Codes, MatrixError


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_value(raw: bytes) -> Any:
    """Parse bytes as strict JSON (no NaN/Infinity), raising M_NOT_JSON."""
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MatrixError(400, Codes.NOT_JSON, "Content not JSON.") from None


def read_body_bytes(request: server.Request) -> bytes:
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    return bytes(content.read())


def parse_json_object(request: server.Request, *, allow_empty: bool = False) -> Body:
    """The request body as a JSON object; an empty body is ``{}`` when ``allow_empty``."""
    raw = read_body_bytes(request)
    if not raw.strip() and allow_empty:
        return Body({})
    value = parse_json_value(raw)
    if not isinstance(value, dict):
        raise MatrixError(400, Codes.BAD_JSON, "Content must be a JSON object.")
    return Body(value)


# Body's methods are named after the JSON types they read; these aliases keep the
# builtins usable in its annotations.
_Str = str
_Bool = bool
_Int = int


class Body:
    """Typed access to a JSON object, with field-naming errors.  ``prefix`` names nesting."""

    def __init__(self, data: dict[str, Any], prefix: _Str = "") -> None:
        self.data = data
        self._prefix = prefix

    def _name(self, key: _Str) -> _Str:
        return f"{self._prefix}{key}"

    def has(self, key: _Str) -> bool:
        return key in self.data

    def _get(self, key: _Str, required: _Bool) -> Any:
        if key not in self.data or self.data[key] is None:
            if required:
                raise MatrixError(400, Codes.MISSING_PARAM, f"Missing parameter: {self._name(key)}")
            return None
        return self.data[key]

    def _wrong(self, key: _Str, expected: _Str) -> MatrixError:
        return MatrixError(400, Codes.BAD_JSON, f"Parameter {self._name(key)} must be {expected}")

    def str(self, key: _Str, *, required: _Bool = False, max_length: _Int | None = None) -> _Str | None:
        value = self._get(key, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self._wrong(key, "a string")
        if max_length is not None and len(value) > max_length:
            raise MatrixError(
                400, Codes.INVALID_PARAM, f"Parameter {self._name(key)} is longer than {max_length} characters"
            )
        return value

    def required_str(self, key: _Str, *, max_length: _Int | None = None) -> _Str:
        value = self.str(key, required=True, max_length=max_length)
        assert value is not None
        return value

    def bool(self, key: _Str, default: _Bool) -> _Bool:
        value = self._get(key, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._wrong(key, "a boolean")
        return value

    def int(self, key: _Str, *, required: _Bool = False, minimum: _Int | None = None) -> _Int | None:
        value = self._get(key, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong(key, "an integer")
        if minimum is not None and value < minimum:
            raise MatrixError(400, Codes.INVALID_PARAM, f"Parameter {self._name(key)} must be >= {minimum}")
        return value

    def object(self, key: _Str, *, required: _Bool = False) -> Body | None:
        value = self._get(key, required)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self._wrong(key, "an object")
        return Body(value, prefix=f"{self._name(key)}.")

    def str_list(self, key: _Str, *, required: _Bool = False) -> list[_Str] | None:
        value = self._get(key, required)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._wrong(key, "a list of strings")
        return list(value)

    def raw(self, key: _Str) -> Any:
        return self.data.get(key)
