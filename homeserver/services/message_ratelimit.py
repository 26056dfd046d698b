"""``rc_message``: how fast one user may send events (Synapse's semantics).

Counted per user ID for events a client creates (``/send``, state ``PUT``s, redactions);
memberships have their own limits.  Not limited: an application service's bot, the users an
application service masquerades as when its registration says ``rate_limited: false``, and
server admins (the admin check runs only when a user is over the limit, so the common path
costs no database read).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from homeserver.core.errors import MatrixError
from homeserver.services.auth import Requester
from homeserver.services.ratelimit import Ratelimiter


class MessageRateLimiter:
    def __init__(self, limiter: Ratelimiter, *, is_admin: Callable[[str], Awaitable[bool]]) -> None:
        self._limiter = limiter
        self._is_admin = is_admin

    @staticmethod
    def is_exempt(requester: Requester) -> bool:
        """An application service's own requests, unless its registration asks to be limited;
        its bot is never limited (as Synapse)."""
        service = requester.app_service
        if service is None:
            return False
        return requester.user_id == service.sender or not service.rate_limited

    async def check(self, requester: Requester) -> None:
        """Count one event for ``requester``; 429 ``M_LIMIT_EXCEEDED`` with ``retry_after_ms``
        when over ``rc_message``."""
        if self.is_exempt(requester):
            return
        try:
            self._limiter.check(requester.user_id)  # counted only when allowed
        except MatrixError:
            if await self._is_admin(requester.user_id):
                return
            raise
