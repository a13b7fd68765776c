"""kemi.storage.transfer_log: finished transfers from Redis's stream into SQL, at least
once and never twice -- against a real redis-server and both SQLite and a real
PostgreSQL; and `referee log run` / `referee transfers --since --csv` as operators run
them."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kemi.cli import main
from kemi.core.state import Event
from kemi.storage import policy_db as db
from kemi.storage import transfer_log
from kemi.storage.resp import RespClient
from kemi.storage.transfer_log import GROUP, LogWriter
from kemi.storage.transfers import TransferStore

REFEREE = str(Path(sys.prefix) / "bin" / "referee")


@pytest.fixture(params=["sqlite", "postgresql"])
def sql(request, tmp_path):
    """A migrated policy database of each kind (the PostgreSQL one is emptied first)."""
    if request.param == "sqlite":
        dsn = str(tmp_path / "policy.db")
        conn = db.connect(dsn, create=True)
    else:
        dsn = request.getfixturevalue("pg_dsn")
        conn = db.connect(dsn)
    db.migrate(conn)
    conn.execute("DELETE FROM transfer_log")
    yield dsn, conn
    conn.close()


@pytest.fixture
def store(redis_server):
    return TransferStore(RespClient(redis_server.url, timeout_s=2.0))


def finish(store, call_id, rid, at, state=Event.NOTIFY_SUCCESS, sipfrag="200 OK"):
    store.create(call_id, rid, {"rule": "default-allow", "tenant": "default"}, now=at,
                 deadline=at + 60, transferor="andrew@x", transferee="mckenzie@x",
                 target="marsha@x")
    store.apply(call_id, rid, Event.REFER_ACCEPTED, at + 0.1)
    store.apply(call_id, rid, state, at + 1.0, fields={"final_sipfrag": sipfrag})


def logged(conn) -> list[tuple]:
    return [(r["call_id"], r["refer_id"], r["outcome"], r["final_sipfrag"])
            for r in conn.rows("SELECT * FROM transfer_log ORDER BY call_id, refer_id")]


def test_finished_transfers_are_written_once_with_their_facts(sql, store):
    _dsn, conn = sql
    finish(store, "c1@h", "2", 1000.0)
    finish(store, "c2@h", "3", 1001.0, Event.NOTIFY_FAILURE, "486 Busy Here")
    writer = LogWriter(store, conn, block_ms=100)
    writer.run(threading.Event(), once=True)
    assert logged(conn) == [("c1@h", "2", "succeeded", "200 OK"),
                            ("c2@h", "3", "failed", "486 Busy Here")]
    [row] = conn.rows("SELECT * FROM transfer_log WHERE call_id = 'c1@h'")
    assert (row["transferor"], row["transferee"], row["target"]) == (
        "andrew@x", "mckenzie@x", "marsha@x")
    assert (row["rule"], row["tenant"]) == ("default-allow", "default")
    assert row["created_at"] == 1000.0 and row["final_at"] == 1001.0 and row["stream_id"]
    # Everything is acknowledged: nothing waits for this group.
    assert store.client.call("XPENDING", store.stream_key, GROUP)[0] == 0


def test_a_batch_is_acknowledged_in_one_round_trip(sql, store):
    """A batch of 100 rows was 100 XACKs, each its own round trip -- more of the writer's
    CPU than reading the batch."""
    _dsn, conn = sql
    for i in range(5):
        finish(store, f"c{i}@h", "2", 1000.0 + i)
    sent: list[tuple] = []
    real_call = store.client.call
    store.client.call = lambda *args: sent.append(args) or real_call(*args)
    try:
        assert LogWriter(store, conn, consumer="w1", block_ms=100).step() == 5
    finally:
        store.client.call = real_call
    [xack] = [c for c in sent if c[0] == "XACK"]
    assert len(xack) == 3 + 5  # XACK key group and the five entry ids
    assert store.client.call("XPENDING", store.stream_key, GROUP)[0] == 0


def test_a_writer_stopped_between_commit_and_ack_writes_the_same_rows_again(sql, store):
    _dsn, conn = sql
    finish(store, "c1@h", "2", 1000.0)
    crashing = LogWriter(store, conn, consumer="w1", block_ms=100)
    real_ack = transfer_log.streams.ack
    transfer_log.streams.ack = lambda *a: (_ for _ in ()).throw(SystemExit("killed"))
    try:
        with pytest.raises(SystemExit):
            crashing.step()
            crashing.step()
    finally:
        transfer_log.streams.ack = real_ack
    assert logged(conn) == [("c1@h", "2", "succeeded", "200 OK")]  # committed, not acked
    LogWriter(store, conn, consumer="w1", block_ms=100).run(threading.Event(), once=True)
    assert logged(conn) == [("c1@h", "2", "succeeded", "200 OK")]  # the same row, once
    assert store.client.call("XPENDING", store.stream_key, GROUP)[0] == 0


def test_a_fact_after_the_end_reaches_the_row_already_written(sql, store):
    # The row is written when the transfer ends; what the transferor answered to the final
    # NOTIFY, and what Asterisk did after that, come later and still reach the same row.
    _dsn, conn = sql
    finish(store, "c1@h", "2", 1000.0)
    writer = LogWriter(store, conn, block_ms=100)
    writer.run(threading.Event(), once=True)
    store.apply("c1@h", "2", Event.NOTIFY_SUCCESS, 1001.5, fields={"final_notify_reply": "200"})
    store.annotate("c1@h", "2", 1003.0, {"ami_result": "released"}, "late AMI")
    writer.run(threading.Event(), once=True)
    [row] = conn.rows("SELECT * FROM transfer_log")
    assert (row["outcome"], row["ami_result"], row["final_at"]) == ("succeeded", "released",
                                                                   1001.0)
    assert json.loads(row["record"])["final_notify_reply"] == "200"


def test_the_writer_outlives_a_redis_restart_and_loses_nothing(sql, store, redis_server):
    _dsn, conn = sql
    finish(store, "c1@h", "2", 1000.0)
    writer = LogWriter(store, conn, block_ms=100)
    writer.run(threading.Event(), once=True)
    redis_server.stop()
    stop = threading.Event()
    runner = threading.Thread(target=writer.run, args=(stop,))
    runner.start()
    try:
        time.sleep(0.5)  # the writer meets a Redis that is gone, and retries
        redis_server.start()
        finish(store, "c3@h", "4", 1002.0)  # the stream (and group) start over
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(logged(conn)) < 2:
            time.sleep(0.1)
    finally:
        stop.set()
        runner.join(timeout=10)
    assert logged(conn) == [("c1@h", "2", "succeeded", "200 OK"),
                            ("c3@h", "4", "succeeded", "200 OK")]


def _cli(tmp_path, redis_url, dsn, *args, capsys):
    conf = tmp_path / "referee.toml"
    conf.write_text(f'policy_db = "{dsn}"\n[redis]\nurl = "{redis_url}"\n')
    rc = main(["--config", str(conf), *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_log_run_once_then_csv_for_billing(sql, store, redis_server, tmp_path, capsys):
    dsn, conn = sql
    t0 = time.mktime((2026, 12, 1, 10, 0, 0, 0, 0, -1))
    finish(store, "c1@h", "2", t0)
    finish(store, "c2@h", "3", t0 + 86400, Event.NOTIFY_FAILURE, "486 Busy Here")
    conf = tmp_path / "run.toml"
    conf.write_text(f'policy_db = "{dsn}"\n[redis]\nurl = "{redis_server.url}"\n')
    p = subprocess.run([REFEREE, "--config", str(conf), "log", "run", "--once"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "stopped: 2 transfer(s) written" in p.stderr, p.stderr
    rc, out, _ = _cli(tmp_path, redis_server.url, dsn, "transfers", "--since", "2026-12-01",
                      "--until", "2026-12-02", "--csv", capsys=capsys)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rc == 0 and [(r["call_id"], r["outcome"]) for r in rows] == [("c1@h", "succeeded")]
    assert rows[0]["final_at"].startswith("2026-12-01T10:00:01")
    assert "record" not in rows[0] and rows[0]["target"] == "marsha@x"


def test_transfers_shows_from_sql_what_the_stream_has_trimmed(sql, store, redis_server,
                                                              tmp_path, capsys):
    dsn, conn = sql
    finish(store, "c1@h", "2", 1000.0)
    LogWriter(store, conn, block_ms=100).run(threading.Event(), once=True)
    store.client.call("DEL", store.stream_key)  # trimmed away
    rc, out, _ = _cli(tmp_path, redis_server.url, dsn, "transfers", capsys=capsys)
    assert rc == 0 and "c1@h / 2" in out and "succeeded" in out


def test_bad_dates_and_csv_without_since_are_usage_errors(sql, redis_server, tmp_path,
                                                          capsys):
    dsn, _ = sql
    rc, _, err = _cli(tmp_path, redis_server.url, dsn, "transfers", "--since", "yesterday",
                      capsys=capsys)
    assert rc == 2 and "--since 'yesterday': expected YYYY-MM-DD" in err
    rc, _, err = _cli(tmp_path, redis_server.url, dsn, "transfers", "--csv", capsys=capsys)
    assert rc == 2 and "give --since" in err


def test_log_run_on_a_database_without_the_log_says_to_upgrade(tmp_path, redis_server):
    dsn = tmp_path / "old.db"
    conn = db.connect(str(dsn), create=True)
    conn.execute("CREATE TABLE schema_migrations (version INTEGER, name TEXT)")
    conn.close()
    conf = tmp_path / "referee.toml"
    conf.write_text(f'policy_db = "{dsn}"\n[redis]\nurl = "{redis_server.url}"\n')
    p = subprocess.run([REFEREE, "--config", str(conf), "log", "run", "--once"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "no transfer_log table: run `referee db init`" in p.stderr
