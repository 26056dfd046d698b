"""Event format checks (spec: "Size limits", the PDU schemas, rooms/v6 "Canonical JSON").

These are the checks that depend on nothing but the event and its room version: the
first of the "checks performed on receipt of a PDU".  An event failing them is dropped,
not rejected, so they must never be stricter than other servers' (Synapse's) on valid
events: the limits here are the spec's.
"""

from __future__ import annotations

from collections.abc import Mapping

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.json import (
    CANONICAL_JSON_MAX_INT,
    CanonicalJSONError,
    check_canonical_json_values,
    encode_canonical_json,
)
from homeserver.events.model import Event
from homeserver.events.room_versions import RoomVersion

MAX_PDU_SIZE = 65536
MAX_ID_SIZE = 255
MAX_DEPTH = CANONICAL_JSON_MAX_INT


class EventSizeError(MatrixError):
    """An event over a size limit (413 M_TOO_LARGE)."""

    def __init__(self, msg: str) -> None:
        super().__init__(413, Codes.TOO_LARGE, msg)


def _bad(msg: str) -> MatrixError:
    return MatrixError(400, Codes.BAD_JSON, msg)


def check_event_format(room_version: RoomVersion, event: Event) -> None:
    """Raise a :class:`MatrixError` if ``event`` breaks its room version's format rules.

    Checks: the 64 KiB limit on the whole PDU, the 255-byte limits on sender, room_id,
    state_key, type and event_id, canonical JSON values (v6+), depth range, and that
    ``hashes.sha256`` and ``signatures`` are present and well formed.
    """
    event_dict = event.dict
    try:
        size = len(encode_canonical_json(event_dict, strict=False))
    except CanonicalJSONError as e:
        raise _bad(f"event is not valid JSON: {e}") from e
    if size > MAX_PDU_SIZE:
        raise EventSizeError(f"event is {size} bytes, over the {MAX_PDU_SIZE} byte limit")

    fields = {
        "sender": event.sender,
        "room_id": event.room_id,
        "type": event.type,
        "event_id": event.event_id,
    }
    if event.state_key is not None:
        fields["state_key"] = event.state_key
    for name, value in fields.items():
        # Limits are in bytes.  Code points are also checked, which only matters for
        # characters outside ASCII and keeps us aligned with servers that counted those.
        if len(value) > MAX_ID_SIZE or len(value.encode("utf-8")) > MAX_ID_SIZE:
            raise EventSizeError(f"event {name} is over {MAX_ID_SIZE} bytes")

    if room_version.strict_canonical_json:
        try:
            check_canonical_json_values(event_dict)
        except CanonicalJSONError as e:
            raise _bad(f"event is not canonical JSON: {e}") from e

    if not 0 <= event.depth <= MAX_DEPTH:
        raise _bad(f"event depth {event.depth} out of range")

    hashes = event_dict.get("hashes")
    if not isinstance(hashes, Mapping) or not isinstance(hashes.get("sha256"), str):
        raise _bad("event has no hashes.sha256")
    signatures = event_dict.get("signatures")
    if not isinstance(signatures, Mapping) or not all(
        isinstance(sigs, Mapping) and all(isinstance(s, str) for s in sigs.values()) for sigs in signatures.values()
    ):
        raise _bad("event signatures are malformed")


def servers_that_must_sign(room_version: RoomVersion, event: Event) -> set[str]:
    """The servers whose signatures an event must carry (spec: "Validating hashes and
    signatures on received events" and v8+ rule "join_authorised_via_users_server").

    The sender's server, except for third-party invites (the inviter's server may send
    them on the invitee's behalf); plus the authorising user's server for restricted
    joins (any membership event carrying ``join_authorised_via_users_server``, as the
    auth rules read it).  v1/v2's event ID domain rule is not implemented (unsupported versions).
    """
    servers: set[str] = set()
    is_third_party_invite = (
        event.type == "m.room.member" and event.membership == "invite" and "third_party_invite" in event.content
    )
    if not is_third_party_invite:
        servers.add(event.sender.partition(":")[2])
    if room_version.restricted_join_rule and event.type == "m.room.member":
        authoriser = event.content.get("join_authorised_via_users_server")
        if isinstance(authoriser, str):
            servers.add(authoriser.partition(":")[2])
    return servers
