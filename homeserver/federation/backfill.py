"""Backfill: fetching a room's older history from other servers of the room.

When a client pages ``/messages`` backwards into a hole of the room's graph (a backward
extremity, :mod:`homeserver.storage.backfill`: history from before we joined, or a gap),
:class:`FederationBackfiller` asks the servers that were in the room at that point,
the room creator's first and then by how early they joined, for
``GET /_matrix/federation/v1/backfill/{roomId}?v=<extremities>&limit=N``.  The events
are checked and persisted oldest first through the ingest pipeline
(``receive_pdu(..., backfilled=True)``: negative stream orderings, no announcement, the
forward extremities untouched), so they take their place in the topological order.

A client never waits long: a backfill is bounded by :attr:`FederationBackfiller.timeout`
(what arrives later is still stored for the next page), the holes a backfill could not
fill are not retried before a backoff, and one backfill runs per room at a time.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Protocol
from urllib.parse import quote

from twisted.internet import defer
from twisted.python.failure import Failure

from homeserver.core.clock import Clock
from homeserver.events.model import Event
from homeserver.events.room_versions import RoomVersion, get_room_version
from homeserver.federation.event_checks import PduDropped, PduOutcome, parse_pdu
from homeserver.federation.transport import FederationError, FederationRequests
from homeserver.storage.backfill import BackfillStore, BackwardExtremity
from homeserver.storage.database import Database
from homeserver.storage.events import EventRepository, StateBefore
from homeserver.storage.state import StateRepository

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]

PREFIX = "/_matrix/federation/v1"
# Events asked for per request: at least a page's worth, at most what servers answer.
MIN_BATCH = 20
MAX_BATCH = 100
# Extremities named in one request (the newest holes first) and servers tried per backfill.
MAX_EXTREMITIES = 20
MAX_SERVERS = 5
# Holes nobody could fill are left alone for a while, doubling up to an hour.
FIRST_BACKOFF = 60.0
MAX_BACKOFF = 3600.0
_BACKOFF_ENTRIES = 10_000


class PduReceiver(Protocol):
    """The ingest pipeline (:class:`homeserver.federation.ingest.FederationEventHandler`)."""

    async def receive_pdu(self, origin: str, pdu_json: dict[str, Any], *, backfilled: bool = False) -> PduOutcome: ...


class RoomLocks(Protocol):
    """Serialises changes to a room's graph (:class:`homeserver.services.events.RoomEventService`)."""

    async def run_locked(self, room_id: str, fn: Callable[[], Awaitable[Any]]) -> Any: ...


def _domain(user_id: str) -> str:
    return user_id.partition(":")[2]


