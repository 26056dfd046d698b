"""Profile and user directory privacy.

- Users who set the account data ``im.vector.hide_profile`` to ``{"hide_profile": true}``
  (Tchap) are left out of user directory searches;
- so are expired accounts (account validity) and, unless
  ``government_policy.external_users.visible_in_directory``, the users of the external server
  (on every other server: the directory lists remote users who share a room with the
  searcher or are in a public room, and those must not show);
- profile lookups: ``require_auth_for_profile_requests`` and
  ``limit_profile_requests_to_users_who_share_rooms`` (Synapse's keys), see :class:`ProfileGate`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from homeserver.core.errors import MatrixError, forbidden
from homeserver.services.policy.access_rules import domain_of

HIDE_PROFILE_TYPE = "im.vector.hide_profile"

AccountDataGetter = Callable[[str, str, str], Awaitable[dict[str, object] | None]]


class DirectoryPrivacy:
    def __init__(
        self,
        *,
        hide_external_server: str | None,
        hidden_profiles: Callable[[list[str]], Awaitable[set[str]]],
        is_expired: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        self._external = hide_external_server
        self._hidden_profiles = hidden_profiles
        self._is_expired = is_expired

    async def hidden_in_search(self, searcher: str, candidates: list[str]) -> set[str]:
        """The candidates a user directory search must not show."""
        hidden = {u for u in candidates if self._external is not None and domain_of(u) == self._external}
        hidden |= await self._hidden_profiles([u for u in candidates if u not in hidden and u != searcher])
        if self._is_expired is not None:
            for user_id in candidates:
                if user_id not in hidden and await self._is_expired(user_id):
                    hidden.add(user_id)
        return hidden


def hidden_profiles_reader(
    server_name: str, get_account_data: AccountDataGetter
) -> Callable[[list[str]], Awaitable[set[str]]]:
    """Which of the (local) users hid their profile with ``im.vector.hide_profile``."""

    async def hidden(user_ids: list[str]) -> set[str]:
        out: set[str] = set()
        for user_id in user_ids:
            if domain_of(user_id) != server_name:
                continue
            content = await get_account_data(user_id, "", HIDE_PROFILE_TYPE)
            if content and content.get("hide_profile") is True:
                out.add(user_id)
        return out

    return hidden


_PROFILE_PATH = re.compile(r"^/_matrix/client/(?:r0|v3|unstable)/profile/(?P<user_id>[^/]+)(?:/[^/]+)?$")


class ProfileGate:
    """Who may read whose profile (Synapse's ``require_auth_for_profile_requests`` and
    ``limit_profile_requests_to_users_who_share_rooms``).

    The client profile API always asks for an access token here, so only the second rule
    needs enforcing; it runs as a request check (``check_request``) on the profile paths.
    """

    def __init__(
        self,
        *,
        require_auth: bool,
        limit_to_shared_rooms: bool,
        shared_room_users: Callable[[str], Awaitable[set[str]]],
    ) -> None:
        self.require_auth = require_auth
        self._limit = limit_to_shared_rooms
        self._shared = shared_room_users

    async def check(self, requester: str | None, target: str) -> None:
        """Raise unless ``requester`` (None: no access token) may read ``target``'s profile."""
        if requester is None:
            if self.require_auth:
                raise MatrixError(401, "M_MISSING_TOKEN", "Reading profiles requires an access token")
            return
        if not self._limit or requester == target:
            return
        if target not in await self._shared(requester):
            raise forbidden("You can only see the profiles of users you share a room with")

    async def check_request(self, requester: Any, path: str) -> None:
        found = _PROFILE_PATH.match(path)
        if found is not None:
            await self.check(requester.user_id, unquote(found.group("user_id")))
