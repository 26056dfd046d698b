"""The resident side of the membership handshakes: another server's user joins, leaves,
knocks on one of our rooms, or one of our users is invited from another server.

Spec: server-server API, "Joining Rooms", "Knocking upon a room", "Inviting to a room",
"Leaving Rooms (Rejecting Invites)".  A ``make_*`` request gets an event template built
from our forward extremities and the state before them, checked against the auth rules
(so a user who may not join hears it now, not after signing); the ``send_*`` request
brings the signed event back: we check that it is the membership it claims to be, for a
user of the server that sent it, in this room, then run it through the ordinary PDU
pipeline (:meth:`Ingest.receive_pdu`: signatures, hashes, auth, persist, announce) and
relay it to the other servers in the room.  A join is answered with the state before it
and that state's auth chain (always the full state: no partial joins).

Servlets in :mod:`homeserver.api.federation.membership` authenticate the origin (the
allowlist refuses strangers first); the room's ``m.room.server_acl`` is checked here.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError, forbidden, not_found
from homeserver.core.ids import InvalidID, UserID
from homeserver.events.auth import auth_types_from_fields
from homeserver.events.model import Event
from homeserver.events.power_levels import get_invite_level, get_user_power_level
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion, get_room_version
from homeserver.events.signing import SigningKey, sign_event
from homeserver.federation.acl import server_matches_acl
from homeserver.federation.event_checks import (
    PduDropped,
    PduOutcome,
    SignatureVerifier,
    check_auth_against_state,
    check_signatures_and_hashes,
    parse_pdu,
)
from homeserver.federation.membership_stripped import InvalidRoomState, checked_room_state, state_pdus
from homeserver.storage.events import StoredEvent
from homeserver.storage.state import StateKey, StateMap

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]

# Stripped state sent with invites and knocks (spec: "Stripped state"), plus the sender's
# own membership event.
STRIPPED_STATE_TYPES = (
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
)
JOIN_RULES_KEY: StateKey = ("m.room.join_rules", "")
CREATE_KEY: StateKey = ("m.room.create", "")
POWER_LEVELS_KEY: StateKey = ("m.room.power_levels", "")
SERVER_ACL_KEY: StateKey = ("m.room.server_acl", "")


# -- collaborators ----------------------------------------------------------------------------


class EventStore(Protocol):
    async def get_room_version_id(self, room_id: str) -> str | None: ...
    async def get_forward_extremities(self, room_id: str) -> list[str]: ...
    async def get_events(self, event_ids: Collection[str]) -> dict[str, StoredEvent]: ...
    async def get_event(self, event_id: str) -> StoredEvent | None: ...
    async def get_current_state_ids(self, room_id: str) -> StateMap: ...


class RoomState(Protocol):
    """The part of :class:`homeserver.services.events.RoomEventService` used here."""

    async def state_before(
        self, room_version: RoomVersion, room_id: str, prev_ids: list[str]
    ) -> tuple[StateMap, Any]: ...

    async def check_policies(self, event: Event, state_before: StateMap) -> str | None: ...


class Ingest(Protocol):
    """FED-INGEST's :class:`homeserver.federation.ingest.FederationEventHandler`."""

    async def receive_pdu(self, origin: str, pdu_json: JsonDict, *, backfilled: bool = False) -> PduOutcome: ...

    async def persist_out_of_band_membership(
        self, room_version: RoomVersion, event: Event, stripped_state: list[JsonDict]
    ) -> int: ...


class Relay(Protocol):
    """FED-OUTBOUND's ``send_event``: sends an event to the servers in its room."""

    async def send_event(
        self, event: Event, stream: int, *, destinations: Collection[str] | None = None, exclude: Collection[str] = ()
    ) -> None: ...


class Accounts(Protocol):
    async def get_user(self, user_id: str) -> Any: ...


# -- pure helpers -------------------------------------------------------------------------------


def domain_of(user_id: str) -> str:
    return user_id.partition(":")[2]


def auth_chain_ids(start: Collection[str], events: Mapping[str, Event]) -> set[str]:
    """Every event reachable from ``start`` through auth_events (``start`` excluded)."""
    seen: set[str] = set()
    todo = [a for e in start if e in events for a in events[e].auth_event_ids]
    while todo:
        event_id = todo.pop()
        if event_id in seen:
            continue
        seen.add(event_id)
        event = events.get(event_id)
        if event is not None:
            todo.extend(event.auth_event_ids)
    return seen


