"""The room directory (published rooms) and the user directory.

The user directory (``POST /user_directory/search``) finds local users and the remote users
joined to the rooms this server is in, as Synapse's does: by default the users sharing a
joined room with the searcher and the members of public rooms; every user with
``user_directory.search_all_users``.  Its tables (storage/user_directory.py) are kept up
to date as events are persisted (:meth:`DirectoryService.on_event_persisted`, a post-persist
hook run for local and received events alike) and as local profiles change.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer

from homeserver.config.rooms import UserDirectoryConfig
from homeserver.core.errors import Codes, MatrixError, forbidden, not_found
from homeserver.events.model import Event
from homeserver.events.power_levels import get_user_power_level
from homeserver.services.events import RoomEventService
from homeserver.storage.rooms import RoomRepository
from homeserver.storage.state import StateMap
from homeserver.storage.user_directory import DirectoryEntry, SearchScope, UserDirectoryRepository, query_words

logger = logging.getLogger(__name__)

MAX_LIMIT = 500
MAX_USER_SEARCH_LIMIT = 50  # Synapse's cap on a search's limit
MAX_USER_SEARCH_SCAN = 10_000  # candidates read at most when filters hide many
_PUBLICITY_TYPES = ("m.room.join_rules", "m.room.history_visibility")

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
        user_directory: UserDirectoryRepository,
        config: UserDirectoryConfig,
    ) -> None:
        """``on_event_persisted`` must be added to the room events' post-persist hooks."""
        self._server_name = server_name
        self._events = events
        self._rooms = rooms
        self._user_dir = user_directory
        self._directory_config = config
        self._scope = SearchScope(
            search_all_users=config.search_all_users,
            exclude_remote_users=config.exclude_remote_users,
            prefer_local_users=config.prefer_local_users,
        )
        self._populated = False
        self._populate_lock = defer.DeferredLock()
        self.publish_checks: list[PublishCheck] = []
        self.search_filters: list[SearchFilter] = []

    async def set_visibility(self, user_id: str, room_id: str, visibility: str, is_admin: bool) -> None:
        if visibility not in ("public", "private"):
            raise MatrixError(400, Codes.INVALID_PARAM, "Parameter visibility must be 'public' or 'private'")
        if not await self._rooms.room_exists(room_id):
            raise not_found("Unknown room")
        if not is_admin:
            state = await self._events.current_state_events(
                room_id, [("m.room.create", ""), ("m.room.power_levels", "")]
            )
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
            [
                (t, "")
                for t in (
                    "m.room.name",
                    "m.room.topic",
                    "m.room.canonical_alias",
                    "m.room.avatar",
                    "m.room.join_rules",
                    "m.room.history_visibility",
                    "m.room.guest_access",
                    "m.room.create",
                )
            ],
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

    # -- the user directory ------------------------------------------------------------

    async def search_users(self, user_id: str, term: str, limit: int) -> dict[str, Any]:
        """Users matching ``term`` whom the searcher shares a joined room with or who are in
        a public room this server is in (or every user, with ``search_all_users``), best match
        first, the policy's search filters applied; ``limited`` if more were left out."""
        if not self._directory_config.enabled:
            return {"limited": False, "results": []}
        limit = max(0, min(limit, MAX_USER_SEARCH_LIMIT))
        words = query_words(term)
        if not words:
            return {"limited": False, "results": []}
        await self._ensure_populated()
        found: list[DirectoryEntry] = []
        offset, page = 0, limit + 1
        # The filters (hidden profiles, expired accounts, external users) may drop entries:
        # read on until limit + 1 remain or the candidates run out.
        while True:
            entries = await self._user_dir.search(user_id, words, self._scope, limit=page, offset=offset)
            hidden: set[str] = set()
            for search_filter in self.search_filters:
                hidden |= await search_filter(user_id, [e.user_id for e in entries])
            found.extend(e for e in entries if e.user_id not in hidden)
            offset += len(entries)
            if len(found) > limit or len(entries) < page or offset >= MAX_USER_SEARCH_SCAN:
                break
            page = min(page * 2, 500)
        results = []
        for entry in found[:limit]:
            result: dict[str, Any] = {"user_id": entry.user_id}
            if entry.display_name:
                result["display_name"] = entry.display_name
            if entry.avatar_url:
                result["avatar_url"] = entry.avatar_url
            results.append(result)
        return {"results": results, "limited": len(found) > limit}

    async def on_event_persisted(self, event: Event, stream: int, state_after: StateMap) -> None:
        """Post-persist hook (local and received events): keep the directory in step with
        memberships, remote users' profiles and the rooms' join rules."""
        if not event.is_state():
            return
        if event.type == "m.room.member" and event.state_key:
            await self._ensure_populated()
            await self._on_membership(event.room_id, event.state_key)
        elif event.type in _PUBLICITY_TYPES and event.state_key == "":
            await self._ensure_populated()
            tracked = await self._user_dir.room_publicity(event.room_id)
            if tracked is not None:
                is_public = await self._room_is_public(event.room_id)
                if is_public != tracked:
                    await self._user_dir.track_room(event.room_id, is_public, index_members=False)

    async def _on_membership(self, room_id: str, user_id: str) -> None:
        if await self._user_dir.apply_membership(room_id, user_id):
            await self._user_dir.track_room(room_id, await self._room_is_public(room_id), index_members=True)

    async def _room_is_public(self, room_id: str) -> bool:
        """Synapse's rule: members of rooms anyone may join, or whose history is
        world-readable, are visible to every local user."""
        state = await self._events.current_state_events(room_id, [(t, "") for t in _PUBLICITY_TYPES])
        join_rules = state.get(("m.room.join_rules", ""))
        visibility = state.get(("m.room.history_visibility", ""))
        return (join_rules is not None and join_rules.content.get("join_rule") == "public") or (
            visibility is not None and visibility.content.get("history_visibility") == "world_readable"
        )

    async def _ensure_populated(self) -> None:
        """Build the directory from the existing users and rooms, once per database (for
        databases that predate it; a new one starts built)."""
        if self._populated:
            return
        async with self._populate_lock:
            if self._populated:
                return
            if not await self._user_dir.is_populated():
                users = await self._user_dir.index_local_users()
                rooms = await self._user_dir.rooms_with_local_members()
                for room_id in rooms:
                    await self._user_dir.track_room(room_id, await self._room_is_public(room_id), index_members=True)
                await self._user_dir.mark_populated()
                logger.info("user directory built: %d local users, %d rooms", users, len(rooms))
            self._populated = True
