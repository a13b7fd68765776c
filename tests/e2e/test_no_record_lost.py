"""Redis hangs in the middle of a transfer: the phones do not notice, and the outcome is
still recorded once Redis answers again (events spooled locally, replayed by the sweep)."""

from __future__ import annotations

import threading
import time

import pytest

from kemi.cli.demo import phones as scenarios
from kemi.cli.demo.kamailio_node import free_udp_port
from tests.e2e.conftest import make_lab


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
    # The outcome the replay decided is counted, like one decided live.
    stats = lab.stats()
    assert stats["transfers_succeeded"] == 1, stats
    assert stats["events_spooled"] >= 1 and stats["events_replayed"] == stats["events_spooled"]
    assert wait_for(
        lambda: not any(p.name.startswith(("journal-", "replaying-")) for p in journal.iterdir())
    ), "spooled events left behind: " + ", ".join(p.name for p in journal.iterdir())
