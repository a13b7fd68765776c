"""Redis hangs in the middle of a transfer: the phones do not notice, and the outcome is
still recorded once Redis answers again (events spooled locally, replayed by the sweep)."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from kemi.cli.demo import phones as scenarios
from kemi.cli.demo.kamailio_node import free_udp_port
from tests.e2e.conftest import REFEREE, make_lab


@pytest.fixture(params=["kamailio.cfg", "kamailio-native.cfg"])
def fragile_lab(request, tmp_path, redis_server):
    lab = make_lab(tmp_path, redis_server, request.param,
                   redis="breaker_open_s = 0.5\nbreaker_failures = 2")
    lab.kamailio.start()
    yield lab
    lab.kamailio.stop()


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    return predicate()


def test_outcome_reached_while_redis_hangs_is_recorded_when_it_is_back(fragile_lab):
    lab = fragile_lab
    mk_port, ma_port = free_udp_port(), free_udp_port()
    lab.register("mckenzie", mk_port)
    lab.register("marsha", ma_port)
    marsha = lab.party("marsha", scenarios.Marsha(ring_ms=2500).xml(), port=ma_port).start()
    mk = lab.party("mckenzie", scenarios.McKenzie().xml(), port=mk_port).start()
    andrew = lab.party("andrew", scenarios.Andrew().xml()).start()

    # While Marsha rings, Redis stops answering (SIGSTOP: connections hang).
    ringing = wait_for(lambda: any(r.get("state") == "ringing" for r in lab.records()), 5)
    assert ringing, f"transfer never reached ringing: {lab.records()}"
    lab.redis.pause()
    resume = threading.Timer(3.5, lab.redis.resume)
    resume.start()
    try:
        assert andrew.wait() == 0, andrew.report()
        assert mk.wait() == 0, mk.report()
        assert marsha.wait() == 0, marsha.report()
    finally:
        resume.join()
    journal = lab.tmp / "journal"
    assert wait_for(lambda: lab.finished(), 10), "the spooled outcome was never replayed"
    [record] = lab.finished()
    assert record["state"] == "succeeded"
    assert record["final_sipfrag"] == "200 OK"
    assert "spooled" in lab.kamailio.log()
    # The outcome the replay decided is counted, like one decided live (the sweep counts
    # a replay's outcomes once the replay is done: a moment after the record is there).
    stats = wait_for(lambda: (s := lab.stats())["transfers_succeeded"] == 1 and s, 5) \
        or lab.stats()
    assert stats["transfers_succeeded"] == 1, (stats, lab.kamailio.log()[-3000:])
    assert stats["events_spooled"] >= 1 and stats["events_replayed"] == stats["events_spooled"]
    assert wait_for(
        lambda: not any(p.name.startswith(("journal-", "replaying-")) for p in journal.iterdir())
    ), "spooled events left behind: " + ", ".join(p.name for p in journal.iterdir())


def test_a_breaker_open_in_a_kamailio_process_is_shown_by_check_and_counted(fragile_lab):
    # No SIP traffic: the sweep (a timer process) is the one that meets Redis hung.
    lab = fragile_lab
    journal = lab.tmp / "journal"
    lab.redis.pause()
    try:
        files = wait_for(lambda: sorted(journal.glob("breaker-*.json")), 15)
        assert files, "no process's breaker opened while Redis hung"
        pid = int(files[0].stem.removeprefix("breaker-"))
        assert Path(f"/proc/{pid}/comm").read_text().strip() == "kamailio"
        assert lab.stats()["redis_breakers_open"] == len(files)
        out = subprocess.run([REFEREE, "--config", str(lab.tmp / "referee.toml"), "check"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 1, out.stdout  # Redis does not answer the check either
        assert f"Redis circuit breaker OPEN in Kamailio process {pid} since" in out.stdout
    finally:
        lab.redis.resume()
    # The next sweep's trial call succeeds: the breaker closes, its file and count go.
    assert wait_for(lambda: not list(journal.glob("breaker-*.json")), 15), \
        "the breaker file stayed after Redis came back"
    assert lab.stats()["redis_breakers_open"] == 0
    assert lab.stats()["redis_breaker_openings"] >= 1
