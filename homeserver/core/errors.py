"""Matrix errors: one exception type carrying the HTTP status, errcode and message.

Every error a client can see is a :class:`MatrixError`; the HTTP layer turns it into
``{"errcode": ..., "error": ...}`` with the right status.  Anything else escaping a
servlet is a bug and is logged and reported as ``M_UNKNOWN`` with status 500.
"""

from __future__ import annotations

from typing import Any


class Codes:
    """Error codes from the Client-Server API, plus the vendor ones we emit."""

    FORBIDDEN = "M_FORBIDDEN"
    UNKNOWN_TOKEN = "M_UNKNOWN_TOKEN"
    MISSING_TOKEN = "M_MISSING_TOKEN"
    BAD_JSON = "M_BAD_JSON"
    NOT_JSON = "M_NOT_JSON"
    NOT_FOUND = "M_NOT_FOUND"
    LIMIT_EXCEEDED = "M_LIMIT_EXCEEDED"
    UNRECOGNIZED = "M_UNRECOGNIZED"
    UNKNOWN = "M_UNKNOWN"
    UNAUTHORIZED = "M_UNAUTHORIZED"
    USER_DEACTIVATED = "M_USER_DEACTIVATED"
    USER_IN_USE = "M_USER_IN_USE"
    INVALID_USERNAME = "M_INVALID_USERNAME"
    ROOM_IN_USE = "M_ROOM_IN_USE"
    INVALID_ROOM_STATE = "M_INVALID_ROOM_STATE"
    THREEPID_IN_USE = "M_THREEPID_IN_USE"
    THREEPID_NOT_FOUND = "M_THREEPID_NOT_FOUND"
    THREEPID_AUTH_FAILED = "M_THREEPID_AUTH_FAILED"
    THREEPID_DENIED = "M_THREEPID_DENIED"
    SERVER_NOT_TRUSTED = "M_SERVER_NOT_TRUSTED"
    UNSUPPORTED_ROOM_VERSION = "M_UNSUPPORTED_ROOM_VERSION"
    INCOMPATIBLE_ROOM_VERSION = "M_INCOMPATIBLE_ROOM_VERSION"
    BAD_STATE = "M_BAD_STATE"
    GUEST_ACCESS_FORBIDDEN = "M_GUEST_ACCESS_FORBIDDEN"
    CAPTCHA_NEEDED = "M_CAPTCHA_NEEDED"
    CAPTCHA_INVALID = "M_CAPTCHA_INVALID"
    MISSING_PARAM = "M_MISSING_PARAM"
    INVALID_PARAM = "M_INVALID_PARAM"
    TOO_LARGE = "M_TOO_LARGE"
    EXCLUSIVE = "M_EXCLUSIVE"
    RESOURCE_LIMIT_EXCEEDED = "M_RESOURCE_LIMIT_EXCEEDED"
    CANNOT_LEAVE_SERVER_NOTICE_ROOM = "M_CANNOT_LEAVE_SERVER_NOTICE_ROOM"
    WEAK_PASSWORD = "M_WEAK_PASSWORD"
    USER_LOCKED = "M_USER_LOCKED"
    EXPIRED_ACCOUNT = "ORG_MATRIX_EXPIRED_ACCOUNT"


class MatrixError(Exception):
    """An error reported to the client as a Matrix error body."""

    def __init__(
        self,
        code: int,
        errcode: str,
        msg: str,
        **extra: Any,
    ) -> None:
        super().__init__(f"{code} {errcode}: {msg}")
        self.code = code
        self.errcode = errcode
        self.msg = msg
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"errcode": self.errcode, "error": self.msg}
        body.update(self.extra)
        return body


def missing_param(name: str) -> MatrixError:
    return MatrixError(400, Codes.MISSING_PARAM, f"Missing parameter: {name}")


def forbidden(msg: str) -> MatrixError:
    return MatrixError(403, Codes.FORBIDDEN, msg)


def not_found(msg: str = "Not found") -> MatrixError:
    return MatrixError(404, Codes.NOT_FOUND, msg)


def limit_exceeded(retry_after_ms: int) -> MatrixError:
    return MatrixError(
        429, Codes.LIMIT_EXCEEDED, "Too many requests", retry_after_ms=retry_after_ms
    )
