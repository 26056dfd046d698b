"""Password login, and the password checks UIA's m.login.password stage shares with it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from homeserver.core.errors import Codes, MatrixError, forbidden
from homeserver.core.ids import InvalidID, UserID
from homeserver.services.auth import AuthService, generate_device_id
from homeserver.services.passwords import MAX_PASSWORD_LENGTH, PasswordHasher
from homeserver.services.ratelimit import Ratelimiter
from homeserver.services.uia import UIAContext
from homeserver.storage.accounts import AccountRepository
from homeserver.storage.devices import DeviceRepository


@dataclass(frozen=True, slots=True)
class LoginRatelimiters:
    address: Ratelimiter
    account: Ratelimiter
    failed_attempts: Ratelimiter


class LoginService:
    def __init__(
        self,
        *,
        server_name: str,
        clock_ms: Any,
        accounts: AccountRepository,
        devices: DeviceRepository,
        auth: AuthService,
        hasher: PasswordHasher,
        ratelimiters: LoginRatelimiters,
        password_login_enabled: bool,
    ) -> None:
        self.server_name = server_name
        self._now_ms = clock_ms
        self._accounts = accounts
        self._devices = devices
        self._auth = auth
        self._hasher = hasher
        self._limits = ratelimiters
        self.password_login_enabled = password_login_enabled
        # Set by the government policy: (medium, address) -> the user bound to it, or None.
        self.threepid_lookup: Callable[[str, str], Awaitable[str | None]] | None = None

    def login_flows(self) -> list[dict[str, Any]]:
        flows: list[dict[str, Any]] = []
        if self.password_login_enabled:
            flows.append({"type": "m.login.password"})
        return flows

    def user_id_from_identifier(self, auth: dict[str, Any]) -> str:
        """The user ID named by a login or UIA body (``identifier``, or the legacy ``user``)."""
        identifier = auth.get("identifier")
        if identifier is None:
            user = auth.get("user")
            if user is None:
                raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: identifier")
            identifier = {"type": "m.id.user", "user": user}
        if not isinstance(identifier, dict):
            raise MatrixError(400, Codes.BAD_JSON, "Parameter identifier must be an object")
        id_type = identifier.get("type")
        if id_type != "m.id.user":
            raise MatrixError(400, Codes.UNKNOWN, f"Unknown login identifier type: {id_type}")
        user = identifier.get("user")
        if not isinstance(user, str) or not user:
            raise MatrixError(400, Codes.BAD_JSON, "Parameter identifier.user must be a non-empty string")
        if user.startswith("@"):
            try:
                parsed = UserID.parse(user)
            except InvalidID:
                raise MatrixError(400, Codes.INVALID_PARAM, "Parameter identifier.user is not a valid user ID") from None
            return parsed.to_string()
        return UserID(user.lower(), self.server_name).to_string()

    async def _login_user_id(self, auth: dict[str, Any]) -> str:
        """The user ID of a login body; ``m.id.thirdparty`` (medium email) is looked up."""
        identifier = auth.get("identifier")
        if not isinstance(identifier, dict) or identifier.get("type") != "m.id.thirdparty":
            return self.user_id_from_identifier(auth)
        medium, address = identifier.get("medium"), identifier.get("address")
        if not isinstance(medium, str) or not isinstance(address, str) or not address:
            raise MatrixError(400, Codes.MISSING_PARAM, "identifier needs medium and address strings")
        if medium != "email" or self.threepid_lookup is None:
            raise MatrixError(400, Codes.INVALID_PARAM, f"Parameter identifier.medium {medium!r} is not supported")
        user_id = await self.threepid_lookup(medium, address.strip().lower())
        if user_id is None:
            raise forbidden("Invalid username or password")  # as for a wrong password: no account probing
        return user_id

    async def check_password(self, user_id: str, password: Any) -> str:
        """Return the canonical user ID if the password is right, else raise M_FORBIDDEN.

        Failed attempts are rate-limited per account (``rc_login.failed_attempts``).
        """
        if not self.password_login_enabled:
            raise forbidden("Password login is disabled")
        if not isinstance(password, str):
            raise MatrixError(400, Codes.BAD_JSON, "Parameter password must be a string")
        if len(password) > MAX_PASSWORD_LENGTH:
            raise forbidden("Invalid username or password")
        key = user_id.lower()
        self._limits.failed_attempts.check(key, update=False)
        matches = await self._accounts.find_user_case_insensitive(user_id)
        # An exact match wins; otherwise a unique case-insensitive one (as Synapse does).
        canonical = user_id if user_id in matches else (matches[0] if len(matches) == 1 else None)
        user = await self._accounts.get_user(canonical) if canonical else None
        ok = await self._hasher.verify(password, user.password_hash if user else None)
        if user is None or not ok:
            self._limits.failed_attempts.record(key)
            raise forbidden("Invalid username or password")
        if user.deactivated:
            raise MatrixError(403, Codes.USER_DEACTIVATED, "This account has been deactivated")
        self._limits.failed_attempts.reset(key)
        return user.user_id

    async def login_with_password(self, body: dict[str, Any], *, ip: str) -> dict[str, Any]:
        self._limits.address.check(ip)
        user_id = await self._login_user_id(body)
        if UserID.parse(user_id).domain != self.server_name:
            raise forbidden("Invalid username or password")
        self._limits.account.check(user_id.lower())
        if "password" not in body:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: password")
        user_id = await self.check_password(user_id, body["password"])
        device_id = body.get("device_id")
        if device_id is not None and (not isinstance(device_id, str) or not device_id or len(device_id) > 255):
            raise MatrixError(400, Codes.INVALID_PARAM, "Parameter device_id must be a non-empty string")
        display_name = body.get("initial_device_display_name")
        if display_name is not None and not isinstance(display_name, str):
            raise MatrixError(400, Codes.BAD_JSON, "Parameter initial_device_display_name must be a string")
        refresh = body.get("refresh_token", False)
        if not isinstance(refresh, bool):
            raise MatrixError(400, Codes.BAD_JSON, "Parameter refresh_token must be a boolean")
        return await self.create_session(user_id, device_id, display_name, refreshable=refresh)

    async def user_exists(self, user_id: str) -> bool:
        """Whether an active account has this ID (application-service login)."""
        user = await self._accounts.get_user(user_id)
        return user is not None and not user.deactivated

    async def create_session(
        self, user_id: str, device_id: str | None, display_name: str | None, *, refreshable: bool
    ) -> dict[str, Any]:
        """Create (or reuse) the device and issue its tokens: the body of a login response."""
        device_id = device_id or generate_device_id()
        await self._devices.store_device(user_id, device_id, display_name, self._now_ms())
        tokens = await self._auth.issue_tokens(user_id, device_id, refreshable=refreshable)
        return {"user_id": user_id, "device_id": device_id, "home_server": self.server_name, **tokens}

    async def password_stage(self, auth: dict[str, Any], ctx: UIAContext) -> str:
        """UIA's m.login.password: the password of the user the session is for."""
        user_id = await self._login_user_id(auth)
        if "password" not in auth:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: password")
        checked = await self.check_password(user_id, auth["password"])
        if ctx.user_id is not None and checked != ctx.user_id:
            raise forbidden("The password given is not for the user performing the operation")
        return checked
