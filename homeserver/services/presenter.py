"""Turning stored events into what a given user may see: visibility, then the client format.

Batches its lookups (redactions, transaction IDs, previous state, edits and threads) over
a page of events.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from homeserver.core.clock import Clock
from homeserver.events.model import Event
from homeserver.services.serialize import client_event
from homeserver.storage.events import EventRepository, StoredEvent
from homeserver.storage.rooms import RoomRepository
from homeserver.storage.state import StateRepository
from homeserver.storage.timeline import TimelineRepository

HISTORY_VISIBILITY_KEY = ("m.room.history_visibility", "")


class EventPresenter:
    def __init__(
        self,
        *,
        clock: Clock,
        events: EventRepository,
        state: StateRepository,
        timeline: TimelineRepository,
        rooms: RoomRepository,
    ) -> None:
        self._clock = clock
        self._events = events
        self._state = state
        self._timeline = timeline
        self._rooms = rooms

    async def filter_visible(
        self, user_id: str, stored: list[StoredEvent], *, memberships: dict[str, str | None] | None = None
    ) -> list[StoredEvent]:
        """Drop the events ``user_id`` may not see under the rooms' history visibility.

        The rules use the state after each event: a member at that point sees it;
        otherwise ``world_readable`` shows it to all, ``shared`` to current members, and
        ``invited`` to those invited at that point.
        """
        if not stored:
            return []
        groups = await self._state.get_groups_for_events([s.event.event_id for s in stored])
        current: dict[str, str | None] = dict(memberships or {})
        for room_id in {s.event.room_id for s in stored} - current.keys():
            membership = await self._rooms.get_membership(room_id, user_id)
            current[room_id] = membership.membership if membership else None
        # Load each state once, then the member and history-visibility events they point
        # to in one batch: the rules themselves are then plain lookups.
        states = await self._state.get_states(set(groups.values()))
        member_key = ("m.room.member", user_id)
        wanted = set()
        for state in states.values():
            for key in (member_key, HISTORY_VISIBILITY_KEY):
                event_id = state.get(key)
                if event_id is not None:
                    wanted.add(event_id)
        fetched = await self._events.get_events(wanted)
        out = []
        # Events after the same state share a verdict (one's own membership events aside).
        verdicts: dict[tuple[int, str], bool] = {}
        for item in stored:
            event = item.event
            if item.rejected_reason is not None:
                continue
            group = groups.get(event.event_id)
            if group is None:
                continue
            if event.state_key == user_id and event.type == "m.room.member":
                out.append(item)  # one's own membership changes are always visible
                continue
            group_room = (group, event.room_id)
            verdict = verdicts.get(group_room)
            if verdict is None:
                verdict = verdicts[group_room] = self._visible(user_id, states[group], current[event.room_id], fetched)
            if verdict:
                out.append(item)
        return out

    @staticmethod
    def _visible(
        user_id: str,
        state: dict[tuple[str, str], str],
        current: str | None,
        fetched: dict[str, StoredEvent],
    ) -> bool:
        """Whether an event (not the user's own membership) after ``state`` is visible."""
        member_id = state.get(("m.room.member", user_id))
        at_event = None
        if member_id is not None:
            member = fetched.get(member_id)
            at_event = member.event.content.get("membership") if member else None
        if at_event == "join":
            return True
        visibility = "shared"
        hv_id = state.get(HISTORY_VISIBILITY_KEY)
        if hv_id is not None:
            hv = fetched.get(hv_id)
            if hv is not None:
                visibility = str(hv.event.content.get("history_visibility", "shared"))
        if visibility == "world_readable":
            return True
        if visibility == "shared":
            return current == "join"
        if visibility == "invited":
            return at_event == "invite"
        return False

    async def serialize(
        self, stored: Iterable[StoredEvent], *, user_id: str | None, device_id: str | None, with_relations: bool = True
    ) -> list[dict[str, Any]]:
        items = list(stored)
        if not items:
            return []
        now = self._clock.time_msec()
        ids = [s.event.event_id for s in items]
        redaction_ids = {s.redacted_by for s in items if s.redacted_by}
        replaced_ids = {s.replaces_state for s in items if s.replaces_state}
        related = await self._events.get_events(list(redaction_ids | replaced_ids))
        own = [s.event.event_id for s in items if s.event.sender == user_id]
        txn_ids = await self._events.get_txn_ids(own) if own and device_id else {}
        all_relations = await self._timeline.relations_of_many(ids) if with_relations else {}
        out = []
        for item in items:
            event = item.event
            redaction = related.get(item.redacted_by) if item.redacted_by else None
            prev = related.get(item.replaces_state) if item.replaces_state else None
            txn = txn_ids.get(event.event_id)
            related_rows = all_relations.get(event.event_id)
            relations = (
                await self._aggregations(event, user_id, related_rows) if related_rows and redaction is None else None
            )
            out.append(
                client_event(
                    event,
                    now_ms=now,
                    redaction=redaction.event if redaction else None,
                    transaction_id=txn[2] if txn and txn[0] == user_id and txn[1] == device_id else None,
                    prev_content=prev.event.content if prev else None,
                    prev_sender=prev.event.sender if prev else None,
                    relations=relations,
                )
            )
        return out

    async def _aggregations(
        self, event: Event, user_id: str | None, relations: list[tuple[str, str, str | None, str, int]]
    ) -> dict[str, Any] | None:
        """The server-side aggregations of the spec: the latest edit and the thread summary."""
        out: dict[str, Any] = {}
        edits = [r for r in relations if r[1] == "m.replace" and r[3] == event.sender]
        if edits:
            latest = await self._events.get_event(edits[-1][0])
            if latest is not None:
                out["m.replace"] = client_event(latest.event, now_ms=self._clock.time_msec())
        thread = [r for r in relations if r[1] == "m.thread"]
        if thread:
            latest = await self._events.get_event(thread[-1][0])
            if latest is not None:
                out["m.thread"] = {
                    "latest_event": client_event(latest.event, now_ms=self._clock.time_msec()),
                    "count": len(thread),
                    "current_user_participated": user_id is not None
                    and (event.sender == user_id or any(r[3] == user_id for r in thread)),
                }
        references = [r for r in relations if r[1] == "m.reference"]
        if references:
            out["m.reference"] = {"chunk": [{"event_id": r[0]} for r in references]}
        return out or None
