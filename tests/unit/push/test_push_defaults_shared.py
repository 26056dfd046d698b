"""Default push rules that do not name the user are shared between users' rulesets."""

from __future__ import annotations

from homeserver.push.defaults import _build_default_rules, default_rules
from homeserver.push.ruleset import merge_user_rules

USER_SPECIFIC = {".m.rule.invite_for_me", ".m.rule.is_user_mention", ".m.rule.contains_user_name"}


def test_same_rules_as_built_for_the_user() -> None:
    for legacy in (False, True):
        for user in ("@alice:ministere.example", "@bob:ministere.example"):
            assert default_rules(user, legacy_mention_rules=legacy) == _build_default_rules(user, legacy)


def test_only_user_specific_rules_differ() -> None:
    alice = default_rules("@alice:ministere.example", legacy_mention_rules=True)
    bob = default_rules("@bob:ministere.example", legacy_mention_rules=True)
    not_shared = {rule.rule_id for rule in alice if rule is not bob.find(rule.kind, rule.rule_id)}
    assert not_shared == USER_SPECIFIC
    # the user's own rules name the user
    assert alice.find("content", ".m.rule.contains_user_name").pattern == "alice"  # type: ignore[union-attr]


def test_overrides_do_not_leak_between_users() -> None:
    alice = merge_user_rules(
        default_rules("@alice:ministere.example"),
        [],
        {("underride", ".m.rule.message"): False},
        {("override", ".m.rule.suppress_notices"): ["notify"]},
    )
    bob = merge_user_rules(default_rules("@bob:ministere.example"), [], {}, {})
    assert alice.find("underride", ".m.rule.message").enabled is False  # type: ignore[union-attr]
    assert bob.find("underride", ".m.rule.message").enabled is True  # type: ignore[union-attr]
    assert alice.find("override", ".m.rule.suppress_notices").actions == ("notify",)  # type: ignore[union-attr]
    assert bob.find("override", ".m.rule.suppress_notices").actions == ()  # type: ignore[union-attr]
    # JSON is a copy: changing it changes no one's rules
    body = bob.find("override", ".m.rule.suppress_notices").to_json()  # type: ignore[union-attr]
    body["conditions"][0]["pattern"] = "changed"
    assert alice.find("override", ".m.rule.suppress_notices").conditions[0]["pattern"] == "m.notice"  # type: ignore[union-attr,index]
