"""A Sentinel-managed primary (redis+sentinel://...): referee finds the primary through
the Sentinels, and finds it again after a failover -- real redis-server processes (a
primary, a replica, three Sentinels), the failover made by the Sentinels themselves
while transfers are being recorded: no record lost, failures only RedisUnavailable (the
503 a REFER gets during the switch)."""

from __future__ import annotations

import threading
import time

import pytest

from kemi import config
from kemi.core.state import Event
from kemi.storage.resp import RedisUnavailable, RespClient, SentinelClient
from kemi.storage.transfers import TransferStore
from tests.support.sentinel import running


@pytest.fixture(scope="module")
def sentinels():
    with running() as s:
        yield s


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


def test_a_failover_during_transfers_is_followed_and_keeps_what_was_settled(sentinels):
    """Redis replicates asynchronously: a write the old primary acknowledged in the moment
    of the switch may not have reached the replica promoted (Sentinel promises no more;
    min-replicas-to-write narrows that moment).  What holds, and is checked: every failure
    is a RedisUnavailable (the REFER's 503), the client follows the new primary, every
    record written before the failover began is there, and so is every one after it
    settled."""
    store = TransferStore(RespClient(sentinels.url, timeout_s=0.3))
    done: list[tuple[str, float]] = []
    failures, stop = [], threading.Event()

    def traffic():
        i = 0
        while not stop.is_set():
            i += 1
            cid, now = f"fo-{i}@h", time.time()
            try:
                store.create(cid, "1", {}, now=now, deadline=now + 60, transferor="a@x",
                             transferee="b@x", target="c@x")
                store.apply(cid, "1", Event.REFER_ACCEPTED, now)
                done.append((cid, time.monotonic()))
            except RedisUnavailable as exc:
                failures.append(str(exc))
            time.sleep(0.01)

    runner = threading.Thread(target=traffic)
    runner.start()
    try:
        time.sleep(0.5)
        began = time.monotonic()
        old = sentinels.primary_port()
        new = sentinels.failover()
        sentinels.settled(old, new)
        settled = time.monotonic()
        time.sleep(1.0)  # traffic goes on against the new primary
    finally:
        stop.set()
        runner.join(timeout=10)
    assert new != old
    check = TransferStore(RespClient(f"redis://127.0.0.1:{new}/0", timeout_s=2.0))
    before = [cid for cid, at in done if at < began]
    after = [cid for cid, at in done if at > settled + 0.5]
    assert before and len(after) > 10, (len(before), len(after), failures[-3:])
    lost = [cid for cid in before + after if (check.get(cid, "1") or {}).get("state")
            != "accepted"]
    assert lost == []
    assert store.client.address == f"127.0.0.1:{new}" and store.client.discoveries >= 2
    assert all("no longer takes writes" in f or "refused" in f or "timeout" in f
               or "closed" in f for f in failures), failures
