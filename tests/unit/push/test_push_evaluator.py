"""Push-rule evaluation: each default rule on a representative event, conditions, globs."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from homeserver.push import (
    PushRule,
    PushRuleset,
    counts_for,
    default_rules,
    evaluate,
    glob_matches,
    matching_rule,
    merge_user_rules,
    tweaks_for,
)
from homeserver.push.evaluator import member_count_matches
from homeserver.push.paths import escape_property_name, lookup_path, split_dotted_path

ALICE = "@alice:example.com"
BOB = "@bob:example.com"
ROOM = "!room:example.com"


def message(body: str = "hello", **content: Any) -> dict[str, Any]:
    return {
        "type": "m.room.message",
        "sender": BOB,
        "room_id": ROOM,
        "event_id": "$e",
        "content": {"msgtype": "m.text", "body": body, **content},
    }


def run(
    event: dict[str, Any],
    *,
    ruleset: PushRuleset | None = None,
    members: int = 5,
    power_levels: dict[str, Any] | None = None,
    sender_level: int = 0,
    display_name: str | None = "Alice",
    legacy: bool = False,
) -> tuple[str | None, list[Any] | None]:
    rules = ruleset or default_rules(ALICE, legacy_mention_rules=legacy)
    kwargs: dict[str, Any] = {
        "user_id": ALICE,
        "display_name": display_name,
        "room_member_count": members,
        "power_levels": power_levels or {},
        "sender_power_level": sender_level,
    }
    rule = matching_rule(rules, event, **kwargs)
    actions = evaluate(rules, event, **kwargs)
    return (rule.rule_id if rule else None), actions


# -- every default rule on a representative event ------------------------------------


def test_dm_message_is_room_one_to_one() -> None:
    rule, actions = run(message(), members=2)
    assert rule == ".m.rule.room_one_to_one"
    assert counts_for(actions) == (True, False)
    assert tweaks_for(actions) == {"sound": "default"}


def test_group_message_is_message() -> None:
    rule, actions = run(message())
    assert rule == ".m.rule.message"
    assert actions == ["notify"]
    assert counts_for(actions) == (True, False)


def test_user_mention_in_m_mentions_highlights() -> None:
    rule, actions = run(message("hi", **{"m.mentions": {"user_ids": [ALICE]}}))
    assert rule == ".m.rule.is_user_mention"
    assert counts_for(actions) == (True, True)
    assert tweaks_for(actions) == {"sound": "default", "highlight": True}


def test_mention_of_someone_else_is_a_plain_message() -> None:
    rule, _ = run(message("hi", **{"m.mentions": {"user_ids": [BOB]}}))
    assert rule == ".m.rule.message"


def test_room_mention_needs_the_notification_power_level() -> None:
    event = message("@room hi", **{"m.mentions": {"room": True}})
    rule, actions = run(event, sender_level=50)
    assert rule == ".m.rule.is_room_mention"
    assert counts_for(actions) == (True, True)
    assert run(event, sender_level=49)[0] == ".m.rule.message"
    assert run(event, sender_level=0, power_levels={"notifications": {"room": 0}})[0] == ".m.rule.is_room_mention"
    # Old rooms may hold "stringy" levels.
    assert run(event, sender_level=10, power_levels={"notifications": {"room": "10"}})[0] == ".m.rule.is_room_mention"
    # m.mentions.room must be exactly true.
    assert run(message("hi", **{"m.mentions": {"room": "true"}}), sender_level=100)[0] == ".m.rule.message"


def test_invite_for_me() -> None:
    invite = {
        "type": "m.room.member",
        "sender": BOB,
        "room_id": ROOM,
        "state_key": ALICE,
        "content": {"membership": "invite"},
    }
    rule, actions = run(invite)
    assert rule == ".m.rule.invite_for_me"
    assert counts_for(actions) == (True, False)
    other = {**invite, "state_key": "@carol:example.com"}
    rule, actions = run(other)
    assert rule == ".m.rule.member_event"
    assert actions == [] and counts_for(actions) == (False, False)


def test_notice_is_suppressed_even_with_a_mention() -> None:
    event = message("beep", msgtype="m.notice", **{"m.mentions": {"user_ids": [ALICE]}})
    rule, actions = run(event)
    assert rule == ".m.rule.suppress_notices"
    assert counts_for(actions) == (False, False)


def test_edit_is_suppressed_unless_it_mentions_me() -> None:
    edit = message("* fixed", **{"m.relates_to": {"rel_type": "m.replace", "event_id": "$orig"}})
    rule, actions = run(edit, members=2)
    assert rule == ".m.rule.suppress_edits"
    assert counts_for(actions) == (False, False)
    edit["content"]["m.mentions"] = {"user_ids": [ALICE]}
    assert run(edit)[0] == ".m.rule.is_user_mention"


def test_reaction_is_suppressed() -> None:
    reaction = {
        "type": "m.reaction",
        "sender": BOB,
        "room_id": ROOM,
        "content": {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$x", "key": "👍"}},
    }
    rule, actions = run(reaction, members=2)
    assert rule == ".m.rule.reaction" and actions == []


def test_encrypted_event_in_one_to_one_and_group_rooms() -> None:
    encrypted = {"type": "m.room.encrypted", "sender": BOB, "room_id": ROOM, "content": {"algorithm": "m.megolm.v1"}}
    rule, actions = run(encrypted, members=2)
    assert rule == ".m.rule.encrypted_room_one_to_one"
    assert tweaks_for(actions) == {"sound": "default"}
    rule, actions = run(encrypted, members=3)
    assert rule == ".m.rule.encrypted" and counts_for(actions) == (True, False)


def test_tombstone_needs_a_state_key() -> None:
    tombstone = {"type": "m.room.tombstone", "sender": BOB, "room_id": ROOM, "state_key": "", "content": {}}
    rule, actions = run(tombstone)
    assert rule == ".m.rule.tombstone" and counts_for(actions) == (True, True)
    del tombstone["state_key"]
    assert run(tombstone) == (None, None)


def test_server_acl_is_suppressed() -> None:
    acl = {"type": "m.room.server_acl", "sender": BOB, "room_id": ROOM, "state_key": "", "content": {}}
    assert run(acl) == (".m.rule.room.server_acl", [])


def test_call_invite_rings() -> None:
    call = {"type": "m.call.invite", "sender": BOB, "room_id": ROOM, "content": {}}
    rule, actions = run(call, members=2)
    assert rule == ".m.rule.call"
    assert tweaks_for(actions) == {"sound": "ring"}


def test_other_events_match_nothing() -> None:
    assert run({"type": "m.room.topic", "sender": BOB, "state_key": "", "content": {"topic": "x"}}) == (None, None)


def test_own_events_never_match() -> None:
    event = {**message(), "sender": ALICE}
    assert run(event, members=2) == (None, None)


def test_master_rule_when_enabled_silences_everything() -> None:
    ruleset = merge_user_rules(default_rules(ALICE), [], {("override", ".m.rule.master"): True})
    rule, actions = run(message("hi", **{"m.mentions": {"user_ids": [ALICE]}}), ruleset=ruleset)
    assert rule == ".m.rule.master" and actions == []


# -- the legacy body-based mention rules -----------------------------------------------


def test_legacy_display_name_mention() -> None:
    rule, actions = run(message("Hey Alice, lunch?"), legacy=True)
    assert rule == ".m.rule.contains_display_name"
    assert counts_for(actions) == (True, True)
    # Not without the legacy rules, nor once the sender uses m.mentions.
    assert run(message("Hey Alice, lunch?"))[0] == ".m.rule.message"
    assert run(message("Hey Alice", **{"m.mentions": {}}), legacy=True)[0] == ".m.rule.message"


def test_legacy_display_name_is_a_literal_on_word_boundaries() -> None:
    assert run(message("Aliceson is here"), legacy=True)[0] == ".m.rule.message"
    assert run(message("a.l.i.c.e"), legacy=True, display_name="a*")[0] == ".m.rule.message"
    assert run(message("ping a* now"), legacy=True, display_name="a*")[0] == ".m.rule.contains_display_name"
    assert run(message("Alice"), legacy=True, display_name=None)[0] == ".m.rule.contains_user_name"
    assert run(message("hi"), legacy=True, display_name="")[0] == ".m.rule.message"


def test_legacy_user_name_and_roomnotif() -> None:
    rule, actions = run(message("ping alice!"), legacy=True, display_name="Al")
    assert rule == ".m.rule.contains_user_name" and counts_for(actions) == (True, True)
    assert run(message("@room look"), legacy=True, sender_level=50)[0] == ".m.rule.roomnotif"
    assert run(message("@room look"), legacy=True, sender_level=0)[0] == ".m.rule.message"
    assert run(message("@room look", **{"m.mentions": {}}), legacy=True, sender_level=50)[0] == ".m.rule.message"


# -- conditions ----------------------------------------------------------------------


def override(*conditions: dict[str, Any]) -> PushRuleset:
    rule = PushRule(kind="override", rule_id="test", actions=("notify",), conditions=conditions)
    return PushRuleset(override=(rule,))


def hits(event: dict[str, Any], *conditions: dict[str, Any], members: int = 5, sender_level: int = 0) -> bool:
    return run(event, ruleset=override(*conditions), members=members, sender_level=sender_level)[0] == "test"


TOPIC = {"type": "m.room.topic", "sender": BOB, "state_key": "", "content": {"topic": "Lunch plans"}}


@pytest.mark.parametrize(
    ("topic", "expected"),
    [("Lunch plans", True), ("LUNCH", True), (" lunch", False), ("lunc", False), (None, False), (5, False)],
)
def test_event_match_spec_example(topic: object, expected: bool) -> None:
    event = {**TOPIC, "content": {"topic": topic}}
    assert hits(event, {"kind": "event_match", "key": "content.topic", "pattern": "lunc?*"}) is expected


def test_event_match_absent_key_never_matches_even_star() -> None:
    assert not hits(TOPIC, {"kind": "event_match", "key": "content.missing", "pattern": "*"})
    assert hits({**TOPIC, "content": {"topic": ""}}, {"kind": "event_match", "key": "content.topic", "pattern": "*"})


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("An example event.", True),
        ("exple", True),
        ("An exciting triple-whammy", True),
        ("examples", False),
        ("counterexample", False),
        ("EXAMPLE", True),
        ("line one\nexample", True),
    ],
)
def test_event_match_on_body_uses_word_boundaries(body: str, expected: bool) -> None:
    assert hits(message(body), {"kind": "event_match", "key": "content.body", "pattern": "ex*ple"}) is expected


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("m.notice", "m.notice", True),
        ("m.notice", "mxnotice", False),  # "." is literal
        ("a+b", "a+b", True),
        ("a+b", "aab", False),  # regex characters are literal
        ("[ab]", "a", False),  # only * and ? are special
        ("[ab]", "[AB]", True),
        ("a?c", "abc", True),
        ("a?c", "ac", False),
        ("a*", "a\nb", True),  # * crosses newlines
        ("*", "", True),
        ("?", "", False),
        ("Ä*", "äpfel", True),  # case-insensitive beyond ASCII
    ],
)
def test_glob_edge_cases(pattern: str, value: str, expected: bool) -> None:
    assert glob_matches(pattern, value) is expected


def test_word_boundaries_are_ascii_only() -> None:
    # é is not in [A-Za-z0-9_], so it is a boundary.
    assert glob_matches("alice", "éalice", word_boundary=True)
    assert not glob_matches("alice", "_alice", word_boundary=True)
    assert glob_matches("@room", "hey @room!", word_boundary=True)
    # A pattern that starts or ends with a non-word character is itself at a boundary.
    assert glob_matches("@room", "x@room", word_boundary=True)
    assert glob_matches("alice:", "alice:x", word_boundary=True)
    assert not glob_matches("alice", "xalice", word_boundary=True)
    assert not glob_matches("alice", "alicex", word_boundary=True)


def test_event_property_is_spec_example_and_strict_types() -> None:
    create = {"type": "m.room.create", "sender": BOB, "state_key": "", "content": {"m.federate": True, "n": 1}}
    condition = {"kind": "event_property_is", "key": "content.m\\.federate", "value": True}
    assert hits(create, condition)
    for value in ("true", 1):
        assert not hits({**create, "content": {"m.federate": value}}, condition)
    assert not hits(create, {"kind": "event_property_is", "key": "content.n", "value": True})
    assert hits(create, {"kind": "event_property_is", "key": "content.n", "value": 1})
    assert not hits(create, {"kind": "event_property_is", "key": "content.n", "value": 1.0})
    nulls = {**create, "content": {"x": None}}
    assert hits(nulls, {"kind": "event_property_is", "key": "content.x", "value": None})
    assert not hits(nulls, {"kind": "event_property_is", "key": "content.absent", "value": None})
    assert not hits({**create, "content": {"x": [1]}}, {"kind": "event_property_is", "key": "content.x", "value": [1]})
    assert not hits(create, {"kind": "event_property_is", "key": "content.n"})  # no value


def test_event_property_contains_spec_example() -> None:
    aliases = {
        "type": "m.room.canonical_alias",
        "sender": BOB,
        "state_key": "",
        "content": {"alias": "#somewhere:localhost", "alt_aliases": ["#somewhere:example.org", "#myroom:example.com"]},
    }
    condition = {"kind": "event_property_contains", "key": "content.alt_aliases", "value": "#myroom:example.com"}
    assert hits(aliases, condition)
    assert not hits(aliases, {**condition, "value": ":example.com"})
    assert not hits(aliases, {**condition, "key": "content.alias", "value": "#somewhere:localhost"})  # not an array
    mixed = {**aliases, "content": {"alt_aliases": [{"a": 1}, [1], True, 1]}}
    assert hits(mixed, {**condition, "value": 1})
    assert hits(mixed, {**condition, "value": True})
    assert not hits({**aliases, "content": {"alt_aliases": [True]}}, {**condition, "value": 1})


@pytest.mark.parametrize(
    ("spec", "count", "expected"),
    [
        ("2", 2, True),
        ("==2", 2, True),
        ("==2", 3, False),
        ("<2", 1, True),
        ("<2", 2, False),
        ("<=2", 2, True),
        (">2", 3, True),
        (">2", 2, False),
        (">=2", 2, True),
        (">=10", 9, False),
        ("=2", 2, False),
        (" 2", 2, False),
        ("two", 2, False),
        ("", 2, False),
        ("2.0", 2, False),
    ],
)
def test_room_member_count(spec: str, count: int, expected: bool) -> None:
    assert member_count_matches(spec, count) is expected
    assert hits(message(), {"kind": "room_member_count", "is": spec}, members=count) is expected


def test_room_member_count_needs_a_string() -> None:
    assert not hits(message(), {"kind": "room_member_count", "is": 2}, members=2)


def test_sender_notification_permission_defaults_to_50_for_any_key() -> None:
    condition = {"kind": "sender_notification_permission", "key": "custom"}
    assert hits(message(), condition, sender_level=50)
    assert not hits(message(), condition, sender_level=49)
    assert not hits(message(), {"kind": "sender_notification_permission"}, sender_level=100)


def test_unknown_or_malformed_conditions_never_match() -> None:
    assert not hits(message(), {"kind": "org.example.unknown"})
    assert not hits(message(), {"kind": "org.example.unknown"}, {"kind": "room_member_count", "is": "5"})
    assert not hits(message(), {"kind": "event_match", "key": "type"})  # no pattern
    assert not hits(message(), {"kind": "event_match", "pattern": "*"})  # no key
    assert not hits(message(), {"key": "type", "pattern": "*"})  # no kind
    assert hits(message())  # no conditions: always matches


def test_dont_notify_and_coalesce_are_stripped() -> None:
    rule = PushRule(kind="override", rule_id="legacy", actions=("dont_notify", "coalesce"), conditions=())
    _, actions = run(message(), ruleset=PushRuleset(override=(rule,)))
    assert actions == [] and counts_for(actions) == (False, False)


def test_disabled_rules_never_match() -> None:
    ruleset = merge_user_rules(default_rules(ALICE), [], {("underride", ".m.rule.message"): False})
    assert run(message(), ruleset=ruleset) == (None, None)


# -- counts and tweaks ---------------------------------------------------------------


def test_counts_for() -> None:
    assert counts_for(None) == (False, False)
    assert counts_for([]) == (False, False)
    assert counts_for(["notify"]) == (True, False)
    assert counts_for(["notify", {"set_tweak": "highlight"}]) == (True, True)
    assert counts_for(["notify", {"set_tweak": "highlight", "value": True}]) == (True, True)
    assert counts_for(["notify", {"set_tweak": "highlight", "value": False}]) == (True, False)
    assert counts_for(["notify", {"set_tweak": "highlight", "value": "yes"}]) == (True, False)
    assert counts_for([{"set_tweak": "highlight"}]) == (False, False)


def test_tweaks_for() -> None:
    assert tweaks_for(["notify", {"set_tweak": "sound", "value": "bing"}, {"set_tweak": "x", "value": 3}]) == {
        "sound": "bing",
        "x": 3,
    }
    assert tweaks_for([{"set_tweak": "sound"}]) == {}


# -- dot-separated paths -------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        ("content.body", ("content", "body")),
        ("content.m\\.relates_to.rel_type", ("content", "m.relates_to", "rel_type")),
        ("content.m\\\\foo", ("content", "m\\foo")),
        ("content.m\\xfoo", ("content", "m\\xfoo")),  # other escapes are literal
        ("a\\\\.b", ("a\\", "b")),
        ("trailing\\", ("trailing\\",)),
        ("type", ("type",)),
        ("a..b", ("a", "", "b")),
    ],
)
def test_split_dotted_path(path: str, parts: tuple[str, ...]) -> None:
    assert split_dotted_path(path) == parts


@given(st.lists(st.text(max_size=8), min_size=1, max_size=4))
def test_escape_then_split_round_trips(parts: list[str]) -> None:
    assert split_dotted_path(".".join(escape_property_name(p) for p in parts)) == tuple(parts)


def test_lookup_path_only_walks_objects() -> None:
    event = {"content": {"list": [{"a": 1}], "m.x": {"y": None}}}
    assert lookup_path(event, ("content", "m.x", "y")) == (True, None)
    assert lookup_path(event, ("content", "list", "0")) == (False, None)
    assert lookup_path(event, ("content", "nope")) == (False, None)
    assert lookup_path(event, ()) == (True, event)


def test_escaped_key_in_a_condition() -> None:
    event = message("hi", **{"m\\weird": "yes"})
    assert hits(event, {"kind": "event_match", "key": "content.m\\\\weird", "pattern": "yes"})


@given(st.text(alphabet="abAB*?.+", max_size=6), st.text(alphabet="abAB.+", max_size=6))
def test_glob_without_wildcards_is_case_insensitive_equality(pattern: str, value: str) -> None:
    if "*" not in pattern and "?" not in pattern:
        assert glob_matches(pattern, value) is (pattern.lower() == value.lower())
    if pattern == "*":
        assert glob_matches(pattern, value)
