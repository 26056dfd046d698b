"""Receiving room events over federation: the receiving half of room federation.

:class:`FederationEventHandler` is the one entry point for PDUs from other servers:

- :meth:`~FederationEventHandler.on_send_transaction` answers ``PUT /send/{txnId}``:
  PDUs grouped by room (rooms in parallel, each room's PDUs in order), EDUs handed to
  ``edu_handlers``, duplicate transactions answered from a cache;
- :meth:`~FederationEventHandler.receive_pdu` runs one PDU through the spec's checks 1-6
  (:mod:`homeserver.federation.event_checks`), fetching missing prev_events
  (``/get_missing_events``), the state at a gap (``/state_ids``, ``/state``, ``/event``)
  and missing auth events (``/event_auth``, ``/event``) from the sender, then persists
  it under the room's lock and announces it;
- :meth:`~FederationEventHandler.persist_outliers`,
  :meth:`~FederationEventHandler.persist_join_state` and
  :meth:`~FederationEventHandler.persist_out_of_band_membership` store what joins,
  invites and knocks bring.

What is stored, and how (``events.outlier``: see :mod:`homeserver.storage.events`):
accepted events join the timeline, the current state and the forward extremities;
soft-failed events and events rejected on the state before them (including events a
local policy check refuses, e.g. the room access rules: those rules act as extra auth
rules, so the state an event refused by them would bring never becomes ours, not even
through later events citing it, as a soft-failed event's state would) are stored with
their state but hidden; events rejected on their own auth events are stored as rejected
outliers;
events whose content hash does not match are stored redacted.  Events that fail
checks 1-2 are dropped (:class:`PduDropped`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from twisted.internet import defer

from homeserver.core.clock import Clock
from homeserver.events.auth import CREATE_KEY
from homeserver.events.model import Event
from homeserver.events.power_levels import can_redact_others
from homeserver.events.room_versions import RoomVersion, get_room_version
from homeserver.federation.acl import server_matches_acl
from homeserver.federation.event_checks import (
    KnownEvents,
    PduDropped,
    PduOutcome,
    PduStatus,
    SignatureVerifier,
    check_auth_against_state,
    parse_pdu,
    process_pdu_checks,
)
from homeserver.federation.ingest_fetch import RemoteEvents
from homeserver.federation.ingest_outliers import OutlierPersister, auth_order, effective_auth_ids
from homeserver.federation.ingest_state import StateResolver, state_before_ref, state_delta
from homeserver.federation.transport import FederationError, FederationRequests
from homeserver.services.events import RoomEventService
from homeserver.storage.events import EventRepository, ReceivedLookup, StateBefore, StoredEvent
from homeserver.storage.state import StateKey, StateMap, StateRepository

__all__ = [
    "EduHandler",
    "auth_order",
    "FederationEventHandler",
    "PduIgnored",
    "PduOutcome",
    "RemoteStateError",
    "TransactionTooLarge",
    "build_federation_ingest",
]

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]
EduHandler = Callable[[str, JsonDict], Awaitable[None]]

MAX_PDUS_PER_TRANSACTION = 50
MAX_EDUS_PER_TRANSACTION = 100
# How many events one /get_missing_events asks for (Synapse asks for 10).
MISSING_EVENTS_LIMIT = 20
# Above this many unknown state events at a gap, fetch /state in one go, not /event each.
EVENT_BY_EVENT_LIMIT = 20
ROOM_CONCURRENCY = 10
_TXN_CACHE_SIZE = 1000
SERVER_ACL_KEY: StateKey = ("m.room.server_acl", "")


class PduIgnored(PduDropped):
    """Not processed: a room we do not know or are not in, a server the room's ACL bans,
    or an event whose surroundings could not be fetched."""


class RemoteStateError(Exception):
    """The state and auth chain a resident server gave us for a join do not hold up."""


class TransactionTooLarge(ValueError):
    """More PDUs or EDUs than a transaction may carry."""


def _stored_outcome(stored: StoredEvent) -> PduOutcome:
    if stored.rejected_reason is not None:
        return PduOutcome(stored.event, PduStatus.REJECTED, stored.rejected_reason)
    if stored.hidden:
        return PduOutcome(stored.event, PduStatus.SOFT_FAILED)
    return PduOutcome(stored.event, PduStatus.ACCEPTED)


class FederationEventHandler:
    """Checks, persists and announces the room events other servers send us."""

    def __init__(
        self,
        *,
        server_name: str,
        clock: Clock,
        keyring: SignatureVerifier,
        remote: RemoteEvents,
        events: EventRepository,
        state: StateRepository,
        room_events: RoomEventService,
    ) -> None:
        self._server_name = server_name
        self._clock = clock
        self._keyring = keyring
        self._remote = remote
        self._events = events
        self._state = state
        self._room_events = room_events
        self._resolver = StateResolver(events)
        self._outliers = OutlierPersister(clock=clock, keyring=keyring, remote=remote, events=events)
        self.edu_handlers: dict[str, EduHandler] = {}
        self._txn_results: OrderedDict[tuple[str, str], JsonDict] = OrderedDict()
        self._txn_running: dict[tuple[str, str], list[defer.Deferred[JsonDict]]] = {}

    # -- transactions ------------------------------------------------------------------

    async def on_send_transaction(self, origin: str, txn_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Process ``PUT /send/{txnId}`` from ``origin``; the answer's body.

        Raises :class:`TransactionTooLarge` (more than 50 PDUs or 100 EDUs) and
        ``ValueError`` when ``pdus``/``edus`` are not lists: the servlet turns them into
        400s.  A transaction seen before (same origin and ID) is answered from a cache.
        """
        pdus = body.get("pdus", [])
        edus = body.get("edus", [])
        if not isinstance(pdus, list):
            raise ValueError("pdus must be a list")
        if not isinstance(edus, list):
            raise ValueError("edus must be a list")
        if len(pdus) > MAX_PDUS_PER_TRANSACTION or len(edus) > MAX_EDUS_PER_TRANSACTION:
            raise TransactionTooLarge(
                f"A transaction carries at most {MAX_PDUS_PER_TRANSACTION} PDUs and {MAX_EDUS_PER_TRANSACTION} EDUs"
                f" (got {len(pdus)} and {len(edus)})"
            )
        key = (origin, txn_id)
        cached = self._txn_results.get(key)
        if cached is not None:
            self._txn_results.move_to_end(key)
            return cached
        waiting = self._txn_running.get(key)
        if waiting is not None:  # the same transaction retried while we process it
            d: defer.Deferred[JsonDict] = defer.Deferred()
            waiting.append(d)
            return await d
        self._txn_running[key] = []
        try:
            # EDUs are handled while the PDUs are (they never wait on each other).
            pdu_task = defer.ensureDeferred(self._process_pdus(origin, pdus))
            await self._process_edus(origin, edus)
            answer: JsonDict = {"pdus": await pdu_task}
        except BaseException as e:
            for d in self._txn_running.pop(key, []):
                d.errback(e)
            raise
        self._txn_results[key] = answer
        while len(self._txn_results) > _TXN_CACHE_SIZE:
            self._txn_results.popitem(last=False)
        for d in self._txn_running.pop(key, []):
            d.callback(answer)
        return answer

    async def _process_pdus(self, origin: str, pdus: list[Any]) -> dict[str, JsonDict]:
        by_room: dict[str, list[Any]] = {}
        for pdu in pdus:
            room_id = pdu.get("room_id") if isinstance(pdu, dict) else None
            if not isinstance(room_id, str):
                logger.info("ignoring a PDU from %s without a room_id", origin)
                continue
            by_room.setdefault(room_id, []).append(pdu)
        results: dict[str, JsonDict] = {}
        limiter = defer.DeferredSemaphore(ROOM_CONCURRENCY)

        async def room(room_id: str) -> None:
            await self._process_room_pdus(origin, room_id, by_room[room_id], results)

        await defer.gatherResults([limiter.run(room, r) for r in by_room], consumeErrors=True)
        return results

    async def _process_room_pdus(
        self, origin: str, room_id: str, pdus: list[Any], results: dict[str, JsonDict]
    ) -> None:
        version_id = await self._events.get_room_version_id(room_id)
        if version_id is None:
            # Without the room version there is not even an event ID to answer with.
            logger.info("ignoring %d PDUs from %s for unknown room %s", len(pdus), origin, room_id)
            return
        room_version = get_room_version(version_id)
        parsed: list[tuple[str, Any]] = []
        for pdu in pdus:
            try:
                parsed.append((parse_pdu(room_version, pdu).event_id, pdu))
            except PduDropped as e:
                logger.info("ignoring a malformed PDU from %s in %s: %s", origin, room_id, e)
        refusal = None
        if not await self.is_resident(room_id):
            refusal = "This server is not in the room"
        elif not await self.origin_allowed_in_room(origin, room_id):
            refusal = "Server is banned from room"
        # Which PDUs are stored already, and which stored events cite them: one read for
        # the transaction, not one a PDU (each answer is re-checked against later writes).
        lookup = await self._events.lookup_received([e for e, _ in parsed]) if refusal is None and parsed else None
        for event_id, pdu in parsed:
            if refusal is not None:
                results[event_id] = {"error": refusal}
                continue
            try:
                outcome = await self.receive_pdu(origin, pdu, prefetched=lookup)
            except PduDropped as e:
                logger.info("dropped PDU %s from %s: %s", event_id, origin, e)
                results[event_id] = {"error": str(e)}
                continue
            except Exception as e:
                logger.exception("failed to process PDU %s from %s", event_id, origin)
                results[event_id] = {"error": f"Failed to process the event: {e}"}
                continue
            results[event_id] = {"error": f"Event rejected: {outcome.rejection_reason}"} if outcome.rejected else {}

    async def _process_edus(self, origin: str, edus: list[Any]) -> None:
        for edu in edus:
            if not isinstance(edu, dict):
                continue
            edu_type, content = edu.get("edu_type"), edu.get("content")
            handler = self.edu_handlers.get(edu_type) if isinstance(edu_type, str) else None
            if handler is None or not isinstance(content, dict):
                continue
            try:
                await handler(origin, content)
            except Exception:
                logger.exception("the %s EDU handler failed on an EDU from %s", edu_type, origin)

    async def is_resident(self, room_id: str) -> bool:
        """Whether one of our users is joined to the room (so we take part in it)."""
        suffix = ":" + self._server_name
        return any(u.endswith(suffix) for u in await self._room_events.joined_users(room_id))

    async def origin_allowed_in_room(self, origin: str, room_id: str) -> bool:
        """Whether the room's current ``m.room.server_acl`` lets ``origin`` take part."""
        acl = await self._room_events.current_state_event(room_id, *SERVER_ACL_KEY)
        return acl is None or server_matches_acl(acl.content, origin)

    # -- one PDU -------------------------------------------------------------------------

    async def receive_pdu(
        self,
        origin: str,
        pdu_json: dict[str, Any],
        *,
        backfilled: bool = False,
        prefetched: ReceivedLookup | None = None,
    ) -> PduOutcome:
        """Check, persist and (unless ``backfilled``) announce one PDU that ``origin`` sent.

        Raises :class:`PduDropped` when the PDU fails checks 1-2 or cannot be processed
        (:class:`PduIgnored`: unknown room, unobtainable state).  An event already
        stored is not processed again: its stored outcome is returned.  ``prefetched``:
        :meth:`EventRepository.lookup_received` for the transaction's PDUs.
        """
        room_id = pdu_json.get("room_id") if isinstance(pdu_json, Mapping) else None
        if not isinstance(room_id, str):
            raise PduIgnored("The PDU has no room_id")
        version_id = await self._events.get_room_version_id(room_id)
        if version_id is None:
            raise PduIgnored(f"Unknown room {room_id}")
        room_version = get_room_version(version_id)

        async def locked() -> PduOutcome:
            return await self._receive_locked(
                origin, room_version, pdu_json, backfilled=backfilled, fetch_missing=not backfilled, prefetched=prefetched
            )

        outcome: PduOutcome = await self._room_events.run_locked(room_id, locked)
        return outcome

    async def _receive_locked(
        self,
        origin: str,
        room_version: RoomVersion,
        pdu_json: Any,
        *,
        backfilled: bool,
        fetch_missing: bool,
        prefetched: ReceivedLookup | None = None,
    ) -> PduOutcome:
        received = parse_pdu(room_version, pdu_json)
        # Whether stored events already cite it as a prev event comes in the same read.
        existing, has_children, position = await self._events.get_event_and_children(received.event_id, prefetched)
        if existing is not None and not existing.outlier:
            return _stored_outcome(existing)
        room_id = received.room_id
        computed: dict[str, Any] = {"has_children": has_children}
        absent_since = position if existing is None else None

        async def fetch_auth_events(event: Event) -> KnownEvents:
            return await self._auth_events_for(origin, room_version, event)

        async def fetch_state_before(event: Event) -> Mapping[StateKey, Event]:
            state_ids, ref, fetched = await self._state_before(origin, room_version, event, fetch_missing=fetch_missing)
            computed["state"], computed["ref"] = state_ids, ref
            if fetched:  # events were stored meanwhile: one of them may cite this one
                computed["has_children"] = None
            return await self._resolver.auth_state(room_version, event, state_ids)

        async def fetch_current_state(event: Event) -> Mapping[StateKey, Event]:
            current = computed["current"] = await self._events.get_current_state_ids(room_id)
            return await self._resolver.auth_state(room_version, event, current)

        outcome = await process_pdu_checks(
            room_version,
            pdu_json,
            keyring=self._keyring,
            fetch_auth_events=fetch_auth_events,
            fetch_state_before=fetch_state_before,
            fetch_current_state=None if backfilled else fetch_current_state,
        )
        event = outcome.event
        now = self._clock.time_msec()
        if "ref" not in computed:  # rejected on its own auth events: no state to speak of
            await self._events.persist_outliers([(event, outcome.rejection_reason)], now)
            logger.info("rejected %s from %s: %s", event.event_id, origin, outcome.rejection_reason)
            return outcome
        state_ids: StateMap = computed["state"]
        if outcome.accepted and not backfilled:
            refusal = await self._room_events.check_policies(event, state_ids)
            if refusal is not None:
                outcome = PduOutcome(event, PduStatus.REJECTED, refusal, outcome.redacted_for_hash_mismatch)
        if not outcome.accepted:
            logger.info("%s %s from %s: %s", outcome.status.value, event.event_id, origin, outcome.rejection_reason)

        if not computed["has_children"] and self._events.cited_since(event.event_id, position):
            computed["has_children"] = None  # an event citing it was stored meanwhile: ask again
        if outcome.accepted and not backfilled:
            result = await self._persist_new_accepted(
                room_version,
                event,
                computed["ref"],
                state_ids,
                now,
                computed.get("current"),
                computed["has_children"],
                absent_since,
            )
        else:
            result = await self._events.persist_event(
                event,
                state_before=computed["ref"],
                received_ts=now,
                current_state_delta=None,
                new_extremities=None,
                rejected_reason=outcome.rejection_reason if outcome.rejected else None,
                hidden=not outcome.accepted,
                backfilled=backfilled,
                absent_since=absent_since,
            )
        if outcome.accepted:
            await self._apply_redaction(room_version, event, state_ids)
            if not backfilled:
                await self._room_events.announce(event, result.stream_ordering, result.state_after)
        return outcome

    async def _persist_new_accepted(
        self,
        room_version: RoomVersion,
        event: Event,
        ref: StateBefore,
        state_ids: StateMap,
        now: int,
        current: StateMap | None = None,
        has_children: bool | None = None,
        absent_since: int | None = None,
    ) -> Any:
        """``current``: the room's current state if the soft-fail check just read it (under
        the room's lock, so still current): one full-state read a PDU, not two.
        ``has_children``: whether stored timeline events cite it, if known (None: ask)."""
        room_id = event.room_id
        after = dict(state_ids)
        if event.is_state():
            after[event.state_key_tuple] = event.event_id
        extremities = set(await self._events.get_forward_extremities(room_id))
        if has_children is None:
            has_children = await self._events.has_timeline_children(event.event_id)
        if has_children:
            # Known first as an outlier, now placed in the graph behind events we have:
            # it is history, and changes neither the extremities nor the current state.
            return await self._events.persist_event(
                event,
                state_before=ref,
                received_ts=now,
                current_state_delta=None,
                new_extremities=sorted(extremities),
                absent_since=absent_since,
            )
        if current is None:
            current = await self._events.get_current_state_ids(room_id)
        if extremities <= set(event.prev_event_ids):
            # The event extends every branch: its state is the room's.  Usually the state
            # before it is the current state (compared in C): the delta is the event alone.
            if state_ids == current:
                delta: dict[StateKey, str | None] = {event.state_key_tuple: event.event_id} if event.is_state() else {}
            else:
                delta = state_delta(current, after)
        else:
            delta = state_delta(current, await self._resolver.resolve(room_version, room_id, [current, after]))
        result = await self._events.persist_event(
            event,
            state_before=ref,
            received_ts=now,
            current_state_delta=delta,
            new_extremities=None,
            absent_since=absent_since,
        )
        self._room_events.note_current_state_delta(event, delta)
        return result

    async def _apply_redaction(self, room_version: RoomVersion, event: Event, state_ids: StateMap) -> None:
        """Mark the target of an accepted redaction redacted, when the redaction applies:
        same server as the target's sender, or a sender with the power to redact others."""
        if event.type != "m.room.redaction" or not event.redacts:
            return
        target = await self._events.get_event(event.redacts)
        if target is None or target.event.room_id != event.room_id or target.redacted_by is not None:
            return
        allowed = target.event.sender.partition(":")[2] == event.sender.partition(":")[2]
        if not allowed:
            auth = await self._resolver.auth_state(room_version, event, state_ids)
            create = auth.get(CREATE_KEY)
            pl = auth.get(("m.room.power_levels", ""))
            allowed = create is not None and can_redact_others(event.sender, create, pl, room_version)
        if allowed:
            await self._events.mark_redacted(target.event.event_id, event.event_id)

    async def _auth_events_for(self, origin: str, room_version: RoomVersion, event: Event) -> KnownEvents:
        wanted = effective_auth_ids(room_version, event)
        stored = await self._events.get_events(wanted)
        if any(w not in stored for w in wanted):
            try:
                chain = await self._remote.event_auth(origin, event.room_id, event.event_id)
            except FederationError as e:
                logger.info("cannot get the auth chain of %s from %s: %s", event.event_id, origin, e)
                chain = []
            await self._outliers.persist(origin, room_version, event.room_id, chain, extra_wanted=wanted)
            stored = await self._events.get_events(wanted)
        return KnownEvents(
            {k: s.event for k, s in stored.items()},
            frozenset(k for k, s in stored.items() if s.rejected_reason is not None),
        )

    # -- state before an event ---------------------------------------------------------

    async def _state_before(
        self, origin: str, room_version: RoomVersion, event: Event, *, fetch_missing: bool
    ) -> tuple[StateMap, StateBefore, bool]:
        """The state before ``event``, how to store it, and whether other events were
        fetched and stored on the way (missing prev events, the state at a gap)."""
        room_id = event.room_id
        prev_ids = list(dict.fromkeys(event.prev_event_ids))
        if not prev_ids:
            raise PduIgnored(f"{event.event_id} has no prev_events")
        groups = await self._state.get_groups_for_events(prev_ids)
        fetched = False
        if len(groups) < len(prev_ids) and fetch_missing:
            fetched = True
            await self._fetch_missing_prevs(origin, room_version, event)
            groups = await self._state.get_groups_for_events(prev_ids)
        missing = [p for p in prev_ids if p not in groups]
        if not missing:
            return (*await self._room_events.state_before(room_version, room_id, prev_ids), fetched)
        # A gap: ask the sender for the state at each prev event we cannot place.
        logger.info("%s: state at %d unknown prev events fetched from %s", event.event_id, len(missing), origin)
        state_sets: list[StateMap] = []
        base_group = None
        for prev_id in prev_ids:
            if prev_id in groups:
                base_group = groups[prev_id] if base_group is None else base_group
                state_sets.append(await self._state.get_state(groups[prev_id]))
        for prev_id in missing:
            try:
                state_sets.append(await self._remote_state_after(origin, room_version, room_id, prev_id))
            except FederationError as e:
                raise PduIgnored(f"Cannot get the state at {prev_id} from {origin}: {e}") from e
        resolved = await self._resolver.resolve(room_version, room_id, state_sets)
        base = await self._state.get_state(base_group) if base_group is not None else {}
        return resolved, state_before_ref(base_group, base, resolved), True

    async def _fetch_missing_prevs(self, origin: str, room_version: RoomVersion, event: Event) -> None:
        room_id = event.room_id
        extremities = await self._events.get_forward_extremities(room_id)
        known = await self._events.get_events(extremities)
        min_depth = min((s.event.depth for s in known.values()), default=0)
        try:
            pdus = await self._remote.get_missing_events(
                origin,
                room_id,
                earliest=extremities,
                latest=[event.event_id],
                limit=MISSING_EVENTS_LIMIT,
                min_depth=min_depth,
            )
        except FederationError as e:
            logger.info("get_missing_events for %s from %s failed: %s", event.event_id, origin, e)
            return
        candidates: list[tuple[Event, Any]] = []
        for pdu in pdus[:MISSING_EVENTS_LIMIT]:
            try:
                parsed = parse_pdu(room_version, pdu)
            except PduDropped:
                continue
            if parsed.room_id == room_id and parsed.event_id != event.event_id:
                candidates.append((parsed, pdu))
        candidates.sort(key=lambda c: (c[0].depth, c[0].event_id))
        for parsed, pdu in candidates:
            try:
                await self._receive_locked(origin, room_version, pdu, backfilled=False, fetch_missing=False)
            except PduDropped as e:
                logger.info("missing event %s from %s dropped: %s", parsed.event_id, origin, e)

    async def _remote_state_after(self, origin: str, room_version: RoomVersion, room_id: str, prev_id: str) -> StateMap:
        """The state after ``prev_id`` as ``origin`` has it, its events stored as outliers."""
        pdu_ids, _ = await self._remote.state_ids(origin, room_id, prev_id)
        wanted = list(dict.fromkeys([*pdu_ids, prev_id]))
        stored = await self._events.get_events(wanted)
        missing = [w for w in wanted if w not in stored]
        jsons: list[JsonDict] = []
        if len(missing) > EVENT_BY_EVENT_LIMIT:
            state_pdus, chain = await self._remote.state(origin, room_id, prev_id)
            jsons = [*chain, *state_pdus]
            if prev_id in missing:
                jsons.append(await self._remote.event(origin, prev_id))
        else:
            for event_id in missing:
                try:
                    jsons.append(await self._remote.event(origin, event_id))
                except FederationError as e:
                    logger.info("cannot get state event %s from %s: %s", event_id, origin, e)
        await self._outliers.persist(origin, room_version, room_id, jsons)
        stored = await self._events.get_events(wanted)
        state: StateMap = {}
        for event_id in [*pdu_ids, prev_id]:
            item = stored.get(event_id)
            if item is None or item.rejected_reason is not None or not item.event.is_state():
                continue
            if item.event.room_id == room_id:
                state[item.event.state_key_tuple] = event_id
        return state

    # -- outliers ------------------------------------------------------------------------

    async def persist_outliers(
        self, origin: str, room_version: RoomVersion, pdu_jsons: list[dict[str, Any]]
    ) -> dict[str, Event]:
        """Check (1-4) and store events as outliers, in auth order; skip those stored already.

        Missing auth events are fetched from ``origin``.  Returns the events by ID that
        are now stored (rejected ones included; dropped ones left out), including ones
        that were stored before.
        """
        room_ids = {p.get("room_id") for p in pdu_jsons if isinstance(p, dict) and isinstance(p.get("room_id"), str)}
        out: dict[str, Event] = {}
        for room_id in sorted(r for r in room_ids if isinstance(r, str)):
            out.update(await self._outliers.persist(origin, room_version, room_id, pdu_jsons))
        return out

    # -- joins, invites, knocks ----------------------------------------------------------

    async def persist_join_state(
        self,
        origin: str,
        room_version: RoomVersion,
        join_event: Event,
        state_jsons: list[dict[str, Any]],
        auth_chain_jsons: list[dict[str, Any]],
    ) -> int:
        """After a ``send_join`` to ``origin``: store the room, its state and auth chain (as
        outliers), then our join as a timeline event on that state; the join becomes the
        only forward extremity.  Returns the join's stream ordering.

        Raises :class:`RemoteStateError` when the state has no create event or does not
        allow the join.
        """
        room_id = join_event.room_id
        create_json = next((p for p in state_jsons if isinstance(p, dict) and p.get("type") == "m.room.create"), None)
        creator = create_json.get("sender") if create_json else None
        await self._outliers.ensure_room_row(room_id, room_version, creator if isinstance(creator, str) else "")

        async def locked() -> int:
            existing = await self._events.get_event(join_event.event_id)
            if existing is not None and not existing.outlier:
                return existing.stream_ordering
            stored = await self._outliers.persist(origin, room_version, room_id, [*auth_chain_jsons, *state_jsons])
            known = await self._events.get_events(list(stored))
            state_ids: StateMap = {}
            for pdu in state_jsons:
                try:
                    event_id = parse_pdu(room_version, pdu).event_id
                except PduDropped:
                    continue
                item = known.get(event_id)
                if item is None or item.rejected_reason is not None or not item.event.is_state():
                    continue
                if event_id != join_event.event_id:
                    state_ids[item.event.state_key_tuple] = event_id
            if CREATE_KEY not in state_ids:
                raise RemoteStateError(f"the state of {room_id} from {origin} has no usable create event")
            auth_state = await self._resolver.auth_state(room_version, join_event, state_ids)
            reason = check_auth_against_state(room_version, join_event, auth_state)
            if reason is not None:
                raise RemoteStateError(f"the state of {room_id} from {origin} does not allow our join: {reason}")
            after = {**state_ids, join_event.state_key_tuple: join_event.event_id}
            current = await self._events.get_current_state_ids(room_id)
            delta = state_delta(current, after)
            result = await self._events.persist_event(
                join_event,
                state_before=StateBefore(base_group=None, delta=state_ids),
                received_ts=self._clock.time_msec(),
                current_state_delta=delta,
                new_extremities=[join_event.event_id],
            )
            self._room_events.note_current_state_delta(join_event, delta)
            await self._room_events.announce(join_event, result.stream_ordering, result.state_after)
            return result.stream_ordering

        stream: int = await self._room_events.run_locked(room_id, locked)
        return stream

    async def persist_out_of_band_membership(
        self, room_version: RoomVersion, event: Event, stripped_state: list[dict[str, Any]]
    ) -> int:
        """Store a membership event of a room we are not in (an invite to one of our users,
        a knock, the rejection of an invite) with the stripped state that came with it
        (``unsigned.invite_room_state``, or ``knock_room_state`` for knocks): in the
        stream and as the user's membership, not as room state.  Returns the stream ordering.
        """
        room_id = event.room_id
        create = next((s for s in stripped_state if isinstance(s, dict) and s.get("type") == "m.room.create"), None)
        creator = create.get("sender") if create else None
        await self._outliers.ensure_room_row(
            room_id, room_version, creator if isinstance(creator, str) else event.sender
        )
        pdu = event.get_pdu_json()
        if stripped_state:
            key = "knock_room_state" if event.membership == "knock" else "invite_room_state"
            pdu["unsigned"] = {**(pdu.get("unsigned") or {}), key: stripped_state}
        stored_event = Event(pdu, room_version, event_id=event.event_id)

        async def locked() -> int:
            existing = await self._events.get_event(event.event_id)
            if existing is not None and not existing.outlier:
                return existing.stream_ordering
            stream = await self._events.persist_out_of_band_membership(stored_event, self._clock.time_msec())
            await self._room_events.announce(stored_event, stream, {})
            return stream

        result: int = await self._room_events.run_locked(room_id, locked)
        return result


def build_federation_ingest(
    *,
    server_name: str,
    clock: Clock,
    keyring: SignatureVerifier,
    client: FederationRequests,
    events: EventRepository,
    state: StateRepository,
    room_events: RoomEventService,
) -> FederationEventHandler:
    """The handler as ``app.build_homeserver`` wires it."""
    return FederationEventHandler(
        server_name=server_name,
        clock=clock,
        keyring=keyring,
        remote=RemoteEvents(client),
        events=events,
        state=state,
        room_events=room_events,
    )
