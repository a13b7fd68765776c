"""AmiController's threads outlive failures that are not Redis or AMI errors."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from agi.ami import AmiController
from kemi.config import AsteriskSettings, RedisSettings, Settings
from kemi.core.anchor import JOBS_GROUP, MoveJob, jobs_key, progress_key
from kemi.storage.resp import RespClient

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:asterisk.manager")


def _settings(url: str) -> Settings:
    return Settings(redis=RedisSettings(url=url, prefix="referee"),
                    asterisk=AsteriskSettings(name="ast1", ami_port=1))


def _wait(pred, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end and not pred():
        time.sleep(0.02)
    return pred()


def test_loop_survives_a_login_that_raises():
    attempts: list[float] = []

    def factory():
        attempts.append(time.monotonic())
        raise RuntimeError("boom")

    c = AmiController(_settings("redis://127.0.0.1:1/0"), session_factory=factory,
                      backoff_max_s=0.05)
    c.start()
    try:
        assert _wait(lambda: len(attempts) >= 3), "the loop died after the first failure"
        assert c._threads[0].is_alive()
    finally:
        c.stop()


def test_job_reader_survives_a_failure_and_reads_the_job_again(redis_server, monkeypatch):
    """An unexpected error after XREADGROUP delivered a job: the reader keeps going and the
    job (pending for us, never acked) is read again at once, not after the idle reclaim."""
    c = AmiController(_settings(redis_server.url), consumer="t", block_ms=100)
    real_take = AmiController._take
    failures = []

    def take(self, client, entries, reclaimed):
        if entries and not failures:
            failures.append(entries)
            raise RuntimeError("boom")
        return real_take(self, client, entries, reclaimed)

    monkeypatch.setattr(AmiController, "_take", take)
    c.claim_every_s = 3600.0  # only the re-read can bring the job back
    c.ready.set()
    reader = threading.Thread(target=c._read_jobs, daemon=True)
    reader.start()
    try:
        job = MoveJob("c1", "3", "sip:2000@h", "PJSIP/2000", "a@h",
                      progress_key("referee", "k1"), time.time())
        key = jobs_key("referee", "ast1")
        redis = RespClient(redis_server.url)
        assert _wait(lambda: redis.call("EXISTS", key) == 1)  # the group is created
        redis.call("XADD", key, "*", *[x for kv in job.to_fields().items() for x in kv])
        kind, item = c._queue.get(timeout=5)
        assert failures and kind == "job" and item.job == job and item.reclaimed
        assert reader.is_alive()
        assert int(redis.call("XPENDING", key, JOBS_GROUP)[0]) == 1
    except queue.Empty:
        pytest.fail("the job was not read again after the failure")
    finally:
        c._stop.set()
        reader.join(timeout=5)


def test_an_unusable_job_is_refused_with_a_503_and_noted(redis_server):
    """A MoveJob with a bad field that still names its transfer: the transferor hears 503 at
    once (not the subscription's expiry), the record says why, the entry is acked."""
    from kemi.core.anchor import Progress
    from kemi.storage.transfers import TransferStore

    redis = RespClient(redis_server.url)
    store = TransferStore(redis, prefix="referee")
    now = time.time()
    store.create("c9", "4", {}, now=now, deadline=now + 600)
    c = AmiController(_settings(redis_server.url), consumer="t", block_ms=100)
    job = MoveJob("c9", "4", "sip:2000@h", "PJSIP/2000", "a@h", progress_key("referee", "k1"),
                  now)
    key = jobs_key("referee", "ast1")
    redis.call("XGROUP", "CREATE", key, JOBS_GROUP, "0", "MKSTREAM")
    fields = {**job.to_fields(), "on_failure": "voicemail"}
    redis.call("XADD", key, "*", *[x for kv in fields.items() for x in kv])
    c.ready.set()
    reader = threading.Thread(target=c._read_jobs, daemon=True)
    reader.start()
    try:
        assert _wait(lambda: (store.get("c9", "4") or {}).get("ami_result") == "job-unusable")
        assert "on_failure" in store.get("c9", "4")["ami_error"]
        entries = redis.call("XRANGE", job.reply_to, "-", "+")
        (p,) = [Progress.from_fields(dict(zip(b[0::2], b[1::2], strict=True)))
                for _, b in entries]
        assert (p.call_id, p.refer_id, p.code, p.final) == ("c9", "4", 503, True)
        assert _wait(lambda: int(redis.call("XPENDING", key, JOBS_GROUP)[0]) == 0)
        assert c._queue.empty()
    finally:
        c._stop.set()
        reader.join(timeout=5)
