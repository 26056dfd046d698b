"""Room versions: what differs between them, as flags read by the rest of ``events/``.

Each flag names a behaviour from the spec's room version pages (``/rooms/vN``) rather
than a version number, so the auth rules, redaction algorithm and event format read as
"if the version has this behaviour" and a new version is one new table entry.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from homeserver.core.errors import Codes, MatrixError


class EventFormat(enum.IntEnum):
    """How event IDs (and, in v12, room IDs) are formed."""

    # v1-v2: "$opaque:server" chosen by the sender and carried in the event.  Unsupported.
    V1 = 1
    # v3: "$" + standard unpadded base64 of the reference hash.
    V3 = 3
    # v4+: "$" + URL-safe unpadded base64 of the reference hash.
    V4 = 4


class StateResVersion(enum.StrEnum):
    V1 = "v1"
    V2 = "v2"
    # v12: iterative auth checks start from an empty map; conflicted state subgraph.
    V2_1 = "v2.1"


@dataclass(frozen=True, slots=True)
class RoomVersion:
    """The protocol behaviours of one room version."""

    identifier: str
    # False for versions we recognise (so a create event naming them is valid) but
    # do not implement: v1 and v2.
    supported: bool
    event_format: EventFormat
    state_res: StateResVersion
    # v5+: signing keys must be valid at the event's origin_server_ts.
    enforce_key_validity: bool
    # v1-v5: m.room.aliases has its own auth rule and is protected from redaction.
    special_case_aliases_auth: bool
    # v6+: events must be canonical JSON (integers in range, no floats).
    strict_canonical_json: bool
    # v6+: the `notifications` power levels are checked like `events` ones.
    limit_notifications_power_levels: bool
    # v7+: the `knock` membership and join rule exist.
    knock_join_rule: bool
    # v8+: the `restricted` join rule and `join_authorised_via_users_server` exist.
    restricted_join_rule: bool
    # v9+: redaction keeps `join_authorised_via_users_server` of membership events.
    restricted_join_rule_fix: bool
    # v10+: the `knock_restricted` join rule exists.
    knock_restricted_join_rule: bool
    # v10+: power levels must be JSON integers (no strings, no floats).
    enforce_int_power_levels: bool
    # v11+: m.room.create has no `creator`; the creator is the create event's sender.
    implicit_room_creator: bool
    # v11+: the redaction algorithm of MSC2176/MSC3821 (v11 page, "Redactions").
    updated_redaction_rules: bool
    # v11+: field size limits are counted in bytes, strictly.
    strict_event_byte_limits: bool
    # v12: room creators (create sender + `additional_creators`) have infinite power.
    privileged_creators: bool
    # v12: the room ID is "!" + the create event's reference hash; the create event
    # has no room_id and is never listed in auth_events.
    room_id_from_create_event: bool

    # Aliases under the MSC names, for readers coming from Synapse or the MSCs.
    @property
    def msc2176_redaction_rules(self) -> bool:
        return self.updated_redaction_rules

    @property
    def msc4289_privileged_creators(self) -> bool:
        return self.privileged_creators

    @property
    def msc4291_room_ids_as_hashes(self) -> bool:
        return self.room_id_from_create_event

    @property
    def strict_canonicaljson(self) -> bool:
        return self.strict_canonical_json


def _version(identifier: str, n: int) -> RoomVersion:
    """Build the flags of stable version ``n`` (1..12) from where each feature landed."""
    if n >= 12:
        state_res = StateResVersion.V2_1
    elif n >= 2:
        state_res = StateResVersion.V2
    else:
        state_res = StateResVersion.V1
    if n >= 4:
        event_format = EventFormat.V4
    elif n == 3:
        event_format = EventFormat.V3
    else:
        event_format = EventFormat.V1
    return RoomVersion(
        identifier=identifier,
        supported=n >= 3,
        event_format=event_format,
        state_res=state_res,
        enforce_key_validity=n >= 5,
        special_case_aliases_auth=n <= 5,
        strict_canonical_json=n >= 6,
        limit_notifications_power_levels=n >= 6,
        knock_join_rule=n >= 7,
        restricted_join_rule=n >= 8,
        restricted_join_rule_fix=n >= 9,
        knock_restricted_join_rule=n >= 10,
        enforce_int_power_levels=n >= 10,
        implicit_room_creator=n >= 11,
        updated_redaction_rules=n >= 11,
        strict_event_byte_limits=n >= 11,
        privileged_creators=n >= 12,
        room_id_from_create_event=n >= 12,
    )


class RoomVersions:
    """Every stable room version, by name."""

    V1 = _version("1", 1)
    V2 = _version("2", 2)
    V3 = _version("3", 3)
    V4 = _version("4", 4)
    V5 = _version("5", 5)
    V6 = _version("6", 6)
    V7 = _version("7", 7)
    V8 = _version("8", 8)
    V9 = _version("9", 9)
    V10 = _version("10", 10)
    V11 = _version("11", 11)
    V12 = _version("12", 12)


# Versions we implement, by identifier.
KNOWN_ROOM_VERSIONS: dict[str, RoomVersion] = {
    v.identifier: v
    for v in (
        RoomVersions.V3,
        RoomVersions.V4,
        RoomVersions.V5,
        RoomVersions.V6,
        RoomVersions.V7,
        RoomVersions.V8,
        RoomVersions.V9,
        RoomVersions.V10,
        RoomVersions.V11,
        RoomVersions.V12,
    )
}

# Versions a create event may name (auth rule "content.room_version is a recognised
# version"): every stable version, including the ones we do not implement.
RECOGNISED_ROOM_VERSIONS: frozenset[str] = frozenset(
    {RoomVersions.V1.identifier, RoomVersions.V2.identifier, *KNOWN_ROOM_VERSIONS}
)

DEFAULT_ROOM_VERSION = RoomVersions.V12


def get_room_version(identifier: str) -> RoomVersion:
    """The room version called ``identifier``.

    Raises ``MatrixError(400, M_UNSUPPORTED_ROOM_VERSION)`` for versions we do not
    implement, including v1 and v2.
    """
    version = KNOWN_ROOM_VERSIONS.get(identifier) if isinstance(identifier, str) else None
    if version is None:
        raise MatrixError(
            400,
            Codes.UNSUPPORTED_ROOM_VERSION,
            f"Room version {identifier!r} is not supported by this server",
        )
    return version
