-- referee policy v1 (SQLite).
--
-- Operators edit these tables (by hand or with `referee tenant ...` / `referee policy ...`);
-- Kamailio workers poll policy_version once a second and reload only when it moved, so an
-- edit takes effect without a restart.  The CHECKs catch typos at write time; the loader
-- validates every row again (a row written around the CHECKs is skipped and reported,
-- never crashes a worker).  Booleans are 0/1.  The migration runner wraps this file in a
-- transaction and records it in schema_migrations.

-- Who is sending the REFER.  The first tenant (lowest priority) whose non-null matchers
-- all match wins; 'default' matches everything and is always tried last.
CREATE TABLE tenants (
    id                     INTEGER PRIMARY KEY,
    name                   TEXT    NOT NULL UNIQUE
                           CHECK (length(name) BETWEEN 1 AND 64 AND name NOT GLOB '*[^A-Za-z0-9._-]*'),
    priority               INTEGER NOT NULL DEFAULT 100 CHECK (priority >= 0),
    -- source address of the REFER: IP or CIDR, several separated by commas
    match_source           TEXT    CHECK (match_source IS NULL OR length(match_source) > 0),
    -- From-URI domain: exact, or '*.example.com' for any subdomain
    match_domain           TEXT    CHECK (match_domain IS NULL OR length(match_domain) > 0),
    -- authenticated user (digest username), exact
    match_user             TEXT    CHECK (match_user IS NULL OR length(match_user) > 0),
    -- country code without '+', e.g. '1', '44'; NULL means every number counts as international
    home_cc                TEXT    CHECK (home_cc IS NULL OR (length(home_cc) BETWEEN 1 AND 3
                                          AND home_cc NOT GLOB '*[^0-9]*' AND home_cc NOT GLOB '0*')),
    allow_pstn             INTEGER NOT NULL DEFAULT 0 CHECK (allow_pstn IN (0, 1)),
    allow_out_of_dialog    INTEGER NOT NULL DEFAULT 0 CHECK (allow_out_of_dialog IN (0, 1)),
    allow_replaces         INTEGER NOT NULL DEFAULT 1 CHECK (allow_replaces IN (0, 1)),
    max_transfers_per_call INTEGER CHECK (max_transfers_per_call IS NULL OR max_transfers_per_call > 0),
    refers_per_minute      INTEGER CHECK (refers_per_minute IS NULL OR refers_per_minute > 0),
    subscription_expiry_s  INTEGER NOT NULL DEFAULT 120 CHECK (subscription_expiry_s BETWEEN 10 AND 3600),
    transferor_bye_wait_s  INTEGER NOT NULL DEFAULT 32 CHECK (transferor_bye_wait_s BETWEEN 0 AND 3600),
    caller_id              TEXT    NOT NULL DEFAULT 'transferee'
                           CHECK (caller_id IN ('transferee', 'transferor')),
    CHECK (name <> 'default' OR (match_source IS NULL AND match_domain IS NULL AND match_user IS NULL))
);

-- Allow/deny rules: a tenant's own and the global ones (tenant NULL) are tried together
-- by priority (then id); the first enabled match decides.
CREATE TABLE rules (
    id           INTEGER PRIMARY KEY,
    tenant       TEXT    REFERENCES tenants (name) ON UPDATE CASCADE ON DELETE CASCADE,
    name         TEXT    NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    priority     INTEGER NOT NULL DEFAULT 100 CHECK (priority >= 0),
    action       TEXT    NOT NULL CHECK (action IN ('allow', 'deny')),
    target_kind  TEXT    NOT NULL CHECK (target_kind IN ('any', 'domain', 'user', 'e164-prefix', 'class')),
    target_value TEXT,
    reply_code   INTEGER,
    reason       TEXT    NOT NULL DEFAULT '',
    enabled      INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    CHECK ((target_kind = 'any') = (target_value IS NULL)),
    CHECK (target_value IS NULL OR length(target_value) > 0),
    CHECK (target_kind <> 'e164-prefix'
           OR (target_value GLOB '+[0-9]*' AND substr(target_value, 2) NOT GLOB '*[^0-9]*')),
    CHECK ((action = 'deny' AND reply_code IN (403, 603)) OR (action = 'allow' AND reply_code IS NULL))
);

