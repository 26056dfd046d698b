"""Rooms without an admin: Tchap's synapse-manage-last-admin, built in.

When a room's last admin (effective level >= 100, creators of v12 rooms included) leaves
while no other admin is joined or invited, the leaver's server sends, as the leaver and
just before the leave, new power levels:

- with ``promote_moderators``: the remaining members (joined or invited) holding the
  highest non-default level are raised to 100;
- otherwise, in a restricted or public room: ``users_default`` 100 (and only the level-100
  entries kept in ``users``): everyone becomes admin;
- in any other room (unrestricted, direct, no rule): every joined member of default level
  is raised to 100.

Users of ``domains_forbidden_when_restricted`` (external users) are never promoted.

In ``freeze`` mode (Tchap's earlier rule: "the room is frozen when its last admin
leaves"), the new power levels instead raise every required level (``events_default``,
``state_default``, ``invite``, ``kick``, ``ban``, ``redact``, each ``events`` and
``notifications`` entry) to at least 100 and drop the leaver's own entry: nobody left
can change the room's state, send messages, invite, kick or redact; members can still
read the history, leave, and (auth rules: membership is not ruled by levels) update
their own member event or join a public room.  With ``promote_moderators``, a remaining
member of the highest non-default level is promoted instead, if there is one.

If the power levels cannot be sent, the leave still goes ahead (as in the module).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from homeserver.core.errors import MatrixError
from homeserver.events.model import Event
from homeserver.events.power_levels import (
    DEFAULT_BAN_LEVEL,
    DEFAULT_EVENTS_DEFAULT,
    DEFAULT_INVITE_LEVEL,
    DEFAULT_KICK_LEVEL,
    DEFAULT_NOTIFICATION_LEVEL,
    DEFAULT_REDACT_LEVEL,
    DEFAULT_STATE_DEFAULT,
    get_named_level,
    get_user_power_level,
    parse_power_level,
)
from homeserver.services.events import RoomEventService
from homeserver.services.policy.access_rules import ACCESS_RULES_TYPE, RESTRICTED, domain_of

logger = logging.getLogger(__name__)

ADMIN = 100
PROMOTE = "promote"
FREEZE = "freeze"
OLDEST = "promote_oldest_member"

# The action levels a frozen room raises to ADMIN, with the spec's defaults.
_FROZEN_LEVELS = (
    ("events_default", DEFAULT_EVENTS_DEFAULT),
    ("state_default", DEFAULT_STATE_DEFAULT),
    ("invite", DEFAULT_INVITE_LEVEL),
    ("kick", DEFAULT_KICK_LEVEL),
    ("ban", DEFAULT_BAN_LEVEL),
    ("redact", DEFAULT_REDACT_LEVEL),
)


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


class LastAdminGuard:
    def __init__(
        self,
        *,
        server_name: str,
        room_events: RoomEventService,
        promote_moderators: bool,
        forbidden_domains: tuple[str, ...],
        mode: str = PROMOTE,
        join_positions: Callable[[str], Awaitable[dict[str, int]]] | None = None,
    ) -> None:
        if mode not in (PROMOTE, FREEZE, OLDEST):
            raise ValueError(f"unknown last-admin mode {mode!r}")
        self._server_name = server_name
        self._events = room_events
        self._mode = mode
        self._join_positions = join_positions
        self._promote_moderators = promote_moderators
        self._forbidden = frozenset(d.lower() for d in forbidden_domains)

    async def before_membership(self, sender: str, room_id: str, action: str, target: str) -> None:
        """The RoomService hook, run before a membership change is sent."""
        if action != "leave" or target != sender or domain_of(sender) != self._server_name:
            return
        try:
            await self._on_leave(sender, room_id)
        except MatrixError as e:
            logger.info("could not hand over the admin rights of %s in %s: %s", sender, room_id, e.msg)

    async def _on_leave(self, leaver: str, room_id: str) -> None:
        state = await self._events.current_state_events(room_id)
        create = state.get(("m.room.create", ""))
        pl = state.get(("m.room.power_levels", ""))
        if create is None or pl is None or not isinstance(pl.content.get("users"), Mapping):
            return
        version = create.room_version

        def level(user_id: str) -> int:
            return get_user_power_level(user_id, create, pl, version)

        members = {k: e.membership for (t, k), e in state.items() if t == "m.room.member"}
        present = [u for u, m in members.items() if m in ("join", "invite") and u != leaver]
        if level(leaver) < ADMIN or any(level(u) >= ADMIN for u in present):
            return
        content = copy.deepcopy(dict(pl.content))
        users: dict[str, Any] = dict(content.get("users", {}))
        default = _int(content.get("users_default"))
        promoted: list[str] = []
        if self._promote_moderators:
            promoted = self._allowed(_highest_non_default(users, default, present))
        if not promoted and self._mode == OLDEST:
            # the member joined for the longest time (of those who may hold power) alone
            assert self._join_positions is not None
            since = await self._join_positions(room_id)
            joined = [u for u in self._allowed(present) if members[u] == "join" and u in since]
            if not joined:
                return
            oldest = min(joined, key=lambda u: since[u])
            logger.info("%s: its last admin %s leaves, %s (the longest joined) becomes admin", room_id, leaver, oldest)
            users[oldest] = ADMIN
            content["users"] = users
            await self._send(leaver, room_id, content)
            return
        if not promoted and self._mode == FREEZE:
            logger.info("freezing %s: its last admin %s leaves", room_id, leaver)
            await self._send(leaver, room_id, frozen_power_levels(content, leaver))
            return
        if not promoted:
            if self._room_kind(state) == "private_or_public":
                content["users_default"] = ADMIN
                content["users"] = {u: lv for u, lv in users.items() if _int(lv) == ADMIN}
                await self._send(leaver, room_id, content)
                return
            joined = [u for u in present if members[u] == "join" and u not in users]
            promoted = self._allowed(joined)
        if not promoted:
            return
        for user_id in promoted:
            users[user_id] = ADMIN
        content["users"] = users
        await self._send(leaver, room_id, content)

    def _allowed(self, user_ids: list[str]) -> list[str]:
        return [u for u in user_ids if domain_of(u).lower() not in self._forbidden]

    @staticmethod
    def _room_kind(state: Mapping[tuple[str, str], Event]) -> str:
        rules = state.get((ACCESS_RULES_TYPE, ""))
        content = rules.content if rules is not None else {}
        if content.get("visibility") == "public" or content.get("rule") == RESTRICTED:
            return "private_or_public"
        return "other"

    async def _send(self, sender: str, room_id: str, content: dict[str, Any]) -> None:
        await self._events.send(
            room_id=room_id, sender=sender, event_type="m.room.power_levels", content=content, state_key=""
        )


def frozen_power_levels(content: Mapping[str, Any], leaver: str) -> dict[str, Any]:
    """``content`` with every required level raised to at least :data:`ADMIN` and the
    leaver's own entry removed (a sender may lower or drop its own level; the levels of
    other users at or above its own cannot be touched, and need not be: none is present)."""
    frozen = copy.deepcopy(dict(content))
    for name, default in _FROZEN_LEVELS:
        frozen[name] = max(ADMIN, get_named_level(content, name, default))
    for name in ("events", "notifications"):
        sub = content.get(name)
        if isinstance(sub, Mapping):
            frozen[name] = {k: max(ADMIN, _level_or(v, ADMIN)) for k, v in sub.items()}
    notifications = frozen.setdefault("notifications", {})
    if isinstance(notifications, dict):
        notifications.setdefault("room", max(ADMIN, DEFAULT_NOTIFICATION_LEVEL))
    users = frozen.get("users")
    if isinstance(users, dict):
        users.pop(leaver, None)
    return frozen


def _level_or(value: Any, default: int) -> int:
    parsed = parse_power_level(value)
    return default if parsed is None else parsed


def _highest_non_default(users: Mapping[str, Any], default: int, present: list[str]) -> list[str]:
    """The present members holding the highest level above ``default`` (Tchap's search)."""
    levels = sorted({_int(lv) for u, lv in users.items() if u in present and _int(lv) > default}, reverse=True)
    for lv in levels:
        found = [u for u in present if _int(users.get(u)) == lv]
        if found:
            return found
    return []
