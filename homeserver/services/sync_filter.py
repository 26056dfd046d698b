"""Client filters as /sync and /messages use them: the ``filter`` parameter resolved to a
parsed :mod:`homeserver.filtering` filter (inline JSON or a stored filter ID)."""

from __future__ import annotations

import json
from typing import Any

from homeserver.core.errors import Codes, MatrixError
from homeserver.filtering import Filter, RoomEventFilter, parse_filter, parse_room_event_filter
from homeserver.services.userdata import AccountDataService


class ClientFilter:
    """A parsed filter, with the questions the sync service asks of it (``SyncFilter``)."""

    def __init__(self, parsed: Filter) -> None:
        self.parsed = parsed

    def timeline_limit(self, default: int) -> int:
        return self.parsed.room.timeline.limit_or(default)

    def lazy_load_members(self) -> bool:
        return self.parsed.lazy_load_members

    def unread_thread_notifications(self) -> bool:
        return self.parsed.unread_thread_notifications

    def include_leave(self) -> bool:
        return self.parsed.include_leave

    def room_included(self, room_id: str) -> bool:
        return self.parsed.room_included(room_id)

    def timeline_matches(self, event: dict[str, Any]) -> bool:
        return self.parsed.room.timeline.matches(event)

    def state_matches(self, event: dict[str, Any]) -> bool:
        return self.parsed.room.state.matches(event)

    def ephemeral_matches(self, event: dict[str, Any]) -> bool:
        return self.parsed.room.ephemeral.matches(event)

    def account_data_matches(self, event: dict[str, Any]) -> bool:
        return self.parsed.account_data.matches(event)

    def room_account_data_matches(self, event: dict[str, Any]) -> bool:
        return self.parsed.room.account_data.matches(event)

    def presence_matches(self, event: dict[str, Any]) -> bool:
        return self.parsed.presence.matches(event)


def _json_param(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise MatrixError(400, Codes.NOT_JSON, "Query parameter filter is not valid JSON") from None


class FilterLoader:
    """Resolves the ``filter`` query parameter of /sync, /messages and /context."""

    def __init__(self, account_data: AccountDataService) -> None:
        self._account_data = account_data

    async def load(self, user_id: str, raw: str | None) -> ClientFilter:
        if raw is None or raw == "":
            return ClientFilter(parse_filter({}))
        if raw.lstrip().startswith("{"):
            return ClientFilter(parse_filter(_json_param(raw)))
        return ClientFilter(parse_filter(await self._account_data.get_filter(user_id, user_id, raw)))

    def room_event_filter(self, user_id: str, raw: str) -> RoomEventFilter:
        """/messages and /context take a RoomEventFilter as inline JSON."""
        return parse_room_event_filter(_json_param(raw))
