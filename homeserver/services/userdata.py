"""Profiles (propagated to room memberships), account data, room tags and stored filters."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError, forbidden, not_found
from homeserver.core.ids import InvalidID, UserID
from homeserver.federation.transport import FederationDeniedError, FederationError, HttpResponseError
from homeserver.services.notifier import Notifier
from homeserver.storage.accounts import AccountRepository
from homeserver.storage.rooms import RoomRepository
from homeserver.storage.userdata import AccountDataRepository, ProfileRepository

logger = logging.getLogger(__name__)

MAX_DISPLAYNAME_LENGTH = 256
MAX_AVATAR_URL_LENGTH = 1000
# Account data types the server manages itself, which clients may not set directly.
_SERVER_MANAGED = ("m.fully_read", "m.push_rules")
REMOTE_PROFILE_CACHE_MS = 60_000
REMOTE_PROFILE_CACHE_SIZE = 10_000
REMOTE_PROFILE_TIMEOUT_S = 10.0


class FederationQueries(Protocol):
    """:class:`~homeserver.federation.transport.FederationClient`."""

    async def get_json(
        self,
        destination: str,
        path: str,
        *,
        args: Mapping[str, str | Sequence[str]] | None = None,
        timeout: float | None = None,
    ) -> Any: ...


class RemoteProfiles:
    """Profiles of users on other servers (``GET /_matrix/federation/v1/query/profile``),
    kept a short while.  Errors follow Synapse: the remote server's 404 or 403 is passed
    on, a server off the allowlist is a 403, one that cannot be reached a 502."""

    def __init__(self, *, clock: Clock, client: FederationQueries) -> None:
        self._clock = clock
        self._client = client
        self._cache: OrderedDict[str, tuple[int, dict[str, Any]]] = OrderedDict()

    async def get_profile(self, user: UserID) -> dict[str, Any]:
        user_id = user.to_string()
        now = self._clock.time_msec()
        cached = self._cache.get(user_id)
        if cached is not None and cached[0] > now:
            return dict(cached[1])
        try:
            body = await self._client.get_json(
                user.domain,
                "/_matrix/federation/v1/query/profile",
                args={"user_id": user_id},
                timeout=REMOTE_PROFILE_TIMEOUT_S,
            )
        except FederationDeniedError as e:
            raise forbidden(str(e)) from None
        except HttpResponseError as e:
            if e.code == 404:
                raise not_found(e.error or "Profile was not found") from None
            if e.code == 403:
                raise forbidden(e.error or "Profile isn't available") from None
            raise MatrixError(502, Codes.UNKNOWN, "Failed to fetch profile") from None
        except FederationError:
            raise MatrixError(502, Codes.UNKNOWN, "Failed to fetch profile") from None
        if not isinstance(body, dict):
            raise MatrixError(502, Codes.UNKNOWN, "Failed to fetch profile")
        profile = {k: v for k, v in body.items() if k in ("displayname", "avatar_url") and isinstance(v, str)}
        self._cache[user_id] = (now + REMOTE_PROFILE_CACHE_MS, profile)
        self._cache.move_to_end(user_id)
        while len(self._cache) > REMOTE_PROFILE_CACHE_SIZE:
            self._cache.popitem(last=False)
        return dict(profile)


class ProfileService:
    def __init__(
        self,
        *,
        server_name: str,
        profiles: ProfileRepository,
        accounts: AccountRepository,
        rooms: RoomRepository,
        displayname_changes_enabled: bool,
        avatar_changes_enabled: bool,
    ) -> None:
        self._server_name = server_name
        self._profiles = profiles
        self._accounts = accounts
        self._rooms = rooms
        self._displayname_enabled = displayname_changes_enabled
        self._avatar_enabled = avatar_changes_enabled
        # Set by app.py: re-sends the member event of every joined room (profile propagation).
        self.on_profile_changed: Any = None
        # Set by app.py when federation is on: profiles of other servers' users.
        self.remote_profiles: RemoteProfiles | None = None
        # Set by app.py: asks application services about unknown users of their namespaces.
        self.unknown_user_resolver: Callable[[str], Awaitable[bool]] | None = None

    async def get_profile(self, user_id: str) -> dict[str, Any]:
        try:
            parsed = UserID.parse(user_id)
        except InvalidID:
            raise MatrixError(400, Codes.INVALID_PARAM, f"Invalid user ID: {user_id}") from None
        if parsed.domain != self._server_name:
            if self.remote_profiles is None:
                raise not_found("Profile not found")
            return await self.remote_profiles.get_profile(parsed)
        user = await self._accounts.get_user(user_id)
        if user is None and self.unknown_user_resolver is not None and await self.unknown_user_resolver(user_id):
            user = await self._accounts.get_user(user_id)
        if user is None or user.deactivated:
            raise not_found("Profile not found")
        profile = await self._profiles.get_profile(user_id) or (None, None)
        out: dict[str, Any] = {}
        if profile[0] is not None:
            out["displayname"] = profile[0]
        if profile[1] is not None:
            out["avatar_url"] = profile[1]
        return out

    async def lookup(self, user_id: str) -> tuple[str | None, str | None]:
        return await self._profiles.get_profile(user_id) or (None, None)

    async def set_field(self, requester_id: str, user_id: str, field: str, value: Any) -> None:
        if requester_id != user_id:
            raise forbidden("You may only change your own profile")
        if value is not None and not isinstance(value, str):
            raise MatrixError(400, Codes.BAD_JSON, f"Parameter {field} must be a string")
        if field == "displayname":
            if not self._displayname_enabled:
                raise forbidden("Changing display names is disabled on this server")
            if value is not None and len(value) > MAX_DISPLAYNAME_LENGTH:
                raise MatrixError(400, Codes.INVALID_PARAM, f"Parameter displayname is longer than {MAX_DISPLAYNAME_LENGTH}")
        elif field == "avatar_url":
            if not self._avatar_enabled:
                raise forbidden("Changing avatars is disabled on this server")
            if value is not None and len(value) > MAX_AVATAR_URL_LENGTH:
                raise MatrixError(400, Codes.INVALID_PARAM, f"Parameter avatar_url is longer than {MAX_AVATAR_URL_LENGTH}")
        else:
            raise MatrixError(400, Codes.UNRECOGNIZED, f"Unknown profile field {field}")
        await self._profiles.set_field(user_id, field, value or None)
        if self.on_profile_changed is not None:
            await self.on_profile_changed(user_id)


class AccountDataService:
    def __init__(self, *, notifier: Notifier, account_data: AccountDataRepository, rooms: RoomRepository) -> None:
        self._notifier = notifier
        self._repo = account_data
        self._rooms = rooms
        # Stored filters never change: /sync reads them on every request.
        self._filters: dict[tuple[str, int], dict[str, Any]] = {}

    async def put(self, requester_id: str, user_id: str, room_id: str, data_type: str, content: Any) -> None:
        if requester_id != user_id:
            raise forbidden("Cannot add account data for other users")
        if not isinstance(content, dict):
            raise MatrixError(400, Codes.BAD_JSON, "Account data content must be a JSON object")
        if data_type in _SERVER_MANAGED and room_id == "":
            raise MatrixError(400, Codes.BAD_JSON, f"Cannot set {data_type} through this API")
        if room_id and await self._rooms.get_membership(room_id, user_id) is None:
            raise forbidden(f"User {user_id} is not in room {room_id}")
        await self.put_internal(user_id, room_id, data_type, content)

    async def put_internal(self, user_id: str, room_id: str, data_type: str, content: dict[str, Any]) -> None:
        stream_id = await self._repo.put(user_id, room_id, data_type, content)
        self._notifier.notify("account_data", stream_id, [user_id])

    async def get(self, requester_id: str, user_id: str, room_id: str, data_type: str) -> dict[str, Any]:
        if requester_id != user_id:
            raise forbidden("Cannot get account data for other users")
        content = await self._repo.get(user_id, room_id, data_type)
        if content is None:
            raise not_found("Account data not found")
        return content

    async def changed_since(self, user_id: str, after: int, upto: int) -> list[tuple[str, str, dict[str, Any]]]:
        return await self._repo.changed_since(user_id, after, upto)

    async def current_position(self) -> int:
        return await self._repo.ids.current()

    # Tags are room account data of type m.tag.
    async def get_tags(self, requester_id: str, user_id: str, room_id: str) -> dict[str, Any]:
        if requester_id != user_id:
            raise forbidden("Cannot get tags for other users")
        content = await self._repo.get(user_id, room_id, "m.tag") or {}
        return {"tags": content.get("tags", {})}

    async def set_tag(self, requester_id: str, user_id: str, room_id: str, tag: str, body: dict[str, Any]) -> None:
        if requester_id != user_id:
            raise forbidden("Cannot set tags for other users")
        if len(tag) > 255:
            raise MatrixError(400, Codes.INVALID_PARAM, "Tag names may be at most 255 characters")
        order = body.get("order")
        if order is not None and (isinstance(order, bool) or not isinstance(order, (int, float))):
            raise MatrixError(400, Codes.BAD_JSON, "Parameter order must be a number")
        content = await self._repo.get(user_id, room_id, "m.tag") or {"tags": {}}
        content.setdefault("tags", {})[tag] = body
        await self.put_internal(user_id, room_id, "m.tag", content)

    async def delete_tag(self, requester_id: str, user_id: str, room_id: str, tag: str) -> None:
        if requester_id != user_id:
            raise forbidden("Cannot delete tags for other users")
        content = await self._repo.get(user_id, room_id, "m.tag") or {"tags": {}}
        content.setdefault("tags", {}).pop(tag, None)
        await self.put_internal(user_id, room_id, "m.tag", content)

    # Filters
    async def add_filter(self, requester_id: str, user_id: str, filter_json: dict[str, Any]) -> int:
        if requester_id != user_id:
            raise forbidden("Cannot create filters for other users")
        return await self._repo.add_filter(user_id, filter_json)

    async def get_filter(self, requester_id: str, user_id: str, filter_id: str) -> dict[str, Any]:
        if requester_id != user_id:
            raise forbidden("Cannot get filters for other users")
        try:
            fid = int(filter_id)
        except ValueError:
            raise not_found("No such filter") from None
        cached = self._filters.get((user_id, fid))
        if cached is not None:
            return cached
        found = await self._repo.get_filter(user_id, fid)
        if found is None:
            raise not_found("No such filter")
        if len(self._filters) > 10_000:
            self._filters.clear()
        self._filters[(user_id, fid)] = found
        return found
