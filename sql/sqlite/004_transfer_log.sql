-- referee transfer log v4 (sqlite): one row per finished transfer, written from the Redis
-- stream 'finished' by `referee log run` (kemi/storage/transfer_log.py), never on the SIP
-- path.  Idempotent on (call_id, refer_id): a row written twice (the writer restarted
-- between its commit and its XACK) is the same row.  Not policy: policy_version is
-- left alone.
CREATE TABLE transfer_log (
    call_id        TEXT NOT NULL,
    refer_id       TEXT NOT NULL,
    transferor     TEXT NOT NULL DEFAULT '',
    transferee     TEXT NOT NULL DEFAULT '',
    target         TEXT NOT NULL DEFAULT '',
    tenant         TEXT NOT NULL DEFAULT '',
    rule           TEXT NOT NULL DEFAULT '',
    outcome        TEXT NOT NULL,               -- succeeded, failed, rejected, expired
    final_sipfrag  TEXT NOT NULL DEFAULT '',
    refer_reply    TEXT NOT NULL DEFAULT '',
    invite_reply   TEXT NOT NULL DEFAULT '',
    anchored       TEXT NOT NULL DEFAULT '',    -- the Asterisk's name, '' if not anchored
    ami_result     TEXT NOT NULL DEFAULT '',
    agi_result     TEXT NOT NULL DEFAULT '',
    created_at     REAL NOT NULL,             -- epoch seconds (the REFER)
    final_at       REAL NOT NULL,             -- epoch seconds (the outcome)
    stream_id      TEXT NOT NULL DEFAULT '',    -- its entry in the Redis stream
    record         TEXT NOT NULL,               -- the whole Redis record, as JSON
    PRIMARY KEY (call_id, refer_id)
);
CREATE INDEX transfer_log_final_at ON transfer_log (final_at);