-- Named sets of E.164 prefixes (rules of kind 'class' name them).  'pstn' (any number)
-- and 'international' (country code other than the tenant's home_cc) are computed, not
-- stored.  The seed below is a starting point: extend it for your market.  A class sees
-- only targets that read as E.164 ('+' and digits, or tel:/user=phone with '00'): a short
-- dial string such as sip:911@pbx is not a number; match it with a 'user' rule.
CREATE TABLE number_classes (
    name       TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 64 AND name NOT IN ('pstn', 'international')),
    e164_prefix TEXT NOT NULL
               CHECK (e164_prefix GLOB '+[0-9]*' AND substr(e164_prefix, 2) NOT GLOB '*[^0-9]*'),
    note       TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (name, e164_prefix)
);

-- One row; every change to the three tables above bumps it (a worker's reload check is
-- one SELECT of this integer).
CREATE TABLE policy_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO policy_version (id, version) VALUES (1, 1);

CREATE TRIGGER tenants_ins_version AFTER INSERT ON tenants
BEGIN UPDATE policy_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER tenants_upd_version AFTER UPDATE ON tenants
BEGIN UPDATE policy_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER tenants_del_version AFTER DELETE ON tenants
BEGIN UPDATE policy_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER rules_ins_version AFTER INSERT ON rules
BEGIN UPDATE policy_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER rules_upd_version AFTER UPDATE ON rules
BEGIN UPDATE policy_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER rules_del_version AFTER DELETE ON rules
BEGIN UPDATE policy_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER number_classes_ins_version AFTER INSERT ON number_classes
BEGIN UPDATE policy_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER number_classes_upd_version AFTER UPDATE ON number_classes
BEGIN UPDATE policy_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER number_classes_del_version AFTER DELETE ON number_classes
BEGIN UPDATE policy_version SET version = version + 1 WHERE id = 1; END;

-- The built-in tenant: no matchers, tried last, PSTN and out-of-dialog REFER off.
CREATE TRIGGER tenants_keep_default BEFORE DELETE ON tenants WHEN old.name = 'default'
BEGIN SELECT RAISE(ABORT, 'the default tenant cannot be removed'); END;
CREATE TRIGGER tenants_keep_default_name BEFORE UPDATE OF name ON tenants
WHEN old.name = 'default' AND new.name <> 'default'
BEGIN SELECT RAISE(ABORT, 'the default tenant cannot be renamed'); END;

INSERT INTO tenants (name, priority) VALUES ('default', 2147483647);

