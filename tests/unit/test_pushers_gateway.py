"""The Push Gateway notification body (homeserver/push/gateway.py): pure data."""

from __future__ import annotations

from typing import Any

from homeserver.push.gateway import MAX_CONTENT_BYTES, notification_body, priority, rejected_pushkeys


def _note(
    event: dict[str, Any], data: dict[str, Any] | None = None, tweaks: dict[str, Any] | None = None
) -> dict[str, Any]:
    return notification_body(
        user_id="@alice:example.gouv.fr",
        event={"event_id": "$e", "room_id": "!r:example.gouv.fr", "sender": "@bob:example.gouv.fr", **event},
        app_id="app",
        pushkey="key",
        pushkey_ts=1_700_000_000_123,
        data=data or {"url": "https://gw/_matrix/push/v1/notify", "extra": 1},
        tweaks=tweaks or {},
        unread=3,
        sender_display_name="Bob",
        room_name=None,
    )


def test_full_format_forwards_data_without_url_and_seconds_timestamp() -> None:
    note = _note({"type": "m.room.message", "content": {"body": "hi"}})
    assert note["devices"] == [
        {"app_id": "app", "pushkey": "key", "pushkey_ts": 1_700_000_000, "data": {"extra": 1}, "tweaks": {}}
    ]
    assert note["content"] == {"body": "hi"} and note["sender_display_name"] == "Bob"
    assert "room_name" not in note and note["counts"] == {"unread": 3} and note["prio"] == "low"


def test_large_content_is_left_out_and_membership_names_the_target() -> None:
    assert "content" not in _note({"type": "m.room.message", "content": {"body": "x" * MAX_CONTENT_BYTES}})
    invite = _note(
        {"type": "m.room.member", "state_key": "@alice:example.gouv.fr", "content": {"membership": "invite"}}
    )
    assert invite["user_is_target"] is True and invite["membership"] == "invite"


def test_priority_and_rejected() -> None:
    assert priority("m.room.encrypted", {}) == "high"
    assert priority("m.room.message", {"highlight": True}) == "high"
    assert priority("m.room.message", {"sound": "default"}) == "high"
    assert priority("m.room.message", {"highlight": False}) == "low"
    assert rejected_pushkeys({"rejected": ["a", 3, "b"]}) == ["a", "b"]
    assert rejected_pushkeys({"rejected": "a"}) == [] and rejected_pushkeys([]) == []
