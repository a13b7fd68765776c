"""`referee check` against real redis-servers: the one the tests use (appendonly off, as
Debian's stock redis.conf), one started with config-examples/redis/redis.conf, and none."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from kemi.cli.demo.redis_server import RedisServer
from kemi.cli.demo.redis_server import _free_port as free_tcp_port

REPO = Path(__file__).resolve().parents[3]
REFEREE = str(Path(sys.prefix) / "bin" / "referee")


def check(tmp_path: Path, url: str) -> subprocess.CompletedProcess:
    db = tmp_path / "policy.db"
    subprocess.run([REFEREE, "--db", str(db), "db", "init"], check=True, capture_output=True)
    conf = tmp_path / "referee.toml"
    conf.write_text(f'policy_db = "{db}"\n[redis]\nurl = "{url}"\ntimeout_ms = 200\n')
    return subprocess.run([REFEREE, "--config", str(conf), "check"], capture_output=True,
                          text=True, timeout=30)


def test_a_redis_without_aof_is_reachable_but_warned_about(tmp_path, redis_server):
    out = check(tmp_path, redis_server.url)
    assert out.returncode == 0, out.stderr
    assert f"redis 127.0.0.1:{redis_server.port}: reachable, primary, appendonly off" in out.stdout
    assert "warning: Redis at 127.0.0.1:" in out.stdout and "appendonly yes" in out.stdout
    assert "policy " in out.stdout and "readable" in out.stdout


def test_the_example_redis_conf_keeps_transfers_through_a_crash(tmp_path):
    data = tmp_path / "redis"
    data.mkdir()
    server = RedisServer(data, conf=REPO / "config-examples/redis/redis.conf")
    server.start()  # answers PING, or says why it exited
    try:
        out = check(tmp_path, server.url)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"redis 127.0.0.1:{server.port}: reachable, primary, appendonly on" \
            in out.stdout
        assert "warning" not in out.stdout
    finally:
        server.stop()


def test_no_redis_is_a_failure_said_in_one_line(tmp_path):
    out = check(tmp_path, f"redis://127.0.0.1:{free_tcp_port()}/0")
    assert out.returncode == 1
    assert "UNREACHABLE" in out.stdout


def check_with(tmp_path: Path, url: str, journal: Path) -> subprocess.CompletedProcess:
    db = tmp_path / "policy.db"
    subprocess.run([REFEREE, "--db", str(db), "db", "init"], check=True, capture_output=True)
    conf = tmp_path / "referee.toml"
    conf.write_text(f'policy_db = "{db}"\n[redis]\nurl = "{url}"\ntimeout_ms = 200\n'
                    f'[kamailio]\njournal_dir = "{journal}"\n')
    return subprocess.run([REFEREE, "--config", str(conf), "check"], capture_output=True,
                          text=True, timeout=30)


def test_a_replica_is_no_place_for_referee_to_write(tmp_path, redis_server):
    data = tmp_path / "replica"
    data.mkdir()
    # A TCP port of its own, and a start that waits for PING or says why redis exited:
    # a UDP-free number once collided with a TCP port in use, and the check saw nothing.
    replica = RedisServer(data, args=["--replicaof", "127.0.0.1", str(redis_server.port)])
    replica.start()
    try:
        out = check_with(tmp_path, replica.url, tmp_path / "j")
        assert out.returncode == 1
        assert (f"redis 127.0.0.1:{replica.port}: reachable, replica of "
                f"127.0.0.1:{redis_server.port}") in out.stdout
        assert "NOT WRITABLE" in out.stdout
    finally:
        replica.stop()


def test_events_waiting_in_the_journal_are_counted_per_process(tmp_path, redis_server):
    journal = tmp_path / "journal"
    journal.mkdir()
    (journal / "journal-101.jsonl").write_text('{"op":"apply"}\n{"op":"apply"}\n')
    (journal / "replaying-102.jsonl").write_text('{"op":"create"}\n')
    out = check_with(tmp_path, redis_server.url, journal)
    assert out.returncode == 0, out.stdout  # waiting is not failing: the sweep replays
    assert (f"warning: journal {journal}: 3 event(s) waiting for Redis "
            "(journal-101.jsonl: 2, replaying-102.jsonl: 1)") in out.stdout


def test_an_empty_journal_and_the_scripts_redis_has_are_said(tmp_path, redis_server):
    from kemi.storage import dialogs  # noqa: F401 - its scripts count too
    from kemi.storage.resp import RespClient
    from kemi.storage.scripts import SCRIPTS
    from kemi.storage.transfers import TransferStore

    TransferStore(RespClient(redis_server.url, timeout_s=2.0)).get("c1@h", "2")
    out = check_with(tmp_path, redis_server.url, tmp_path / "none-yet")
    assert f"journal {tmp_path / 'none-yet'}: empty" in out.stdout
    assert f"0 of {len(SCRIPTS)} referee scripts cached" in out.stdout
    client = RespClient(redis_server.url, timeout_s=2.0)
    client.call("SCRIPT", "LOAD", SCRIPTS[0].text)
    out = check_with(tmp_path, redis_server.url, tmp_path / "none-yet")
    assert f"1 of {len(SCRIPTS)} referee scripts cached" in out.stdout
    assert "ndb_redis runner" in out.stdout and "not cached: sent by" in out.stdout
    from tests.support.packed import packed_client

    packed_client(redis_server.url).call("PING")  # what Kamailio's first ndb_redis call does
    out = check_with(tmp_path, redis_server.url, tmp_path / "none-yet")
    assert "cached: Kamailio reaches Redis through ndb_redis" in out.stdout


def test_a_process_whose_breaker_is_open_is_named_and_a_closed_one_is_not(
        tmp_path, redis_server):
    from kemi.storage.journal import Journal

    journal = Journal(tmp_path / "journal")
    journal.breaker_opened("127.0.0.1:6379", time.time())  # this (live) process
    dead = subprocess.Popen(["true"])
    dead.wait()
    (journal.dir / f"breaker-{dead.pid}.json").write_text(
        f'{{"pid": {dead.pid}, "since": 1.0, "address": "x:1"}}')
    out = check_with(tmp_path, redis_server.url, journal.dir)
    assert out.returncode == 0, out.stdout  # the process retries on its own: a warning
    [line] = [x for x in out.stdout.splitlines() if "circuit breaker" in x]
    assert line.startswith(f"warning: Redis circuit breaker OPEN in Kamailio process "
                           f"{os.getpid()} since ")
    assert "(127.0.0.1:6379)" in line
    journal.breaker_closed()
    out = check_with(tmp_path, redis_server.url, journal.dir)
    assert ("breakers: closed in every Kamailio process (1 stale file(s) of processes gone)"
            in out.stdout)
