"""Migrations, version triggers and the reload cache, on SQLite and a real PostgreSQL."""

from __future__ import annotations

import logging
import os
import sqlite3
from importlib import resources
from pathlib import Path

import pytest

from kemi.storage import policy_cache as cache_mod
from kemi.storage import policy_db as db
from kemi.storage.policy_cache import PolicyCache, PolicyUnavailable


@pytest.fixture()
def sqlite_db(tmp_path: Path) -> str:
    path = str(tmp_path / "policy.db")
    conn = db.connect(path, create=True)
    db.migrate(conn)
    conn.close()
    return path


ALL = ["001_policy", "002_transfer_plan", "003_dialled_numbers", "004_transfer_log"]


def version(conn: db.Connection) -> int:
    return db.read_version(conn)


# -- migrations ------------------------------------------------------------------------

def test_migrate_is_idempotent_and_recorded(tmp_path):
    conn = db.connect(str(tmp_path / "p.db"), create=True)
    assert db.migrate(conn) == ALL
    before = version(conn)
    assert db.migrate(conn) == []
    assert db.applied(conn) == ALL
    assert version(conn) == before
    assert conn.rows("SELECT count(*) AS n FROM schema_migrations")[0]["n"] == len(ALL)


def only_001(monkeypatch) -> None:
    """Make migrate() ship 001 alone, as a referee release before 002 did."""
    real = db.migrations
    monkeypatch.setattr(db, "migrations", lambda dialect: real(dialect)[:1])


def _populate_001(conn: db.Connection) -> None:
    conn.execute("INSERT INTO tenants (name, match_domain, caller_id, transferor_bye_wait_s) "
                 "VALUES ('acme', 'acme.example', 'transferor', 20)")
    conn.execute("INSERT INTO rules (tenant, name, action, target_kind, target_value) "
                 "VALUES ('acme', 'partner', 'allow', 'domain', 'partner.example')")


def _check_upgraded(conn: db.Connection, before: int) -> None:
    assert db.applied(conn) == ALL
    assert version(conn) > before  # workers reload
    policy = db.load_policy(conn)
    assert policy.errors == ()
    acme = policy.tenant("acme")
    assert (acme.caller_id, acme.transferor_bye_wait_s, acme.replaces_scope) == (
        "transferor", 20, "any")
    [partner] = [r for r in policy.rules if r.name == "partner"]
    assert partner.plan_fields == {} and partner.tenant == "acme"
    assert len(policy.rules) == 5  # the seed's four survive too
    conn.execute("UPDATE rules SET dial_timeout_s = 20, on_failure = 'fallback:vm,s,1' "
                 "WHERE name = 'partner'")
    conn.execute("UPDATE tenants SET replaces_scope = 'tenant' WHERE name = 'acme'")
    policy = db.load_policy(conn)
    [partner] = [r for r in policy.rules if r.name == "partner"]
    assert partner.plan_fields == {"dial_timeout_s": 20, "on_failure": "fallback:vm,s,1"}
    assert policy.tenant("acme").replaces_scope == "tenant"
    for statement in ("UPDATE rules SET dial_timeout_s = -5 WHERE name = 'partner'",
                      "UPDATE rules SET caller_id = '+44 20' WHERE name = 'partner'",
                      "UPDATE rules SET on_failure = 'voicemail' WHERE name = 'partner'",
                      "UPDATE rules SET release_after_s = -1 WHERE name = 'partner'",
                      "UPDATE rules SET caller_id = 'keep' WHERE name = 'no-premium'",
                      "UPDATE tenants SET replaces_scope = 'all' WHERE name = 'acme'"):
        with pytest.raises(db.DbError):
            conn.execute(statement)


def test_a_001_database_upgrades_with_its_rows_kept(tmp_path, monkeypatch):
    path = str(tmp_path / "old.db")
    conn = db.connect(path, create=True)
    with monkeypatch.context() as m:
        only_001(m)
        assert db.migrate(conn) == ["001_policy"]
    _populate_001(conn)
    before = version(conn)
    # this code reads a database not yet upgraded: every plan takes the defaults
    old = db.load_policy(conn)
    assert old.errors == () and old.tenant("acme").replaces_scope == "any"
    assert db.migrate(conn) == ALL[1:]
    _check_upgraded(conn, before)


