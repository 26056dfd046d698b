-- Overrides of push rules are addressed by (kind, rule_id): rule IDs are unique per kind only.
DROP TABLE push_rule_overrides;
CREATE TABLE push_rule_overrides (
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    enabled SMALLINT,
    actions TEXT,
    PRIMARY KEY (user_id, kind, rule_id)
);
