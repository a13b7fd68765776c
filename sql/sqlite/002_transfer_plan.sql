-- referee policy v2 (SQLite): the anchored transfer plan on rules, cross-tenant Replaces on
-- tenants.  Applied by `referee db init` to a database that has 001_policy (in one
-- transaction, recorded in schema_migrations); columns only, no table rebuild, so the
-- rows, ids and triggers of 001 stay as they are.

-- What Asterisk does with a transfer anchored in it that an allow rule approves.  NULL =
-- not set: caller_id and release_after_s then come from the tenant (caller_id
-- 'transferee' reads as 'keep', transferor_bye_wait_s is the release timer), the others
-- from the built-in defaults ('' no announcement, 30 s, 'reconnect').  The loader checks
-- the full syntax again (kemi/policy/model.py); these CHECKs catch the common typos.
ALTER TABLE rules ADD COLUMN announcement TEXT
    CHECK (announcement IS NULL OR (length(announcement) <= 128
                                    AND announcement NOT GLOB '*[^A-Za-z0-9_./-]*'));
-- 'keep' (the transferee's own), 'transferor', or a literal number ('+' optional)
ALTER TABLE rules ADD COLUMN caller_id TEXT
    CHECK (caller_id IS NULL OR caller_id IN ('keep', 'transferor')
           OR (length(caller_id) BETWEEN 2 AND 16 AND caller_id GLOB '[+0-9]*'
               AND substr(caller_id, 2) NOT GLOB '*[^0-9]*'));
ALTER TABLE rules ADD COLUMN dial_timeout_s INTEGER
    CHECK (dial_timeout_s IS NULL OR dial_timeout_s BETWEEN 1 AND 600);
-- 'reconnect' (back to the transferor) or 'fallback:<context>,<exten>,<priority>'
ALTER TABLE rules ADD COLUMN on_failure TEXT
    CHECK (on_failure IS NULL OR on_failure = 'reconnect'
           OR (on_failure GLOB 'fallback:?*,?*,?*' AND on_failure NOT GLOB '*[^A-Za-z0-9_:,+*#-]*'));
ALTER TABLE rules ADD COLUMN release_after_s INTEGER
    CHECK (release_after_s IS NULL OR release_after_s BETWEEN 0 AND 3600);

-- A deny rule has nothing to plan (SQLite cannot add a table CHECK to an existing table).
CREATE TRIGGER rules_deny_has_no_plan_ins BEFORE INSERT ON rules
WHEN NEW.action = 'deny' AND (NEW.announcement IS NOT NULL OR NEW.caller_id IS NOT NULL
     OR NEW.dial_timeout_s IS NOT NULL OR NEW.on_failure IS NOT NULL
     OR NEW.release_after_s IS NOT NULL)
BEGIN SELECT RAISE(ABORT, 'a deny rule takes no transfer plan'); END;
CREATE TRIGGER rules_deny_has_no_plan_upd BEFORE UPDATE ON rules
WHEN NEW.action = 'deny' AND (NEW.announcement IS NOT NULL OR NEW.caller_id IS NOT NULL
     OR NEW.dial_timeout_s IS NOT NULL OR NEW.on_failure IS NOT NULL
     OR NEW.release_after_s IS NOT NULL)
BEGIN SELECT RAISE(ABORT, 'a deny rule takes no transfer plan'); END;

-- Which dialogs the tenant's REFERs (Refer-To with Replaces) and INVITEs with Replaces may
-- name: 'any', or 'tenant': none with a party whose address another tenant's match_domain
-- claims (kemi/policy/evaluate.py replaces_crossing).
ALTER TABLE tenants ADD COLUMN replaces_scope TEXT NOT NULL DEFAULT 'any'
    CHECK (replaces_scope IN ('any', 'tenant'));

-- Workers reload on the next check (ALTER TABLE fires no trigger).
UPDATE policy_version SET version = version + 1 WHERE id = 1;
