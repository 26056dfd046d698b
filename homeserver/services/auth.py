"""Access tokens: issuing, refreshing, resolving a request's token to a :class:`Requester`."""

from __future__ import annotations

import hashlib
import secrets
import string
from dataclasses import dataclass
from typing import Any

from homeserver.appservice.registration import ApplicationService
from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.storage.accounts import AccountRepository
from homeserver.storage.devices import DeviceRepository
from homeserver.storage.tokens import TokenRepository

# How often a device's "last seen" is written: a busy client would otherwise write on
# every request.
_LAST_SEEN_INTERVAL_MS = 5 * 60 * 1000


@dataclass(frozen=True, slots=True)
class Requester:
    """Who is making a request, once the access token is checked."""

    user_id: str
    device_id: str | None
    is_guest: bool
    token_hash: str
    # The application service acting (as_token auth), or None for a user's own token.
    app_service: ApplicationService | None = None


@dataclass(frozen=True, slots=True)
class TokenLifetimes:
    """Lifetimes in ms; ``None`` means tokens don't expire."""

    refreshable_access_token_lifetime: int | None
    refresh_token_lifetime: int | None
    nonrefreshable_access_token_lifetime: int | None
    session_lifetime: int | None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def generate_token(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def generate_device_id() -> str:
    return "".join(secrets.choice(string.ascii_uppercase) for _ in range(10))


def unknown_token(msg: str = "Unrecognised access token", *, soft_logout: bool = False) -> MatrixError:
    return MatrixError(401, Codes.UNKNOWN_TOKEN, msg, soft_logout=soft_logout)


class AuthService:
    def __init__(
        self,
        *,
        clock: Clock,
        accounts: AccountRepository,
        devices: DeviceRepository,
        tokens: TokenRepository,
        lifetimes: TokenLifetimes,
    ) -> None:
        self._clock = clock
        self._accounts = accounts
        self._devices = devices
        self._tokens = tokens
        self._lifetimes = lifetimes
        self._last_seen: dict[tuple[str, str], int] = {}

    async def get_requester(
        self, token: str | None, *, ip: str | None = None, user_agent: str | None = None, allow_guest: bool = False
    ) -> Requester:
        """Resolve an access token, or raise M_MISSING_TOKEN / M_UNKNOWN_TOKEN (401)."""
        if not token:
            raise MatrixError(401, Codes.MISSING_TOKEN, "Missing access token")
        info = await self._tokens.get_access_token(hash_token(token))
        if info is None or info.deactivated:
            raise unknown_token()
        now = self._clock.time_msec()
        if info.valid_until_ts is not None and info.valid_until_ts < now:
            raise unknown_token("Access token has expired", soft_logout=True)
        if info.is_guest and not allow_guest:
            raise MatrixError(403, Codes.GUEST_ACCESS_FORBIDDEN, "Guest access not allowed")
        if info.device_id is not None:
            key = (info.user_id, info.device_id)
            if now - self._last_seen.get(key, 0) > _LAST_SEEN_INTERVAL_MS:
                self._last_seen[key] = now
                await self._devices.update_last_seen(info.user_id, info.device_id, ip, user_agent, now)
        return Requester(info.user_id, info.device_id, info.is_guest, info.token_hash)

    async def issue_tokens(
        self, user_id: str, device_id: str, *, refreshable: bool
    ) -> dict[str, Any]:
        """Create an access token (and refresh token if asked) for a device."""
        now = self._clock.time_msec()
        access_token = generate_token("mht")
        result: dict[str, Any] = {"access_token": access_token}
        valid_until: int | None = None
        refresh_hash: str | None = None
        if refreshable and self._lifetimes.refreshable_access_token_lifetime is not None:
            lifetime = self._lifetimes.refreshable_access_token_lifetime
            valid_until = now + lifetime
            refresh_token = generate_token("mhr")
            refresh_hash = hash_token(refresh_token)
            await self._tokens.add_refresh_token(
                refresh_hash,
                user_id,
                device_id,
                now,
                self._expiry(now, self._lifetimes.refresh_token_lifetime),
                self._expiry(now, self._lifetimes.session_lifetime),
            )
            result["refresh_token"] = refresh_token
            result["expires_in_ms"] = lifetime
        elif self._lifetimes.nonrefreshable_access_token_lifetime is not None:
            valid_until = now + self._lifetimes.nonrefreshable_access_token_lifetime
            result["expires_in_ms"] = self._lifetimes.nonrefreshable_access_token_lifetime
        if self._lifetimes.session_lifetime is not None:
            session_end = now + self._lifetimes.session_lifetime
            valid_until = session_end if valid_until is None else min(valid_until, session_end)
        await self._tokens.add_access_token(
            hash_token(access_token), user_id, device_id, now, valid_until_ts=valid_until, refresh_token_hash=refresh_hash
        )
        return result

    @staticmethod
    def _expiry(now: int, lifetime: int | None) -> int | None:
        return None if lifetime is None else now + lifetime

    async def refresh(self, refresh_token: str) -> dict[str, Any]:
        """Exchange a refresh token for a new access token and refresh token."""
        old_hash = hash_token(refresh_token)
        info = await self._tokens.get_refresh_token(old_hash)
        now = self._clock.time_msec()
        if info is None or info.next_token_hash is not None:
            raise unknown_token("Unknown refresh token")
        if (info.expiry_ts is not None and info.expiry_ts < now) or (
            info.ultimate_session_expiry_ts is not None and info.ultimate_session_expiry_ts < now
        ):
            raise MatrixError(401, Codes.UNKNOWN_TOKEN, "Refresh token has expired", soft_logout=True)
        user = await self._accounts.get_user(info.user_id)
        if user is None or user.deactivated:
            raise unknown_token("Unknown refresh token")
        await self._tokens.forget_predecessors(old_hash)
        result = await self.issue_tokens(info.user_id, info.device_id, refreshable=True)
        if "refresh_token" in result and not await self._tokens.replace_refresh_token(
            old_hash, hash_token(result["refresh_token"])
        ):
            raise unknown_token("Unknown refresh token")
        return result

    async def logout(self, requester: Requester) -> None:
        """Invalidate the token and delete its device (the spec's /logout)."""
        if requester.device_id is not None:
            await self._devices.delete_devices(requester.user_id, [requester.device_id])
        await self._tokens.delete_access_token(requester.token_hash)

    async def logout_all(self, user_id: str) -> None:
        await self._devices.delete_all_devices(user_id)
        await self._tokens.delete_user_tokens(user_id)
