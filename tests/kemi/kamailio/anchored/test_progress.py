"""kemi.kamailio.anchored.progress: the referee_progress rtimer goes on through one bad
entry, a failed XACK or Redis away, and says so once."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from kemi.config import AnchoredSettings, Settings


class FakeClient:
    """XREADGROUP answers `batches` in turn; XACK fails while `ack_fails`."""

    def __init__(self, batches, ack_fails=False, down=False):
        self.batches, self.ack_fails, self.down = list(batches), ack_fails, down
        self.acked: list[str] = []

    def call(self, *args):
        from kemi.storage.resp import RedisUnavailable

        if self.down:
            raise RedisUnavailable("connection refused")
        if args[0] == "XREADGROUP":
            return [("stream", self.batches.pop(0))] if self.batches else []
        if args[0] == "XACK":
            if self.ack_fails:
                raise RedisUnavailable("timeout")
            self.acked.append(args[3])
        return 1


@pytest.fixture
def reader(ksr):
    """A ProgressReader past its start (group made, marks rebuilt), on a fake client."""
    from kemi.kamailio.anchored.progress import ProgressReader

    def make(client, handle):
        settings = replace(Settings(),
                           anchored=AnchoredSettings(asterisk={"pbx1": "192.0.2.20:5060"}))
        r = object.__new__(ProgressReader)
        r.s = SimpleNamespace(settings=settings, anchored=settings.anchored, client=client)
        r.child_init()
        r._rebuilt = r._ready = True
        r._pending = False
        r._one = handle
        return r

    return make


def _entry(eid, call_id):
    return (eid, ["call_id", call_id, "refer_id", "1"])


def test_an_entry_that_fails_unexpectedly_is_logged_acked_and_the_rest_go_on(ksr, reader):
    seen = []

    def handle(eid, fields):
        seen.append(eid)
        if eid == "1-0":
            raise KeyError("n_from")

    client = FakeClient([[_entry("1-0", "a"), _entry("2-0", "b")]])
    assert reader(client, handle).tick() == 1
    assert seen == ["1-0", "2-0"] and client.acked == ["1-0", "2-0"]
    assert any("progress 1-0 failed and is acknowledged" in t and "KeyError" in t
               for t in ksr.logged)


def test_an_entry_trimmed_while_pending_is_acked_with_a_log(ksr, reader):
    client = FakeClient([[("1-0", None)]])
    reader(client, lambda *a: pytest.fail("nothing to handle")).tick()
    assert client.acked == ["1-0"]
    assert any("1-0 trimmed" in t for t in ksr.logged)


def test_a_failed_xack_leaves_the_entry_to_be_read_again(ksr, reader):
    seen = []
    client = FakeClient([[_entry("1-0", "a"), _entry("2-0", "b")]], ack_fails=True)
    r = reader(client, lambda eid, f: seen.append(eid))
    assert r.tick() == 1
    assert seen == ["1-0"] and r._pending  # the next tick reads pending ("0")
    assert any("1-0 handled but not acknowledged" in t for t in ksr.logged)


def test_redis_down_is_logged_once_per_outage(ksr, reader):
    client = FakeClient([], down=True)
    r = reader(client, lambda *a: None)
    for _ in range(3):
        assert r.tick() == 1
    assert sum("progress not read" in t for t in ksr.logged) == 1
    client.down = False
    r.tick()
    assert any("progress read again" in t for t in ksr.logged)
