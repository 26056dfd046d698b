"""Creating, checking, persisting and announcing local room events.

Every local event goes through :meth:`RoomEventService.send`: one at a time per room (so
prev_events and state are consistent), checked against the auth rules with the state it
will be applied to, persisted, then announced to waiting /sync requests.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError, forbidden, not_found
from homeserver.events.auth import AuthError, auth_types_from_fields, check_auth_rules
from homeserver.events.builder import build_event
from homeserver.events.format import check_event_format
from homeserver.events.model import Event
from homeserver.events.room_versions import RoomVersion, get_room_version
from homeserver.events.signing import SigningKey
from homeserver.services.notifier import Notifier
from homeserver.state.auth_chain import InMemoryStateStore
from homeserver.state.resolution import resolve_state
from homeserver.storage.events import EventRepository, StateBefore, StoredEvent, TxnIdInfo
from homeserver.storage.rooms import RoomRepository
from homeserver.storage.state import StateKey, StateMap, StateRepository

logger = logging.getLogger(__name__)

CREATE_KEY = ("m.room.create", "")


@dataclass(frozen=True, slots=True)
class SentEvent:
    event: Event
    stream_ordering: int


# Hooks run after an event is persisted (push actions, receipts, ...): (event, stream, state_after).
PostPersistHook = Callable[[Event, int, StateMap], Any]
# Policy checks (room access rules, ...) run on a new event with the state before it, after the
# auth rules passed: return a refusal reason (the event is then refused with M_FORBIDDEN) or None.
EventPolicyCheck = Callable[[Event, StateMap], Awaitable[str | None]]


class RoomLocks:
    """One lock per room, dropped when unused."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[defer.DeferredLock, int]] = {}

    async def run(self, room_id: str, fn: Callable[[], Any]) -> Any:
        lock, users = self._locks.get(room_id, (defer.DeferredLock(), 0))
        self._locks[room_id] = (lock, users + 1)
        try:
            async with lock:
                return await fn()
        finally:
            lock, users = self._locks[room_id]
            if users <= 1:
                del self._locks[room_id]
            else:
                self._locks[room_id] = (lock, users - 1)


