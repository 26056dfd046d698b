"""Users' push rules: their own rules, and their changes to the server-default ones."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from homeserver.push.ruleset import RuleKey, UserPushRule
from homeserver.storage.database import Database, Transaction


class PushRuleRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def load(self, user_id: str) -> tuple[list[UserPushRule], dict[RuleKey, bool], dict[RuleKey, list[Any]]]:
        """(user rules, enabled overrides, actions overrides)."""

        def txn_fn(txn: Transaction) -> tuple[list[UserPushRule], dict[RuleKey, bool], dict[RuleKey, list[Any]]]:
            rules = []
            for kind, rule_id, priority, rule_json in txn.select_all(
                "SELECT kind, rule_id, priority, rule FROM push_rules WHERE user_id = ?", (user_id,)
            ):
                data = json.loads(rule_json)
                conditions = data.get("conditions")
                rules.append(
                    UserPushRule(
                        kind=str(kind),
                        rule_id=str(rule_id),
                        priority=int(priority),
                        actions=tuple(data.get("actions", [])),
                        conditions=None if conditions is None else tuple(conditions),
                        pattern=data.get("pattern"),
                    )
                )
            enabled: dict[RuleKey, bool] = {}
            actions: dict[RuleKey, list[Any]] = {}
            for kind, rule_id, en, acts in txn.select_all(
                "SELECT kind, rule_id, enabled, actions FROM push_rule_overrides WHERE user_id = ?", (user_id,)
            ):
                if en is not None:
                    enabled[(str(kind), str(rule_id))] = bool(en)
                if acts is not None:
                    actions[(str(kind), str(rule_id))] = json.loads(acts)
            return rules, enabled, actions

        return await self._db.run_interaction("load_push_rules", txn_fn)

    async def replace_kind(self, user_id: str, kind: str, rows: Sequence[UserPushRule]) -> None:
        """Rewrite the user's rules of one kind (after an insert, move or delete)."""

        def txn_fn(txn: Transaction) -> None:
            txn.execute("DELETE FROM push_rules WHERE user_id = ? AND kind = ?", (user_id, kind))
            txn.execute_many(
                "INSERT INTO push_rules (user_id, kind, rule_id, priority, rule) VALUES (?, ?, ?, ?, ?)",
                [
                    (
                        user_id,
                        kind,
                        r.rule_id,
                        r.priority,
                        json.dumps(
                            {
                                "actions": list(r.actions),
                                "conditions": None if r.conditions is None else list(r.conditions),
                                "pattern": r.pattern,
                            }
                        ),
                    )
                    for r in rows
                ],
            )
            # Overrides of deleted rules go with them.
            keep = {r.rule_id for r in rows}
            for (rule_id,) in txn.select_all(
                "SELECT rule_id FROM push_rule_overrides WHERE user_id = ? AND kind = ? AND rule_id NOT LIKE '.%'",
                (user_id, kind),
            ):
                if rule_id not in keep:
                    txn.execute(
                        "DELETE FROM push_rule_overrides WHERE user_id = ? AND kind = ? AND rule_id = ?",
                        (user_id, kind, rule_id),
                    )

        await self._db.run_interaction("replace_push_rules", txn_fn)

    async def set_override(self, user_id: str, kind: str, rule_id: str, *, enabled: bool | None = None, actions: list[Any] | None = None) -> None:
        def txn_fn(txn: Transaction) -> None:
            txn.execute(
                "INSERT INTO push_rule_overrides (user_id, kind, rule_id) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (user_id, kind, rule_id),
            )
            if enabled is not None:
                txn.execute(
                    "UPDATE push_rule_overrides SET enabled = ? WHERE user_id = ? AND kind = ? AND rule_id = ?",
                    (int(enabled), user_id, kind, rule_id),
                )
            if actions is not None:
                txn.execute(
                    "UPDATE push_rule_overrides SET actions = ? WHERE user_id = ? AND kind = ? AND rule_id = ?",
                    (json.dumps(actions), user_id, kind, rule_id),
                )

        await self._db.run_interaction("set_push_override", txn_fn)
