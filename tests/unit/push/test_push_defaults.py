"""The server-default push rules: IDs, order and definitions as in spec v1.19."""

from __future__ import annotations

from homeserver.push import LEGACY_MENTION_RULE_IDS, RULE_KINDS, default_rules

ALICE = "@alice:example.com"

SPEC_OVERRIDE = [
    ".m.rule.master",
    ".m.rule.suppress_notices",
    ".m.rule.invite_for_me",
    ".m.rule.member_event",
    ".m.rule.is_user_mention",
    ".m.rule.is_room_mention",
    ".m.rule.tombstone",
    ".m.rule.reaction",
    ".m.rule.room.server_acl",
    ".m.rule.suppress_edits",
]
SPEC_UNDERRIDE = [
    ".m.rule.call",
    ".m.rule.encrypted_room_one_to_one",
    ".m.rule.room_one_to_one",
    ".m.rule.message",
    ".m.rule.encrypted",
]


def ids(rules: object) -> list[str]:
    return [rule.rule_id for rule in rules]  # type: ignore[attr-defined]


def test_spec_v1_19_rule_ids_and_order() -> None:
    rules = default_rules(ALICE)
    assert ids(rules.override) == SPEC_OVERRIDE
    assert ids(rules.content) == []
    assert ids(rules.room) == []
    assert ids(rules.sender) == []
    assert ids(rules.underride) == SPEC_UNDERRIDE
    assert all(rule.default for rule in rules)
    assert all(rule.rule_id.startswith(".") for rule in rules)
    assert [rule.rule_id for rule in rules if not rule.enabled] == [".m.rule.master"]


def test_legacy_mention_rules_at_their_historical_places() -> None:
    rules = default_rules(ALICE, legacy_mention_rules=True)
    override = ids(rules.override)
    assert override.index(".m.rule.contains_display_name") == override.index(".m.rule.is_user_mention") + 1
    assert override.index(".m.rule.roomnotif") == override.index(".m.rule.is_room_mention") + 1
    assert ids(rules.content) == [".m.rule.contains_user_name"]
    assert rules.content[0].pattern == "alice"
    assert set(LEGACY_MENTION_RULE_IDS) <= {rule.rule_id for rule in rules}


def test_definitions_match_the_spec_json() -> None:
    body = default_rules(ALICE).to_json()["global"]
    assert list(body) == list(RULE_KINDS)
    by_id = {rule["rule_id"]: rule for kind in body.values() for rule in kind}
    assert by_id[".m.rule.master"] == {
        "rule_id": ".m.rule.master",
        "default": True,
        "enabled": False,
        "conditions": [],
        "actions": [],
    }
    assert by_id[".m.rule.invite_for_me"]["conditions"] == [
        {"key": "type", "kind": "event_match", "pattern": "m.room.member"},
        {"key": "content.membership", "kind": "event_match", "pattern": "invite"},
        {"key": "state_key", "kind": "event_match", "pattern": ALICE},
    ]
    assert by_id[".m.rule.invite_for_me"]["actions"] == ["notify", {"set_tweak": "sound", "value": "default"}]
    assert by_id[".m.rule.is_user_mention"]["conditions"] == [
        {"kind": "event_property_contains", "key": "content.m\\.mentions.user_ids", "value": ALICE}
    ]
    assert by_id[".m.rule.is_user_mention"]["actions"] == [
        "notify",
        {"set_tweak": "sound", "value": "default"},
        {"set_tweak": "highlight"},
    ]
    assert by_id[".m.rule.is_room_mention"]["conditions"] == [
        {"kind": "event_property_is", "key": "content.m\\.mentions.room", "value": True},
        {"kind": "sender_notification_permission", "key": "room"},
    ]
    assert by_id[".m.rule.suppress_edits"]["conditions"] == [
        {"kind": "event_property_is", "key": "content.m\\.relates_to.rel_type", "value": "m.replace"}
    ]
    assert by_id[".m.rule.tombstone"]["conditions"][1] == {"kind": "event_match", "key": "state_key", "pattern": ""}
    assert by_id[".m.rule.call"]["actions"] == ["notify", {"set_tweak": "sound", "value": "ring"}]
    assert by_id[".m.rule.encrypted_room_one_to_one"]["conditions"] == [
        {"kind": "room_member_count", "is": "2"},
        {"kind": "event_match", "key": "type", "pattern": "m.room.encrypted"},
    ]
    assert by_id[".m.rule.message"]["actions"] == ["notify"]
    assert by_id[".m.rule.encrypted"]["actions"] == ["notify"]


def test_to_json_is_a_fresh_copy() -> None:
    rules = default_rules(ALICE)
    body = rules.to_json()
    body["global"]["override"][2]["actions"][1]["value"] = "changed"
    assert rules.to_json()["global"]["override"][2]["actions"][1]["value"] == "default"


def test_content_rule_json_has_pattern_and_no_conditions() -> None:
    rule = default_rules(ALICE, legacy_mention_rules=True).content[0].to_json()
    assert rule == {
        "rule_id": ".m.rule.contains_user_name",
        "default": True,
        "enabled": True,
        "pattern": "alice",
        "actions": ["notify", {"set_tweak": "sound", "value": "default"}, {"set_tweak": "highlight"}],
    }
