"""Server administration: who is an admin, registration tokens."""

from __future__ import annotations

import secrets
import string

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError, forbidden, not_found
from homeserver.services.auth import Requester
from homeserver.storage.accounts import AccountRepository
from homeserver.storage.registration_tokens import RegistrationToken, RegistrationTokenRepository

_TOKEN_ALPHABET = string.ascii_letters + string.digits + "._~-"


class AdminService:
    def __init__(
        self, *, clock: Clock, accounts: AccountRepository, registration_tokens: RegistrationTokenRepository
    ) -> None:
        self._clock = clock
        self._accounts = accounts
        self._tokens = registration_tokens

    async def is_admin(self, user_id: str) -> bool:
        user = await self._accounts.get_user(user_id)
        return user is not None and user.is_admin

    async def require_admin(self, requester: Requester) -> None:
        user = await self._accounts.get_user(requester.user_id)
        if user is None or not user.is_admin:
            raise forbidden("You are not a server admin")

    async def create_registration_token(
        self, token: str | None, uses_allowed: int | None, expiry_time: int | None, length: int
    ) -> RegistrationToken:
        if token is not None and (not token or len(token) > 64 or any(c not in _TOKEN_ALPHABET for c in token)):
            raise MatrixError(400, Codes.INVALID_PARAM, "Parameter token must be 1-64 characters of [A-Za-z0-9._~-]")
        if expiry_time is not None and expiry_time < self._clock.time_msec():
            raise MatrixError(400, Codes.INVALID_PARAM, "Parameter expiry_time must not be in the past")
        if token is None:
            if not 0 < length <= 64:
                raise MatrixError(400, Codes.INVALID_PARAM, "Parameter length must be between 1 and 64")
            token = "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(length))
        if not await self._tokens.create(token, uses_allowed, expiry_time):
            raise MatrixError(400, Codes.INVALID_PARAM, f"Token already exists: {token}")
        return RegistrationToken(token, uses_allowed, 0, 0, expiry_time)

    async def list_registration_tokens(self) -> list[RegistrationToken]:
        return await self._tokens.list_all()

    async def get_registration_token(self, token: str) -> RegistrationToken:
        record = await self._tokens.get(token)
        if record is None:
            raise not_found(f"No such registration token: {token}")
        return record

    async def delete_registration_token(self, token: str) -> None:
        if not await self._tokens.delete(token):
            raise not_found(f"No such registration token: {token}")
