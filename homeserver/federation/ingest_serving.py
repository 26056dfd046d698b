"""Serving room events to other servers: ``/event``, ``/state``, ``/state_ids``,
``/event_auth``, ``/backfill`` and ``/get_missing_events`` (the servlets are in
:mod:`homeserver.api.federation.events`).

Who may read what, as Synapse decides it:

- every endpoint checks the room's ``m.room.server_acl`` against the asking server;
- ``/event`` answers for an event the server may see by history visibility at the event:
  ``joined``/``invited`` visibility requires a member of that server joined (or, for
  ``invited``, invited) at the event; ``shared`` and ``world_readable`` events are
  visible to any server the allowlist lets in;
- the others first require the asking server to be in the room now (a joined member in
  the current state), and ``/backfill`` and ``/get_missing_events`` redact the events
  the server may not see, so the graph can still be walked.

Refusals are 403 ``M_FORBIDDEN``; unknown rooms and events 404 ``M_NOT_FOUND``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from homeserver.core.clock import Clock
from homeserver.core.errors import forbidden, not_found
from homeserver.events.redaction import redact_event_dict
from homeserver.federation.acl import server_matches_acl
from homeserver.storage.events import EventRepository, StoredEvent
from homeserver.storage.federation_events import FederationEventStore
from homeserver.storage.state import StateKey, StateMap, StateRepository

JsonDict = dict[str, Any]
MAX_BACKFILL = 100
MAX_MISSING_EVENTS = 100
_HISTORY_KEY: StateKey = ("m.room.history_visibility", "")
_ACL_KEY: StateKey = ("m.room.server_acl", "")


def _domain(user_id: str) -> str:
    return user_id.partition(":")[2]


def _pdu(stored: StoredEvent) -> JsonDict:
    """The event as sent over federation: redacted if we redacted it, without ``unsigned``."""
    pdu = stored.event.get_pdu_json()
    if stored.redacted_by is not None:
        pdu = redact_event_dict(stored.event.room_version, pdu)
    pdu.pop("unsigned", None)
    return pdu


class FederationEventServer:
    """Answers other servers' reads of room events, with the checks above."""

    def __init__(
        self,
        *,
        server_name: str,
        clock: Clock,
        events: EventRepository,
        state: StateRepository,
        graph: FederationEventStore,
    ) -> None:
        self._server_name = server_name
        self._clock = clock
        self._events = events
        self._state = state
        self._graph = graph

    def _envelope(self, pdus: list[JsonDict]) -> JsonDict:
        return {"origin": self._server_name, "origin_server_ts": self._clock.time_msec(), "pdus": pdus}

    # -- checks ------------------------------------------------------------------------

    async def _current(self, room_id: str, origin: str) -> StateMap:
        if await self._events.get_room_version_id(room_id) is None:
            raise not_found(f"Unknown room {room_id}")
        current = await self._events.get_current_state_ids(room_id)
        acl_id = current.get(_ACL_KEY)
        if acl_id is not None:
            acl = await self._events.get_event(acl_id)
            if acl is not None and not server_matches_acl(acl.event.content, origin):
                raise forbidden("Server is banned from room")
        return current

    async def _memberships_of(self, state: Mapping[StateKey, str], origin: str) -> list[str]:
        ids = [e for (t, k), e in state.items() if t == "m.room.member" and _domain(k) == origin]
        fetched = await self._events.get_events(ids)
        return [str(s.event.content.get("membership")) for s in fetched.values()]

    async def _require_in_room(self, room_id: str, origin: str) -> None:
        current = await self._current(room_id, origin)
        if "join" not in await self._memberships_of(current, origin):
            raise forbidden(f"{origin} is not in room {room_id}")

    async def _visible(self, stored: StoredEvent, origin: str) -> bool:
        groups = await self._state.get_groups_for_events([stored.event.event_id])
        group = groups.get(stored.event.event_id)
        if group is None:  # an outlier: no state at it, so go by the room now
            state = await self._events.get_current_state_ids(stored.event.room_id)
        else:
            state = await self._state.get_state(group)
        visibility = "shared"
        history_id = state.get(_HISTORY_KEY)
        if history_id is not None:
            history = await self._events.get_event(history_id)
            value = history.event.content.get("history_visibility") if history else None
            visibility = value if isinstance(value, str) else "shared"
        if visibility not in ("invited", "joined"):
            return True
        memberships = await self._memberships_of(state, origin)
        return "join" in memberships or (visibility == "invited" and "invite" in memberships)

    async def _event_in_room(self, room_id: str, event_id: str) -> StoredEvent:
        stored = await self._events.get_event(event_id)
        if stored is None or stored.event.room_id != room_id or stored.rejected_reason is not None:
            raise not_found(f"Unknown event {event_id} in {room_id}")
        return stored

    # -- endpoints -----------------------------------------------------------------------

    async def get_event(self, origin: str, event_id: str) -> JsonDict:
        stored = await self._events.get_event(event_id)
        if stored is None or stored.rejected_reason is not None:
            raise not_found(f"Unknown event {event_id}")
        await self._current(stored.event.room_id, origin)
        if not await self._visible(stored, origin):
            raise forbidden(f"{origin} may not see {event_id}")
        return self._envelope([_pdu(stored)])

    async def _state_before_ids(self, room_id: str, event_id: str, origin: str) -> StateMap:
        await self._require_in_room(room_id, origin)
        stored = await self._event_in_room(room_id, event_id)
        groups = await self._state.get_groups_for_events([event_id])
        if event_id not in groups:
            raise not_found(f"No state known at {event_id}")
        state = dict(await self._state.get_state(groups[event_id]))
        event = stored.event
        # The group is the state after the event: step back over the event itself.
        if event.is_state() and state.get(event.state_key_tuple) == event_id:
            if stored.replaces_state is not None:
                state[event.state_key_tuple] = stored.replaces_state
            else:
                del state[event.state_key_tuple]
        return state

    async def state_ids(self, origin: str, room_id: str, event_id: str) -> JsonDict:
        """The state before ``event_id`` and its auth chain, as IDs."""
        state = await self._state_before_ids(room_id, event_id, origin)
        chain = await self._graph.auth_chain_ids(list(state.values()))
        return {"pdu_ids": sorted(set(state.values())), "auth_chain_ids": sorted(chain)}

    async def state(self, origin: str, room_id: str, event_id: str) -> JsonDict:
        """The state before ``event_id`` and its auth chain, as PDUs."""
        state = await self._state_before_ids(room_id, event_id, origin)
        chain = await self._graph.auth_chain_ids(list(state.values()))
        fetched = await self._events.get_events([*state.values(), *chain])
        return {
            "pdus": [_pdu(fetched[e]) for e in sorted(set(state.values())) if e in fetched],
            "auth_chain": [_pdu(fetched[e]) for e in sorted(chain) if e in fetched],
        }

    async def event_auth(self, origin: str, room_id: str, event_id: str) -> JsonDict:
        await self._require_in_room(room_id, origin)
        await self._event_in_room(room_id, event_id)
        chain = await self._graph.auth_chain_ids([event_id])
        fetched = await self._events.get_events(list(chain))
        ordered = sorted(fetched.values(), key=lambda s: (s.event.depth, s.event.event_id))
        return {"auth_chain": [_pdu(s) for s in ordered]}

    async def _visible_pdus(self, origin: str, event_ids: list[str]) -> list[JsonDict]:
        fetched = await self._events.get_events(event_ids)
        out = []
        for event_id in event_ids:
            stored = fetched.get(event_id)
            if stored is None or stored.rejected_reason is not None:
                continue
            pdu = _pdu(stored)
            if not await self._visible(stored, origin):
                pdu = redact_event_dict(stored.event.room_version, pdu)
            out.append(pdu)
        return out

    async def backfill(self, origin: str, room_id: str, from_ids: list[str], limit: int) -> JsonDict:
        await self._require_in_room(room_id, origin)
        ids = await self._graph.backfill_ids(room_id, from_ids, min(limit, MAX_BACKFILL))
        return self._envelope(await self._visible_pdus(origin, ids))

    async def missing_events(
        self, origin: str, room_id: str, *, earliest: list[str], latest: list[str], limit: int, min_depth: int
    ) -> JsonDict:
        await self._require_in_room(room_id, origin)
        ids = await self._graph.missing_event_ids(
            room_id, earliest=earliest, latest=latest, limit=min(limit, MAX_MISSING_EVENTS), min_depth=min_depth
        )
        return {"events": await self._visible_pdus(origin, ids)}
