"""OpenID: tokens a client hands to a third party (a widget, Element Call) which checks
with this server who the token belongs to (``/_matrix/federation/v1/openid/userinfo``)."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any, Protocol

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError, forbidden

# As Synapse: an hour.
TOKEN_LIFETIME_MS = 3600 * 1000


class OpenIdTokens(Protocol):
    async def add(self, token_hash: str, user_id: str, expires_ts: int) -> None: ...

    async def user_for(self, token_hash: str, now_ms: int) -> str | None: ...

    async def delete_expired(self, now_ms: int) -> None: ...


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class OpenIdService:
    def __init__(self, *, server_name: str, clock: Clock, tokens: OpenIdTokens) -> None:
        self._server_name = server_name
        self._clock = clock
        self._tokens = tokens

    async def request_token(self, requester_user_id: str, user_id: str) -> dict[str, Any]:
        """A new token for the requester (who may only ask for themselves)."""
        if user_id != requester_user_id:
            raise forbidden("Cannot request tokens for other users")
        token = secrets.token_urlsafe(32)
        now = self._clock.time_msec()
        await self._tokens.delete_expired(now)
        await self._tokens.add(_digest(token), user_id, now + TOKEN_LIFETIME_MS)
        return {
            "access_token": token,
            "token_type": "Bearer",
            "matrix_server_name": self._server_name,
            "expires_in": TOKEN_LIFETIME_MS // 1000,
        }

    async def userinfo(self, token: str | None) -> dict[str, Any]:
        """``{"sub": user_id}`` for a valid, unexpired token."""
        if not token:
            raise MatrixError(401, Codes.MISSING_TOKEN, "Missing query parameter access_token")
        user_id = await self._tokens.user_for(_digest(token), self._clock.time_msec())
        if user_id is None:
            raise MatrixError(401, Codes.UNKNOWN_TOKEN, "Access token unknown or expired")
        return {"sub": user_id}
