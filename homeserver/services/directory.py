"""The room directory (published rooms) and the user directory."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from homeserver.core.errors import Codes, MatrixError, forbidden, not_found
from homeserver.events.power_levels import get_user_power_level
from homeserver.services.events import RoomEventService
from homeserver.storage.rooms import RoomRepository
from homeserver.storage.userdata import ProfileRepository

MAX_LIMIT = 500

# Policy hooks: may (user, room, visibility) publish or unpublish?  Raise a MatrixError if not.
PublishCheck = Callable[[str, str, str], Awaitable[None]]
# Policy hooks on user search: (searcher, candidate user IDs) -> the candidates to hide.
SearchFilter = Callable[[str, list[str]], Awaitable[set[str]]]


class DirectoryService:
    def __init__(
        self,
        *,
        server_name: str,
        events: RoomEventService,
        rooms: RoomRepository,
        profiles: ProfileRepository,
        search_all_users: bool,
    ) -> None:
        self._server_name = server_name
        self._events = events
        self._rooms = rooms
        self._profiles = profiles
        self._search_all_users = search_all_users
        self.publish_checks: list[PublishCheck] = []
        self.search_filters: list[SearchFilter] = []

    async def set_visibility(self, user_id: str, room_id: str, visibility: str, is_admin: bool) -> None:
        if visibility not in ("public", "private"):
            raise MatrixError(400, Codes.INVALID_PARAM, "Parameter visibility must be 'public' or 'private'")
        if not await self._rooms.room_exists(room_id):
            raise not_found("Unknown room")
        if not is_admin:
            state = await self._events.current_state_events(room_id, [("m.room.create", ""), ("m.room.power_levels", "")])
            create = state.get(("m.room.create", ""))
            pl = state.get(("m.room.power_levels", ""))
            version = await self._events.room_version(room_id)
            membership = await self._rooms.get_membership(room_id, user_id)
            level = get_user_power_level(user_id, create, pl, version) if create else 0
            if membership is None or membership.membership != "join" or level < 50:
                raise forbidden("You need power level 50 in the room to change its directory visibility")
        for check in self.publish_checks:
            await check(user_id, room_id, visibility)
        await self._rooms.set_published(room_id, visibility == "public")

    async def get_visibility(self, room_id: str) -> str:
        if not await self._rooms.room_exists(room_id):
            raise not_found("Unknown room")
        return "public" if await self._rooms.is_published(room_id) else "private"

    async def public_rooms(self, *, limit: int | None, since: str | None, search: str | None) -> dict[str, Any]:
        entries = []
        for room_id in await self._rooms.published_rooms():
            entry = await self._room_entry(room_id)
            if search:
                term = search.lower()
                haystack = " ".join(str(entry.get(k, "")) for k in ("name", "topic", "canonical_alias", "room_id"))
                if term not in haystack.lower():
                    continue
            entries.append(entry)
        entries.sort(key=lambda e: (-e["num_joined_members"], e["room_id"]))
        offset = 0
        if since:
            try:
                offset = int(since)
            except ValueError:
                raise MatrixError(400, Codes.INVALID_PARAM, "Invalid since token") from None
        limit = min(limit or MAX_LIMIT, MAX_LIMIT)
        page = entries[offset : offset + limit]
        body: dict[str, Any] = {"chunk": page, "total_room_count_estimate": len(entries)}
        if offset + limit < len(entries):
            body["next_batch"] = str(offset + limit)
        if offset > 0:
            body["prev_batch"] = str(max(0, offset - limit))
        return body

    async def _room_entry(self, room_id: str) -> dict[str, Any]:
        state = await self._events.current_state_events(
            room_id,
            [(t, "") for t in ("m.room.name", "m.room.topic", "m.room.canonical_alias", "m.room.avatar",
                               "m.room.join_rules", "m.room.history_visibility", "m.room.guest_access", "m.room.create")],
        )

        def content(t: str) -> dict[str, Any]:
            event = state.get((t, ""))
            return dict(event.content) if event else {}

        entry: dict[str, Any] = {
            "room_id": room_id,
            "num_joined_members": len(await self._events.joined_users(room_id)),
            "world_readable": content("m.room.history_visibility").get("history_visibility") == "world_readable",
            "guest_can_join": content("m.room.guest_access").get("guest_access") == "can_join",
            "join_rule": content("m.room.join_rules").get("join_rule", "invite"),
        }
        for key, t, field in (
            ("name", "m.room.name", "name"),
            ("topic", "m.room.topic", "topic"),
            ("canonical_alias", "m.room.canonical_alias", "alias"),
            ("avatar_url", "m.room.avatar", "url"),
            ("room_type", "m.room.create", "type"),
        ):
            value = content(t).get(field)
            if isinstance(value, str):
                entry[key] = value
        return entry

    async def search_users(self, user_id: str, term: str, limit: int) -> dict[str, Any]:
        """Users matching ``term`` whom the searcher shares a room with (or everyone, if configured)."""
        limit = max(1, min(limit, 50))
        visible = None if self._search_all_users else await self._rooms.shared_room_users(user_id)
        if visible is not None:
            for room_id in await self._rooms.published_rooms():
                visible |= await self._events.joined_users(room_id)
        results = []
        found = await self._profiles.search(term, limit * 5 + 10)
        hidden: set[str] = set()
        for search_filter in self.search_filters:
            hidden |= await search_filter(user_id, [uid for uid, _, _ in found])
        for uid, displayname, avatar in found:
            if (visible is not None and uid not in visible) or uid in hidden:
                continue
            entry: dict[str, Any] = {"user_id": uid}
            if displayname:
                entry["display_name"] = displayname
            if avatar:
                entry["avatar_url"] = avatar
            results.append(entry)
        return {"results": results[:limit], "limited": len(results) > limit}