class RoomEventService:
    def __init__(
        self,
        *,
        server_name: str,
        clock: Clock,
        signing_key: SigningKey,
        events: EventRepository,
        state: StateRepository,
        rooms: RoomRepository,
        notifier: Notifier,
    ) -> None:
        self.server_name = server_name
        self._clock = clock
        self._signing_key = signing_key
        self._events = events
        self._state = state
        self._rooms = rooms
        self._notifier = notifier
        self._locks = RoomLocks()
        self._joined_cache: dict[str, frozenset[str]] = {}
        # room -> (joined set it was computed from, our users in it): see local_joined_users.
        self._local_joined: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
        self.post_persist_hooks: list[PostPersistHook] = []
        self.event_policy_checks: list[EventPolicyCheck] = []

    # -- reading state -----------------------------------------------------------------

    async def room_version(self, room_id: str) -> RoomVersion:
        version = await self._events.get_room_version_id(room_id)
        if version is None:
            raise not_found("Unknown room")
        return get_room_version(version)

    async def current_state_ids(self, room_id: str) -> StateMap:
        return await self._events.get_current_state_ids(room_id)

    async def current_state_events(self, room_id: str, keys: list[StateKey] | None = None) -> dict[StateKey, Event]:
        ids = await self.current_state_ids(room_id)
        wanted = ids if keys is None else {k: ids[k] for k in keys if k in ids}
        fetched = await self._events.get_events(list(wanted.values()))
        return {k: fetched[e].event for k, e in wanted.items() if e in fetched}

    async def current_state_event(self, room_id: str, type_: str, state_key: str = "") -> Event | None:
        return (await self.current_state_events(room_id, [(type_, state_key)])).get((type_, state_key))

    async def joined_users(self, room_id: str) -> frozenset[str]:
        cached = self._joined_cache.get(room_id)
        if cached is None:
            cached = frozenset(m.user_id for m in await self._rooms.members(room_id))
            self._joined_cache[room_id] = cached
        return cached

    async def local_joined_users(self, room_id: str) -> frozenset[str]:
        """Our users among :meth:`joined_users`, recomputed only when the joined set
        changes (every event of a big federated room would otherwise scan its members)."""
        joined = await self.joined_users(room_id)
        hit = self._local_joined.get(room_id)
        if hit is not None and hit[0] is joined:
            return hit[1]
        suffix = ":" + self.server_name
        local = frozenset(u for u in joined if u.endswith(suffix))
        self._local_joined[room_id] = (joined, local)
        return local

    def note_current_state_delta(self, event: Event, delta: Mapping[StateKey, str | None] | None) -> None:
        """Call before :meth:`announce` when persisting ``event`` changed the room's current
        state by ``delta``: a delta touching other memberships than the event's own (a join
        bringing the room's state, a merge of forks) drops the cached joined members, which
        :meth:`announce` otherwise updates from the event alone."""
        own = event.state_key_tuple if event.is_state() else None
        if delta and any(k[0] == "m.room.member" and k != own for k in delta):
            self._joined_cache.pop(event.room_id, None)

    async def _apply_membership_change(self, room_id: str, user_id: str) -> None:
        """Bring the cached joined members up to date after ``user_id``'s membership event:
        one row read, not the whole member list (a room filling with joins stays O(1) a join)."""
        cached = self._joined_cache.get(room_id)
        if cached is None:
            return
        membership = await self._rooms.get_membership(room_id, user_id)
        joined = membership is not None and membership.membership == "join"
        if joined != (user_id in cached):
            self._joined_cache[room_id] = cached | {user_id} if joined else cached - {user_id}

    async def run_locked(self, room_id: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``fn`` holding the room's lock: every change to a room's graph and current
        state (local sends, received PDUs, joins) is serialised by it."""
        return await self._locks.run(room_id, fn)

    async def check_policies(self, event: Event, state_before: StateMap) -> str | None:
        """The first refusal reason of the policy checks, or None if the event may go ahead."""
        for check in self.event_policy_checks:
            reason = await check(event, state_before)
            if reason is not None:
                return reason
        return None

    # -- sending -----------------------------------------------------------------------

    async def send(
        self,
        *,
        room_id: str | None,
        sender: str,
        event_type: str,
        content: Mapping[str, Any],
        state_key: str | None = None,
        txn: TxnIdInfo | None = None,
        redacts: str | None = None,
        room_version: RoomVersion | None = None,
        extra_check: Callable[[Event, StateMap], Any] | None = None,
        origin_server_ts: int | None = None,
    ) -> SentEvent:
        """Build, authorise, persist and announce an event.  ``room_id`` is None only for
        a v12 create event, whose ID names the room.  ``origin_server_ts`` overrides the
        clock (an application service importing history)."""
        # A retried transaction ID is answered by the check under the room lock (one query
        # per send, not two: retries are rare).

        async def locked() -> SentEvent:
            return await self._send_locked(
                room_id, sender, event_type, content, state_key, txn, redacts, room_version, extra_check,
                origin_server_ts,
            )

        if room_id is None:
            return await locked()
        return await self._locks.run(room_id, locked)  # type: ignore[no-any-return]

    async def _send_locked(
        self,
        room_id: str | None,
        sender: str,
        event_type: str,
        content: Mapping[str, Any],
        state_key: str | None,
        txn: TxnIdInfo | None,
        redacts: str | None,
        room_version: RoomVersion | None,
        extra_check: Callable[[Event, StateMap], Any] | None,
        origin_server_ts: int | None = None,
    ) -> SentEvent:
        if txn is not None:  # under the lock: a retry racing the first send waits for it
            existing = await self._events.get_event_id_for_txn(txn.user_id, txn.device_id, txn.txn_id)
            stored = await self._events.get_event(existing) if existing else None
            if stored is not None:
                return SentEvent(stored.event, stored.stream_ordering)
        is_create = event_type == "m.room.create"
        if is_create:
            if room_version is None:
                raise MatrixError(400, Codes.INVALID_PARAM, "m.room.create can only be sent at room creation")
            prev_ids: list[str] = []
            state_before: StateMap = {}
            before_ref = StateBefore(base_group=None, delta={})
            depth = 1
        else:
            if room_id is None:
                raise MatrixError(400, Codes.INVALID_PARAM, "room_id is required")
            room_version = room_version or await self.room_version(room_id)
            prev_ids = await self._events.get_forward_extremities(room_id)
            if not prev_ids:
                raise not_found("Unknown room")
            state_before, before_ref = await self.state_before(room_version, room_id, prev_ids)
            prev_events = await self._events.get_events(prev_ids)
            depth = max((p.event.depth for p in prev_events.values()), default=0) + 1

        auth_keys = auth_types_from_fields(room_version, event_type, sender, state_key, content)
        auth_ids = sorted({state_before[k] for k in auth_keys if k in state_before})
        if room_id is None and event_type != "m.room.create":
            raise MatrixError(400, Codes.INVALID_PARAM, "room_id is required")
        version = room_version

        def build(ts: int) -> Event:
            try:
                built = build_event(
                    version,
                    room_id=room_id,
                    type=event_type,
                    sender=sender,
                    content=content,
                    state_key=state_key,
                    prev_event_ids=prev_ids[-20:],
                    auth_event_ids=auth_ids,
                    depth=depth,
                    origin_server_ts=ts,
                    redacts=redacts,
                    server_name=self.server_name,
                    signing_key=self._signing_key,
                )
                check_event_format(version, built)
            except MatrixError:
                raise
            except ValueError as e:  # canonical JSON: floats, out-of-range integers
                raise MatrixError(400, Codes.BAD_JSON, f"Invalid event content: {e}") from None
            return built

        event = build(origin_server_ts if origin_server_ts is not None else self._clock.time_msec())
        auth_events = await self._auth_events_for(room_version, event, state_before)
        try:
            check_auth_rules(room_version, event, auth_events)
        except AuthError as e:
            raise forbidden(e.msg) from None
        # Policy first: a refused invite must not reach the invitee's server (extra_check
        # may be the remote countersigning of an invite).
        refusal = await self.check_policies(event, state_before)
        if refusal is not None:
            raise forbidden(refusal)
        if extra_check is not None:
            await defer.maybeDeferred(extra_check, event, state_before)

        current_delta: dict[StateKey, str | None] | None = None
        if event.is_state():
            current_delta = {event.state_key_tuple: event.event_id}
        if len(prev_ids) > 1 and room_id is not None:
            # Merging a fork: the new current state is the state after this event in full.
            current = await self._events.get_current_state_ids(room_id)
            after = dict(state_before)
            if event.is_state():
                after[event.state_key_tuple] = event.event_id
            current_delta = {k: v for k, v in after.items() if current.get(k) != v}
            current_delta.update({k: None for k in current if k not in after})
        if is_create:
            # A v12 room ID is the create event's hash: two rooms created by one user in
            # the same millisecond collide.  Nudge the timestamp and try again (as Synapse does).
            for attempt in range(6):
                if await self._events.store_room(event.room_id, room_version.identifier, sender, self._clock.time_msec()):
                    break
                if attempt == 5 or not room_version.room_id_from_create_event:
                    raise MatrixError(400, Codes.ROOM_IN_USE, "Room already exists")
                event = build(event.origin_server_ts + 1 + secrets.randbelow(10))
        result = await self._events.persist_event(
            event,
            state_before=before_ref,
            received_ts=self._clock.time_msec(),
            current_state_delta=current_delta,
            new_extremities=None,
            txn_id=txn,
        )
        self.note_current_state_delta(event, current_delta)
        await self.announce(event, result.stream_ordering, result.state_after)
        return SentEvent(event, result.stream_ordering)

    async def state_before(
        self, room_version: RoomVersion, room_id: str, prev_ids: list[str]
    ) -> tuple[StateMap, StateBefore]:
        """The state before a new event whose prev_events are ``prev_ids`` (resolved when
        they disagree), and how to store it."""
        groups = await self._state.get_groups_for_events(prev_ids)
        if len(set(groups.values())) == 1:
            group = next(iter(groups.values()))
            return await self._state.get_state(group), StateBefore(group=group)
        state_sets = [await self._state.get_state(g) for g in dict.fromkeys(groups.values())]
        store = await self._load_auth_closure(state_sets)
        resolved = await resolve_state(room_version, room_id, state_sets, store)
        base_group = next(iter(groups.values()))
        base = await self._state.get_state(base_group)
        delta: dict[StateKey, str | None] = {k: v for k, v in resolved.items() if base.get(k) != v}
        delta.update({k: None for k in base if k not in resolved})
        return resolved, StateBefore(base_group=base_group, delta=delta)

    async def _load_auth_closure(self, state_sets: list[StateMap]) -> InMemoryStateStore:
        """Every event of the state sets with their auth chains, for resolution in memory."""
        loaded: dict[str, Event] = {}
        frontier = {e for s in state_sets for e in s.values()}
        while frontier:
            fetched = await self._events.get_events(list(frontier))
            next_frontier: set[str] = set()
            for event_id, stored in fetched.items():
                loaded[event_id] = stored.event
                next_frontier.update(a for a in stored.event.auth_event_ids if a not in loaded)
            frontier = next_frontier - set(loaded)
        return InMemoryStateStore(loaded)

    async def _auth_events_for(
        self, room_version: RoomVersion, event: Event, state: StateMap
    ) -> dict[StateKey, Event]:
        keys = auth_types_from_fields(room_version, event.type, event.sender, event.state_key, event.content)
        keys.add(CREATE_KEY)  # v12 lists no create event but the rules still need it
        ids = {k: state[k] for k in keys if k in state}
        fetched = await self._events.get_events(list(ids.values()))
        out = {k: fetched[e].event for k, e in ids.items() if e in fetched}
        if event.type == "m.room.create":
            return out
        if CREATE_KEY not in out:
            raise not_found("Unknown room")
        return out

    async def announce(self, event: Event, stream: int, state_after: StateMap) -> None:
        """After an event is persisted (local or received): run the post-persist hooks and
        wake the /sync requests of everyone concerned."""
        room_id = event.room_id
        # Only our users have /sync requests to wake (remote members are most of a big
        # federated room, and each woken user costs a token update).
        suffix = ":" + self.server_name
        wake: set[str] | frozenset[str] = await self.local_joined_users(room_id)
        if event.type == "m.room.member" and event.state_key is not None:
            await self._apply_membership_change(room_id, event.state_key)
            wake = wake | await self.local_joined_users(room_id)
            if event.state_key.endswith(suffix):
                wake = wake | {event.state_key}
        for hook in self.post_persist_hooks:
            try:
                await defer.maybeDeferred(hook, event, stream, state_after)
            except Exception:
                logger.exception("post-persist hook failed for %s", event.event_id)
        self._notifier.notify("events", stream, wake)

    async def get_event(self, event_id: str) -> StoredEvent | None:
        return await self._events.get_event(event_id)