def template_event(room_version: RoomVersion, template: JsonDict) -> Event:
    """An unsigned template as an :class:`Event`, to run the auth rules on it."""
    return Event(dict(template), room_version)


# -- the resident side -----------------------------------------------------------------------


class ResidentMembership:
    def __init__(
        self,
        *,
        server_name: str,
        clock: Clock,
        signing_key: SigningKey,
        store: EventStore,
        room_state: RoomState,
        keyring: SignatureVerifier,
        ingest: Ingest,
        relay: Relay | None,
        accounts: Accounts,
    ) -> None:
        self._server_name = server_name
        self._clock = clock
        self._signing_key = signing_key
        self._store = store
        self._room_state = room_state
        self._keyring = keyring
        self._ingest = ingest
        self._relay = relay
        self._accounts = accounts

    # -- reading the room --------------------------------------------------------------------

    async def _room_version(self, room_id: str) -> RoomVersion:
        version_id = await self._store.get_room_version_id(room_id)
        if version_id is None or version_id not in KNOWN_ROOM_VERSIONS:
            raise not_found(f"Unknown room {room_id}")
        return get_room_version(version_id)

    async def _state_events(self, state: StateMap) -> dict[StateKey, Event]:
        fetched = await self._store.get_events(list(state.values()))
        return {k: fetched[e].event for k, e in state.items() if e in fetched}

    async def _current_state(self, room_id: str) -> dict[StateKey, Event]:
        ids = await self._store.get_current_state_ids(room_id)
        local_joined = [k for k, _ in ids.items() if k[0] == "m.room.member" and domain_of(k[1]) == self._server_name]
        state = await self._state_events(ids)
        if not any(state[k].membership == "join" for k in local_joined if k in state):
            raise not_found(f"This server is not in room {room_id}")
        return state

    def _check_acl(self, state: Mapping[StateKey, Event], origin: str) -> None:
        acl = state.get(SERVER_ACL_KEY)
        if acl is not None and not server_matches_acl(acl.content, origin):
            raise forbidden(f"Server {origin} is banned from this room by its server ACL")

    # -- make_join / make_leave / make_knock -------------------------------------------------

    async def make_membership(
        self, origin: str, room_id: str, user_id: str, membership: str, supported_versions: Sequence[str] | None
    ) -> JsonDict:
        """The event template of ``user_id``'s ``membership`` in ``room_id``."""
        _check_user_of(user_id, origin, "userId")
        room_version = await self._room_version(room_id)
        if supported_versions is not None and room_version.identifier not in supported_versions:
            raise MatrixError(
                400,
                Codes.INCOMPATIBLE_ROOM_VERSION,
                f"Your homeserver does not support the features required to join this room (version {room_version.identifier})",
                room_version=room_version.identifier,
            )
        current = await self._current_state(room_id)
        self._check_acl(current, origin)
        if membership == "knock" and not room_version.knock_join_rule:
            raise forbidden(f"Room version {room_version.identifier} does not support knocking")

        prev_ids = await self._store.get_forward_extremities(room_id)
        state_ids, _ = await self._room_state.state_before(room_version, room_id, prev_ids)
        state = await self._state_events(state_ids)
        content: JsonDict = {"membership": membership}
        if membership == "join":
            authoriser = await self._restricted_join_authoriser(room_version, state, user_id)
            if authoriser is not None:
                content["join_authorised_via_users_server"] = authoriser
        prev_events = await self._store.get_events(prev_ids)
        depth = max((p.event.depth for p in prev_events.values()), default=0) + 1
        auth_keys = auth_types_from_fields(room_version, "m.room.member", user_id, user_id, content)
        template: JsonDict = {
            "type": "m.room.member",
            "room_id": room_id,
            "sender": user_id,
            "state_key": user_id,
            "content": content,
            "origin": origin,
            "origin_server_ts": self._clock.time_msec(),
            "prev_events": prev_ids[-20:],
            "auth_events": sorted({state_ids[k] for k in auth_keys if k in state_ids}),
            "depth": depth,
        }
        checked = copy.deepcopy(template)
        if "join_authorised_via_users_server" in content:  # as it will be when we countersign it
            sign_event(room_version, checked, self._server_name, self._signing_key)
        as_event = template_event(room_version, checked)
        reason = check_auth_against_state(room_version, as_event, state)
        if reason is not None:
            raise forbidden(f"{user_id} may not {membership} room {room_id}: {reason}")
        # This server's policy (e.g. the room access rules) refuses here, before the
        # joining server signs anything, rather than by soft-failing its send_join.
        refusal = await self._room_state.check_policies(as_event, state_ids)
        if refusal is not None:
            raise forbidden(refusal)
        return {"room_version": room_version.identifier, "event": template}

    async def _restricted_join_authoriser(
        self, room_version: RoomVersion, state: Mapping[StateKey, Event], user_id: str
    ) -> str | None:
        """A local user who may invite, to name in a restricted join, when one is needed
        (None when not: another join rule, or the user is invited or joined already).

        The joiner must be joined to one of the rooms the join rules allow, as this
        server sees them: 400 ``M_UNABLE_TO_AUTHORISE_JOIN`` when we are in none of
        them, 403 when the user is in none; 400 ``M_UNABLE_TO_GRANT_JOIN`` when no local
        user has the power to invite."""
        if not room_version.restricted_join_rule:
            return None
        rules = state.get(JOIN_RULES_KEY)
        join_rule = rules.content.get("join_rule") if rules else None
        allowed_rules = {"restricted"} | ({"knock_restricted"} if room_version.knock_restricted_join_rule else set())
        if join_rule not in allowed_rules:
            return None
        own = state.get(("m.room.member", user_id))
        if own is not None and own.membership in ("join", "invite"):
            return None  # already allowed in: no authorisation needed
        await self._check_allowed_rooms(rules.content if rules else {}, user_id)
        create = state.get(CREATE_KEY)
        power = state.get(POWER_LEVELS_KEY)
        if create is None:
            return None
        invite_level = get_invite_level(power.content if power else {})
        for (event_type, member), event in sorted(state.items()):
            if event_type != "m.room.member" or domain_of(member) != self._server_name:
                continue
            if event.membership != "join":
                continue
            if get_user_power_level(member, create, power, room_version) >= invite_level:
                return member
        raise MatrixError(400, "M_UNABLE_TO_GRANT_JOIN", "No user of this server can authorise joins to this room")

    async def _check_allowed_rooms(self, join_rules: Mapping[str, Any], user_id: str) -> None:
        allow = join_rules.get("allow")
        room_ids = [
            a["room_id"]
            for a in (allow if isinstance(allow, list) else [])
            if isinstance(a, dict) and a.get("type") == "m.room_membership" and isinstance(a.get("room_id"), str)
        ]
        known = False
        for allowed_room in room_ids:
            try:
                state = await self._current_state(allowed_room)
            except MatrixError:
                continue  # a room we are not in: we cannot tell
            known = True
            member = state.get(("m.room.member", user_id))
            if member is not None and member.membership == "join":
                return
        if not known:
            raise MatrixError(
                400,
                "M_UNABLE_TO_AUTHORISE_JOIN",
                "This server is in none of the rooms whose members may join this room",
            )
        raise forbidden(f"{user_id} is in none of the rooms whose members may join this room")

    # -- send_join / send_leave / send_knock -------------------------------------------------

    async def send_membership(
        self, origin: str, room_id: str, event_id: str, pdu_json: Any, membership: str
    ) -> tuple[Event, JsonDict]:
        """Accept ``origin``'s signed membership event: checks, persist, relay.  Returns the
        event as stored and the extra answer (state for joins, stripped state for knocks)."""
        room_version = await self._room_version(room_id)
        current = await self._current_state(room_id)
        self._check_acl(current, origin)
        if not isinstance(pdu_json, dict):
            raise MatrixError(400, Codes.BAD_JSON, "The request body must be an event")
        try:
            event = parse_pdu(room_version, pdu_json)
        except PduDropped as e:
            raise MatrixError(400, Codes.BAD_JSON, f"Invalid event: {e}") from None
        self._check_membership_event(event, origin, room_id, event_id, membership)
        if membership == "knock" and not room_version.knock_join_rule:
            raise forbidden(f"Room version {room_version.identifier} does not support knocking")

        signed = dict(event.dict)
        authoriser = event.content.get("join_authorised_via_users_server")
        if (
            membership == "join"
            and room_version.restricted_join_rule
            and isinstance(authoriser, str)
            and domain_of(authoriser) == self._server_name
        ):
            # Our user vouches for the join (our signature is what the other servers check):
            # only when the joiner meets the join rules' conditions, checked again now.
            rules = current.get(JOIN_RULES_KEY)
            own = current.get(("m.room.member", event.sender))
            if own is None or own.membership not in ("join", "invite"):
                await self._check_allowed_rooms(rules.content if rules else {}, event.sender)
            signed = sign_event(room_version, dict(signed), self._server_name, self._signing_key)
        stored = await self._store.get_event(event.event_id)
        if stored is None or stored.outlier:
            # Refused by this server's policy: say so, and keep nothing of it.
            refusal = await self._room_state.check_policies(event, await self._store.get_current_state_ids(room_id))
            if refusal is not None:
                raise forbidden(refusal)
            try:
                outcome = await self._ingest.receive_pdu(origin, signed)
            except PduDropped as e:
                raise forbidden(f"Event {event.event_id} refused: {e}") from None
            if not outcome.accepted:
                reason = outcome.rejection_reason or "it fails the auth rules against the current state"
                raise forbidden(f"Event {event.event_id} was not accepted: {reason}")
            stored = await self._store.get_event(event.event_id)
            if stored is None:
                raise MatrixError(500, Codes.UNKNOWN, f"Event {event.event_id} was accepted but not stored")
            if self._relay is not None:
                try:
                    await self._relay.send_event(stored.event, stored.stream_ordering, exclude=(origin,))
                except Exception:  # relaying is best effort: the join itself succeeded
                    logger.exception("could not relay %s", event.event_id)
        elif stored.rejected_reason is not None:
            raise forbidden(f"Event {event.event_id} was rejected: {stored.rejected_reason}")
        accepted = stored.event
        if membership == "join":
            return accepted, await self._join_answer(room_version, accepted)
        if membership == "knock":
            return accepted, {"knock_room_state": await self.room_state_pdus(room_id)}
        return accepted, {}

    def _check_membership_event(self, event: Event, origin: str, room_id: str, event_id: str, membership: str) -> None:
        if event.event_id != event_id:
            raise MatrixError(
                400, Codes.INVALID_PARAM, f"Event ID {event.event_id} does not match the path ({event_id})"
            )
        if event.room_id != room_id:
            raise MatrixError(
                400, Codes.INVALID_PARAM, f"Event room_id {event.room_id} does not match the path ({room_id})"
            )
        if event.type != "m.room.member":
            raise MatrixError(400, Codes.INVALID_PARAM, f"Event type must be m.room.member, not {event.type}")
        if event.membership != membership:
            raise MatrixError(400, Codes.INVALID_PARAM, f"Event content.membership must be {membership!r}")
        if event.state_key != event.sender:
            raise MatrixError(400, Codes.INVALID_PARAM, "Event state_key must be its sender")
        _check_user_of(event.sender, origin, "sender")

    async def _join_answer(self, room_version: RoomVersion, join: Event) -> JsonDict:
        state_ids, _ = await self._room_state.state_before(room_version, join.room_id, list(join.prev_event_ids))
        loaded: dict[str, Event] = {}
        frontier = set(state_ids.values()) | set(join.auth_event_ids)
        while frontier:
            fetched = await self._store.get_events(list(frontier))
            for fetched_id, stored in fetched.items():
                loaded[fetched_id] = stored.event
            frontier = {a for s in fetched.values() for a in s.event.auth_event_ids} - set(loaded)
        chain = auth_chain_ids(set(state_ids.values()) | {join.event_id}, {**loaded, join.event_id: join})
        if room_version.room_id_from_create_event and CREATE_KEY in state_ids:
            chain.add(state_ids[CREATE_KEY])  # v12: cited by no one, part of every auth chain
        state_pdus = [loaded[e].get_pdu_json() for e in state_ids.values() if e in loaded]
        auth_pdus = [loaded[e].get_pdu_json() for e in sorted(chain) if e in loaded]
        for pdu in (*state_pdus, *auth_pdus):
            pdu.pop("unsigned", None)
        return {
            "origin": self._server_name,
            "state": state_pdus,
            "auth_chain": auth_pdus,
            "event": join.get_pdu_json(),
        }

    async def room_state_pdus(self, room_id: str) -> list[JsonDict]:
        """The full PDUs of ``room_id``'s stripped-state types (create event included)
        sent with knocks (spec v1.16+: ``knock_room_state`` entries are PDUs)."""
        ids = await self._store.get_current_state_ids(room_id)
        wanted = [ids[(t, "")] for t in STRIPPED_STATE_TYPES if (t, "") in ids]
        fetched = await self._store.get_events(wanted)
        return state_pdus(fetched[e].event for e in wanted if e in fetched)

    # -- invites ----------------------------------------------------------------------------

    async def on_invite(
        self, origin: str, room_id: str, event_id: str, room_version_id: Any, pdu_json: Any, invite_room_state: Any
    ) -> JsonDict:
        """One of our users is invited by a user of ``origin``: check the event, add our
        signature, keep it as an out-of-band membership (with the stripped state the
        client is shown), and return it signed."""
        if not isinstance(room_version_id, str):
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: room_version")
        room_version = KNOWN_ROOM_VERSIONS.get(room_version_id)
        if room_version is None:
            raise MatrixError(
                400,
                Codes.INCOMPATIBLE_ROOM_VERSION,
                f"This server does not support room version {room_version_id}",
                room_version=room_version_id,
            )
        if not isinstance(pdu_json, dict):
            raise MatrixError(400, Codes.BAD_JSON, "Parameter event must be an object")
        if not isinstance(invite_room_state, list) or not all(isinstance(s, dict) for s in invite_room_state):
            raise MatrixError(400, Codes.BAD_JSON, "Parameter invite_room_state must be a list of objects")
        try:
            event = parse_pdu(room_version, pdu_json)
        except PduDropped as e:
            raise MatrixError(400, Codes.BAD_JSON, f"Invalid event: {e}") from None
        if event.event_id != event_id or event.room_id != room_id:
            raise MatrixError(400, Codes.INVALID_PARAM, "The event's ID and room ID must match the path")
        if event.type != "m.room.member" or event.membership != "invite" or event.state_key is None:
            raise MatrixError(400, Codes.INVALID_PARAM, "The event must be an m.room.member invite")
        _check_user_of(event.sender, origin, "sender")
        invitee = event.state_key
        if domain_of(invitee) != self._server_name:
            raise forbidden(f"{invitee} is not a user of this server")
        if await self._accounts.get_user(invitee) is None:
            raise not_found(f"Unknown user {invitee}")
        version_id = await self._store.get_room_version_id(room_id)
        if version_id is not None and version_id != room_version.identifier:
            raise MatrixError(400, Codes.INVALID_PARAM, f"Room {room_id} is of version {version_id}")
        try:
            checked = await check_signatures_and_hashes(room_version, event, self._keyring)
        except PduDropped as e:
            raise forbidden(f"Invite refused: {e}") from None
        if checked is not event:
            raise forbidden("Invite refused: its content hash does not match")
        # In a room this server is in, the invite must pass its policy on the room's state.
        current = await self._store.get_current_state_ids(room_id)
        if current:
            refusal = await self._room_state.check_policies(event, current)
            if refusal is not None:
                raise forbidden(refusal)
        # Spec v1.16+: full PDUs with the create event; enforced from room version 12 (a
        # SHOULD there, a MAY before); earlier versions keep what passes the checks.
        try:
            stripped = await checked_room_state(
                room_version,
                room_id,
                invite_room_state,
                self._keyring,
                what="invite_room_state",
                strict=room_version.room_id_from_create_event,
            )
        except InvalidRoomState as e:
            raise MatrixError(400, Codes.INVALID_PARAM, str(e)) from None
        signed = sign_event(room_version, event.get_pdu_json(), self._server_name, self._signing_key)
        unsigned = dict(signed.get("unsigned") or {})
        unsigned["invite_room_state"] = stripped
        to_store = {**signed, "unsigned": unsigned}
        await self._ingest.persist_out_of_band_membership(room_version, Event(to_store, room_version), stripped)
        return {"event": signed}


def _check_user_of(user_id: str, origin: str, where: str) -> None:
    try:
        user = UserID.parse(user_id)
    except InvalidID:
        raise MatrixError(400, Codes.INVALID_PARAM, f"{where} is not a valid user ID: {user_id!r}") from None
    if user.domain != origin:
        raise forbidden(f"{where} {user_id} is not a user of {origin}")
