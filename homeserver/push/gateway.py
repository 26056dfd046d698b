"""The Push Gateway API's notification (``POST /_matrix/push/v1/notify``): pure data, no I/O.

:func:`notification_body` builds what a homeserver sends for one event to one pusher;
:func:`rejected_pushkeys` reads the gateway's answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

NOTIFY_PATH = "/_matrix/push/v1/notify"
# Content larger than this is left out of the notification (gateways cap request bodies,
# and APNs/FCM payloads are ~4 KiB anyway); the client fetches the event itself.
MAX_CONTENT_BYTES = 4096


def priority(event_type: str, tweaks: Mapping[str, Any]) -> str:
    """``high`` for what a person should hear about now (a highlight, a sound, or an
    encrypted event, whose content the server cannot judge), else ``low`` (as Synapse)."""
    if event_type == "m.room.encrypted" or tweaks.get("highlight") or tweaks.get("sound"):
        return "high"
    return "low"


def notification_body(
    *,
    user_id: str,
    event: Mapping[str, Any],
    app_id: str,
    pushkey: str,
    pushkey_ts: int,
    data: Mapping[str, Any],
    tweaks: Mapping[str, Any],
    unread: int,
    sender_display_name: str | None,
    room_name: str | None,
) -> dict[str, Any]:
    """The ``notification`` object for one event and one pusher.

    ``data`` is the pusher's data: everything but ``url`` is forwarded (spec).  With
    ``format: event_id_only`` only the IDs, counts and priority are sent, so the event's
    content never passes through the gateway."""
    device: dict[str, Any] = {
        "app_id": app_id,
        "pushkey": pushkey,
        "pushkey_ts": pushkey_ts // 1000,  # seconds, as Synapse sends it
        "data": {k: v for k, v in data.items() if k != "url"},
        "tweaks": dict(tweaks),
    }
    event_type = str(event.get("type", ""))
    note: dict[str, Any] = {
        "event_id": event.get("event_id"),
        "room_id": event.get("room_id"),
        "counts": {"unread": unread},
        "prio": priority(event_type, tweaks),
        "devices": [device],
    }
    if data.get("format") == "event_id_only":
        return note
    note["type"] = event_type
    note["sender"] = event.get("sender")
    if sender_display_name:
        note["sender_display_name"] = sender_display_name
    if room_name:
        note["room_name"] = room_name
    content = event.get("content")
    if isinstance(content, Mapping) and _json_size(content) <= MAX_CONTENT_BYTES:
        note["content"] = dict(content)
    if event_type == "m.room.member" and event.get("state_key") is not None:
        note["user_is_target"] = event.get("state_key") == user_id
        note["membership"] = content.get("membership") if isinstance(content, Mapping) else None
    return note


def rejected_pushkeys(response: Any) -> list[str]:
    """The pushkeys a gateway's answer rejects (``{"rejected": [...]}``); anything else: none."""
    if not isinstance(response, dict):
        return []
    rejected = response.get("rejected")
    if not isinstance(rejected, list):
        return []
    return [k for k in rejected if isinstance(k, str)]


def _json_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False).encode())
