"""Account self-service: changing the password, deactivating the account."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from homeserver.core.errors import Codes, MatrixError
from homeserver.services.auth import Requester
from homeserver.services.passwords import PasswordHasher, PolicySettings, check_password_policy
from homeserver.storage.accounts import AccountRepository
from homeserver.storage.devices import DeviceRepository
from homeserver.storage.tokens import TokenRepository


class AccountService:
    def __init__(
        self,
        *,
        accounts: AccountRepository,
        devices: DeviceRepository,
        tokens: TokenRepository,
        hasher: PasswordHasher,
        password_policy: PolicySettings,
        password_changes_enabled: bool,
    ) -> None:
        self._accounts = accounts
        self._devices = devices
        self._tokens = tokens
        self._hasher = hasher
        self._policy = password_policy
        self.password_changes_enabled = password_changes_enabled
        # Set by app.py: leaves the user's rooms and rejects their invites.
        self.on_deactivated: Callable[[str], Awaitable[None]] | None = None

    async def change_password(self, requester: Requester, new_password: str, *, logout_devices: bool) -> None:
        """Set the password; unless told otherwise, sign out every other session.

        The spec: all access tokens except the one used for the request are invalidated,
        and the other devices deleted.
        """
        if not self.password_changes_enabled:
            raise MatrixError(403, Codes.FORBIDDEN, "Password changes are disabled on this server")
        check_password_policy(new_password, self._policy)
        await self._accounts.set_password_hash(requester.user_id, await self._hasher.hash(new_password))
        if logout_devices:
            await self._devices.delete_all_devices(requester.user_id, except_device_id=requester.device_id)
            await self._tokens.delete_user_tokens(requester.user_id, except_token_hash=requester.token_hash)

    async def deactivate(self, user_id: str) -> None:
        """Deactivate: no password, no devices, no tokens; the user ID stays reserved forever."""
        await self._accounts.deactivate(user_id)
        await self._devices.delete_all_devices(user_id)
        await self._tokens.delete_user_tokens(user_id)
        if self.on_deactivated is not None:
            await self.on_deactivated(user_id)
