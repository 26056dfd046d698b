"""The redaction algorithm (spec: rooms/vN "Redactions"), per room version.

Redaction keeps only the keys the protocol needs to authorise and order events.  It is
also the first step of signing and of the reference hash, so a single differing key
here means different event IDs and failed signature checks between servers: these
tables follow the spec fragments v1-redactions, v9-redactions and v11-redactions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from homeserver.events.room_versions import RoomVersion

# Top-level keys every version keeps.
_TOP_LEVEL_KEYS = frozenset(
    {
        "event_id",
        "type",
        "room_id",
        "sender",
        "state_key",
        "content",
        "hashes",
        "signatures",
        "depth",
        "prev_events",
        "auth_events",
        "origin_server_ts",
    }
)
# Keys dropped from that list by v11 (MSC2176): they were never used by the protocol.
_PRE_V11_EXTRA_TOP_LEVEL_KEYS = frozenset({"prev_state", "origin", "membership"})


def _content_keys_to_keep(room_version: RoomVersion, event_type: str) -> frozenset[str] | None:
    """The content keys kept for ``event_type``; None means "all of them"."""
    v11 = room_version.updated_redaction_rules
    if event_type == "m.room.member":
        keys = {"membership"}
        if room_version.restricted_join_rule_fix:
            keys.add("join_authorised_via_users_server")
        return frozenset(keys)
    if event_type == "m.room.create":
        # v11 removed `creator` and so keeps the whole content (room_version, m.federate,
        # predecessor, additional_creators...), all of which the protocol may read.
        return None if v11 else frozenset({"creator"})
    if event_type == "m.room.join_rules":
        if room_version.restricted_join_rule:
            return frozenset({"join_rule", "allow"})
        return frozenset({"join_rule"})
    if event_type == "m.room.power_levels":
        keys = {
            "ban",
            "events",
            "events_default",
            "kick",
            "redact",
            "state_default",
            "users",
            "users_default",
        }
        if v11:
            keys.add("invite")
        return frozenset(keys)
    if event_type == "m.room.history_visibility":
        return frozenset({"history_visibility"})
    if event_type == "m.room.aliases" and room_version.special_case_aliases_auth:
        return frozenset({"aliases"})
    if event_type == "m.room.redaction" and v11:
        return frozenset({"redacts"})
    return frozenset()


def redact_event_dict(room_version: RoomVersion, event_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Return a new dict: ``event_dict`` redacted by ``room_version``'s algorithm.

    The input is not modified.  Values that are kept are shared, not copied (callers
    that mutate the result must copy first).  ``unsigned`` is not kept: it is not part
    of the redacted event and is never covered by hashes or signatures.
    """
    keep_top = _TOP_LEVEL_KEYS
    if not room_version.updated_redaction_rules:
        keep_top = keep_top | _PRE_V11_EXTRA_TOP_LEVEL_KEYS
    redacted = {k: v for k, v in event_dict.items() if k in keep_top}
    event_type = event_dict.get("type")
    if room_version.room_id_from_create_event and event_type == "m.room.create":
        # v12 create events have no room_id (auth rule 1.2 rejects one).  Synapse leaves a
        # stray one out of the redacted form, so out of the event ID and signatures; we
        # do the same so that both compute the same ID even for such invalid events.
        redacted.pop("room_id", None)

    content = event_dict.get("content")
    if not isinstance(content, Mapping):
        content = {}
    content_keys = _content_keys_to_keep(room_version, event_type if isinstance(event_type, str) else "")
    if content_keys is None:
        new_content = dict(content)
    else:
        new_content = {k: v for k, v in content.items() if k in content_keys}

    # v11 (MSC3821) keeps the signed part of a third-party invite, so that the invite
    # can still be checked against the m.room.third_party_invite after redaction.
    if (
        room_version.updated_redaction_rules
        and event_type == "m.room.member"
        and isinstance(content.get("third_party_invite"), Mapping)
    ):
        invite = content["third_party_invite"]
        new_content["third_party_invite"] = {"signed": invite["signed"]} if "signed" in invite else {}

    redacted["content"] = new_content
    return redacted