class FederationBackfiller:
    """Fills holes in rooms' history from other servers; see the module docstring."""

    def __init__(
        self,
        *,
        server_name: str,
        clock: Clock,
        is_allowed: Callable[[str], bool],
        client: FederationRequests,
        graph: BackfillStore,
        events: EventRepository,
        state: StateRepository,
        receiver: PduReceiver,
        locks: RoomLocks,
        timeout: float = 10.0,
    ) -> None:
        self._server_name = server_name
        self._clock = clock
        self._is_allowed = is_allowed
        self._client = client
        self._graph = graph
        self._events = events
        self._state = state
        self._receiver = receiver
        self._locks = locks
        # Seconds a caller waits at most for one backfill.
        self.timeout = timeout
        self._running: dict[str, defer.Deferred[bool]] = {}
        # (room, missing event) -> (not before, current backoff)
        self._failures: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()

    async def backfill(self, room_id: str, *, min_depth: int | None, max_depth: int, limit: int) -> bool:
        """Fetch the history missing behind the events of ``room_id`` whose depth lies between
        ``min_depth`` (None: no lower bound) and ``max_depth``.  True when events were added;
        False when there is no hole to fill, nobody could fill it, or not within
        :attr:`timeout` (the backfill then goes on for the next caller's benefit)."""
        running = self._running.get(room_id)
        if running is None:
            now = self._clock.time()
            holes = [
                h
                for h in await self._graph.backward_extremities(room_id, min_depth=min_depth, max_depth=max_depth)
                if self._failures.get((room_id, h.event_id), (0.0, 0.0))[0] <= now
            ]
            if not holes:
                return False
            running = self._running.get(room_id)  # another caller may have started meanwhile
            if running is None:
                running = defer.ensureDeferred(self._run(room_id, holes, limit))
                self._running[room_id] = running
                running.addBoth(self._finished, room_id)
        return await self._wait(running, self.timeout)

    def _finished(self, result: bool | Failure, room_id: str) -> bool:
        self._running.pop(room_id, None)
        if isinstance(result, Failure):
            logger.error("backfill of %s failed: %s", room_id, result.getTraceback())
            return False
        return result

    async def _wait(self, running: defer.Deferred[bool], seconds: float) -> bool:
        """``running``'s result, or False after ``seconds`` (``running`` carries on)."""
        out: defer.Deferred[bool] = defer.Deferred()

        def done(result: bool) -> bool:
            if not out.called:
                out.callback(result)
            return result

        def expire() -> None:
            if not out.called:
                out.callback(False)

        timer = self._clock.call_later(seconds, expire)
        running.addCallback(done)
        result = await out
        if timer.active():
            timer.cancel()
        return result

    # -- one backfill ------------------------------------------------------------------

    async def _run(self, room_id: str, holes: list[BackwardExtremity], limit: int) -> bool:
        version_id = await self._events.get_room_version_id(room_id)
        if version_id is None:
            return False
        room_version = get_room_version(version_id)
        deadline = self._clock.time() + self.timeout
        wanted = [h.event_id for h in holes[:MAX_EXTREMITIES]]
        batch = max(MIN_BATCH, min(MAX_BATCH, limit))
        servers = await self.candidate_servers(room_id, [h.child_id for h in holes[:MAX_EXTREMITIES]])
        for server in servers[:MAX_SERVERS]:
            remaining = deadline - self._clock.time()
            if remaining <= 0:
                break
            try:
                body = await self._client.get_json(
                    server,
                    f"{PREFIX}/backfill/{quote(room_id, safe='')}",
                    args={"v": wanted, "limit": str(batch)},
                    timeout=remaining,
                )
            except FederationError as e:
                logger.info("backfill of %s from %s failed: %s", room_id, server, e)
                continue
            pdus = body.get("pdus") if isinstance(body, dict) else None
            if not isinstance(pdus, list):
                logger.info("backfill of %s from %s: the answer has no pdus list", room_id, server)
                continue
            added = await self._persist(server, room_version, room_id, pdus[:batch])
            logger.info("backfilled %d events of %s from %s", added, room_id, server)
            if added:
                for event_id in wanted:
                    self._failures.pop((room_id, event_id), None)
                return True
        self._back_off(room_id, wanted)
        return False

    def _back_off(self, room_id: str, event_ids: Collection[str]) -> None:
        now = self._clock.time()
        for event_id in event_ids:
            key = (room_id, event_id)
            _, previous = self._failures.pop(key, (0.0, 0.0))
            delay = min(MAX_BACKOFF, previous * 2) if previous else FIRST_BACKOFF
            self._failures[key] = (now + delay, delay)
        while len(self._failures) > _BACKOFF_ENTRIES:
            self._failures.popitem(last=False)

    async def _persist(self, origin: str, room_version: RoomVersion, room_id: str, pdus: list[Any]) -> int:
        """Check and store ``pdus`` oldest first; how many joined the room's timeline."""
        parsed: dict[str, tuple[Event, JsonDict]] = {}
        for pdu in pdus:
            try:
                event = parse_pdu(room_version, pdu)
            except PduDropped as e:
                logger.info("backfill: a malformed PDU from %s in %s: %s", origin, room_id, e)
                continue
            if event.room_id == room_id:
                parsed[event.event_id] = (event, pdu)
        ordered = sorted(parsed.values(), key=lambda item: (item[0].depth, item[0].event_id))
        known = await self._events.get_events(list(parsed))
        added = 0
        for event, pdu in ordered:
            stored = known.get(event.event_id)
            if stored is not None and not stored.outlier:
                continue
            if not event.prev_event_ids:
                added += await self._place_create_event(room_id, event.event_id)
                continue
            try:
                outcome = await self._receiver.receive_pdu(origin, pdu, backfilled=True)
            except PduDropped as e:
                logger.info("backfill: %s from %s dropped: %s", event.event_id, origin, e)
                continue
            except Exception:
                logger.exception("backfill: %s from %s could not be processed", event.event_id, origin)
                continue
            added += outcome.accepted
        return added

    async def _place_create_event(self, room_id: str, event_id: str) -> int:
        """Put the room's create event, known as an outlier since the join (it is in every
        auth chain, checked then), at the start of the timeline.  The copy we hold is the
        one used: a server's answer cannot replace it.  1 if placed, else 0."""

        async def locked() -> int:
            stored = await self._events.get_event(event_id)
            if (
                stored is None
                or not stored.outlier
                or stored.rejected_reason is not None
                or stored.event.room_id != room_id
                or stored.event.type != "m.room.create"
                or stored.event.prev_event_ids
            ):
                return 0
            await self._events.persist_event(
                stored.event,
                state_before=StateBefore(delta={}),
                received_ts=self._clock.time_msec(),
                current_state_delta=None,
                new_extremities=None,
                backfilled=True,
            )
            return 1

        placed: int = await self._locks.run_locked(room_id, locked)
        return placed

    # -- whom to ask -----------------------------------------------------------------

    async def candidate_servers(self, room_id: str, at_event_ids: list[str]) -> list[str]:
        """The servers to ask, most likely to hold the history first: those joined at the
        events beside the holes (the room creator's server first, then by how early their
        first member joined), then those in the room now; never us nor a server the
        allowlist refuses."""
        groups = await self._state.get_groups_for_events(at_event_ids)
        at_holes = list((await self._state.get_states(set(groups.values()))).values())
        now = [await self._events.get_current_state_ids(room_id)]
        ranked: dict[str, tuple[int, int, int]] = {}
        for when, states in ((0, at_holes), (1, now)):
            for state in states:
                create_id = state.get(("m.room.create", ""))
                member_ids = [e for (t, _), e in state.items() if t == "m.room.member"]
                fetched = await self._events.get_events([*member_ids, *([create_id] if create_id else [])])
                creator = _domain(fetched[create_id].event.sender) if create_id in fetched else None
                for event_id in member_ids:
                    stored = fetched.get(event_id)
                    if stored is None or stored.event.state_key is None:
                        continue
                    if stored.event.content.get("membership") != "join":
                        continue
                    server = _domain(stored.event.state_key)
                    key = (when, 0 if server == creator else 1, stored.event.depth)
                    if server not in ranked or key < ranked[server]:
                        ranked[server] = key
        return [
            s
            for s in sorted(ranked, key=lambda s: (ranked[s], s))
            if s and s != self._server_name and self._is_allowed(s)
        ]


def build_federation_backfill(
    *,
    server_name: str,
    clock: Clock,
    is_allowed: Callable[[str], bool],
    client: FederationRequests,
    db: Database,
    events: EventRepository,
    state: StateRepository,
    receiver: PduReceiver,
    locks: RoomLocks,
) -> FederationBackfiller:
    """The backfiller as ``app.build_homeserver`` wires it into ``MessageService``."""
    return FederationBackfiller(
        server_name=server_name,
        clock=clock,
        is_allowed=is_allowed,
        client=client,
        graph=BackfillStore(db),
        events=events,
        state=state,
        receiver=receiver,
        locks=locks,
    )