def test_writing_plan_columns_to_a_001_database_says_to_upgrade(tmp_path, monkeypatch):
    conn = db.connect(str(tmp_path / "old.db"), create=True)
    only_001(monkeypatch)
    db.migrate(conn)
    with pytest.raises(db.DbError, match=r"has no column named caller_id .*schema older .*"
                                         r"referee db init"):
        conn.execute("INSERT INTO rules (name, action, target_kind, caller_id) "
                     "VALUES ('r', 'allow', 'any', 'keep')")


def test_seed_default_tenant_classes_and_rules(sqlite_db):
    policy = db.load_policy(db.connect(sqlite_db))
    assert policy.errors == ()
    assert [t.name for t in policy.tenants] == ["default"]
    default = policy.tenants[0]
    assert (default.allow_pstn, default.allow_out_of_dialog, default.allow_replaces) == (
        False, False, True)
    assert (default.subscription_expiry_s, default.transferor_bye_wait_s,
            default.caller_id) == (120, 32, "transferee")
    assert set(policy.class_names()) == {"premium", "high-cost", "nanp-international",
                                         "emergency"}
    assert {r.name for r in policy.rules} == {"no-premium", "no-high-cost", "no-international",
                                              "no-nanp-international"}


def test_sqlite_url_form_and_missing_file(tmp_path):
    path = tmp_path / "u.db"
    conn = db.connect(f"sqlite://{path}", create=True)
    assert db.migrate(conn) == ALL
    with pytest.raises(db.DbError, match="no such file .*referee db init"):
        db.connect(str(tmp_path / "absent.db"))
    assert not (tmp_path / "absent.db").exists()


def test_uninitialised_database_says_so(tmp_path):
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()
    with pytest.raises(db.DbError, match="no such table: policy_version .*referee db init"):
        db.read_version(db.connect(str(path)))


def _seed(dialect: str) -> str:
    text = resources.files("sql").joinpath(dialect, "001_policy.sql").read_text()
    return text[text.index("-- SEED-CLASSES"):]


def test_sqlite_and_postgresql_files_ship_the_same_seed():
    assert _seed("sqlite") == _seed("postgresql")


@pytest.mark.parametrize(("table", "insert", "update", "delete"), [
    ("tenants", "INSERT INTO tenants (name) VALUES ('t1')",
     "UPDATE tenants SET priority = 5 WHERE name = 't1'", "DELETE FROM tenants WHERE name = 't1'"),
    ("rules", "INSERT INTO rules (id, name, action, target_kind) VALUES (99, 'r', 'allow', 'any')",
     "UPDATE rules SET priority = 5 WHERE id = 99", "DELETE FROM rules WHERE id = 99"),
    ("number_classes", "INSERT INTO number_classes (name, e164_prefix) VALUES ('x', '+99')",
     "UPDATE number_classes SET note = 'n' WHERE name = 'x'",
     "DELETE FROM number_classes WHERE name = 'x'"),
])
def test_every_edit_bumps_policy_version(sqlite_db, table, insert, update, delete):
    conn = db.connect(sqlite_db)
    for statement in (insert, update, delete):
        before = version(conn)
        conn.execute(statement)
        assert version(conn) > before, statement


def test_schema_rejects_bad_values_and_protects_default(sqlite_db):
    conn = db.connect(sqlite_db)
    bad = [
        "INSERT INTO rules (name, action, target_kind, target_value, reply_code) "
        "VALUES ('r', 'deny', 'any', NULL, 200)",
        "INSERT INTO rules (name, action, target_kind, target_value) "
        "VALUES ('r', 'allow', 'e164-prefix', '1900')",
        "INSERT INTO tenants (name, caller_id) VALUES ('t', 'nobody')",
        "INSERT INTO tenants (name, home_cc) VALUES ('t', '+44')",
        "INSERT INTO number_classes (name, e164_prefix) VALUES ('pstn', '+1')",
        "UPDATE tenants SET match_user = 'x' WHERE name = 'default'",
        "DELETE FROM tenants WHERE name = 'default'",
        "INSERT INTO rules (tenant, name, action, target_kind) VALUES ('nobody', 'r', 'allow', "
        "'any')",
    ]
    for statement in bad:
        with pytest.raises(db.DbError):
            conn.execute(statement)


