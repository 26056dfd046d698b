"""The checks a homeserver runs on every PDU it receives over federation.

Spec: server-server API, "Checks performed on receipt of a PDU".  Each numbered check
is one function here, named after what it decides:

1. :func:`parse_pdu` - is a valid event of the room version, otherwise **dropped**
   (:class:`PduFormatError`).
2. :func:`check_signatures_and_hashes` - passes signature checks, otherwise **dropped**
   (:class:`SignatureCheckFailed`);
3. ... and passes hash checks, otherwise **redacted** before being processed further.
4. :func:`check_auth_against_auth_events` - passes the auth rules based on the event's
   auth events, otherwise **rejected**.
5. :func:`check_auth_against_state` - passes the auth rules based on the state before
   the event, otherwise **rejected**.
6. :func:`check_soft_fail` - passes the auth rules based on the current state of the
   room, otherwise **soft failed**.

(Check 7, the Policy Server, is not implemented.)  Apart from fetching keys, these are
plain functions over events and state maps: getting the auth events, the state before
the event and the current state is the caller's business, and :func:`process_pdu_checks`
takes it as callables so that /send, backfill and joins all run one pipeline.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Protocol

from homeserver.core.errors import MatrixError
from homeserver.events.auth import (
    CREATE_KEY,
    AuthError,
    StateKey,
    auth_types_for_event,
    check_auth_events_selection,
    check_auth_rules,
)
from homeserver.events.format import check_event_format, servers_that_must_sign
from homeserver.events.hashing import check_content_hash
from homeserver.events.model import Event
from homeserver.events.redaction import redact_event_dict
from homeserver.events.room_versions import RoomVersion
from homeserver.events.signing import SignatureError
from homeserver.federation.keyring import KeyLookupError

__all__ = [
    "FetchAuthEvents",
    "FetchState",
    "KnownEvents",
    "PduDropped",
    "PduFormatError",
    "PduOutcome",
    "PduStatus",
    "SignatureCheckFailed",
    "SignatureVerifier",
    "check_auth_against_auth_events",
    "check_auth_against_state",
    "check_signatures_and_hashes",
    "check_soft_fail",
    "parse_pdu",
    "process_pdu_checks",
]

StateMap = Mapping[StateKey, Event]


class PduDropped(Exception):
    """The PDU is dropped: not stored, not relayed, not an auth event for anything."""


class PduFormatError(PduDropped):
    """Check 1: the PDU is not a valid event of its room version."""


class SignatureCheckFailed(PduDropped):
    """Check 2: a required signature is missing, unverifiable or wrong."""


class SignatureVerifier(Protocol):
    """The part of :class:`homeserver.federation.keyring.Keyring` these checks use.

    Raises :class:`SignatureError` when ``server_name``'s signature on ``json_object``
    is missing or wrong, :class:`KeyLookupError` when no key of ``server_name`` valid
    until ``minimum_valid_until_ts`` could be found to check it.
    """

    async def verify_json_for_server(
        self, server_name: str, json_object: Mapping[str, Any], minimum_valid_until_ts: int
    ) -> None: ...


# --- 1. format -------------------------------------------------------------------------------

# `unsigned` is covered by neither hashes nor signatures, so a remote server could put
# anything there (a fake `redacted_because`, say).  Keep only what a sender may say, as
# Synapse does: the age, and the stripped room state sent with invites and knocks.
_ALLOWED_UNSIGNED = frozenset({"age"})
_ALLOWED_MEMBER_UNSIGNED = frozenset({"age", "invite_room_state", "knock_room_state"})


def _strip_unsigned(pdu_json: Mapping[str, Any]) -> dict[str, Any]:
    event_dict = dict(pdu_json)
    unsigned = event_dict.get("unsigned")
    allowed = _ALLOWED_MEMBER_UNSIGNED if event_dict.get("type") == "m.room.member" else _ALLOWED_UNSIGNED
    if isinstance(unsigned, Mapping):
        event_dict["unsigned"] = {k: v for k, v in unsigned.items() if k in allowed}
    else:
        event_dict.pop("unsigned", None)
    return event_dict


def parse_pdu(room_version: RoomVersion, pdu_json: Any) -> Event:
    """Check 1: ``pdu_json`` as an :class:`Event` of ``room_version``, or :class:`PduFormatError`.

    Checks the fields' types (the :class:`Event` model), the size limits, canonical JSON
    (v6+) and the presence of hashes and signatures (``check_event_format``).  Untrusted
    ``unsigned`` keys are dropped; every signed key is kept as received.
    """
    if not room_version.supported:
        raise PduFormatError(f"room version {room_version.identifier} is not supported")
    if not isinstance(pdu_json, Mapping):
        raise PduFormatError("PDU is not a JSON object")
    try:
        event = Event(_strip_unsigned(pdu_json), room_version)
        check_event_format(room_version, event)
    except (MatrixError, ValueError) as e:  # EventFormatError, EventSizeError, CanonicalJSONError
        raise PduFormatError(str(e)) from e
    return event


# --- 2 and 3. signatures and hashes ---------------------------------------------------------


async def check_signatures_and_hashes(room_version: RoomVersion, event: Event, keyring: SignatureVerifier) -> Event:
    """Checks 2 and 3: verify the required signatures, then the content hash.

    Every server in ``servers_that_must_sign`` (the sender's, and the authorising
    server of a restricted join) must have signed the redacted event with a key valid
    at ``origin_server_ts`` (room versions that enforce key validity) or ever (v3, v4);
    otherwise :class:`SignatureCheckFailed`, and the event is dropped.

    Returns ``event`` itself when its content hash matches, else a new, redacted
    :class:`Event` with the same ID (spec: "the receiving server should use the redacted
    copy it calculated"): ``result is not event`` tells the caller it was redacted.
    """
    redacted_dict = redact_event_dict(room_version, event.dict)
    minimum_valid_until_ts = event.origin_server_ts if room_version.enforce_key_validity else 0
    for server_name in sorted(servers_that_must_sign(room_version, event)):
        try:
            await keyring.verify_json_for_server(server_name, redacted_dict, minimum_valid_until_ts)
        except (SignatureError, KeyLookupError) as e:
            raise SignatureCheckFailed(f"signature of {server_name} on {event.event_id}: {e}") from e

    if check_content_hash(event.dict):
        return event
    return Event(redacted_dict, room_version, event_id=event.event_id)


# --- 4, 5 and 6. the auth rules -------------------------------------------------------------


def _create_event_id(room_id: str) -> str:
    """v12: the create event a room ID names ("!abc" -> "$abc")."""
    return "$" + room_id[1:]


def check_auth_against_auth_events(
    room_version: RoomVersion,
    event: Event,
    auth_events: Mapping[str, Event],
    rejected: AbstractSet[str],
) -> str | None:
    """Check 4: the reason to reject ``event`` based on its own auth events, or None.

    ``auth_events`` maps event IDs to the events the caller has (it may hold more than
    the event's ``auth_events``; in v12 it must hold the create event the room ID
    names); ``rejected`` holds the IDs of events that were rejected.  An auth event the
    caller could not get is a rejection too: the event cannot be shown to be allowed.
    """
    if event.type == "m.room.create":
        if event.auth_event_ids:
            return "m.room.create must not have auth events"
        return _auth_failure(room_version, event, {})

    listed: list[Event] = []
    for event_id in event.auth_event_ids:
        auth_event = auth_events.get(event_id)
        if auth_event is None:
            return f"auth event {event_id} is unknown"
        listed.append(auth_event)
    try:
        # Rules 3.1, 3.2, 3.5 (v12; 2.x before): the right kinds of event, from this room.
        selected = check_auth_events_selection(room_version, event, listed)
    except AuthError as e:
        return e.msg
    # Rule 3.3: no rejected auth events.
    for auth_event in listed:
        if auth_event.event_id in rejected:
            return f"auth event {auth_event.event_id} was rejected"

    if room_version.room_id_from_create_event:
        # v12 rule 2: the room ID names an accepted create event, which is part of the
        # auth state without being listed.
        create_id = _create_event_id(event.room_id)
        create = auth_events.get(create_id)
        if create is None:
            return f"the create event {create_id} named by the room ID is unknown"
        if create_id in rejected:
            return f"the create event {create_id} was rejected"
        selected = {**selected, CREATE_KEY: create}
    return _auth_failure(room_version, event, selected)


def _auth_failure(room_version: RoomVersion, event: Event, state: StateMap) -> str | None:
    try:
        check_auth_rules(room_version, event, state)
    except AuthError as e:
        return e.msg
    return None


def check_auth_against_state(room_version: RoomVersion, event: Event, state_before: StateMap) -> str | None:
    """Check 5: the reason to reject ``event`` based on the state before it, or None.

    ``state_before`` is the resolved state at the event's ``prev_events`` (without the
    event itself).  Only the entries the auth events selection names are used, so
    this is the check of step 4 with the auth events the state says the event should
    have cited.
    """
    if event.type == "m.room.create":
        return _auth_failure(room_version, event, {})
    wanted = auth_types_for_event(room_version, event) | {CREATE_KEY}
    auth_state = {key: state_before[key] for key in wanted if key in state_before}
    return _auth_failure(room_version, event, auth_state)


def check_soft_fail(room_version: RoomVersion, event: Event, current_state: StateMap) -> bool:
    """Check 6: True when ``event`` should be soft failed (it fails auth against the
    room's current state, the resolved state of all forward extremities).

    A soft-failed event is stored and takes part in state resolution, but is not sent
    to clients nor used as a prev event of new events.
    """
    return check_auth_against_state(room_version, event, current_state) is not None


# --- the pipeline -----------------------------------------------------------------------------


class PduStatus(enum.Enum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    SOFT_FAILED = "soft_failed"


@dataclass(frozen=True, slots=True)
class PduOutcome:
    """What to do with a PDU that was not dropped.

    ``event`` is what to store: the redacted copy when ``redacted_for_hash_mismatch``.
    Rejected events are stored as rejected (so that they are not fetched again) and
    never relayed to clients nor cited as prev events; soft-failed ones are stored
    and take part in state resolution but are not relayed nor cited either.
    """

    event: Event
    status: PduStatus
    rejection_reason: str | None = None
    redacted_for_hash_mismatch: bool = False

    @property
    def accepted(self) -> bool:
        return self.status is PduStatus.ACCEPTED

    @property
    def rejected(self) -> bool:
        return self.status is PduStatus.REJECTED

    @property
    def soft_failed(self) -> bool:
        return self.status is PduStatus.SOFT_FAILED


@dataclass(frozen=True, slots=True)
class KnownEvents:
    """Events the caller could get, by ID, and which of them were rejected."""

    events: Mapping[str, Event]
    rejected: AbstractSet[str] = frozenset()


class FetchAuthEvents(Protocol):
    """Get ``event``'s auth events (from the store, else from the origin, each checked
    with this pipeline first) - and, in v12, the create event its room ID names."""

    def __call__(self, event: Event) -> Awaitable[KnownEvents]: ...


class FetchState(Protocol):
    """Get a state map for ``event``: the state before it, or the room's current state."""

    def __call__(self, event: Event) -> Awaitable[StateMap]: ...


