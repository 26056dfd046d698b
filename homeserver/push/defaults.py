"""The server-default push rules (spec v1.19 "Predefined Rules"), in the spec's order.

Since v1.17 the spec no longer lists the legacy rules that looked for mentions in the
``body`` (``.m.rule.contains_display_name``, ``.m.rule.roomnotif`` and the content rule
``.m.rule.contains_user_name``); intentional mentions (``m.mentions``) replace them.
Synapse still ships them, and senders that never set ``m.mentions`` (older bots and
bridges) rely on them, so ``legacy_mention_rules=True`` adds them back at their historical
places.  The evaluator then applies them only to events without ``m.mentions``, as
v1.7-v1.16 required.
"""

from __future__ import annotations

import functools
from typing import Any

from homeserver.push.rules import RULE_KINDS, Action, Condition, PushRule, PushRuleset

MASTER_RULE_ID = ".m.rule.master"

# The legacy body-based mention rules: only evaluated for events without ``m.mentions``.
LEGACY_MENTION_RULE_IDS = frozenset(
    {".m.rule.contains_display_name", ".m.rule.roomnotif", ".m.rule.contains_user_name"}
)

_SOUND_DEFAULT: dict[str, Any] = {"set_tweak": "sound", "value": "default"}
_SOUND_RING: dict[str, Any] = {"set_tweak": "sound", "value": "ring"}
_HIGHLIGHT: dict[str, Any] = {"set_tweak": "highlight"}


def _match(key: str, pattern: str) -> Condition:
    return {"kind": "event_match", "key": key, "pattern": pattern}


def _rule(
    kind: str, rule_id: str, conditions: list[Condition] | None, actions: list[Action], *, enabled: bool = True
) -> PushRule:
    return PushRule(
        kind=kind,
        rule_id=rule_id,
        actions=tuple(actions),
        conditions=None if conditions is None else tuple(conditions),
        enabled=enabled,
        default=True,
    )


def user_localpart(user_id: str) -> str:
    """The localpart of ``@localpart:server``."""
    return user_id[1:].split(":", 1)[0] if user_id.startswith("@") else user_id.split(":", 1)[0]


def default_rules(user_id: str, *, legacy_mention_rules: bool = False) -> PushRuleset:
    """The server-default ruleset for ``user_id``, every rule marked ``default``.

    ``legacy_mention_rules`` adds the body-based mention rules removed from the spec in
    v1.17 (see the module docstring).

    Rules that do not name the user are the same objects for every user (rules are frozen,
    and their JSON is a deep copy), so a cached ruleset costs about 1.7 KB per user instead
    of 7.5 KB.
    """
    rules = _build_default_rules(user_id, legacy_mention_rules)
    shared = _shared_default_rules(legacy_mention_rules)
    return PushRuleset(
        **{
            kind: tuple(
                shared_rule if (shared_rule := shared.get((rule.kind, rule.rule_id))) == rule else rule
                for rule in rules.of_kind(kind)
            )
            for kind in RULE_KINDS
        }
    )


@functools.cache
def _shared_default_rules(legacy_mention_rules: bool) -> dict[tuple[str, str], PushRule]:
    # Built for a user ID no real user has: any rule equal to it does not depend on the user.
    return {(r.kind, r.rule_id): r for r in _build_default_rules("@\x00:\x00", legacy_mention_rules)}


def _build_default_rules(user_id: str, legacy_mention_rules: bool) -> PushRuleset:
    override: list[PushRule] = [
        _rule("override", MASTER_RULE_ID, [], [], enabled=False),
        _rule("override", ".m.rule.suppress_notices", [_match("content.msgtype", "m.notice")], []),
        _rule(
            "override",
            ".m.rule.invite_for_me",
            [_match("type", "m.room.member"), _match("content.membership", "invite"), _match("state_key", user_id)],
            ["notify", _SOUND_DEFAULT],
        ),
        _rule("override", ".m.rule.member_event", [_match("type", "m.room.member")], []),
        _rule(
            "override",
            ".m.rule.is_user_mention",
            [{"kind": "event_property_contains", "key": "content.m\\.mentions.user_ids", "value": user_id}],
            ["notify", _SOUND_DEFAULT, _HIGHLIGHT],
        ),
    ]
    if legacy_mention_rules:
        override.append(
            _rule(
                "override",
                ".m.rule.contains_display_name",
                [{"kind": "contains_display_name"}],
                ["notify", _SOUND_DEFAULT, _HIGHLIGHT],
            )
        )
    override.append(
        _rule(
            "override",
            ".m.rule.is_room_mention",
            [
                {"kind": "event_property_is", "key": "content.m\\.mentions.room", "value": True},
                {"kind": "sender_notification_permission", "key": "room"},
            ],
            ["notify", _HIGHLIGHT],
        )
    )
    if legacy_mention_rules:
        override.append(
            _rule(
                "override",
                ".m.rule.roomnotif",
                [_match("content.body", "@room"), {"kind": "sender_notification_permission", "key": "room"}],
                ["notify", _HIGHLIGHT],
            )
        )
    override += [
        _rule(
            "override",
            ".m.rule.tombstone",
            [_match("type", "m.room.tombstone"), _match("state_key", "")],
            ["notify", _HIGHLIGHT],
        ),
        _rule("override", ".m.rule.reaction", [_match("type", "m.reaction")], []),
        _rule(
            "override",
            ".m.rule.room.server_acl",
            [_match("type", "m.room.server_acl"), _match("state_key", "")],
            [],
        ),
        _rule(
            "override",
            ".m.rule.suppress_edits",
            [{"kind": "event_property_is", "key": "content.m\\.relates_to.rel_type", "value": "m.replace"}],
            [],
        ),
    ]

    content: list[PushRule] = []
    if legacy_mention_rules:
        content.append(
            PushRule(
                kind="content",
                rule_id=".m.rule.contains_user_name",
                actions=("notify", _SOUND_DEFAULT, _HIGHLIGHT),
                pattern=user_localpart(user_id),
                default=True,
            )
        )

    one_to_one = {"kind": "room_member_count", "is": "2"}
    underride = [
        _rule("underride", ".m.rule.call", [_match("type", "m.call.invite")], ["notify", _SOUND_RING]),
        _rule(
            "underride",
            ".m.rule.encrypted_room_one_to_one",
            [one_to_one, _match("type", "m.room.encrypted")],
            ["notify", _SOUND_DEFAULT],
        ),
        _rule(
            "underride",
            ".m.rule.room_one_to_one",
            [one_to_one, _match("type", "m.room.message")],
            ["notify", _SOUND_DEFAULT],
        ),
        _rule("underride", ".m.rule.message", [_match("type", "m.room.message")], ["notify"]),
        _rule("underride", ".m.rule.encrypted", [_match("type", "m.room.encrypted")], ["notify"]),
    ]
    return PushRuleset(override=tuple(override), content=tuple(content), underride=tuple(underride))
