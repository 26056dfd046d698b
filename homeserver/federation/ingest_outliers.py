"""Storing outliers: events known without their place in the room's graph (a join's
state and auth chain, auth events fetched on their own, the state at a gap).

Checks 1-4 of :mod:`homeserver.federation.event_checks` in auth order: an event is
checked against its own auth events only, after them.  Auth events neither given nor
stored are fetched from the server that sent the events (``/event``), within bounds.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from homeserver.core.clock import Clock
from homeserver.events.model import Event
from homeserver.events.room_versions import RoomVersion
from homeserver.federation.event_checks import (
    PduDropped,
    SignatureCheckFailed,
    SignatureVerifier,
    check_auth_against_auth_events,
    check_signatures_and_hashes,
    parse_pdu,
)
from homeserver.federation.ingest_fetch import RemoteEvents
from homeserver.federation.transport import FederationError
from homeserver.storage.events import EventRepository

logger = logging.getLogger(__name__)

# Bounds on fetching the auth events of outliers (rounds of auth_events depth, events).
AUTH_FETCH_ROUNDS = 5
AUTH_FETCH_MAX_EVENTS = 100


def _create_event_id(room_id: str) -> str:
    return "$" + room_id[1:]


def effective_auth_ids(room_version: RoomVersion, event: Event) -> list[str]:
    """The event's auth events and, in v12, the create event its room ID names."""
    ids = list(dict.fromkeys(event.auth_event_ids))
    if room_version.room_id_from_create_event and event.type != "m.room.create":
        ids.append(_create_event_id(event.room_id))
    return ids


def auth_order(room_version: RoomVersion, events: Mapping[str, Event]) -> list[Event]:
    """``events`` sorted so each comes after its auth events among them (ties by depth,
    then ID).  Events on an auth cycle, which no valid room has, are left out."""
    deps = {e: {a for a in effective_auth_ids(room_version, ev) if a in events and a != e} for e, ev in events.items()}
    users: dict[str, list[str]] = {}
    for event_id, needed in deps.items():
        for auth_id in needed:
            users.setdefault(auth_id, []).append(event_id)
    ready = sorted((e for e, d in deps.items() if not d), key=lambda e: (events[e].depth, e))
    ordered: list[Event] = []
    while ready:
        event_id = ready.pop(0)
        ordered.append(events[event_id])
        newly = []
        for user in users.get(event_id, ()):
            deps[user].discard(event_id)
            if not deps[user]:
                newly.append(user)
        if newly:
            ready = sorted([*ready, *newly], key=lambda e: (events[e].depth, e))
    return ordered


class OutlierPersister:
    """Checks and stores outliers (see the module docstring)."""

    def __init__(
        self, *, clock: Clock, keyring: SignatureVerifier, remote: RemoteEvents, events: EventRepository
    ) -> None:
        self._clock = clock
        self._keyring = keyring
        self._remote = remote
        self._events = events

    async def ensure_room_row(self, room_id: str, room_version: RoomVersion, creator: str) -> None:
        if await self._events.get_room_version_id(room_id) is None:
            await self._events.store_room(room_id, room_version.identifier, creator, self._clock.time_msec())

    async def persist(
        self,
        origin: str,
        room_version: RoomVersion,
        room_id: str,
        pdu_jsons: Sequence[Any],
        *,
        extra_wanted: Sequence[str] = (),
    ) -> dict[str, Event]:
        pending: dict[str, Event] = {}
        for pdu in pdu_jsons:
            try:
                event = parse_pdu(room_version, pdu)
            except PduDropped as e:
                logger.info("dropping an outlier from %s: %s", origin, e)
                continue
            if event.room_id == room_id:
                pending[event.event_id] = event
        results: dict[str, Event] = {}
        rejected: set[str] = set()

        async def take_stored(ids: Sequence[str]) -> set[str]:
            found = await self._events.get_events([i for i in ids if i not in results])
            for event_id, item in found.items():
                results[event_id] = item.event
                pending.pop(event_id, None)
                if item.rejected_reason is not None:
                    rejected.add(event_id)
            return set(found)

        await take_stored(list(pending))
        fetched = 0
        for _ in range(AUTH_FETCH_ROUNDS):
            need = {a for ev in pending.values() for a in effective_auth_ids(room_version, ev)}
            need.update(e for e in extra_wanted if e not in pending)
            need -= set(pending) | set(results)
            if need:
                need -= await take_stored(sorted(need))
            if not need or fetched >= AUTH_FETCH_MAX_EVENTS:
                break
            for event_id in sorted(need)[: AUTH_FETCH_MAX_EVENTS - fetched]:
                fetched += 1
                try:
                    event = parse_pdu(room_version, await self._remote.event(origin, event_id))
                except (FederationError, PduDropped) as e:
                    logger.info("cannot get auth event %s from %s: %s", event_id, origin, e)
                    continue
                if event.event_id == event_id and event.room_id == room_id:
                    pending[event_id] = event
        to_store: list[tuple[Event, str | None]] = []
        for event in auth_order(room_version, pending):
            try:
                checked = await check_signatures_and_hashes(room_version, event, self._keyring)
            except SignatureCheckFailed as e:
                logger.info("dropping outlier %s from %s: %s", event.event_id, origin, e)
                continue
            reason = check_auth_against_auth_events(room_version, checked, results, rejected)
            if reason is not None:
                rejected.add(checked.event_id)
            results[checked.event_id] = checked
            to_store.append((checked, reason))
        if to_store:
            create = next((e for e, _ in to_store if e.type == "m.room.create"), None)
            await self.ensure_room_row(room_id, room_version, create.sender if create else "")
            await self._events.persist_outliers(to_store, self._clock.time_msec())
        return results
