"""The joining side of the membership handshakes: our users in rooms this server is not in.

Spec: server-server API, "Joining Rooms", "Knocking upon a room", "Inviting to a room",
"Leaving Rooms (Rejecting Invites)".  :class:`FederationMembership` is what
:class:`homeserver.services.rooms.RoomService` calls (through its ``remote`` Protocol)
when a local user joins, knocks on or leaves a room in which no local user is joined,
resolves a remote alias, or invites a user of another server:

- join: ``make_join`` on a candidate server (the ``via`` servers the client gave, the
  alias's servers, the room ID's domain before v12, the inviter's server, servers we
  last saw in the room), sign the event built from the template, ``send_join``, then
  hand the returned state and auth chain to FED-INGEST's ``persist_join_state``, which
  checks every event before storing the room;
- knock: ``make_knock``/``send_knock``; the answer's room state (PDUs) is checked and
  kept, stripped, with the knock;
- leave (rejecting an invite, rescinding a knock): ``make_leave``/``send_leave`` through
  the inviter's server; if no server answers, the invite is rejected locally anyway;
- invite of a remote user: ``PUT /v2/invite`` (with the room state as full PDUs, create
  event included) to the invitee's server, whose signature is added to our event before
  it is persisted and sent as usual.

Candidates are tried in order; the first to complete the handshake wins.  Errors the
remote server gives (403, 404...) reach the client with their errcode; a server we
cannot reach is a 502.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import quote

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError, forbidden, not_found
from homeserver.core.ids import InvalidID, RoomAlias, RoomID
from homeserver.events.format import check_event_format
from homeserver.events.model import Event
from homeserver.events.redaction import redact_event_dict
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from homeserver.events.signing import SignatureError, SigningKey, hash_and_sign_event
from homeserver.federation.event_checks import PduDropped, SignatureVerifier
from homeserver.federation.ingest import RemoteStateError
from homeserver.federation.keyring import KeyLookupError
from homeserver.federation.membership_resident import STRIPPED_STATE_TYPES, ResidentMembership, domain_of
from homeserver.federation.membership_stripped import checked_room_state, state_pdus
from homeserver.federation.transport import (
    FederationDeniedError,
    FederationError,
    HttpResponseError,
)
from homeserver.storage.events import StoredEvent
from homeserver.storage.rooms import Membership
from homeserver.storage.state import StateMap

logger = logging.getLogger(__name__)

V1 = "/_matrix/federation/v1"
V2 = "/_matrix/federation/v2"
# The room versions we can join, offered in make_join/make_knock.
SUPPORTED_VERSIONS = sorted(KNOWN_ROOM_VERSIONS, key=int)
# At most this many candidate servers are tried for one handshake.
MAX_CANDIDATES = 10

JsonDict = dict[str, Any]


# -- collaborators ----------------------------------------------------------------------------


class Transport(Protocol):
    async def get_json(self, destination: str, path: str, *, args: Any = None, timeout: float | None = None) -> Any: ...

    async def put_json(
        self, destination: str, path: str, content: Any, *, args: Any = None, timeout: float | None = None
    ) -> Any: ...


class Ingest(Protocol):
    async def persist_join_state(
        self,
        origin: str,
        room_version: RoomVersion,
        join_event: Event,
        state_jsons: list[JsonDict],
        auth_chain_jsons: list[JsonDict],
    ) -> int: ...

    async def persist_out_of_band_membership(
        self, room_version: RoomVersion, event: Event, stripped_state: list[JsonDict]
    ) -> int: ...


class EventStore(Protocol):
    async def get_event(self, event_id: str) -> StoredEvent | None: ...
    async def get_events(self, event_ids: Collection[str]) -> dict[str, StoredEvent]: ...
    async def get_current_state_ids(self, room_id: str) -> StateMap: ...
    async def get_room_version_id(self, room_id: str) -> str | None: ...


class Memberships(Protocol):
    async def get_membership(self, room_id: str, user_id: str) -> Membership | None: ...


class _Failed(Exception):
    """One candidate server could not complete the handshake."""

    def __init__(self, error: MatrixError) -> None:
        super().__init__(error.msg)
        self.error = error


def _path(*parts: str) -> str:
    return "/".join(quote(p, safe="") for p in parts)


def _remote_error(server: str, e: Exception) -> MatrixError:
    """What the client is told when ``server`` failed us."""
    if isinstance(e, MatrixError):
        return e
    if isinstance(e, HttpResponseError) and 400 <= e.code < 500 and e.errcode:
        return MatrixError(e.code, e.errcode, f"{server}: {e.error or e.errcode}", **_extra(e))
    if isinstance(e, FederationDeniedError):
        return forbidden(f"Federation with {server} is not allowed")
    return MatrixError(502, Codes.UNKNOWN, f"Could not complete the request with {server}: {e}")


def _extra(e: HttpResponseError) -> dict[str, Any]:
    try:
        body = json.loads(e.body)
    except ValueError:
        return {}
    if isinstance(body, dict) and isinstance(body.get("room_version"), str):
        return {"room_version": body["room_version"]}
    return {}


def _json_list(value: Any, what: str, server: str) -> list[JsonDict]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise _Failed(MatrixError(502, Codes.UNKNOWN, f"{server} answered with an invalid {what}"))
    return value


class FederationMembership:
    def __init__(
        self,
        *,
        server_name: str,
        clock: Clock,
        signing_key: SigningKey,
        transport: Transport,
        keyring: SignatureVerifier,
        ingest: Ingest,
        store: EventStore,
        memberships: Memberships,
    ) -> None:
        self._server_name = server_name
        self._clock = clock
        self._signing_key = signing_key
        self._transport = transport
        self._keyring = keyring
        self._ingest = ingest
        self._store = store
        self._memberships = memberships

    # -- aliases ------------------------------------------------------------------------------

    async def resolve_alias(self, alias: str) -> tuple[str, list[str]]:
        """``(room_id, servers)`` of a remote alias, asked of the alias's server."""
        server = RoomAlias.parse(alias).domain
        try:
            answer = await self._transport.get_json(server, f"{V1}/query/directory", args={"room_alias": alias})
        except HttpResponseError as e:
            if e.code == 404:
                raise not_found(f"Room alias {alias} not found") from None
            raise _remote_error(server, e) from None
        except FederationError as e:
            raise _remote_error(server, e) from None
        room_id = answer.get("room_id") if isinstance(answer, dict) else None
        servers = answer.get("servers") if isinstance(answer, dict) else None
        try:
            RoomID.parse(room_id if isinstance(room_id, str) else "")
        except InvalidID:
            raise MatrixError(502, Codes.UNKNOWN, f"{server} answered with an invalid room ID for {alias}") from None
        assert isinstance(room_id, str)
        listed = [s for s in servers if isinstance(s, str)] if isinstance(servers, list) else []
        return room_id, [server, *[s for s in listed if s != server]]

    # -- candidates ---------------------------------------------------------------------------

    async def candidate_servers(self, room_id: str, user_id: str, given: Sequence[str]) -> list[str]:
        """The servers to try for ``user_id``'s handshake with ``room_id``, best first: the
        ``given`` ones, the room ID's domain (before v12), the inviter's server and the
        senders of the stripped state we hold, then servers we last saw joined."""
        found: list[str] = list(given)
        if ":" in room_id:  # before v12 the room ID names the creator's server
            found.append(room_id.partition(":")[2])
        membership = await self._memberships.get_membership(room_id, user_id)
        if membership is not None:
            stored = await self._store.get_event(membership.event_id)
            if stored is not None:
                found.append(domain_of(stored.event.sender))
                unsigned = stored.event.unsigned
                for key in ("invite_room_state", "knock_room_state"):
                    stripped = unsigned.get(key)
                    if isinstance(stripped, list):
                        found.extend(
                            domain_of(s["sender"])
                            for s in stripped
                            if isinstance(s, dict) and isinstance(s.get("sender"), str)
                        )
        state = await self._store.get_current_state_ids(room_id)
        members = [k[1] for k in state if k[0] == "m.room.member"]
        if members:
            fetched = await self._store.get_events([state[("m.room.member", m)] for m in members])
            found.extend(domain_of(s.event.state_key or "") for s in fetched.values() if s.event.membership == "join")
        unique = [s for s in dict.fromkeys(found) if s and s != self._server_name]
        return unique[:MAX_CANDIDATES]

    async def _try_servers(self, servers: Sequence[str], attempt: Any) -> Any:
        if not servers:
            raise not_found("No known servers to reach this room")
        last: MatrixError | None = None
        for server in servers:
            try:
                return await attempt(server)
            except _Failed as e:
                logger.info("membership handshake with %s failed: %s", server, e.error.msg)
                last = e.error if last is None or last.code >= 500 or e.error.code < 500 else last
        assert last is not None
        raise last

    # -- building events ------------------------------------------------------------------

    async def _make(self, server: str, kind: str, room_id: str, user_id: str) -> tuple[RoomVersion, JsonDict]:
        args = {"ver": SUPPORTED_VERSIONS} if kind != "leave" else None
        try:
            answer = await self._transport.get_json(server, f"{V1}/make_{kind}/{_path(room_id, user_id)}", args=args)
        except FederationError as e:
            raise _Failed(_remote_error(server, e)) from None
        if not isinstance(answer, dict) or not isinstance(answer.get("event"), dict):
            raise _Failed(MatrixError(502, Codes.UNKNOWN, f"{server} answered make_{kind} without an event"))
        version_id = answer.get("room_version", "1")
        room_version = KNOWN_ROOM_VERSIONS.get(version_id) if isinstance(version_id, str) else None
        if room_version is None:
            raise _Failed(
                MatrixError(
                    400,
                    Codes.INCOMPATIBLE_ROOM_VERSION,
                    f"Room {room_id} is of version {version_id}, which this server does not support",
                    room_version=str(version_id),
                )
            )
        return room_version, answer["event"]

    def _build(
        self,
        server: str,
        room_version: RoomVersion,
        template: JsonDict,
        *,
        room_id: str,
        user_id: str,
        membership: str,
        content: Mapping[str, Any],
    ) -> Event:
        """Our signed event from ``server``'s template, after checking the template is the
        membership we asked for."""
        template_content = template.get("content")
        if (
            template.get("type") != "m.room.member"
            or template.get("room_id") != room_id
            or template.get("sender") != user_id
            or template.get("state_key") != user_id
            or not isinstance(template_content, dict)
            or template_content.get("membership") != membership
        ):
            raise _Failed(MatrixError(502, Codes.UNKNOWN, f"{server} answered with a template for another event"))
        event_content = {**content, "membership": membership}
        authoriser = template_content.get("join_authorised_via_users_server")
        if membership == "join" and isinstance(authoriser, str) and room_version.restricted_join_rule:
            event_content["join_authorised_via_users_server"] = authoriser
        event_dict: JsonDict = {
            "type": "m.room.member",
            "room_id": room_id,
            "sender": user_id,
            "state_key": user_id,
            "content": event_content,
            "prev_events": template.get("prev_events"),
            "auth_events": template.get("auth_events"),
            "depth": template.get("depth"),
            "origin_server_ts": self._clock.time_msec(),
        }
        try:
            hash_and_sign_event(room_version, event_dict, self._server_name, self._signing_key)
            event = Event(event_dict, room_version)
            check_event_format(room_version, event)
        except (MatrixError, ValueError, TypeError) as e:
            raise _Failed(MatrixError(502, Codes.UNKNOWN, f"{server} answered with an invalid template: {e}")) from None
        return event

    async def _put(self, server: str, path: str, body: Any) -> Any:
        try:
            return await self._transport.put_json(server, path, body)
        except FederationError as e:
            raise _Failed(_remote_error(server, e)) from None

    # -- join ---------------------------------------------------------------------------------

    async def join(
        self, user_id: str, room_id: str, servers: Sequence[str], content: Mapping[str, Any]
    ) -> tuple[Event, int]:
        """Join ``room_id`` through one of the candidate servers; returns the join event
        and its stream ordering once the room's state is stored."""
        candidates = list(servers)

        async def attempt(server: str) -> tuple[Event, int]:
            room_version, template = await self._make(server, "join", room_id, user_id)
            event = self._build(
                server, room_version, template, room_id=room_id, user_id=user_id, membership="join", content=content
            )
            answer = await self._put(server, f"{V2}/send_join/{_path(room_id, event.event_id)}", event.get_pdu_json())
            if not isinstance(answer, dict):
                raise _Failed(MatrixError(502, Codes.UNKNOWN, f"{server} answered send_join with no object"))
            state = _json_list(answer.get("state"), "state", server)
            auth_chain = _json_list(answer.get("auth_chain"), "auth_chain", server)
            returned = answer.get("event")
            if isinstance(returned, dict) and room_version.restricted_join_rule:
                # A restricted join comes back with the authorising server's signature.
                try:
                    countersigned = Event(returned, room_version)
                except (MatrixError, ValueError):
                    countersigned = None
                if countersigned is not None and countersigned.event_id == event.event_id:
                    event = countersigned
            try:
                stream = await self._ingest.persist_join_state(server, room_version, event, state, auth_chain)
            except (MatrixError, PduDropped, ValueError, RemoteStateError) as e:
                msg = e.msg if isinstance(e, MatrixError) else str(e)
                raise _Failed(
                    MatrixError(502, Codes.UNKNOWN, f"{server} answered send_join with bad state: {msg}")
                ) from None
            return event, stream

        result: tuple[Event, int] = await self._try_servers(candidates, attempt)
        return result

    # -- knock --------------------------------------------------------------------------------

    async def knock(
        self, user_id: str, room_id: str, servers: Sequence[str], content: Mapping[str, Any]
    ) -> tuple[Event, int]:
        candidates = list(servers)

        async def attempt(server: str) -> tuple[Event, int]:
            room_version, template = await self._make(server, "knock", room_id, user_id)
            event = self._build(
                server, room_version, template, room_id=room_id, user_id=user_id, membership="knock", content=content
            )
            answer = await self._put(server, f"{V1}/send_knock/{_path(room_id, event.event_id)}", event.get_pdu_json())
            pdus = _json_list(
                answer.get("knock_room_state", []) if isinstance(answer, dict) else None, "knock_room_state", server
            )
            # Entries improperly signed or formatted are dropped before the client sees
            # them (spec: send_knock); the rest is kept stripped.
            stripped = await checked_room_state(
                room_version, room_id, pdus, self._keyring, what="knock_room_state", strict=False
            )
            return event, await self._ingest.persist_out_of_band_membership(room_version, event, stripped)

        result: tuple[Event, int] = await self._try_servers(candidates, attempt)
        return result

    # -- leave (reject an invite, rescind a knock) -----------------------------------------

    async def leave(
        self, user_id: str, room_id: str, servers: Sequence[str], content: Mapping[str, Any]
    ) -> tuple[Event, int]:
        membership = await self._memberships.get_membership(room_id, user_id)
        if membership is None or membership.membership not in ("invite", "knock"):
            raise forbidden(f"{user_id} is not in room {room_id}")
        candidates = list(servers)

        async def attempt(server: str) -> tuple[Event, int]:
            room_version, template = await self._make(server, "leave", room_id, user_id)
            event = self._build(
                server, room_version, template, room_id=room_id, user_id=user_id, membership="leave", content=content
            )
            await self._put(server, f"{V2}/send_leave/{_path(room_id, event.event_id)}", event.get_pdu_json())
            return event, await self._ingest.persist_out_of_band_membership(room_version, event, [])

        try:
            result: tuple[Event, int] = await self._try_servers(candidates, attempt)
            return result
        except MatrixError as e:
            # The user must be able to get rid of an invite even if its room is out of
            # reach: reject it here only (as Synapse does).
            logger.info("rejecting %s's invite to %s locally: %s", user_id, room_id, e.msg)
            return await self._local_leave(user_id, room_id, membership, content)

    async def _local_leave(
        self, user_id: str, room_id: str, membership: Membership, content: Mapping[str, Any]
    ) -> tuple[Event, int]:
        previous = await self._store.get_event(membership.event_id)
        if previous is None:
            raise not_found(f"Unknown room {room_id}")
        room_version = previous.event.room_version
        event_dict: JsonDict = {
            "type": "m.room.member",
            "room_id": room_id,
            "sender": user_id,
            "state_key": user_id,
            "content": {**content, "membership": "leave"},
            "prev_events": [previous.event.event_id],
            "auth_events": [previous.event.event_id],
            "depth": previous.event.depth + 1,
            "origin_server_ts": self._clock.time_msec(),
        }
        hash_and_sign_event(room_version, event_dict, self._server_name, self._signing_key)
        event = Event(event_dict, room_version)
        return event, await self._ingest.persist_out_of_band_membership(room_version, event, [])

    # -- invites of remote users ----------------------------------------------------------

    async def countersign_invite(self, event: Event, state_before: StateMap) -> None:
        """Before our invite of a remote user is stored: ask the invitee's server to sign
        it (``PUT /v2/invite``) and add that signature to ``event``.  Refusals propagate."""
        invitee_server = domain_of(event.state_key or "")
        room_version = event.room_version
        wanted = [state_before[(t, "")] for t in STRIPPED_STATE_TYPES if (t, "") in state_before]
        sender_member = state_before.get(("m.room.member", event.sender))
        fetched = await self._store.get_events([*wanted, *([sender_member] if sender_member else [])])
        # Spec v1.16+: full PDUs, the create event among them (plus, as Synapse does,
        # the inviter's membership).
        pdus = state_pdus(fetched[e].event for e in [*wanted, sender_member] if e is not None and e in fetched)
        body = {"room_version": room_version.identifier, "event": event.get_pdu_json(), "invite_room_state": pdus}
        try:
            answer = await self._transport.put_json(
                invitee_server, f"{V2}/invite/{_path(event.room_id, event.event_id)}", body
            )
        except FederationError as e:
            raise _remote_error(invitee_server, e) from None
        returned = answer.get("event") if isinstance(answer, dict) else None
        if not isinstance(returned, dict):
            raise MatrixError(502, Codes.UNKNOWN, f"{invitee_server} answered the invite without the event")
        try:
            signed = Event(returned, room_version)
        except (MatrixError, ValueError):
            signed = None
        if signed is None or signed.event_id != event.event_id:
            raise MatrixError(502, Codes.UNKNOWN, f"{invitee_server} answered the invite with another event")
        redacted = redact_event_dict(room_version, signed.dict)
        try:
            await self._keyring.verify_json_for_server(invitee_server, redacted, event.origin_server_ts)
        except (SignatureError, KeyLookupError) as e:
            raise MatrixError(502, Codes.UNKNOWN, f"{invitee_server} did not sign the invite: {e}") from None
        theirs = signed.signatures.get(invitee_server)
        if isinstance(theirs, Mapping):
            signatures = {n: dict(s) for n, s in event.signatures.items()}
            signatures[invitee_server] = dict(theirs)
            # Signatures are outside the event ID's hash: the event stays the same event.
            event.dict["signatures"] = signatures


def build_federation_membership(
    *,
    server_name: str,
    clock: Clock,
    signing_key: SigningKey,
    transport: Transport,
    keyring: SignatureVerifier,
    ingest: Any,
    relay: Any,
    event_store: Any,
    room_state: Any,
    memberships: Memberships,
    accounts: Any,
) -> tuple[FederationMembership, ResidentMembership]:
    """Both sides, from the parts ``app.py`` has built."""
    joining = FederationMembership(
        server_name=server_name,
        clock=clock,
        signing_key=signing_key,
        transport=transport,
        keyring=keyring,
        ingest=ingest,
        store=event_store,
        memberships=memberships,
    )
    resident = ResidentMembership(
        server_name=server_name,
        clock=clock,
        signing_key=signing_key,
        store=event_store,
        room_state=room_state,
        keyring=keyring,
        ingest=ingest,
        relay=relay,
        accounts=accounts,
    )
    return joining, resident
