"""Push-rule evaluation (spec "Push Rules": conditions, actions), pure and synchronous.

:func:`evaluate` walks a user's ruleset in priority order and returns the actions of the
first enabled rule whose conditions all hold; :func:`counts_for` turns actions into the
notification and highlight counts shown in ``/sync``.

Glob patterns (spec appendix "Glob-style matching") know ``*`` (any run of characters)
and ``?`` (exactly one); every other character is literal.  Matching is
case-insensitive.  Following the spec, ``*`` and ``?`` also match newlines (Synapse's
globs stop at them; tests/unit/push/test_push_differential.py checks the rest agrees).
Compiled patterns are cached, since the same few rules are evaluated for every member
of a room.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from homeserver.events.power_levels import DEFAULT_NOTIFICATION_LEVEL, parse_power_level
from homeserver.push.defaults import LEGACY_MENTION_RULE_IDS
from homeserver.push.paths import lookup_path, split_dotted_path
from homeserver.push.rules import LEGACY_ACTIONS, Action, Condition, PushRule, PushRuleset

# Word boundaries, per the spec: the start or end of the value, or any character not in
# [A-Za-z0-9_] (deliberately ASCII: "é" is a boundary, unlike in Python's \b).  A match
# starts at a boundary if the character before it is one, or if its own first character
# is one; likewise at its end.  So "@room" matches in "x@room", as in Synapse.
_WORD_START = r"(?:(?<![A-Za-z0-9_])|(?=[^A-Za-z0-9_]))"
_WORD_END = r"(?:(?![A-Za-z0-9_])|(?<=[^A-Za-z0-9_]))"

_MEMBER_COUNT_RE = re.compile(r"^(==|<=|>=|<|>)?([0-9]+)$")


def _glob_body(pattern: str) -> str:
    parts = []
    for char in pattern:
        if char == "*":
            parts.append(".*?")
        elif char == "?":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return "".join(parts)


@lru_cache(maxsize=4096)
def compile_glob(pattern: str, *, word_boundary: bool = False) -> re.Pattern[str]:
    """A compiled case-insensitive matcher for a glob.

    Without ``word_boundary`` it must match the whole value (use ``fullmatch``); with it,
    any substring starting and ending at word boundaries (use ``search``).
    """
    body = _glob_body(pattern)
    if word_boundary:
        body = _WORD_START + body + _WORD_END
    return re.compile(body, re.IGNORECASE | re.DOTALL)


def glob_matches(pattern: str, value: str, *, word_boundary: bool = False) -> bool:
    """Whether ``value`` matches the glob ``pattern`` (see :func:`compile_glob`)."""
    compiled = compile_glob(pattern, word_boundary=word_boundary)
    if word_boundary:
        return compiled.search(value) is not None
    return compiled.fullmatch(value) is not None


def _is_simple_value(value: object) -> bool:
    """A non-compound canonical JSON value: string, integer, boolean or null."""
    return value is None or isinstance(value, (str, bool, int))


def _same_value(a: object, b: object) -> bool:
    """Exact JSON equality of simple values: no casts (``1`` is neither ``true`` nor ``"1"``)."""
    return type(a) is type(b) and a == b and _is_simple_value(a)


class _Context:
    """What the conditions need besides the event, gathered once per evaluation."""

    __slots__ = ("event", "display_name", "member_count", "power_levels", "sender_level")

    def __init__(
        self,
        event: Mapping[str, Any],
        display_name: str | None,
        member_count: int,
        power_levels: Mapping[str, Any],
        sender_level: int,
    ) -> None:
        self.event = event
        self.display_name = display_name
        self.member_count = member_count
        self.power_levels = power_levels
        self.sender_level = sender_level


def _lookup(event: Mapping[str, Any], key: object) -> tuple[bool, Any]:
    if not isinstance(key, str):
        return False, None
    return lookup_path(event, split_dotted_path(key))


def _event_match(condition: Condition, ctx: _Context) -> bool:
    pattern = condition.get("pattern")
    if not isinstance(pattern, str):
        return False
    found, value = _lookup(ctx.event, condition.get("key"))
    if not found or not isinstance(value, str):
        return False
    return glob_matches(pattern, value, word_boundary=condition.get("key") == "content.body")


def _event_property_is(condition: Condition, ctx: _Context) -> bool:
    if "value" not in condition:
        return False
    found, value = _lookup(ctx.event, condition.get("key"))
    return found and _same_value(value, condition["value"])


def _event_property_contains(condition: Condition, ctx: _Context) -> bool:
    if "value" not in condition:
        return False
    found, value = _lookup(ctx.event, condition.get("key"))
    if not found or not isinstance(value, list):
        return False
    wanted = condition["value"]
    return any(_same_value(item, wanted) for item in value)


def _contains_display_name(condition: Condition, ctx: _Context) -> bool:
    if not ctx.display_name:
        return False
    content = ctx.event.get("content")
    body = content.get("body") if isinstance(content, Mapping) else None
    if not isinstance(body, str):
        return False
    # The display name is literal text, so glob characters in it must not act as globs.
    literal = re.escape(ctx.display_name)
    return re.search(_WORD_START + literal + _WORD_END, body, re.IGNORECASE) is not None


def member_count_matches(spec: str, count: int) -> bool:
    """Whether ``count`` satisfies a ``room_member_count`` ``is`` such as ``"2"`` or ``">=10"``."""
    found = _MEMBER_COUNT_RE.match(spec)
    if found is None:
        return False
    operator, number = found.group(1) or "==", int(found.group(2))
    if operator == "==":
        return count == number
    if operator == "<":
        return count < number
    if operator == ">":
        return count > number
    if operator == "<=":
        return count <= number
    return count >= number


def _room_member_count(condition: Condition, ctx: _Context) -> bool:
    spec = condition.get("is")
    return isinstance(spec, str) and member_count_matches(spec, ctx.member_count)


def _sender_notification_permission(condition: Condition, ctx: _Context) -> bool:
    key = condition.get("key")
    if not isinstance(key, str):
        return False
    notifications = ctx.power_levels.get("notifications")
    required: int | None = None
    if isinstance(notifications, Mapping) and key in notifications:
        required = parse_power_level(notifications[key])
    if required is None:
        required = DEFAULT_NOTIFICATION_LEVEL
    return ctx.sender_level >= required


_CONDITIONS = {
    "event_match": _event_match,
    "event_property_is": _event_property_is,
    "event_property_contains": _event_property_contains,
    "contains_display_name": _contains_display_name,
    "room_member_count": _room_member_count,
    "sender_notification_permission": _sender_notification_permission,
}


def _condition_matches(condition: Condition, ctx: _Context) -> bool:
    """One condition; unknown kinds never match (spec: that disables the rule)."""
    kind = condition.get("kind")
    check = _CONDITIONS.get(kind) if isinstance(kind, str) else None
    return check is not None and check(condition, ctx)


def _rule_matches(rule: PushRule, ctx: _Context) -> bool:
    event = ctx.event
    if rule.kind == "room":
        return event.get("room_id") == rule.rule_id
    if rule.kind == "sender":
        return event.get("sender") == rule.rule_id
    if rule.kind == "content":
        if rule.pattern is None:
            return False
        content = event.get("content")
        body = content.get("body") if isinstance(content, Mapping) else None
        return isinstance(body, str) and glob_matches(rule.pattern, body, word_boundary=True)
    return all(_condition_matches(condition, ctx) for condition in rule.conditions or ())


def strip_legacy_actions(actions: Sequence[Action]) -> list[Action]:
    """Drop ``dont_notify`` and ``coalesce``, which the spec says to ignore."""
    return [action for action in actions if not (isinstance(action, str) and action in LEGACY_ACTIONS)]


def matching_rule(
    ruleset: PushRuleset,
    event: Mapping[str, Any],
    *,
    user_id: str,
    display_name: str | None,
    room_member_count: int,
    power_levels: Mapping[str, Any],
    sender_power_level: int,
) -> PushRule | None:
    """The first enabled rule that matches ``event`` for ``user_id``, or None.

    Events the user sent themselves match nothing (the spec forbids notifying for them).
    The legacy body-based mention rules are skipped for events carrying ``m.mentions``.
    """
    if event.get("sender") == user_id:
        return None
    ctx = _Context(event, display_name, room_member_count, power_levels, sender_power_level)
    content = event.get("content")
    has_mentions = isinstance(content, Mapping) and "m.mentions" in content
    for rule in ruleset:
        if not rule.enabled:
            continue
        if has_mentions and rule.default and rule.rule_id in LEGACY_MENTION_RULE_IDS:
            continue
        if _rule_matches(rule, ctx):
            return rule
    return None


def evaluate(
    ruleset: PushRuleset,
    event: Mapping[str, Any],
    *,
    user_id: str,
    display_name: str | None,
    room_member_count: int,
    power_levels: Mapping[str, Any],
    sender_power_level: int,
) -> list[Action] | None:
    """The actions of the first matching enabled rule (legacy actions stripped), or None.

    ``event`` is the event as a dict (any format with ``type``, ``sender``, ``content``,
    ``room_id``, ``state_key`` at the top level).  ``display_name`` is the user's display
    name in the room, ``power_levels`` the content of the room's ``m.room.power_levels``
    (``{}`` if none) and ``sender_power_level`` the sender's effective level.
    """
    rule = matching_rule(
        ruleset,
        event,
        user_id=user_id,
        display_name=display_name,
        room_member_count=room_member_count,
        power_levels=power_levels,
        sender_power_level=sender_power_level,
    )
    return None if rule is None else strip_legacy_actions(rule.actions)


def tweaks_for(actions: Sequence[Action] | None) -> dict[str, Any]:
    """The ``tweaks`` dict to send to a push gateway (``highlight`` without value is true)."""
    tweaks: dict[str, Any] = {}
    for action in actions or ():
        if isinstance(action, Mapping) and isinstance(action.get("set_tweak"), str):
            name = action["set_tweak"]
            if "value" in action:
                tweaks[name] = action["value"]
            elif name == "highlight":
                tweaks[name] = True
    return tweaks


def counts_for(actions: Sequence[Action] | None) -> tuple[bool, bool]:
    """``(notify, highlight)``: whether the event counts as a notification, and as a highlight.

    A highlight counts only with ``notify``: an event that does not notify is not counted
    at all (as in Synapse).  ``highlight`` must be true (or valueless) to count.
    """
    if not actions or "notify" not in actions:
        return False, False
    return True, tweaks_for(actions).get("highlight", False) is True
