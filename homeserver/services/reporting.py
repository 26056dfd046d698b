"""Reports of events and rooms by users (``/rooms/{roomId}/report[/{eventId}]``) for the
server's administrators, and the lookup of a room's event by timestamp
(``/rooms/{roomId}/timestamp_to_event``)."""

from __future__ import annotations

from typing import Any, Protocol

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError, forbidden, not_found
from homeserver.events.model import Event
from homeserver.storage.events import StoredEvent
from homeserver.storage.reports import ContentReport
from homeserver.storage.rooms import Membership

MAX_REASON_LENGTH = 1000
DEFAULT_ADMIN_PAGE = 100


class Reports(Protocol):
    async def add(
        self,
        *,
        received_ts: int,
        room_id: str,
        event_id: str | None,
        user_id: str,
        reason: str | None,
        score: int | None,
    ) -> int: ...

    async def list(
        self, *, offset: int, limit: int, newest_first: bool, room_id: str | None, user_id: str | None
    ) -> tuple[list[ContentReport], int]: ...

    async def get(self, report_id: int) -> ContentReport | None: ...


class Events(Protocol):
    async def get_event(self, event_id: str) -> StoredEvent | None: ...


class Visibility(Protocol):
    async def filter_visible(self, user_id: str, stored: list[StoredEvent]) -> list[StoredEvent]: ...


class RoomState(Protocol):
    async def current_state_event(self, room_id: str, type_: str, state_key: str = "") -> Event | None: ...


class Rooms(Protocol):
    async def room_exists(self, room_id: str) -> bool: ...

    async def get_membership(self, room_id: str, user_id: str) -> Membership | None: ...


class TimestampIndex(Protocol):
    async def closest(self, room_id: str, ts: int, *, forwards: bool) -> tuple[str, int] | None: ...


def _check_reason(reason: str | None) -> None:
    if reason is not None and len(reason) > MAX_REASON_LENGTH:
        raise MatrixError(400, Codes.INVALID_PARAM, f"Parameter reason must be at most {MAX_REASON_LENGTH} characters")


class ReportService:
    def __init__(
        self,
        *,
        clock: Clock,
        reports: Reports,
        events: Events,
        visibility: Visibility,
        rooms: Rooms,
        state: RoomState,
        timestamps: TimestampIndex,
    ) -> None:
        self._clock = clock
        self._reports = reports
        self._events = events
        self._visibility = visibility
        self._rooms = rooms
        self._state = state
        self._timestamps = timestamps

    async def report_event(
        self, user_id: str, room_id: str, event_id: str, reason: str | None, score: int | None
    ) -> None:
        """Store the report; 404 when the event is unknown or the reporter may not see it."""
        _check_reason(reason)
        if score is not None and not -100 <= score <= 0:
            raise MatrixError(400, Codes.INVALID_PARAM, "Parameter score must be an integer between -100 and 0")
        stored = await self._events.get_event(event_id)
        if (
            stored is None
            or stored.event.room_id != room_id
            or not await self._visibility.filter_visible(user_id, [stored])
        ):
            raise not_found("Unable to report event: it does not exist or you aren't able to see it.")
        await self._reports.add(
            received_ts=self._clock.time_msec(),
            room_id=room_id,
            event_id=event_id,
            user_id=user_id,
            reason=reason,
            score=score,
        )

    async def report_room(self, user_id: str, room_id: str, reason: str) -> None:
        _check_reason(reason)
        if not await self._rooms.room_exists(room_id):
            raise not_found("Room does not exist")
        await self._reports.add(
            received_ts=self._clock.time_msec(),
            room_id=room_id,
            event_id=None,
            user_id=user_id,
            reason=reason,
            score=None,
        )

    # -- administrators ------------------------------------------------------------------

    async def list_reports(
        self, *, offset: int, limit: int, newest_first: bool, room_id: str | None, user_id: str | None
    ) -> dict[str, Any]:
        """Synapse's ``GET /_synapse/admin/v1/event_reports`` page."""
        found, total = await self._reports.list(
            offset=offset, limit=limit, newest_first=newest_first, room_id=room_id, user_id=user_id
        )
        body: dict[str, Any] = {"event_reports": [await self._admin_entry(r) for r in found], "total": total}
        if offset + len(found) < total:
            body["next_token"] = offset + len(found)
        return body

    async def get_report(self, report_id: int) -> dict[str, Any]:
        report = await self._reports.get(report_id)
        if report is None:
            raise not_found("Event report not found")
        entry = await self._admin_entry(report)
        if report.event_id is not None:
            stored = await self._events.get_event(report.event_id)
            if stored is not None:
                entry["event_json"] = stored.event.dict
        return entry

    async def _admin_entry(self, report: ContentReport) -> dict[str, Any]:
        name = await self._state.current_state_event(report.room_id, "m.room.name")
        alias = await self._state.current_state_event(report.room_id, "m.room.canonical_alias")
        sender = None
        if report.event_id is not None:
            stored = await self._events.get_event(report.event_id)
            sender = stored.event.sender if stored is not None else None
        return {
            "id": report.id,
            "received_ts": report.received_ts,
            "room_id": report.room_id,
            "event_id": report.event_id,
            "user_id": report.user_id,
            "reason": report.reason,
            "score": report.score,
            "sender": sender,
            "name": name.content.get("name") if name is not None else None,
            "canonical_alias": alias.content.get("alias") if alias is not None else None,
        }

    # -- timestamp_to_event ----------------------------------------------------------------

    async def event_at(self, user_id: str, room_id: str, ts: int, *, forwards: bool) -> dict[str, Any]:
        """The room's closest local event to ``ts`` in the direction asked: for members and,
        in ``world_readable`` rooms, for anyone (403 otherwise, unknown rooms included)."""
        membership = await self._rooms.get_membership(room_id, user_id)
        if membership is None or membership.membership != "join":
            hv = await self._state.current_state_event(room_id, "m.room.history_visibility")
            if hv is None or hv.content.get("history_visibility") != "world_readable":
                raise forbidden(f"User {user_id} not in room {room_id}")
        found = await self._timestamps.closest(room_id, ts, forwards=forwards)
        if found is None:
            direction = "forward" if forwards else "backward"
            raise not_found(f"Unable to find event from {ts} in {direction} direction")
        return {"event_id": found[0], "origin_server_ts": found[1]}
