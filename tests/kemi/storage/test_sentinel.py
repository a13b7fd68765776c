"""A Sentinel-managed primary (redis+sentinel://...): referee finds the primary through
the Sentinels, and finds it again after a failover -- real redis-server processes (a
primary, a replica, three Sentinels), the failover made by the Sentinels themselves
while transfers are being recorded: no record lost, failures only RedisUnavailable (the
503 a REFER gets during the switch)."""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import pytest

from kemi import config
from kemi.core.state import Event
from kemi.storage.resp import RedisUnavailable, RespClient, SentinelClient
from kemi.storage.transfers import TransferStore
from tests.support.sentinel import SentinelSet


@pytest.fixture(scope="module")
def sentinels():
    with tempfile.TemporaryDirectory(prefix="referee-sentinel-") as top:
        s = SentinelSet(Path(top))
        try:
            yield s.start()
        finally:
            s.stop()


def test_the_client_talks_to_the_primary_the_sentinels_name(sentinels):
    client = RespClient(sentinels.url, timeout_s=1.0)
    assert isinstance(client, SentinelClient)
    assert client.call("ROLE")[0] == b"master"
    assert client.address == f"127.0.0.1:{sentinels.primary_port()}"


def test_a_sentinel_url_is_accepted_by_the_settings(tmp_path, sentinels):
    path = tmp_path / "referee.toml"
    path.write_text(f'[redis]\nurl = "{sentinels.url}"\n')
    assert config.load(str(path)).redis.url == sentinels.url
    path.write_text('[redis]\nurl = "redis+sentinel://127.0.0.1:1"\n')
    with pytest.raises(config.ConfigError, match="no primary name"):
        config.load(str(path))


def test_a_failover_during_transfers_loses_no_record(sentinels):
    store = TransferStore(RespClient(sentinels.url, timeout_s=0.3))
    done, failures, stop = [], [], threading.Event()

    def traffic():
        i = 0
        while not stop.is_set():
            i += 1
            cid, now = f"fo-{i}@h", time.time()
            try:
                store.create(cid, "1", {}, now=now, deadline=now + 60, transferor="a@x",
                             transferee="b@x", target="c@x")
                store.apply(cid, "1", Event.REFER_ACCEPTED, now)
                done.append(cid)
            except RedisUnavailable as exc:
                failures.append(str(exc))
            time.sleep(0.01)

    runner = threading.Thread(target=traffic)
    runner.start()
    try:
        time.sleep(0.5)
        before = len(done)
        old = sentinels.primary_port()
        new = sentinels.failover()
        assert new != old
        time.sleep(1.0)  # traffic goes on against the new primary
    finally:
        stop.set()
        runner.join(timeout=10)
    assert before > 0 and len(done) > before + 10, (before, len(done), failures[-3:])
    # Every transfer recorded before, during and after the switch is there, accepted.
    check = TransferStore(RespClient(f"redis://127.0.0.1:{new}/0", timeout_s=2.0))
    states = {cid: (check.get(cid, "1") or {}).get("state") for cid in done}
    assert set(states.values()) == {"accepted"}, [c for c, s in states.items() if s != "accepted"]
    assert store.client.address == f"127.0.0.1:{new}" and store.client.discoveries >= 2
    # Failures, if any, were the switch itself, said as such.
    assert all("no longer takes writes" in f or "refused" in f or "timeout" in f or "closed" in f
               for f in failures), failures
