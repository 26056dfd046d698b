"""Our evaluator agrees with Synapse's (Rust) one on generated events, with the default rules.

Both run the server-default rules, ours with the legacy body-based mention rules that
Synapse still ships.  Synapse's actions carry a few extra ``highlight: false`` tweaks,
so the comparison is on what matters downstream: notify, highlight and sound.  Bodies
are ASCII, since Synapse's word boundaries are Unicode-aware where the spec's are not,
and have no newlines, which Synapse's globs do not cross.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from homeserver.push import PushRule, PushRuleset, counts_for, default_rules, evaluate, tweaks_for

push = pytest.importorskip("synapse.synapse_rust.push")
bulk = pytest.importorskip("synapse.push.bulk_push_rule_evaluator")

ALICE = "@alice:example.com"
BOB = "@bob:example.com"
OURS = default_rules(ALICE, legacy_mention_rules=True)
THEIRS = push.FilteredPushRules(push.PushRules([]), {}, False, False, False, False, False, False, False)

WORDS = ["hi", "alice", "Alice", "ALICE:", "aliceson", "@room", "x@room", "Al", "cake", "-", "Al!ce"]


@st.composite
def events(draw: Any) -> dict[str, Any]:
    event_type = draw(
        st.sampled_from(
            [
                "m.room.message",
                "m.room.encrypted",
                "m.room.member",
                "m.reaction",
                "m.room.tombstone",
                "m.room.server_acl",
                "m.call.invite",
                "m.room.topic",
            ]
        )
    )
    content: dict[str, Any] = {}
    if draw(st.booleans()):
        content["body"] = " ".join(draw(st.lists(st.sampled_from(WORDS), max_size=4)))
    if draw(st.booleans()):
        content["msgtype"] = draw(st.sampled_from(["m.text", "m.notice", "m.emote"]))
    if event_type == "m.room.member":
        content["membership"] = draw(st.sampled_from(["invite", "join", "leave"]))
    if draw(st.booleans()):
        mentions: dict[str, Any] = {}
        if draw(st.booleans()):
            mentions["user_ids"] = draw(st.lists(st.sampled_from([ALICE, BOB, "@ALICE:example.com"]), max_size=2))
        if draw(st.booleans()):
            mentions["room"] = draw(st.sampled_from([True, False, "true"]))
        content["m.mentions"] = mentions
    if draw(st.booleans()):
        content["m.relates_to"] = {"rel_type": draw(st.sampled_from(["m.replace", "m.thread"])), "event_id": "$x"}
    event: dict[str, Any] = {
        "type": event_type,
        "sender": draw(st.sampled_from([BOB, "@carol:example.com"])),
        "room_id": "!r:example.com",
        "content": content,
    }
    state_key = draw(st.sampled_from([None, "", ALICE, BOB]))
    if state_key is not None:
        event["state_key"] = state_key
    return event


def summary(actions: Any) -> tuple[bool, bool, Any]:
    notify, highlight = counts_for(actions)
    return notify, highlight, tweaks_for(actions).get("sound") if notify else None


@settings(max_examples=250, deadline=None)
@given(
    events(),
    st.integers(1, 4),
    st.sampled_from([0, 49, 50, 100]),
    st.sampled_from([None, 0, 50, 100]),
    st.sampled_from(["Alice", "Al", "Al!ce", "@room", None]),
)
def test_same_outcome_as_synapse(
    event: dict[str, Any], members: int, sender_level: int, room_level: int | None, display_name: str | None
) -> None:
    power_levels: dict[str, Any] = {} if room_level is None else {"notifications": {"room": room_level}}
    ours = evaluate(
        OURS,
        event,
        user_id=ALICE,
        display_name=display_name,
        room_member_count=members,
        power_levels=power_levels,
        sender_power_level=sender_level,
    )
    evaluator = push.PushRuleEvaluator(
        bulk._flatten_dict(event),
        "m.mentions" in event["content"],
        members,
        sender_level,
        {"room": 50 if room_level is None else room_level},
        {},
        False,
        [],
        False,
        False,
        False,
    )
    theirs = evaluator.run(THEIRS, ALICE, display_name, None)
    assert summary(ours) == summary(list(theirs) or None)


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet="aAb*?.-@ _", min_size=1, max_size=6),
    # No newlines: Synapse's * and ? stop at them, ours follow the spec ("any character").
    st.text(alphabet="aAb.-@ _", max_size=8),
    st.sampled_from(["content.body", "content.topic"]),
)
def test_event_match_globs_agree_with_synapse(pattern: str, value: str, key: str) -> None:
    field = key.split(".")[1]
    event = {"type": "m.room.message", "sender": BOB, "content": {field: value}}
    condition = {"kind": "event_match", "key": key, "pattern": pattern}
    ours = evaluate(
        PushRuleset(override=(PushRule(kind="override", rule_id="t", actions=("notify",), conditions=(condition,)),)),
        event,
        user_id=ALICE,
        display_name=None,
        room_member_count=2,
        power_levels={},
        sender_power_level=0,
    )
    evaluator = push.PushRuleEvaluator(bulk._flatten_dict(event), False, 2, 0, {}, {}, False, [], False, False, False)
    assert (ours is not None) is evaluator.matches(condition, ALICE, None)
