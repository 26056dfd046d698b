"""Building new events: the dict in the room version's format, hashed and signed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from homeserver.events.model import Event, share_strings
from homeserver.events.room_versions import RoomVersion
from homeserver.events.signing import SigningKey, hash_and_sign_event


def build_event(
    room_version: RoomVersion,
    *,
    room_id: str | None,
    type: str,
    sender: str,
    content: Mapping[str, Any],
    state_key: str | None = None,
    prev_event_ids: Sequence[str],
    auth_event_ids: Sequence[str],
    depth: int,
    origin_server_ts: int,
    redacts: str | None = None,
    server_name: str,
    signing_key: SigningKey,
    unsigned: Mapping[str, Any] | None = None,
) -> Event:
    """Build, hash and sign a new event, returning it as an :class:`Event`.

    ``room_id`` is left out of v12 create events (their room is named after them; pass
    None).  ``redacts`` goes where the room version wants it: top level before v11,
    ``content.redacts`` from v11.  Nothing is validated against the auth rules here.
    """
    event_dict: dict[str, Any] = {
        "type": type,
        "sender": sender,
        "content": dict(content),
        "prev_events": list(prev_event_ids),
        "auth_events": list(auth_event_ids),
        "depth": depth,
        "origin_server_ts": origin_server_ts,
    }
    is_create = type == "m.room.create" and state_key == ""
    if not (room_version.room_id_from_create_event and is_create):
        if room_id is None:
            raise ValueError("room_id is required for this event")
        event_dict["room_id"] = room_id
    if state_key is not None:
        event_dict["state_key"] = state_key
    if redacts is not None:
        if room_version.updated_redaction_rules:
            event_dict["content"]["redacts"] = redacts
        else:
            event_dict["redacts"] = redacts
    hash_and_sign_event(room_version, event_dict, server_name, signing_key)
    # `unsigned` is added after signing: it is covered by neither hashes nor signatures.
    if unsigned:
        event_dict["unsigned"] = dict(unsigned)
    # Events live on in the event cache: share the strings they repeat.
    return Event(share_strings(event_dict), room_version)
