"""Client filters as /sync and /messages use them, built on homeserver.filtering."""

from __future__ import annotations

import json
from typing import Any

from homeserver.core.errors import Codes, MatrixError
from homeserver.services.userdata import AccountDataService


class ClientFilter:
    """Adapter from a parsed filter to what the sync and messages services ask of it."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        room = data.get("room") or {}
        self._room = room
        self._timeline = room.get("timeline") or {}
        self._state = room.get("state") or {}

    def timeline_limit(self, default: int) -> int:
        limit = self._timeline.get("limit")
        return int(limit) if isinstance(limit, int) and limit > 0 else default

    def lazy_load_members(self) -> bool:
        return bool(self._state.get("lazy_load_members") or self._timeline.get("lazy_load_members"))

    def include_leave(self) -> bool:
        return bool(self._room.get("include_leave"))

    def room_included(self, room_id: str) -> bool:
        rooms = self._room.get("rooms")
        if rooms is not None and room_id not in rooms:
            return False
        return room_id not in (self._room.get("not_rooms") or [])

    def _matches(self, section: dict[str, Any], event: dict[str, Any]) -> bool:
        return _event_matches(section, event)

    def timeline_matches(self, event: dict[str, Any]) -> bool:
        return _event_matches(self._timeline, event)

    def state_matches(self, event: dict[str, Any]) -> bool:
        return _event_matches(self._state, event)

    def ephemeral_matches(self, event: dict[str, Any]) -> bool:
        return _event_matches(self._room.get("ephemeral") or {}, event)

    def account_data_matches(self, event: dict[str, Any]) -> bool:
        return _event_matches(self.data.get("account_data") or {}, event)

    def room_account_data_matches(self, event: dict[str, Any]) -> bool:
        return _event_matches(self._room.get("account_data") or {}, event)

    def presence_matches(self, event: dict[str, Any]) -> bool:
        return _event_matches(self.data.get("presence") or {}, event)

    def room_event_filter(self) -> RoomEventFilter:
        return RoomEventFilter(self.data)


class RoomEventFilter:
    """The filter of /messages and /context: a RoomEventFilter at the top level."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.lazy_load_members = bool(data.get("lazy_load_members"))

    def matches(self, event: dict[str, Any]) -> bool:
        return _event_matches(self.data, event)


def _glob_match(pattern: str, value: str) -> bool:
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    return pattern == value


def _event_matches(section: dict[str, Any], event: dict[str, Any]) -> bool:
    event_type = str(event.get("type", ""))
    sender = event.get("sender")
    types = section.get("types")
    if types is not None and not any(_glob_match(t, event_type) for t in types):
        return False
    if any(_glob_match(t, event_type) for t in section.get("not_types") or []):
        return False
    senders = section.get("senders")
    if senders is not None and sender not in senders:
        return False
    if sender in (section.get("not_senders") or []):
        return False
    contains_url = section.get("contains_url")
    if contains_url is not None:
        has_url = isinstance(event.get("content", {}).get("url"), str)
        if has_url != contains_url:
            return False
    return True


def parse_filter_json(value: Any) -> ClientFilter:
    if not isinstance(value, dict):
        raise MatrixError(400, Codes.BAD_JSON, "Filter must be a JSON object")
    return ClientFilter(value)


class FilterLoader:
    """Resolves the ``filter`` query parameter: inline JSON or a stored filter ID."""

    def __init__(self, account_data: AccountDataService) -> None:
        self._account_data = account_data

    async def load(self, user_id: str, raw: str | None) -> ClientFilter:
        if raw is None or raw == "":
            return ClientFilter({})
        if raw.lstrip().startswith("{"):
            try:
                value = json.loads(raw)
            except ValueError:
                raise MatrixError(400, Codes.NOT_JSON, "Query parameter filter is not valid JSON") from None
            return parse_filter_json(value)
        return parse_filter_json(await self._account_data.get_filter(user_id, user_id, raw))

    def parse_inline(self, user_id: str, raw: str) -> ClientFilter:
        try:
            value = json.loads(raw)
        except ValueError:
            raise MatrixError(400, Codes.NOT_JSON, "Query parameter filter is not valid JSON") from None
        return parse_filter_json(value)
