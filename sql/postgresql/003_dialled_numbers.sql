-- referee policy v3 (PostgreSQL): how a tenant's dial strings are read
-- (kemi/policy/evaluate.py read_dialled).  See sql/sqlite/003_dialled_numbers.sql.

ALTER TABLE tenants ADD COLUMN dial_prefixes TEXT NOT NULL DEFAULT ''
    CHECK (length(dial_prefixes) <= 64 AND dial_prefixes ~ '^[0-9*#, ]*$');
ALTER TABLE tenants ADD COLUMN unreadable_numbers TEXT NOT NULL DEFAULT 'refuse'
    CHECK (unreadable_numbers IN ('refuse', 'allow'));

UPDATE policy_version SET version = version + 1 WHERE id = 1;
