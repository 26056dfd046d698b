"""A user's ruleset: merging over the defaults, ordering, and the /pushrules checks."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from homeserver.core.errors import MatrixError
from homeserver.push import (
    PushRule,
    UserPushRule,
    default_rules,
    evaluate,
    get_rule,
    merge_user_rules,
    parse_actions_body,
    parse_enabled_body,
    parse_put_rule,
    parse_rule_kind,
    place_user_rule,
)

ALICE = "@alice:example.com"
BOB = "@bob:example.com"
ROOM = "!room:example.com"


def row(kind: str, rule_id: str, priority: int, **fields: Any) -> UserPushRule:
    fields.setdefault("actions", ("notify",))
    if kind in ("override", "underride"):
        fields.setdefault("conditions", ())
    if kind == "content":
        fields.setdefault("pattern", rule_id)
    return UserPushRule(kind=kind, rule_id=rule_id, priority=priority, **fields)


def ids(rules: object) -> list[str]:
    return [rule.rule_id for rule in rules]  # type: ignore[attr-defined]


def actions_for(ruleset: Any, event: dict[str, Any], members: int = 5) -> list[Any] | None:
    return evaluate(
        ruleset,
        event,
        user_id=ALICE,
        display_name="Alice",
        room_member_count=members,
        power_levels={},
        sender_power_level=0,
    )


def message(body: str = "hello", room: str = ROOM, sender: str = BOB) -> dict[str, Any]:
    return {"type": "m.room.message", "sender": sender, "room_id": room, "content": {"msgtype": "m.text", "body": body}}


# -- merging -------------------------------------------------------------------------


def test_user_rules_go_before_defaults_but_after_master() -> None:
    defaults = default_rules(ALICE, legacy_mention_rules=True)
    merged = merge_user_rules(
        defaults,
        [
            row("override", "o-low", 1),
            row("override", "o-high", 7),
            row("content", "cake", 0),
            row("room", ROOM, 0),
            row("sender", BOB, 0),
            row("underride", "u", 0),
        ],
    )
    assert ids(merged.override)[:3] == [".m.rule.master", "o-high", "o-low"]
    assert ids(merged.override)[3:] == ids(defaults.override)[1:]
    assert ids(merged.content) == ["cake", ".m.rule.contains_user_name"]
    assert ids(merged.room) == [ROOM]
    assert ids(merged.sender) == [BOB]
    assert ids(merged.underride) == ["u"] + ids(defaults.underride)
    assert not any(rule.default for rule in merged if not rule.rule_id.startswith("."))


def test_rows_of_unknown_kinds_or_reserved_ids_are_ignored() -> None:
    merged = merge_user_rules(default_rules(ALICE), [row("postcontent", "x", 0), row("override", ".m.rule.fake", 0)])
    assert merged == default_rules(ALICE)


def test_enabled_and_actions_overrides() -> None:
    merged = merge_user_rules(
        default_rules(ALICE),
        [row("override", "mine", 0, enabled=True)],
        enabled_overrides={("underride", ".m.rule.message"): False, ("override", "mine"): False},
        actions_overrides={("underride", ".m.rule.room_one_to_one"): ["notify", {"set_tweak": "highlight"}]},
    )
    assert merged.find("override", "mine").enabled is False  # type: ignore[union-attr]
    assert actions_for(merged, message()) is None
    assert actions_for(merged, message(), members=2) == ["notify", {"set_tweak": "highlight"}]
    assert merged.find("underride", ".m.rule.message").default is True  # type: ignore[union-attr]


def test_user_rules_win_over_defaults() -> None:
    merged = merge_user_rules(
        default_rules(ALICE),
        [
            row("room", "!quiet:example.com", 0, actions=()),
            row("sender", "@loud:example.com", 0, actions=("notify", {"set_tweak": "highlight"})),
            row("content", "cake", 0, actions=("notify", {"set_tweak": "sound", "value": "cakealarm.wav"})),
            row("underride", "all", 0, actions=("notify", {"set_tweak": "sound", "value": "x"})),
        ],
    )
    assert actions_for(merged, message(room="!quiet:example.com")) == []
    assert actions_for(merged, message(sender="@loud:example.com")) == ["notify", {"set_tweak": "highlight"}]
    assert actions_for(merged, message("time for CAKE!"))[1]["value"] == "cakealarm.wav"  # type: ignore[index]
    assert actions_for(merged, message("cakes"))[1]["value"] == "x"  # type: ignore[index]
    # Room IDs and user IDs are compared exactly, not as globs.
    assert actions_for(merged, message(room="!QUIET:example.com"))[1]["value"] == "x"  # type: ignore[index]
    # Content rules come before room rules; room rules before sender rules.
    both = message("cake", room="!quiet:example.com", sender="@loud:example.com")
    assert actions_for(merged, both)[1]["value"] == "cakealarm.wav"  # type: ignore[index]


def test_spec_examples() -> None:
    beer = parse_put_rule(
        "override",
        "U2VlIHlvdSBpbiBUaGUgRHVrZQ",
        {
            "conditions": [
                {"kind": "event_match", "key": "content.body", "pattern": "beer"},
                {"kind": "room_member_count", "is": "<=10"},
            ],
            "actions": ["notify", {"set_tweak": "sound", "value": "beeroclock.wav"}],
        },
    )
    cake = parse_put_rule(
        "content",
        "SSByZWFsbHkgbGlrZSBjYWtl",
        {"pattern": "cake", "actions": ["notify", {"set_tweak": "sound", "value": "cakealarm.wav"}]},
    )
    rows = place_user_rule([], cake)
    lie = parse_put_rule("content", "U3BvbmdlIGNha2UgaXMgYmVzdA", {"pattern": "cake*lie", "actions": ["notify"]})
    rows = place_user_rule(rows, lie, before="SSByZWFsbHkgbGlrZSBjYWtl")
    spam = parse_put_rule("sender", "@spambot:matrix.org", {"actions": []})
    room = parse_put_rule("room", "!dj234r78wl45Gh4D:matrix.org", {"actions": []})
    all_rows = rows + place_user_rule([], beer) + place_user_rule([], spam) + place_user_rule([], room)
    merged = merge_user_rules(default_rules(ALICE), all_rows)
    assert ids(merged.content) == ["U3BvbmdlIGNha2UgaXMgYmVzdA", "SSByZWFsbHkgbGlrZSBjYWtl"]
    assert actions_for(merged, message("the cake is a lie")) == ["notify"]
    assert actions_for(merged, message("cake")) == ["notify", {"set_tweak": "sound", "value": "cakealarm.wav"}]
    assert actions_for(merged, message("beer?"), members=10)[1]["value"] == "beeroclock.wav"  # type: ignore[index]
    assert actions_for(merged, message("beer?"), members=11) == ["notify"]
    assert actions_for(merged, message(sender="@spambot:matrix.org")) == []
    assert actions_for(merged, message(room="!dj234r78wl45Gh4D:matrix.org")) == []
    body = merged.to_json()["global"]
    assert body["sender"] == [{"rule_id": "@spambot:matrix.org", "default": False, "enabled": True, "actions": []}]
    assert body["content"][0] == {
        "rule_id": "U3BvbmdlIGNha2UgaXMgYmVzdA",
        "default": False,
        "enabled": True,
        "pattern": "cake*lie",
        "actions": ["notify"],
    }
    assert body["override"][1]["conditions"][1] == {"kind": "room_member_count", "is": "<=10"}


# -- PUT checks ----------------------------------------------------------------------


def error(call: Any, *args: Any, **kwargs: Any) -> MatrixError:
    with pytest.raises(MatrixError) as info:
        call(*args, **kwargs)
    return info.value


@pytest.mark.parametrize(
    ("kind", "rule_id", "body", "status", "errcode", "field"),
    [
        ("bogus", "x", {"actions": []}, 400, "M_INVALID_PARAM", "kind"),
        ("override", ".m.rule.master", {"actions": [], "conditions": []}, 400, "M_INVALID_PARAM", "ruleId"),
        ("override", "a/b", {"actions": [], "conditions": []}, 400, "M_INVALID_PARAM", "ruleId"),
        ("override", "a\\b", {"actions": [], "conditions": []}, 400, "M_INVALID_PARAM", "ruleId"),
        ("override", "", {"actions": [], "conditions": []}, 400, "M_INVALID_PARAM", "ruleId"),
        ("override", "x", [], 400, "M_BAD_JSON", "object"),
        ("override", "x", {"actions": []}, 400, "M_MISSING_PARAM", "conditions"),
        ("underride", "x", {"actions": [], "conditions": {}}, 400, "M_BAD_JSON", "conditions"),
        ("override", "x", {"actions": [], "conditions": ["c"]}, 400, "M_BAD_JSON", "conditions[0]"),
        ("override", "x", {"actions": [], "conditions": [{"key": "k"}]}, 400, "M_BAD_JSON", "conditions[0].kind"),
        ("content", "x", {"actions": []}, 400, "M_MISSING_PARAM", "pattern"),
        ("content", "x", {"actions": [], "pattern": 3}, 400, "M_BAD_JSON", "pattern"),
        ("room", "!r:x", {}, 400, "M_MISSING_PARAM", "actions"),
        ("room", "!r:x", {"actions": "notify"}, 400, "M_BAD_JSON", "actions"),
        ("room", "!r:x", {"actions": ["bing"]}, 400, "M_INVALID_PARAM", "actions[0]"),
        ("room", "!r:x", {"actions": ["notify", {"value": 1}]}, 400, "M_INVALID_PARAM", "actions[1]"),
        ("room", "!r:x", {"actions": [3]}, 400, "M_BAD_JSON", "actions[0]"),
    ],
)
def test_put_rule_errors(kind: str, rule_id: str, body: Any, status: int, errcode: str, field: str) -> None:
    err = error(parse_put_rule, kind, rule_id, body)
    assert (err.code, err.errcode) == (status, errcode)
    assert field in err.msg


def test_put_rule_shapes() -> None:
    rule = parse_put_rule(
        "override",
        "r",
        {
            "actions": ["notify", "dont_notify", {"set_tweak": "x"}],
            "conditions": [{"kind": "org.x.new"}],
            "pattern": "p",
        },
    )
    assert rule == PushRule(
        kind="override",
        rule_id="r",
        actions=("notify", "dont_notify", {"set_tweak": "x"}),
        conditions=({"kind": "org.x.new"},),
    )
    assert parse_put_rule("sender", BOB, {"actions": [], "conditions": [{"kind": "x"}]}).conditions is None
    assert parse_put_rule("content", "c", {"actions": [], "pattern": "a*"}).pattern == "a*"
    assert parse_rule_kind("underride") == "underride"


def test_enabled_and_actions_bodies() -> None:
    assert parse_enabled_body({"enabled": False}) is False
    assert error(parse_enabled_body, {}).errcode == "M_MISSING_PARAM"
    assert error(parse_enabled_body, {"enabled": "yes"}).errcode == "M_BAD_JSON"
    assert error(parse_enabled_body, True).errcode == "M_BAD_JSON"
    assert parse_actions_body({"actions": ["notify"]}) == ("notify",)
    assert error(parse_actions_body, {"actions": None}).errcode == "M_MISSING_PARAM"


def test_get_rule() -> None:
    rules = default_rules(ALICE)
    assert get_rule(rules, "override", ".m.rule.master").enabled is False
    err = error(get_rule, rules, "override", ".m.rule.message")  # it is an underride rule
    assert (err.code, err.errcode) == (404, "M_NOT_FOUND")
    assert error(get_rule, rules, "global", "x").errcode == "M_INVALID_PARAM"


# -- placing rules with before/after -------------------------------------------------


def new(rule_id: str, kind: str = "underride") -> PushRule:
    return PushRule(kind=kind, rule_id=rule_id, actions=("notify",), conditions=())


def order(rows: list[UserPushRule]) -> list[str]:
    assert [r.priority for r in rows] == list(range(len(rows) - 1, -1, -1))
    return [r.rule_id for r in rows]


def test_new_rules_go_first_and_before_after_place_them() -> None:
    rows = place_user_rule([], new("a"))
    rows = place_user_rule(rows, new("b"))
    assert order(rows) == ["b", "a"]
    rows = place_user_rule(rows, new("c"), after="b")
    assert order(rows) == ["b", "c", "a"]
    rows = place_user_rule(rows, new("d"), before="a")
    assert order(rows) == ["b", "c", "d", "a"]
    rows = place_user_rule(rows, new("e"), after="a")
    assert order(rows) == ["b", "c", "d", "a", "e"]
    # Both given: "before" wins.
    rows = place_user_rule(rows, new("f"), before="c", after="e")
    assert order(rows) == ["b", "f", "c", "d", "a", "e"]


def test_updates_keep_place_and_enabled_unless_moved() -> None:
    rows = [row("underride", "a", 2), row("underride", "b", 1, enabled=False), row("underride", "c", 0)]
    updated = place_user_rule(rows, PushRule(kind="underride", rule_id="b", actions=(), conditions=()))
    assert order(updated) == ["a", "b", "c"]
    assert updated[1].enabled is False and updated[1].actions == ()
    moved = place_user_rule(rows, new("b"), after="c")
    assert order(moved) == ["a", "c", "b"]
    assert place_user_rule(rows, new("z"))[0].enabled is True


def test_bad_anchors() -> None:
    rows = [row("underride", "a", 0)]
    err = error(place_user_rule, rows, new("b"), before="missing")
    assert (err.code, err.errcode) == (400, "M_INVALID_PARAM") and "before" in err.msg and "missing" in err.msg
    err = error(place_user_rule, rows, new("b"), after=".m.rule.message")
    assert err.errcode == "M_INVALID_PARAM" and "after" in err.msg
    # A rule cannot be placed relative to itself.
    assert "before" in error(place_user_rule, rows, new("a"), before="a").msg
    # Anchors are looked up within the rule's kind only.
    assert error(place_user_rule, [row("override", "o", 0)], new("b"), before="o").errcode == "M_INVALID_PARAM"


@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.sampled_from([None, "before", "after"]), st.integers(0, 5))))
def test_placing_keeps_a_consistent_order(operations: list[tuple[str, str | None, int]]) -> None:
    rows: list[UserPushRule] = []
    for rule_id, mode, anchor_index in operations:
        current = [r.rule_id for r in rows if r.rule_id != rule_id]
        if mode is not None and current:
            anchor = current[anchor_index % len(current)]
            rows = place_user_rule(rows, new(rule_id), **{mode: anchor})
            placed = [r.rule_id for r in rows]
            delta = -1 if mode == "before" else 1
            assert placed.index(rule_id) == placed.index(anchor) + delta
        else:
            rows = place_user_rule(rows, new(rule_id))
        ids_now = order(rows)
        assert len(ids_now) == len(set(ids_now))