def test_removing_a_tenant_removes_its_rules(sqlite_db):
    conn = db.connect(sqlite_db)
    conn.execute("INSERT INTO tenants (name) VALUES ('acme')")
    conn.execute("INSERT INTO rules (tenant, name, action, target_kind) "
                 "VALUES ('acme', 'r', 'allow', 'any')")
    conn.execute("DELETE FROM tenants WHERE name = 'acme'")
    assert conn.rows("SELECT count(*) AS n FROM rules WHERE tenant = 'acme'")[0]["n"] == 0


# -- cache -----------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_cache_reloads_after_an_edit_but_not_before_the_interval(sqlite_db):
    clock = Clock()
    cache = PolicyCache(sqlite_db, check_interval_s=1.0, clock=clock)
    first = cache.current()
    assert cache.current() is first  # same instant: no database access at all
    clock.now += 5
    assert cache.current() is first  # checked, version unchanged: not reloaded
    editor = db.connect(sqlite_db)
    editor.execute("UPDATE tenants SET allow_pstn = 1 WHERE name = 'default'")
    clock.now += 0.5
    assert cache.current() is first  # interval not over
    clock.now += 0.6
    second = cache.current()
    assert second is not first
    assert second.version > first.version and second.tenants[0].allow_pstn
    assert cache.last_error is None


def test_cache_does_not_touch_the_database_between_checks(sqlite_db, monkeypatch):
    clock = Clock()
    cache = PolicyCache(sqlite_db, check_interval_s=1.0, clock=clock)
    loaded = cache.current().version
    calls = []
    monkeypatch.setattr(db, "read_version", lambda conn: calls.append(1) or loaded)
    for _ in range(100):
        cache.current()
    assert calls == []
    clock.now += 1
    cache.current()
    assert calls == [1]


def test_cache_keeps_last_good_policy_when_the_database_breaks(sqlite_db, caplog):
    clock = Clock()
    cache = PolicyCache(sqlite_db, check_interval_s=1.0, clock=clock)
    good = cache.current()
    editor = db.connect(sqlite_db)
    editor.execute("ALTER TABLE policy_version RENAME TO broken")
    clock.now += 1
    with caplog.at_level(logging.ERROR, "referee.policy"):
        assert cache.current() is good
    assert "no such table: policy_version" in cache.last_error
    assert "keeping policy version" in caplog.text
    editor.execute("ALTER TABLE broken RENAME TO policy_version")
    clock.now += 1
    assert cache.current() is good  # same version: recovered without a reload
    assert cache.last_error is None


def test_cache_that_never_loaded_raises_a_clear_error_and_retries_per_interval(tmp_path):
    clock = Clock()
    path = str(tmp_path / "later.db")
    cache = PolicyCache(path, check_interval_s=1.0, clock=clock)  # lazy: no error yet
    with pytest.raises(PolicyUnavailable, match=r"no transfer policy loaded from .*later\.db: "
                                                r".*no such file"):
        cache.current()
    db.migrate(db.connect(path, create=True))
    with pytest.raises(PolicyUnavailable):
        cache.current()  # within the interval: not retried
    clock.now += 1
    assert cache.current().tenants[0].name == "default"


def test_cache_backs_off_while_the_database_stays_broken(tmp_path, monkeypatch):
    clock = Clock()
    cache = PolicyCache(str(tmp_path / "absent.db"), check_interval_s=1.0, clock=clock)
    attempts = []
    real_connect = db.connect

    def counting_connect(*args, **kwargs):
        attempts.append(clock.now)
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(db, "connect", counting_connect)
    for _ in range(200):  # 100 s in 0.5 s steps
        with pytest.raises(PolicyUnavailable):
            cache.current()
        clock.now += 0.5
    # waits of 1, 2, 4, 8, 16 s, then 30 s at most
    assert attempts == [100.0, 101.0, 103.0, 107.0, 115.0, 131.0, 161.0, 191.0]


