"""Creating accounts: username rules, open/token registration, shared-secret registration."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError, forbidden
from homeserver.core.ids import MAX_ID_LENGTH, is_valid_user_localpart
from homeserver.services.passwords import PasswordHasher, PolicySettings, check_password_policy
from homeserver.services.uia import UIAContext
from homeserver.storage.accounts import AccountRepository
from homeserver.storage.registration_tokens import RegistrationTokenRepository

# Nonces for shared-secret registration live this long (Synapse: 60 s).
_NONCE_LIFETIME_S = 60.0


class RegistrationSettings(Protocol):
    @property
    def enable_registration(self) -> bool: ...
    @property
    def registration_requires_token(self) -> bool: ...
    @property
    def allow_guest_access(self) -> bool: ...
    @property
    def registration_shared_secret(self) -> str | None: ...
    @property
    def inhibit_user_in_use_error(self) -> bool: ...


class RegistrationService:
    def __init__(
        self,
        *,
        server_name: str,
        clock: Clock,
        accounts: AccountRepository,
        registration_tokens: RegistrationTokenRepository,
        hasher: PasswordHasher,
        settings: RegistrationSettings,
        password_policy: PolicySettings,
    ) -> None:
        self._server_name = server_name
        self._clock = clock
        self._accounts = accounts
        self._tokens = registration_tokens
        self._hasher = hasher
        self.settings = settings
        self._policy = password_policy
        self._nonces: dict[str, float] = {}
        # E-mail based accounts (services/policy/email_accounts.py): whether the
        # m.login.email.identity stage is offered / required, how a validated address
        # names the account, and what runs once an account exists (3PID, display name,
        # account validity): (user_id, completed UIA stages).
        self.email_stage_offered = False
        self.email_stage_required = False
        self.localpart_from_email: Callable[[str], str] | None = None
        self.post_registration_hooks: list[Callable[[str, dict[str, Any]], Awaitable[None]]] = []
        # (user_id, acting application service or None) -> raise M_EXCLUSIVE if reserved
        self.reserved_username_check: Callable[[str, Any], None] | None = None

    # -- usernames ---------------------------------------------------------------------

    def user_id_for(self, localpart: str) -> str:
        return f"@{localpart}:{self._server_name}"

    def validate_localpart(self, localpart: str) -> str:
        """Raise M_INVALID_USERNAME unless ``localpart`` may name a new user here."""
        if not localpart:
            raise MatrixError(400, Codes.INVALID_USERNAME, "User ID cannot be empty")
        if localpart != localpart.lower() or not is_valid_user_localpart(localpart):
            raise MatrixError(
                400,
                Codes.INVALID_USERNAME,
                "User ID can only contain characters a-z, 0-9, or '=_-./+'",
            )
        if localpart.isdigit():
            # Numeric localparts are reserved for server-generated IDs, as in Synapse.
            raise MatrixError(400, Codes.INVALID_USERNAME, "Numeric user IDs are reserved for guest users")
        if len(self.user_id_for(localpart).encode("utf-8")) > MAX_ID_LENGTH:
            raise MatrixError(400, Codes.INVALID_USERNAME, f"User ID may not be longer than {MAX_ID_LENGTH} characters")
        return localpart

    async def check_available(self, localpart: str, *, app_service: Any = None) -> None:
        self.validate_localpart(localpart)
        if self.reserved_username_check is not None:
            self.reserved_username_check(self.user_id_for(localpart), app_service)
        if await self._accounts.find_user_case_insensitive(self.user_id_for(localpart)):
            raise MatrixError(400, Codes.USER_IN_USE, "User ID already taken.")

    async def _generate_localpart(self) -> str:
        while True:
            candidate = str(secrets.randbelow(10**9) + 10**9)
            if await self._accounts.get_user(self.user_id_for(candidate)) is None:
                return candidate

    # -- creation ----------------------------------------------------------------------

    async def create_account(
        self,
        localpart: str | None,
        password: str | None,
        *,
        admin: bool = False,
        guest: bool = False,
        user_type: str | None = None,
        check_policy: bool = True,
        password_hash: str | None = None,
        app_service: Any = None,
    ) -> str:
        """Create the account and return its user ID (no device, no token).

        ``password_hash`` is used when the password was hashed earlier (a UIA session).
        """
        if localpart is None:
            localpart = await self._generate_localpart()
        else:
            self.validate_localpart(localpart)
        if password is not None:
            if check_policy:
                check_password_policy(password, self._policy)
            password_hash = await self._hasher.hash(password)
        user_id = self.user_id_for(localpart)
        if self.reserved_username_check is not None and not guest:
            self.reserved_username_check(user_id, app_service)
        if await self._accounts.find_user_case_insensitive(user_id):
            raise MatrixError(400, Codes.USER_IN_USE, "User ID already taken.")
        created = await self._accounts.create_user(
            user_id, password_hash, self._clock.time_msec(), is_admin=admin, is_guest=guest, user_type=user_type,
            appservice_id=getattr(app_service, "id", None),
        )
        if not created:
            raise MatrixError(400, Codes.USER_IN_USE, "User ID already taken.")
        return user_id

    # -- /register flows ---------------------------------------------------------------

    def registration_flows(self) -> list[list[str]]:
        base = ["m.login.registration_token"] if self.settings.registration_requires_token else []
        email = "m.login.email.identity"
        if self.email_stage_required:
            return [[*base, email]]
        flows = [base or ["m.login.dummy"]]
        if self.email_stage_offered:
            flows.append([*base, email])
        return flows

    def localpart_for(self, username: str | None, completed: dict[str, Any]) -> str | None:
        """The account's localpart: derived from the validated address when e-mail based
        accounts are on (the address names the account), else the requested one."""
        validated = completed.get("m.login.email.identity")
        if self.localpart_from_email is not None and isinstance(validated, dict):
            address = validated.get("address")
            if isinstance(address, str):
                return self.localpart_from_email(address)
        return username

    async def after_registration(self, user_id: str, completed: dict[str, Any]) -> None:
        for hook in self.post_registration_hooks:
            await hook(user_id, completed)

    async def registration_token_stage(self, auth: dict[str, Any], ctx: UIAContext) -> str:
        token = auth.get("token")
        if not isinstance(token, str) or not token:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: token")
        if ctx.serverdict.get("registration_token") == token:
            return token  # already reserved for this session
        if not await self._tokens.reserve(token, self._clock.time_msec()):
            raise MatrixError(401, Codes.UNAUTHORIZED, "Invalid registration token")
        ctx.serverdict["registration_token"] = token
        return token

    def check_password_policy(self, password: str) -> None:
        check_password_policy(password, self._policy)

    async def hash_password(self, password: str) -> str:
        return await self._hasher.hash(password)

    async def token_used(self, token: str) -> None:
        await self._tokens.complete(token)

    async def is_token_valid(self, token: str) -> bool:
        record = await self._tokens.get(token)
        return record is not None and record.is_valid(self._clock.time_msec())

    # -- shared-secret registration (Synapse's admin API) -----------------------------

    def new_nonce(self) -> str:
        now = self._clock.time()
        for nonce, ts in list(self._nonces.items()):
            if now - ts > _NONCE_LIFETIME_S:
                del self._nonces[nonce]
        nonce = secrets.token_hex(32)
        self._nonces[nonce] = now
        return nonce

    def check_shared_secret_mac(
        self, *, nonce: str, username: str, password: str, admin: bool, user_type: str | None, mac: str
    ) -> None:
        """Verify the HMAC-SHA1 of Synapse's scheme; the nonce is usable once."""
        secret = self.settings.registration_shared_secret
        if not secret:
            raise MatrixError(400, Codes.UNKNOWN, "Shared secret registration is not enabled")
        issued = self._nonces.pop(nonce, None)
        if issued is None or self._clock.time() - issued > _NONCE_LIFETIME_S:
            raise MatrixError(400, Codes.UNKNOWN, "unrecognised nonce")
        want = hmac.new(secret.encode("utf-8"), digestmod=hashlib.sha1)
        want.update(nonce.encode("utf-8") + b"\x00" + username.encode("utf-8") + b"\x00")
        want.update(password.encode("utf-8") + b"\x00" + (b"admin" if admin else b"notadmin"))
        if user_type:
            want.update(b"\x00" + user_type.encode("utf-8"))
        if not hmac.compare_digest(want.hexdigest(), mac):
            raise forbidden("HMAC incorrect")