async def process_pdu_checks(
    room_version: RoomVersion,
    pdu_json: Any,
    *,
    keyring: SignatureVerifier,
    fetch_auth_events: FetchAuthEvents,
    fetch_state_before: FetchState | None,
    fetch_current_state: FetchState | None,
) -> PduOutcome:
    """Run checks 1 to 6 on a received PDU; raises :class:`PduDropped` for checks 1-2.

    Pass ``fetch_state_before=None`` for an outlier (an auth event or state fetched on
    its own: only checks 1-4 apply) and ``fetch_current_state=None`` where soft failure
    does not apply (backfilled events, which are not new to the room).
    """
    received = parse_pdu(room_version, pdu_json)
    event = await check_signatures_and_hashes(room_version, received, keyring)
    redacted = event is not received

    def outcome(status: PduStatus, reason: str | None = None) -> PduOutcome:
        return PduOutcome(event, status, reason, redacted)

    known = await fetch_auth_events(event)
    reason = check_auth_against_auth_events(room_version, event, known.events, known.rejected)
    if reason is not None:
        return outcome(PduStatus.REJECTED, reason)
    if fetch_state_before is not None:
        reason = check_auth_against_state(room_version, event, await fetch_state_before(event))
        if reason is not None:
            return outcome(PduStatus.REJECTED, reason)
    if fetch_current_state is not None and check_soft_fail(room_version, event, await fetch_current_state(event)):
        return outcome(PduStatus.SOFT_FAILED)
    return outcome(PduStatus.ACCEPTED)
