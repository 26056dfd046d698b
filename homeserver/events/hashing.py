"""Content hashes and reference hashes (spec: server-server API, "Signing Events").

The content hash covers the whole unredacted event, so a receiver can tell whether it
was given the full event or something altered (and then uses the redacted form).  The
reference hash covers the redacted event and is the event ID from room version 3 on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from unpaddedbase64 import decode_base64, encode_base64

from homeserver.core.json import encode_canonical_json
from homeserver.events.redaction import redact_event_dict
from homeserver.events.room_versions import RoomVersion


def compute_content_hash(event_dict: Mapping[str, Any]) -> bytes:
    """SHA-256 of the canonical JSON of the event without unsigned/signatures/hashes."""
    stripped = {k: v for k, v in event_dict.items() if k not in ("unsigned", "signatures", "hashes")}
    # Not strict: old room versions may hold floats and big integers, and we must hash
    # what was sent; strictness is checked once, where the event enters.
    return hashlib.sha256(encode_canonical_json(stripped, strict=False)).digest()


def add_content_hash(event_dict: dict[str, Any]) -> dict[str, Any]:
    """Set ``hashes.sha256`` on ``event_dict`` (in place) and return it."""
    digest = compute_content_hash(event_dict)
    hashes = event_dict.get("hashes")
    # Other algorithms' hashes are kept: none exist today, but the format allows them.
    new_hashes = dict(hashes) if isinstance(hashes, Mapping) else {}
    new_hashes["sha256"] = encode_base64(digest)
    event_dict["hashes"] = new_hashes
    return event_dict


def check_content_hash(event_dict: Mapping[str, Any]) -> bool:
    """True if ``hashes.sha256`` is present, valid base64 and matches the event."""
    hashes = event_dict.get("hashes")
    if not isinstance(hashes, Mapping):
        return False
    claimed = hashes.get("sha256")
    if not isinstance(claimed, str):
        return False
    try:
        claimed_bytes = decode_base64(claimed)
    except Exception:  # binascii.Error, ValueError: any undecodable value is a mismatch
        return False
    return claimed_bytes == compute_content_hash(event_dict)


def compute_reference_hash(room_version: RoomVersion, event_dict: Mapping[str, Any]) -> bytes:
    """SHA-256 of the redacted event without signatures and unsigned."""
    redacted = redact_event_dict(room_version, event_dict)
    redacted.pop("signatures", None)
    redacted.pop("unsigned", None)
    return hashlib.sha256(encode_canonical_json(redacted, strict=False)).digest()