-- SEED-CLASSES (kept identical in sql/postgresql/001_policy.sql; a test checks it)
INSERT INTO number_classes (name, e164_prefix, note) VALUES
    ('premium', '+1900', 'US/Canada 900 premium rate'),
    ('premium', '+1976', 'US 976 pay-per-call exchanges'),
    ('premium', '+4490', 'UK 090 premium rate'),
    ('premium', '+4491', 'UK 091 premium rate'),
    ('premium', '+4498', 'UK 098 adult premium rate'),
    ('premium', '+3389', 'France 089 premium rate'),
    ('premium', '+49900', 'Germany 0900 premium rate'),
    ('premium', '+49137', 'Germany 0137 televoting'),
    ('premium', '+43900', 'Austria 0900 premium rate'),
    ('premium', '+43930', 'Austria 0930 premium rate'),
    ('premium', '+43939', 'Austria 0939 premium rate'),
    ('premium', '+41900', 'Switzerland 0900 premium rate'),
    ('premium', '+41901', 'Switzerland 0901 premium rate'),
    ('premium', '+41906', 'Switzerland 0906 adult premium rate'),
    ('premium', '+39899', 'Italy 899 premium rate'),
    ('premium', '+34803', 'Spain 803 adult premium rate'),
    ('premium', '+34806', 'Spain 806 premium rate'),
    ('premium', '+34807', 'Spain 807 premium rate'),
    ('premium', '+31900', 'Netherlands 0900 premium rate'),
    ('premium', '+31906', 'Netherlands 0906 premium rate'),
    ('premium', '+31909', 'Netherlands 0909 premium rate'),
    ('premium', '+61190', 'Australia 190 premium rate'),
    ('premium', '+979', 'ITU international premium rate service'),
    ('high-cost', '+870', 'Inmarsat'),
    ('high-cost', '+881', 'ITU global mobile satellite systems'),
    ('high-cost', '+882', 'ITU international networks'),
    ('high-cost', '+883', 'ITU international networks'),
    ('nanp-international', '+1242', 'Bahamas (NANP, billed as international)'),
    ('nanp-international', '+1246', 'Barbados'),
    ('nanp-international', '+1264', 'Anguilla'),
    ('nanp-international', '+1268', 'Antigua and Barbuda'),
    ('nanp-international', '+1284', 'British Virgin Islands'),
    ('nanp-international', '+1345', 'Cayman Islands'),
    ('nanp-international', '+1441', 'Bermuda'),
    ('nanp-international', '+1473', 'Grenada'),
    ('nanp-international', '+1649', 'Turks and Caicos Islands'),
    ('nanp-international', '+1658', 'Jamaica'),
    ('nanp-international', '+1664', 'Montserrat'),
    ('nanp-international', '+1721', 'Sint Maarten'),
    ('nanp-international', '+1758', 'Saint Lucia'),
    ('nanp-international', '+1767', 'Dominica'),
    ('nanp-international', '+1784', 'Saint Vincent and the Grenadines'),
    ('nanp-international', '+1809', 'Dominican Republic'),
    ('nanp-international', '+1829', 'Dominican Republic'),
    ('nanp-international', '+1849', 'Dominican Republic'),
    ('nanp-international', '+1868', 'Trinidad and Tobago'),
    ('nanp-international', '+1869', 'Saint Kitts and Nevis'),
    ('nanp-international', '+1876', 'Jamaica'),
    ('emergency', '+1911', 'US/Canada 911 (dialled as 911 with home_cc 1)'),
    ('emergency', '+44999', 'UK 999'),
    ('emergency', '+44112', 'UK 112'),
    ('emergency', '+49112', 'Germany 112'),
    ('emergency', '+49110', 'Germany 110 police'),
    ('emergency', '+33112', 'France 112'),
    ('emergency', '+34112', 'Spain 112'),
    ('emergency', '+39112', 'Italy 112'),
    ('emergency', '+61000', 'Australia 000'),
    ('emergency', '+61112', 'Australia 112');
-- END-SEED-CLASSES

-- SEED-RULES: global deny rules; they matter once a tenant turns allow_pstn on.  A
-- tenant overrides one with its own allow rule at a lower priority number.  No rule names
-- 'emergency': whether a call may be transferred to emergency services is the operator's
-- call (the class exists so a rule can name it).
INSERT INTO rules (tenant, name, priority, action, target_kind, target_value, reply_code, reason) VALUES
    (NULL, 'no-premium', 1000, 'deny', 'class', 'premium', 403, 'premium-rate target'),
    (NULL, 'no-high-cost', 1010, 'deny', 'class', 'high-cost', 403, 'satellite or international-network target'),
    (NULL, 'no-international', 1020, 'deny', 'class', 'international', 403, 'international target'),
    (NULL, 'no-nanp-international', 1030, 'deny', 'class', 'nanp-international', 403, 'international target inside +1');
-- END-SEED-RULES
