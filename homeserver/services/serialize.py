"""The client format of events: what /sync, /messages and /event return."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from homeserver.events.model import Event
from homeserver.events.redaction import redact_event_dict

# Fields of the federation format that clients never see.
_FEDERATION_ONLY = ("auth_events", "prev_events", "hashes", "signatures", "depth", "origin", "membership", "prev_state")
# ... and those we replace with our own.
_NOT_COPIED = (*_FEDERATION_ONLY, "unsigned")


def client_event(
    event: Event,
    *,
    now_ms: int,
    redaction: Event | None = None,
    transaction_id: str | None = None,
    prev_content: Mapping[str, Any] | None = None,
    prev_sender: str | None = None,
    relations: Mapping[str, Any] | None = None,
    include_room_id: bool = True,
    redaction_json: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Serialise for clients (the spec's ClientEvent), with the unsigned data we add."""
    source = redact_event_dict(event.room_version, event.dict) if redaction is not None else event.dict
    # A copy then deletions: about three times faster than filtering in a comprehension,
    # and this runs for every event of every /sync.
    out = dict(source)
    for key in _NOT_COPIED:
        if key in out:
            del out[key]
    out["event_id"] = event.event_id
    out["room_id"] = event.room_id
    if event.type == "m.room.redaction" and "redacts" not in out and event.redacts is not None:
        # v11+ moved `redacts` into content; clients (matrix-nio, matrix-js-sdk) still read
        # the top-level key, which Synapse keeps serving in every room version.
        out["redacts"] = event.redacts
    if not include_room_id:
        out.pop("room_id", None)
    unsigned: dict[str, Any] = {"age": max(0, now_ms - event.origin_server_ts)}
    if redaction is not None:
        unsigned["redacted_because"] = redaction_json or client_event(redaction, now_ms=now_ms)
    if transaction_id is not None:
        unsigned["transaction_id"] = transaction_id
    if prev_content is not None:
        unsigned["prev_content"] = dict(prev_content)
        if prev_sender is not None:
            unsigned["prev_sender"] = prev_sender
    if relations:
        unsigned["m.relations"] = dict(relations)
    # Invite/knock room state rides in unsigned (added by the membership code).
    received = event.dict.get("unsigned")
    if received:
        for key in ("invite_room_state", "knock_room_state", "replaces_state"):
            if key in received:
                unsigned[key] = received[key]
    out["unsigned"] = unsigned
    return out


def strip_state_event(event: Event) -> dict[str, Any]:
    """The stripped state shown with invites (type, state_key, content, sender)."""
    return {"type": event.type, "state_key": event.state_key, "content": dict(event.content), "sender": event.sender}
