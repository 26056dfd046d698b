"""Push rules: the server defaults, a user's ruleset, the PUT checks, and the evaluator.

Pure protocol code over plain data (spec "Push Notifications"); no I/O.

* :mod:`homeserver.push.rules`: :class:`PushRule`, :class:`PushRuleset` and their JSON.
* :mod:`homeserver.push.defaults`: :func:`default_rules`, the spec's server-default rules.
* :mod:`homeserver.push.ruleset`: :func:`merge_user_rules` and the ``/pushrules`` checks.
* :mod:`homeserver.push.evaluator`: :func:`evaluate`, :func:`counts_for`, :func:`tweaks_for`.
* :mod:`homeserver.push.paths`: dot-separated property paths (shared with filters).
"""

from homeserver.push.defaults import LEGACY_MENTION_RULE_IDS, MASTER_RULE_ID, default_rules
from homeserver.push.evaluator import counts_for, evaluate, glob_matches, matching_rule, tweaks_for
from homeserver.push.rules import RULE_KINDS, Action, Condition, PushRule, PushRuleset
from homeserver.push.ruleset import (
    RuleKey,
    UserPushRule,
    check_new_rule_id,
    get_rule,
    merge_user_rules,
    parse_actions,
    parse_actions_body,
    parse_conditions,
    parse_enabled_body,
    parse_put_rule,
    parse_rule_kind,
    place_user_rule,
)

__all__ = [
    "LEGACY_MENTION_RULE_IDS",
    "MASTER_RULE_ID",
    "RULE_KINDS",
    "Action",
    "Condition",
    "PushRule",
    "PushRuleset",
    "RuleKey",
    "UserPushRule",
    "check_new_rule_id",
    "counts_for",
    "default_rules",
    "evaluate",
    "get_rule",
    "glob_matches",
    "matching_rule",
    "merge_user_rules",
    "parse_actions",
    "parse_actions_body",
    "parse_conditions",
    "parse_enabled_body",
    "parse_put_rule",
    "parse_rule_kind",
    "place_user_rule",
    "tweaks_for",
]
