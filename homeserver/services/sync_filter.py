"""Client filters as /sync and /messages use them: the ``filter`` parameter resolved to a
parsed :mod:`homeserver.filtering` filter (inline JSON or a stored filter ID)."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
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


#: Distinct filters kept parsed (clients of one kind send the same filter, so a few cover
#: most users).
_PARSED_FILTERS = 256


class FilterLoader:
    """Resolves the ``filter`` query parameter of /sync, /messages and /context.

    Parsing a filter costs ~0.1 ms and a busy server runs hundreds of /syncs a second, all
    with one of a few filters: parsed filters (immutable) are kept by content and shared.
    """

    def __init__(self, account_data: AccountDataService) -> None:
        self._account_data = account_data
        self._parsed: OrderedDict[str, ClientFilter] = OrderedDict()

    async def load(self, user_id: str, raw: str | None) -> ClientFilter:
        if raw is None or raw == "":
            return self._parse("{}", lambda: {})
        if raw.lstrip().startswith("{"):
            return self._parse(raw, lambda: _json_param(raw))
        content = await self._account_data.get_filter(user_id, user_id, raw)
        return self._parse(json.dumps(content, sort_keys=True), lambda: content)

    def _parse(self, key: str, content: Callable[[], Any]) -> ClientFilter:
        found = self._parsed.get(key)
        if found is not None:
            self._parsed.move_to_end(key)
            return found
        parsed = ClientFilter(parse_filter(content()))  # a bad filter raises: nothing cached
        self._parsed[key] = parsed
        while len(self._parsed) > _PARSED_FILTERS:
            self._parsed.popitem(last=False)
        return parsed

    def room_event_filter(self, user_id: str, raw: str) -> RoomEventFilter:
        """/messages and /context take a RoomEventFilter as inline JSON."""
        return parse_room_event_filter(_json_param(raw))
