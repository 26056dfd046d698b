"""``rc_room_creation``, ``rc_joins``, ``rc_joins_per_room`` and ``rc_invites``: how fast
clients may create rooms, join and invite (Synapse's keys and defaults).

Applied to client requests only (``/createRoom``, ``/join``, ``/rooms/{id}/join``,
``/invite`` and member state ``PUT``\\ s), not to what the server does on a user's behalf
(server notices, auto-joins, leaving rooms on deactivation).  Exempt, as for
``rc_message``: an application service's bot, the users of a service whose registration
says ``rate_limited: false``, and server admins (looked up only when a request is over a
limit, so the common path costs no database read).

An action is checked against every bucket it counts in before any is charged, so a
refused request costs nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from homeserver.config.ratelimiting import InviteRateLimits, JoinRateLimits, RateLimitConfig
from homeserver.core.clock import Clock
from homeserver.core.errors import MatrixError
from homeserver.services.auth import Requester
from homeserver.services.message_ratelimit import MessageRateLimiter
from homeserver.services.ratelimit import Rate, Ratelimiter


def _limiter(clock: Clock, cfg: RateLimitConfig) -> Ratelimiter:
    return Ratelimiter(clock, Rate(float(cfg.per_second), float(cfg.burst_count)))


class MembershipRateLimits:
    def __init__(
        self,
        clock: Clock,
        *,
        room_creation: RateLimitConfig,
        joins: JoinRateLimits,
        joins_per_room: RateLimitConfig,
        invites: InviteRateLimits,
        is_admin: Callable[[str], Awaitable[bool]],
        is_host_in_room: Callable[[str], Awaitable[bool]],
        membership_of: Callable[[str, str], Awaitable[str | None]],
    ) -> None:
        self._room_creation = _limiter(clock, room_creation)
        self._joins_local = _limiter(clock, joins.local)
        self._joins_remote = _limiter(clock, joins.remote)
        self._joins_per_room = _limiter(clock, joins_per_room)
        self._invites_per_room = _limiter(clock, invites.per_room)
        self._invites_per_user = _limiter(clock, invites.per_user)
        self._invites_per_issuer = _limiter(clock, invites.per_issuer)
        self._is_admin = is_admin
        self._is_host_in_room = is_host_in_room
        self._membership_of = membership_of

    async def room_creation(self, requester: Requester) -> None:
        await self._check(requester, [(self._room_creation, requester.user_id)])

    async def join(self, requester: Requester, room_id: str) -> None:
        """A join by the requester; over federation (a room this server is not in) it
        counts in ``rc_joins.remote``, else in ``rc_joins.local`` and ``rc_joins_per_room``.
        A join by a member already joined (a per-room profile change) is not counted."""
        if MessageRateLimiter.is_exempt(requester):
            return
        if await self._membership_of(room_id, requester.user_id) == "join":
            return
        if await self._is_host_in_room(room_id):
            buckets = [(self._joins_local, requester.user_id), (self._joins_per_room, room_id)]
        else:
            buckets = [(self._joins_remote, requester.user_id)]
        await self._check(requester, buckets)

    async def invite(self, requester: Requester, room_id: str, invitee: str) -> None:
        await self._check(
            requester,
            [
                (self._invites_per_issuer, requester.user_id),
                (self._invites_per_room, room_id),
                (self._invites_per_user, invitee),
            ],
        )

    async def _check(self, requester: Requester, buckets: list[tuple[Ratelimiter, str]]) -> None:
        if MessageRateLimiter.is_exempt(requester):
            return
        try:
            for limiter, key in buckets:
                limiter.check(key, update=False)
        except MatrixError:
            if await self._is_admin(requester.user_id):
                return
            raise
        for limiter, key in buckets:
            limiter.record(key)