def test_cache_reopens_its_connection_in_a_forked_worker(sqlite_db, monkeypatch):
    clock = Clock()
    cache = PolicyCache(sqlite_db, clock=clock)
    cache.current()
    parent_conn = cache._conn
    child_pid = os.getpid() + 1
    monkeypatch.setattr(cache_mod.os, "getpid", lambda: child_pid)
    clock.now += 1
    cache.current()
    assert cache._conn is not parent_conn
    assert cache._inherited == [parent_conn]  # kept, not closed: it is the parent's


def test_cache_logs_skipped_rows(sqlite_db, caplog):
    raw = sqlite3.connect(sqlite_db)
    raw.execute("PRAGMA ignore_check_constraints = ON")
    raw.execute("INSERT INTO rules (id, name, action, target_kind, target_value, reply_code) "
                "VALUES (42, 'typo', 'deny', 'class', 'premuim', 403)")
    raw.commit()
    with caplog.at_level(logging.WARNING, "referee.policy"):
        policy = PolicyCache(sqlite_db).current()
    assert [str(e) for e in policy.errors] == ["rules row 42: unknown class 'premuim'"]
    assert "skipped rules row 42: unknown class 'premuim'" in caplog.text


# -- PostgreSQL ------------------------------------------------------------------------



def test_postgresql_migrate_triggers_checks_and_cache(pg_dsn):
    conn = db.connect(pg_dsn)
    assert db.migrate(conn) == ALL
    assert db.migrate(conn) == []
    policy = db.load_policy(conn)
    sqlite_conn = db.connect(":memory:")
    db.migrate(sqlite_conn)
    lite = db.load_policy(sqlite_conn)
    assert policy.errors == ()
    assert policy.tenants == lite.tenants
    assert [(r.name, r.priority, r.target) for r in policy.rules] == [
        (r.name, r.priority, r.target) for r in lite.rules]
    assert policy.classes == lite.classes

    clock = Clock()
    cache = PolicyCache(pg_dsn, clock=clock)
    first = cache.current()
    for statement in ("INSERT INTO tenants (name, allow_pstn) VALUES ('t1', true)",
                      "UPDATE number_classes SET note = 'x' WHERE e164_prefix = '+1900'",
                      "DELETE FROM rules WHERE name = 'no-premium'"):
        before = version(conn)
        conn.execute(statement)
        assert version(conn) == before + 1, statement
    clock.now += 1
    assert [t.name for t in cache.current().tenants] == ["t1", "default"]
    assert cache.current() is not first

    for statement in ("DELETE FROM tenants WHERE name = 'default'",
                      "INSERT INTO rules (name, action, target_kind, reply_code) "
                      "VALUES ('r', 'deny', 'any', 200)"):
        with pytest.raises(db.DbError):
            conn.execute(statement)
    with pytest.raises(db.DbError, match="check constraint"), conn.transaction():
        conn.execute("UPDATE tenants SET caller_id = 'nobody' WHERE name = 't1'")
    assert db.load_policy(conn).tenant("t1").caller_id == "transferee"  # rolled back


def test_postgresql_001_database_upgrades(pg_dsn, monkeypatch):
    conn = db.connect(pg_dsn)
    conn.execute("CREATE SCHEMA old")
    conn.execute("SET search_path TO old")
    with monkeypatch.context() as m:
        only_001(m)
        assert db.migrate(conn) == ["001_policy"]
    _populate_001(conn)
    before = version(conn)
    assert db.load_policy(conn).tenant("acme").replaces_scope == "any"
    with pytest.raises(db.DbError, match="schema older"):
        conn.execute("INSERT INTO rules (name, action, target_kind, caller_id) "
                     "VALUES ('r', 'allow', 'any', 'keep')")
    assert db.migrate(conn) == ALL[1:]
    _check_upgraded(conn, before)


def test_postgresql_password_is_not_shown():
    target = db.Target.parse("postgresql://u:s3cret@db.example/referee")
    assert "s3cret" not in target.display and "***" in target.display
