"""POST /search: full-text search over the rooms the user is in (room_events category).

With ``event_context`` each result carries the events around it (``events_before``,
``events_after``, pagination tokens ``start``/``end``) and, with ``include_profile``, the
senders' display names and avatars (from their current membership in the room).
"""

from __future__ import annotations

from typing import Any, Protocol

from homeserver.core.errors import Codes, MatrixError
from homeserver.services.auth import Requester
from homeserver.services.presenter import EventPresenter
from homeserver.storage.events import EventRepository, StoredEvent
from homeserver.storage.rooms import RoomRepository
from homeserver.storage.search import SearchRepository
from homeserver.storage.timeline import TopoKey

DEFAULT_KEYS = ("content.body", "content.name", "content.topic")
MAX_RESULTS = 100


DEFAULT_CONTEXT_LIMIT = 5
MAX_CONTEXT_LIMIT = 20


class Paginator(Protocol):
    """Room history pages as /messages serves them (the MessageService)."""

    async def messages(
        self,
        requester: Requester,
        room_id: str,
        *,
        from_token: str | None,
        to_token: str | None,
        backwards: bool,
        limit: int,
    ) -> dict[str, Any]: ...


class SearchService:
    def __init__(
        self,
        *,
        search: SearchRepository,
        events: EventRepository,
        rooms: RoomRepository,
        presenter: EventPresenter,
        paginator: Paginator | None = None,
    ) -> None:
        self._search = search
        self._events = events
        self._rooms = rooms
        self._presenter = presenter
        self._paginator = paginator

    async def search(self, requester: Requester, body: dict[str, Any], next_batch: str | None) -> dict[str, Any]:
        categories = body.get("search_categories")
        if not isinstance(categories, dict):
            raise MatrixError(400, Codes.BAD_JSON, "Parameter search_categories must be an object")
        criteria = categories.get("room_events")
        if criteria is None:
            return {"search_categories": {}}
        if not isinstance(criteria, dict):
            raise MatrixError(400, Codes.BAD_JSON, "Parameter search_categories.room_events must be an object")
        term = criteria.get("search_term")
        if not isinstance(term, str):
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: search_categories.room_events.search_term")
        keys = criteria.get("keys", list(DEFAULT_KEYS))
        if not isinstance(keys, list) or any(k not in DEFAULT_KEYS for k in keys):
            raise MatrixError(400, Codes.INVALID_PARAM, f"Parameter keys must be a subset of {list(DEFAULT_KEYS)}")
        order_by = criteria.get("order_by", "rank")
        if order_by not in ("rank", "recent"):
            raise MatrixError(400, Codes.INVALID_PARAM, "Parameter order_by must be 'rank' or 'recent'")
        flt = criteria.get("filter") or {}
        if not isinstance(flt, dict):
            raise MatrixError(400, Codes.BAD_JSON, "Parameter filter must be an object")
        limit = flt.get("limit", 10)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise MatrixError(400, Codes.INVALID_PARAM, "Parameter filter.limit must be a positive integer")
        context = _parse_event_context(criteria.get("event_context"))
        rooms = {m.room_id for m in await self._rooms.rooms_for_user(requester.user_id)}
        if isinstance(flt.get("rooms"), list):
            rooms &= set(flt["rooms"])
        rooms -= set(flt.get("not_rooms") or [])
        before: int | None = None
        offset = 0
        if next_batch:
            try:
                kind, _, value = next_batch.partition(":")
                if kind == "s":
                    before = int(value)
                elif kind == "o":
                    offset = int(value)
                else:
                    raise ValueError
            except ValueError:
                raise MatrixError(400, Codes.INVALID_PARAM, "Invalid next_batch token") from None
        by_rank = order_by == "rank"
        want = min(limit, MAX_RESULTS)
        matches, count = await self._search.search(
            rooms, term, keys, before_stream=before, limit=want + offset + 1, by_rank=by_rank
        )
        page = matches[offset : offset + want]
        stored = await self._events.get_events([m[0] for m in page])
        ordered = [stored[m[0]] for m in page if m[0] in stored and stored[m[0]].redacted_by is None]
        visible = {s.event.event_id for s in await self._presenter.filter_visible(requester.user_id, ordered)}
        ordered = [s for s in ordered if s.event.event_id in visible]
        serialized = await self._presenter.serialize(ordered, user_id=requester.user_id, device_id=requester.device_id)
        ranks = {m[0]: m[1] for m in page}
        results: list[dict[str, Any]] = [{"rank": ranks[e["event_id"]], "result": e} for e in serialized]
        if context is not None and self._paginator is not None:
            for result, item in zip(results, ordered, strict=True):
                result["context"] = await self._context(requester, item, *context)
        out: dict[str, Any] = {"results": results, "count": count, "highlights": sorted(set(term.lower().split()))}
        if len(matches) > offset + want:
            out["next_batch"] = f"o:{offset + want}" if by_rank else f"s:{page[-1][2]}"
        return {"search_categories": {"room_events": out}}

    async def _context(
        self, requester: Requester, item: StoredEvent, before: int, after: int, include_profile: bool
    ) -> dict[str, Any]:
        assert self._paginator is not None
        room_id = item.event.room_id
        token = TopoKey(item.event.depth, item.stream_ordering).to_token()
        older = await self._paginator.messages(
            requester, room_id, from_token=token, to_token=None, backwards=True, limit=before
        )
        newer = await self._paginator.messages(
            requester, room_id, from_token=token, to_token=None, backwards=False, limit=after
        )
        out: dict[str, Any] = {
            "events_before": older["chunk"],
            "events_after": newer["chunk"],
            "start": older.get("end", token),
            "end": newer.get("end", token),
        }
        if include_profile:
            senders = {item.event.sender} | {e["sender"] for e in [*older["chunk"], *newer["chunk"]]}
            profiles: dict[str, Any] = {}
            for sender in sorted(senders):
                member = await self._rooms.get_membership(room_id, sender)
                if member is not None:
                    profiles[sender] = {"displayname": member.displayname, "avatar_url": member.avatar_url}
            out["profile_info"] = profiles
        return out


def _parse_event_context(raw: Any) -> tuple[int, int, bool] | None:
    """``event_context`` as (before_limit, after_limit, include_profile), or None if absent."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise MatrixError(400, Codes.BAD_JSON, "Parameter event_context must be an object")
    limits = []
    for name in ("before_limit", "after_limit"):
        value = raw.get(name, DEFAULT_CONTEXT_LIMIT)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise MatrixError(
                400, Codes.INVALID_PARAM, f"Parameter event_context.{name} must be a non-negative integer"
            )
        limits.append(min(value, MAX_CONTEXT_LIMIT))
    include_profile = raw.get("include_profile", False)
    if not isinstance(include_profile, bool):
        raise MatrixError(400, Codes.BAD_JSON, "Parameter event_context.include_profile must be a boolean")
    return limits[0], limits[1], include_profile
