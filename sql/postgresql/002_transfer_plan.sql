-- referee policy v2 (PostgreSQL 13+): same columns as sql/sqlite/002_transfer_plan.sql
-- (read that file's comments); here the deny-has-no-plan rule is a table CHECK.

ALTER TABLE rules
    ADD COLUMN announcement TEXT
        CHECK (announcement IS NULL OR announcement ~ '^/?[A-Za-z0-9_][A-Za-z0-9_./-]{0,127}$'),
    ADD COLUMN caller_id TEXT
        CHECK (caller_id IS NULL OR caller_id IN ('keep', 'transferor')
               OR caller_id ~ '^\+?[0-9]{2,15}$'),
    ADD COLUMN dial_timeout_s INTEGER
        CHECK (dial_timeout_s IS NULL OR dial_timeout_s BETWEEN 1 AND 600),
    ADD COLUMN on_failure TEXT
        CHECK (on_failure IS NULL OR on_failure = 'reconnect'
               OR on_failure ~ '^fallback:[A-Za-z0-9_-]{1,79},[A-Za-z0-9+*#_-]{1,79},([1-9][0-9]{0,8}|[A-Za-z][A-Za-z0-9_-]{0,63})$'),
    ADD COLUMN release_after_s INTEGER
        CHECK (release_after_s IS NULL OR release_after_s BETWEEN 0 AND 3600),
    ADD CONSTRAINT rules_deny_has_no_plan
        CHECK (action = 'allow' OR (announcement IS NULL AND caller_id IS NULL
               AND dial_timeout_s IS NULL AND on_failure IS NULL AND release_after_s IS NULL));

ALTER TABLE tenants
    ADD COLUMN replaces_scope TEXT NOT NULL DEFAULT 'any'
        CHECK (replaces_scope IN ('any', 'tenant'));

UPDATE policy_version SET version = version + 1 WHERE id = 1;
