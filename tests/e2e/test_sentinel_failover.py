"""A Sentinel-managed Redis (a primary, two replicas, three Sentinels) failing over under
REFER traffic, through a real Kamailio
with both example cfgs ([redis] url = redis+sentinel://...): every REFER is answered --
202, or 503 during the switch at most -- REFERs are accepted again once the failover has
settled, and every REFER accepted before it began has its record on the new primary
(tests/kemi/storage/test_sentinel.py says what async replication cannot promise)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kemi.cli.demo.kamailio_node import Kamailio, write_referee_config
from kemi.storage.resp import RespClient
from kemi.storage.transfers import TransferStore
from tests.support.raw import RawUA, refer
from tests.support.sentinel import running


@pytest.fixture
def sentinels():
    with running() as s:
        yield s


@pytest.mark.parametrize("cfg", ["kamailio.cfg", "kamailio-native.cfg"])
def test_refers_are_answered_through_a_failover_and_no_record_is_lost(tmp_path, sentinels,
                                                                       cfg):
    db = tmp_path / "policy.db"
    subprocess.run([str(Path(sys.prefix) / "bin" / "referee"), "--db", str(db), "db",
                    "init"], check=True, capture_output=True)
    conf = write_referee_config(tmp_path / "referee.toml", redis_url=sentinels.url,
                                policy_db=db, redis="breaker_failures = 50")
    kam = Kamailio(tmp_path / "kamailio", conf, cfg=cfg).start()
    ua = RawUA(kam.port)
    answers: dict[str, tuple[int | None, float]] = {}
    stop = threading.Event()

    def traffic():
        i = 0
        while not stop.is_set():
            i += 1
            cid = f"fo-{i}@127.0.0.1"
            r = ua.send(refer(ua, call_id=cid.encode()))
            answers[cid] = (r.code if r is not None else None, time.monotonic())
            time.sleep(0.02)

    runner = threading.Thread(target=traffic)
    try:
        runner.start()
        time.sleep(1.0)
        began = time.monotonic()
        old = sentinels.primary_port()
        new = sentinels.failover()
        sentinels.settled(old, new)
        settled = time.monotonic()
        time.sleep(1.5)
    finally:
        stop.set()
        runner.join(timeout=20)
        ua.close()
        kam.stop()
    assert new != old
    codes = [code for code, _at in answers.values()]
    assert None not in codes, "a REFER went unanswered"
    assert set(codes) <= {202, 503}, set(codes)
    late = [code for code, at in answers.values() if at > settled + 1.0]
    assert late and set(late) == {202}, late  # accepted again once it settled
    store = TransferStore(RespClient(f"redis://127.0.0.1:{new}/0", timeout_s=2.0))
    early = [cid for cid, (code, at) in answers.items() if code == 202 and at < began]
    assert early and [cid for cid in early if store.get(cid, "2") is None] == []
    assert not [ln for ln in kam.log().splitlines() if "referee:" in ln and "failed:" in ln]
