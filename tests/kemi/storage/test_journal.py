"""The spool that keeps transfer events while Redis is away (real redis-server)."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from kemi.core.state import Event
from kemi.storage.journal import Journal
from kemi.storage.resp import CircuitBreaker, RedisUnavailable, RespClient
from kemi.storage.transfers import TransferStore


def make_store(url: str, timeout: float = 0.1) -> TransferStore:
    return TransferStore(RespClient(url, timeout_s=timeout, breaker=CircuitBreaker(100, 0.01)))


def created(store: TransferStore, call_id: str = "c1@host") -> None:
    now = time.time()
    res = store.create(call_id, "2", {"rule": "test"}, now=now, deadline=now + 60,
                       max_per_call=None, transferor="a@h", rate_limit=None,
                       transferee="b@h", target="c@h")
    assert res.created


def test_events_spooled_while_redis_hangs_are_applied_in_order_when_it_answers(
        redis_server, tmp_path):
    store = make_store(redis_server.url)
    created(store)
    journal = Journal(tmp_path / "spool")
    redis_server.pause()
    t0 = time.time()
    for offset, event in ((0.0, Event.REFER_ACCEPTED), (0.1, Event.NOTIFY_TRYING),
                          (0.2, Event.NOTIFY_SUCCESS)):
        with pytest.raises(RedisUnavailable):
            store.apply("c1@host", "2", event, t0 + offset)
        journal.append("apply", call_id="c1@host", refer_id="2", event=str(event),
                       now=t0 + offset, fields={"x": "1"}, deadline=None, detail="")
    assert journal.pending()
    report = journal.replay(store)  # still hung: everything stays spooled
    assert (report.applied, report.kept) == (0, 3)
    redis_server.resume()
    report = journal.replay(store)
    assert (report.applied, report.kept, report.bad) == (3, 0, 0)
    assert store.get("c1@host", "2")["state"] == "succeeded"
    # What the replay decided is counted as it would have been live.
    assert report.counts == {"notifies_applied": 2, "transfers_succeeded": 1}
    assert not journal.pending()
    assert [r["state"] for r in store.finished(5)] == ["succeeded"]


def test_a_create_spooled_in_fail_open_mode_is_replayed(redis_server, tmp_path):
    store = make_store(redis_server.url)
    journal = Journal(tmp_path)
    now = time.time()
    journal.append("create", call_id="c9", refer_id="5", fields={"rule": "r"}, now=now,
                   deadline=now + 60, transferor="a@h", transferee="b@h", target="c@h")
    journal.append("apply", call_id="c9", refer_id="5", event="refer-accepted", now=now + 0.1,
                   fields=None, deadline=None, detail="202")
    assert journal.replay(store).applied == 2
    assert store.get("c9", "5")["state"] == "accepted"


def test_unreadable_lines_are_reported_and_dropped_the_rest_applied(redis_server, tmp_path):
    store = make_store(redis_server.url)
    created(store)
    journal = Journal(tmp_path)
    journal.append("apply", call_id="c1@host", refer_id="2", event="refer-accepted",
                   now=time.time(), fields=None, deadline=None, detail="")
    with open(next(tmp_path.iterdir()), "a") as fh:
        fh.write("{not json\n")
    seen = []
    report = journal.replay(store, seen.append)
    assert (report.applied, report.bad) == (1, 1)
    assert "unreadable line dropped" in seen[0]


def _writer(directory: str, n: int) -> None:
    j = Journal(directory)
    for i in range(n):
        j.append("apply", call_id="c", refer_id="1", event="notify-trying", now=float(i),
                 fields={"pad": "x" * 300}, deadline=None, detail="")


def test_processes_appending_at_once_never_interleave_lines(tmp_path):
    procs = [multiprocessing.Process(target=_writer, args=(str(tmp_path), 200)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    lines = [ln for f in tmp_path.iterdir() for ln in f.read_text().splitlines()]
    assert len(lines) == 800
    assert all(ln.startswith('{"op":"apply"') and ln.endswith("}") for ln in lines)
