-- referee policy v3 (SQLite): how a tenant's dial strings are read (kemi/policy/evaluate.py
-- read_dialled).  Columns only; 001/002 rows, ids and triggers stay as they are.

-- Feature codes and outside-line prefixes the tenant's phones put before a number
-- ('*67', '*82', '9', '9,'), space-separated: taken off the front of a Refer-To's user
-- part before it is read as a number, so '*6719005550100' is judged as +19005550100.
ALTER TABLE tenants ADD COLUMN dial_prefixes TEXT NOT NULL DEFAULT ''
    CHECK (length(dial_prefixes) <= 64 AND dial_prefixes NOT GLOB '*[^0-9*#, ]*');
-- A user part that has a number's digits but cannot be read as one ('9,1900...', '*67...'
-- with no such prefix configured, '1900CALLNOW'): 'refuse' (403 saying why: toll fraud
-- hides there) or 'allow' (judged as an unplaceable PSTN number).
ALTER TABLE tenants ADD COLUMN unreadable_numbers TEXT NOT NULL DEFAULT 'refuse'
    CHECK (unreadable_numbers IN ('refuse', 'allow'));

UPDATE policy_version SET version = version + 1 WHERE id = 1;
