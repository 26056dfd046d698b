"""Account validity (Synapse's ``account_validity``; Tchap's e-mail account validity module).

An account is valid for ``period`` from its registration or last renewal.  ``renew_at``
before expiry its owner is e-mailed a renewal link (once per period); following it extends
the account by ``period``.  An expired account gets 403 ``ORG_MATRIX_EXPIRED_ACCOUNT`` on
every authenticated request except logout; it is hidden from the user directory and gets
no push.  Admins set the expiry through ``/_synapse/admin/v1/account_validity/validity``.
Accounts that predate the feature get a full period from their first request.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from homeserver.config.policy import AccountValidityConfig
from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.services.auth import Requester
from homeserver.services.policy.mailer import Mailer
from homeserver.storage.account_validity import AccountValidityRepository

logger = logging.getLogger(__name__)

RENEW_PATH = "/_matrix/client/unstable/account_validity/renew"
# Paths an expired account may still use (Synapse's allow_expired endpoints).
_ALLOWED_WHEN_EXPIRED = ("/logout", "/logout/all", "/account_validity/send_mail")
_CACHE_TTL_MS = 60_000
_CACHE_SIZE = 50_000


class AccountValidityService:
    def __init__(
        self,
        *,
        config: AccountValidityConfig,
        clock: Clock,
        validity: AccountValidityRepository,
        mailer: Mailer | None,
        emails_of: Callable[[str], Awaitable[list[str]]],
        is_local_user: Callable[[str], bool],
        public_baseurl: str | None,
    ) -> None:
        assert config.period is not None
        self._config = config
        self._period = config.period
        self._clock = clock
        self._repo = validity
        self._mailer = mailer
        self._emails_of = emails_of
        self._is_local = is_local_user
        self._baseurl = (public_baseurl or "").rstrip("/")
        self._expiry_cache: dict[str, tuple[int | None, int]] = {}  # user -> (expiry, read at)

    async def on_registered(self, user_id: str) -> None:
        self._expiry_cache.pop(user_id, None)
        await self._repo.set_expiration(user_id, self._clock.time_msec() + self._period)

    async def expiration_ts(self, user_id: str) -> int:
        record = await self._repo.insert_if_missing(user_id, self._clock.time_msec() + self._period)
        return record.expiration_ts_ms

    async def is_expired(self, user_id: str) -> bool:
        """Whether a local account has expired.  Asked for every member of a room on each
        new event (push), so answers are cached for a minute (renewals in another worker
        are seen within that minute; those made here at once)."""
        if not self._is_local(user_id):
            return False
        now = self._clock.time_msec()
        cached = self._expiry_cache.get(user_id)
        if cached is None or now - cached[1] > _CACHE_TTL_MS:
            record = await self._repo.get(user_id)
            if len(self._expiry_cache) >= _CACHE_SIZE:
                self._expiry_cache.clear()
            cached = self._expiry_cache[user_id] = (record.expiration_ts_ms if record else None, now)
        return cached[0] is not None and cached[0] <= now

    async def check_request(self, requester: Requester, path: str) -> None:
        """The request check: an expired account may only log out."""
        if path.endswith(_ALLOWED_WHEN_EXPIRED):
            return
        if await self.expiration_ts(requester.user_id) <= self._clock.time_msec():
            raise MatrixError(
                403,
                Codes.EXPIRED_ACCOUNT,
                "This account has expired: renew it with the link in the renewal e-mail, or ask an administrator",
            )

    # -- renewal -----------------------------------------------------------------------

    async def send_renewal_email(self, user_id: str) -> bool:
        """E-mail a fresh renewal link to each of the user's addresses; False if none."""
        if self._mailer is None:
            return False
        addresses = await self._emails_of(user_id)
        if not addresses:
            return False
        expiry = await self.expiration_ts(user_id)
        token = secrets.token_urlsafe(24)
        await self._repo.set_renewal_token(user_id, token)
        link = f"{self._baseurl}{RENEW_PATH}?token={quote(token)}"
        app = self._mailer.app_name
        subject = self._config.renew_email_subject % {"app": app}
        days = max(0, (expiry - self._clock.time_msec()) // 86_400_000)
        text = (
            f"Your {app} account {user_id} expires in {days} day(s).\n\n"
            f"To keep it, follow this link:\n{link}\n\n"
            f"Renewal token (for apps that ask for it): {token}\n"
        )
        for address in addresses:
            await self._mailer.send(address, subject, text)
        await self._repo.mark_email_sent(user_id)
        return True

    async def send_due_renewal_emails(self) -> int:
        """The periodic task: e-mail the accounts entering their renewal window."""
        if self._config.renew_at is None:
            return 0
        sent = 0
        for record in await self._repo.expiring_before(self._clock.time_msec() + self._config.renew_at):
            try:
                if await self.send_renewal_email(record.user_id):
                    sent += 1
                else:
                    await self._repo.mark_email_sent(record.user_id)  # no address: don't retry each run
            except MatrixError:
                logger.warning("renewal e-mail to %s failed; will retry", record.user_id)
        return sent

    async def renew(self, token: str) -> tuple[bool, int]:
        """Use a renewal token: (whether it renewed now, the account's expiry).  An unknown
        token raises 404; a token used before answers (False, expiry)."""
        new_expiry = self._clock.time_msec() + self._period
        existing = await self._repo.by_token(token)
        if existing is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Invalid renewal token")
        if existing.token_used_ts_ms is not None:
            return False, existing.expiration_ts_ms
        record = await self._repo.renew_with_token(token, new_expiry, self._clock.time_msec())
        assert record is not None
        self._expiry_cache.pop(record.user_id, None)
        return True, record.expiration_ts_ms

    async def admin_set(self, user_id: str, expiration_ts: int | None, enable_renewal_emails: bool) -> int:
        """Synapse's admin API: set the expiry (default: now + period)."""
        expiry = expiration_ts if expiration_ts is not None else self._clock.time_msec() + self._period
        await self._repo.set_expiration(user_id, expiry, email_sent=not enable_renewal_emails)
        self._expiry_cache.pop(user_id, None)
        return expiry
