"""The room state that travels with invites and knocks (``invite_room_state``,
``knock_room_state``).

Spec (v1.16+, server-server API ``PUT /v2/invite`` and ``PUT /v1/send_knock``): these
lists MUST hold the room's ``m.room.create`` event and every entry MUST be a full PDU
formatted per the room version (signed, with hashes).  The receiver checks them (for
invites: SHOULD in room versions 12+, MAY before, answering 400 ``M_INVALID_PARAM``;
for knocks: improperly signed or formatted entries SHOULD be dropped) and shows its
client the *stripped* form (type, state_key, content, sender: client-server API
"Stripped state").

- :func:`state_pdus`: the PDUs we send, from events we hold;
- :func:`checked_room_state`: the stripped state of a received list, strictly (every
  entry a valid PDU of this room, the create event present) or leniently (bad entries
  dropped, legacy stripped entries kept in room versions before 12).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from homeserver.events.model import Event
from homeserver.events.room_versions import RoomVersion
from homeserver.federation.event_checks import (
    PduDropped,
    SignatureVerifier,
    check_signatures_and_hashes,
    parse_pdu,
)
from homeserver.services.serialize import strip_state_event

JsonDict = dict[str, Any]


class InvalidRoomState(ValueError):
    """A received ``invite_room_state``/``knock_room_state`` breaks the rules (the
    message names the entry and the problem)."""


def state_pdus(events: Iterable[Event]) -> list[JsonDict]:
    """``events`` as sent over federation (no ``unsigned``: it is not signed and holds
    this server's local annotations)."""
    pdus = []
    for event in events:
        pdu = event.get_pdu_json()
        pdu.pop("unsigned", None)
        pdus.append(pdu)
    return pdus


def legacy_stripped(entry: Any) -> JsonDict | None:
    """A pre-v1.16 stripped state entry as shown to clients, or None if it is not one."""
    if not isinstance(entry, dict):
        return None
    event_type, state_key, content, sender = (entry.get(k) for k in ("type", "state_key", "content", "sender"))
    if not (
        isinstance(event_type, str)
        and isinstance(state_key, str)
        and isinstance(content, dict)
        and isinstance(sender, str)
    ):
        return None
    return {"type": event_type, "state_key": state_key, "content": dict(content), "sender": sender}


async def _checked_entry(
    room_version: RoomVersion, room_id: str, index: int, what: str, entry: Any, keyring: SignatureVerifier
) -> Event:
    """Entry ``index`` of the list as a PDU of ``room_id`` with good signatures and hashes."""
    try:
        event = parse_pdu(room_version, entry)
    except PduDropped as e:
        raise InvalidRoomState(
            f"{what}[{index}] is not an event of room version {room_version.identifier}: {e}"
        ) from None
    if event.room_id != room_id:
        raise InvalidRoomState(f"{what}[{index}] ({event.event_id}) is not an event of room {room_id}")
    if event.state_key is None:
        raise InvalidRoomState(f"{what}[{index}] ({event.event_id}) is not a state event")
    try:
        checked = await check_signatures_and_hashes(room_version, event, keyring)
    except PduDropped as e:
        raise InvalidRoomState(f"{what}[{index}] fails the signature check: {e}") from None
    if checked is not event:
        raise InvalidRoomState(f"{what}[{index}] ({event.event_id}) fails the content hash check")
    return event


async def checked_room_state(
    room_version: RoomVersion,
    room_id: str,
    entries: Any,
    keyring: SignatureVerifier,
    *,
    what: str,
    strict: bool,
) -> list[JsonDict]:
    """The stripped state to show the client from a received list ``what``.

    ``strict``: every entry must be a PDU of ``room_id`` in ``room_version``, signed by
    its sender's server with matching hashes, and the create event must be there, else
    :class:`InvalidRoomState`.  Otherwise entries failing those checks are dropped,
    except, before room version 12, entries in the legacy stripped form.
    """
    if not isinstance(entries, list):
        if strict:
            raise InvalidRoomState(f"{what} must be a list of events")
        return []
    stripped: list[JsonDict] = []
    for index, entry in enumerate(entries):
        try:
            event = await _checked_entry(room_version, room_id, index, what, entry, keyring)
        except InvalidRoomState:
            if strict:
                raise
            legacy = None if room_version.room_id_from_create_event else legacy_stripped(entry)
            if legacy is not None and not isinstance(entry.get("signatures"), dict):
                stripped.append(legacy)  # an older server's stripped entry, not a forged PDU
            continue
        stripped.append(strip_state_event(event))
    if strict and not any((s["type"], s["state_key"]) == ("m.room.create", "") for s in stripped):
        raise InvalidRoomState(f"{what} must contain the room's m.room.create event")
    return stripped
