"""Push rules as plain immutable data, and their Client-Server JSON shape.

A user's rules form one ruleset (spec "Push Rules"), scoped ``global``, with five kinds
checked in this order: ``override``, ``content``, ``room``, ``sender``, ``underride``.
Within a kind, rules are kept in priority order, most important first, so a
:class:`PushRuleset` is simply five tuples.

Conditions and actions stay as the JSON the client sent (dicts and strings): the spec
lets clients and push gateways agree on extra tweaks, and unknown condition kinds must be
kept (they just never match), so they are not forced into a closed model.  The objects
are immutable by convention: treat the dicts inside as read-only.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

# In the order they are checked.
RULE_KINDS: tuple[str, ...] = ("override", "content", "room", "sender", "underride")

# An action is a string ("notify") or an object ({"set_tweak": "sound", "value": "ring"}).
Action = str | Mapping[str, Any]
# A condition is an object with a "kind" and kind-specific parameters.
Condition = Mapping[str, Any]

# Historical actions that clients and servers MUST ignore (spec "Historical Actions").
LEGACY_ACTIONS = frozenset({"dont_notify", "coalesce"})


@dataclass(frozen=True, slots=True)
class PushRule:
    """One push rule of one kind.

    ``conditions`` is set for override and underride rules, ``pattern`` for content
    rules; room and sender rules carry neither, their ``rule_id`` is the room or user ID.
    ``default`` marks a server-default rule (whose ``rule_id`` starts with a dot).
    """

    kind: str
    rule_id: str
    actions: tuple[Action, ...]
    conditions: tuple[Condition, ...] | None = None
    pattern: str | None = None
    enabled: bool = True
    default: bool = False

    def with_overrides(self, *, enabled: bool | None = None, actions: tuple[Action, ...] | None = None) -> PushRule:
        """A copy with ``enabled`` and/or ``actions`` replaced (None keeps the current value);
        the rule itself when nothing changes (default rules are shared between users)."""
        if (enabled is None or enabled == self.enabled) and (actions is None or actions == self.actions):
            return self
        return replace(
            self,
            enabled=self.enabled if enabled is None else enabled,
            actions=self.actions if actions is None else actions,
        )

    def to_json(self) -> dict[str, Any]:
        """The PushRule object of the Client-Server API (a fresh, mutable copy)."""
        body: dict[str, Any] = {
            "rule_id": self.rule_id,
            "default": self.default,
            "enabled": self.enabled,
            "actions": copy.deepcopy(list(self.actions)),
        }
        if self.kind in ("override", "underride"):
            body["conditions"] = copy.deepcopy(list(self.conditions or ()))
        if self.kind == "content" and self.pattern is not None:
            body["pattern"] = self.pattern
        return body


@dataclass(frozen=True, slots=True)
class PushRuleset:
    """A user's whole ``global`` ruleset: each kind's rules, most important first."""

    override: tuple[PushRule, ...] = ()
    content: tuple[PushRule, ...] = ()
    room: tuple[PushRule, ...] = ()
    sender: tuple[PushRule, ...] = ()
    underride: tuple[PushRule, ...] = ()

    def of_kind(self, kind: str) -> tuple[PushRule, ...]:
        """The rules of one kind; raises KeyError for an unknown kind."""
        if kind not in RULE_KINDS:
            raise KeyError(kind)
        rules: tuple[PushRule, ...] = getattr(self, kind)
        return rules

    def __iter__(self) -> Iterator[PushRule]:
        """Every rule, in evaluation order."""
        for kind in RULE_KINDS:
            yield from self.of_kind(kind)

    def find(self, kind: str, rule_id: str) -> PushRule | None:
        """The rule of this kind and ID, or None (also None for an unknown kind)."""
        if kind not in RULE_KINDS:
            return None
        for rule in self.of_kind(kind):
            if rule.rule_id == rule_id:
                return rule
        return None

    def with_kind(self, kind: str, rules: tuple[PushRule, ...]) -> PushRuleset:
        """A copy with one kind's rules replaced."""
        if kind not in RULE_KINDS:
            raise KeyError(kind)
        return replace(self, **{kind: rules})

    def global_to_json(self) -> dict[str, list[dict[str, Any]]]:
        """The Ruleset object: ``{"override": [...], "content": [...], ...}``, every kind present."""
        return {kind: [rule.to_json() for rule in self.of_kind(kind)] for kind in RULE_KINDS}

    def to_json(self) -> dict[str, Any]:
        """The body of ``GET /pushrules/`` and the content of ``m.push_rules``: ``{"global": ...}``."""
        return {"global": self.global_to_json()}
