"""A user's effective ruleset, and the checks behind the ``/pushrules`` endpoints.

Storage keeps only what the user changed:

* their own rules, as :class:`UserPushRule` rows (a ``priority`` per kind, higher first);
* for any rule (server-default ones included), an ``enabled`` flag and/or ``actions``
  that override the rule's own.

:func:`merge_user_rules` lays them over the server defaults.  Per the spec, server-default
rules rank below the user's rules of the same kind, except ``.m.rule.master``, which
ranks above everything.

Errors follow the project convention: ``M_BAD_JSON`` for a body of the wrong shape,
``M_MISSING_PARAM`` for an absent field, ``M_INVALID_PARAM`` for a wrong value or
parameter, ``M_NOT_FOUND`` for an unknown rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from homeserver.core.errors import Codes, MatrixError
from homeserver.push.defaults import MASTER_RULE_ID
from homeserver.push.rules import RULE_KINDS, Action, Condition, PushRule, PushRuleset

# (kind, rule_id): how storage addresses a rule's enabled/actions override.
RuleKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class UserPushRule:
    """A user-defined rule as stored: a rule plus its ``priority`` within its kind (higher first)."""

    kind: str
    rule_id: str
    priority: int
    actions: tuple[Action, ...]
    conditions: tuple[Condition, ...] | None = None
    pattern: str | None = None
    enabled: bool = True

    def to_push_rule(self) -> PushRule:
        return PushRule(
            kind=self.kind,
            rule_id=self.rule_id,
            actions=self.actions,
            conditions=self.conditions,
            pattern=self.pattern,
            enabled=self.enabled,
            default=False,
        )


def merge_user_rules(
    defaults: PushRuleset,
    user_rules: Iterable[UserPushRule],
    enabled_overrides: Mapping[RuleKey, bool] | None = None,
    actions_overrides: Mapping[RuleKey, Sequence[Action]] | None = None,
) -> PushRuleset:
    """The effective ruleset: the user's rules before the server defaults of each kind.

    ``.m.rule.master`` stays first of all.  User rows of an unknown kind, or with a
    reserved (dot-prefixed) ID, are ignored.  The overrides apply to any rule, default or
    not, and take precedence over a row's own ``enabled``/``actions``.
    """
    enabled_overrides = enabled_overrides or {}
    actions_overrides = actions_overrides or {}

    by_kind: dict[str, list[UserPushRule]] = {kind: [] for kind in RULE_KINDS}
    for row in user_rules:
        if row.kind in by_kind and not row.rule_id.startswith("."):
            by_kind[row.kind].append(row)

    def overridden(rule: PushRule) -> PushRule:
        key = (rule.kind, rule.rule_id)
        actions = actions_overrides.get(key)
        return rule.with_overrides(
            enabled=enabled_overrides.get(key),
            actions=None if actions is None else tuple(actions),
        )

    merged = PushRuleset()
    for kind in RULE_KINDS:
        # Stable sort: equal priorities keep their stored order.
        mine = [overridden(row.to_push_rule()) for row in sorted(by_kind[kind], key=lambda r: -r.priority)]
        server = [overridden(rule) for rule in defaults.of_kind(kind)]
        first = [rule for rule in server if rule.rule_id == MASTER_RULE_ID]
        rest = [rule for rule in server if rule.rule_id != MASTER_RULE_ID]
        merged = merged.with_kind(kind, tuple(first + mine + rest))
    return merged


# -- path and body checks -------------------------------------------------------------


def parse_rule_kind(kind: str) -> str:
    """Check the ``{kind}`` path segment."""
    if kind not in RULE_KINDS:
        raise MatrixError(400, Codes.INVALID_PARAM, f"Invalid parameter kind: must be one of {', '.join(RULE_KINDS)}")
    return kind


def check_new_rule_id(rule_id: str) -> str:
    """Check a ``{ruleId}`` a client wants to create or replace (PUT of a whole rule)."""
    if not rule_id:
        raise MatrixError(400, Codes.INVALID_PARAM, "Invalid parameter ruleId: must not be empty")
    if rule_id.startswith("."):
        raise MatrixError(
            400,
            Codes.INVALID_PARAM,
            "Invalid parameter ruleId: IDs starting with '.' are reserved for server-default rules",
        )
    if "/" in rule_id or "\\" in rule_id:
        raise MatrixError(400, Codes.INVALID_PARAM, "Invalid parameter ruleId: must not contain '/' or '\\'")
    return rule_id


def _require_object(body: object) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise MatrixError(400, Codes.BAD_JSON, "Content must be a JSON object.")
    return body


def parse_actions(value: object, field: str = "actions") -> tuple[Action, ...]:
    """Check an actions array: strings ``notify`` (or the legacy ``dont_notify``/``coalesce``)
    and ``set_tweak`` objects; anything else is refused."""
    if value is None:
        raise MatrixError(400, Codes.MISSING_PARAM, f"Missing parameter: {field}")
    if not isinstance(value, list):
        raise MatrixError(400, Codes.BAD_JSON, f"Parameter {field} must be a list")
    actions: list[Action] = []
    for index, action in enumerate(value):
        if isinstance(action, str):
            if action != "notify" and action not in ("dont_notify", "coalesce"):
                raise MatrixError(
                    400, Codes.INVALID_PARAM, f"Invalid parameter {field}[{index}]: unknown action {action!r}"
                )
        elif isinstance(action, Mapping):
            if not isinstance(action.get("set_tweak"), str):
                raise MatrixError(
                    400,
                    Codes.INVALID_PARAM,
                    f"Invalid parameter {field}[{index}]: an object action needs a string set_tweak",
                )
        else:
            raise MatrixError(400, Codes.BAD_JSON, f"Parameter {field}[{index}] must be a string or an object")
        actions.append(action)
    return tuple(actions)


def parse_conditions(value: object, field: str = "conditions") -> tuple[Condition, ...]:
    """Check a conditions array: objects with a string ``kind``.

    Unknown kinds are accepted and stored (they never match); the parameters of known
    kinds are not checked further, since a malformed condition simply does not match.
    """
    if value is None:
        raise MatrixError(400, Codes.MISSING_PARAM, f"Missing parameter: {field}")
    if not isinstance(value, list):
        raise MatrixError(400, Codes.BAD_JSON, f"Parameter {field} must be a list")
    for index, condition in enumerate(value):
        if not isinstance(condition, Mapping):
            raise MatrixError(400, Codes.BAD_JSON, f"Parameter {field}[{index}] must be an object")
        if not isinstance(condition.get("kind"), str):
            raise MatrixError(400, Codes.BAD_JSON, f"Parameter {field}[{index}].kind must be a string")
    return tuple(value)


def parse_put_rule(kind: str, rule_id: str, body: object) -> PushRule:
    """Check ``PUT /pushrules/global/{kind}/{ruleId}`` and build the (enabled) user rule.

    Content rules need ``pattern``; override and underride rules need ``conditions``;
    room and sender rules take neither (the ``rule_id`` is the room or user ID).
    """
    parse_rule_kind(kind)
    check_new_rule_id(rule_id)
    data = _require_object(body)
    actions = parse_actions(data.get("actions"))
    conditions: tuple[Condition, ...] | None = None
    pattern: str | None = None
    if kind in ("override", "underride"):
        conditions = parse_conditions(data.get("conditions"))
    elif kind == "content":
        raw_pattern = data.get("pattern")
        if raw_pattern is None:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: pattern")
        if not isinstance(raw_pattern, str):
            raise MatrixError(400, Codes.BAD_JSON, "Parameter pattern must be a string")
        pattern = raw_pattern
    return PushRule(kind=kind, rule_id=rule_id, actions=actions, conditions=conditions, pattern=pattern)


def parse_enabled_body(body: object) -> bool:
    """The ``enabled`` flag of ``PUT .../enabled``."""
    value = _require_object(body).get("enabled")
    if value is None:
        raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: enabled")
    if not isinstance(value, bool):
        raise MatrixError(400, Codes.BAD_JSON, "Parameter enabled must be a boolean")
    return value


def parse_actions_body(body: object) -> tuple[Action, ...]:
    """The ``actions`` of ``PUT .../actions``."""
    return parse_actions(_require_object(body).get("actions"))


def get_rule(ruleset: PushRuleset, kind: str, rule_id: str) -> PushRule:
    """The rule addressed by a path, or 404 ``M_NOT_FOUND`` (400 for an unknown kind)."""
    parse_rule_kind(kind)
    rule = ruleset.find(kind, rule_id)
    if rule is None:
        raise MatrixError(404, Codes.NOT_FOUND, "The push rule was not found.")
    return rule


def place_user_rule(
    existing: Sequence[UserPushRule],
    rule: PushRule,
    *,
    before: str | None = None,
    after: str | None = None,
) -> list[UserPushRule]:
    """Insert or replace ``rule`` among the user's rules of its kind; all rows, renumbered.

    ``existing`` holds the user's rules of ``rule.kind`` (any order; their priorities
    order them).  With ``before`` the rule becomes the next more important rule than the
    named one (``before`` wins when both are given); with ``after``, the next less
    important.  Without either, a new rule becomes the most important user rule and a
    replaced rule keeps its place.  A replaced rule keeps its ``enabled`` flag; a new one
    is enabled.  Anchors must be user rules of the same kind, else 400 ``M_INVALID_PARAM``
    naming ``before``/``after``.  The result is most important first, with priorities
    ``n-1 .. 0``; storage rewrites the kind's rows with it.
    """
    ordered = sorted((row for row in existing if row.kind == rule.kind), key=lambda r: -r.priority)
    previous = next((row for row in ordered if row.rule_id == rule.rule_id), None)
    position = ordered.index(previous) if previous is not None else 0
    remaining = [row for row in ordered if row.rule_id != rule.rule_id]

    anchor_field, anchor = ("before", before) if before else ("after", after) if after else (None, None)
    if anchor_field is not None and anchor is not None:
        if anchor.startswith("."):
            raise MatrixError(
                400,
                Codes.INVALID_PARAM,
                f"Invalid parameter {anchor_field}: cannot place a rule relative to a server-default rule",
            )
        ids = [row.rule_id for row in remaining]
        if anchor not in ids:
            raise MatrixError(400, Codes.INVALID_PARAM, f"Invalid parameter {anchor_field}: rule not found: {anchor}")
        position = ids.index(anchor) + (0 if anchor_field == "before" else 1)
    elif previous is None:
        position = 0

    new_row = UserPushRule(
        kind=rule.kind,
        rule_id=rule.rule_id,
        priority=0,
        actions=rule.actions,
        conditions=rule.conditions,
        pattern=rule.pattern,
        enabled=previous.enabled if previous is not None else True,
    )
    remaining.insert(position, new_row)
    count = len(remaining)
    return [replace(row, priority=count - 1 - index) for index, row in enumerate(remaining)]
