"""The last line of defence in kemi.kamailio: every route returns an int, and an exception
in a request route still answers the request (500) instead of leaving it unanswered.

KSR exists only inside Kamailio; the end-to-end tests drive the real one.  The one thing
they cannot provoke on purpose is an unexpected exception, so this test puts a recording
stand-in for KSR in place and checks only the wrapper's contract.
"""

from __future__ import annotations

import sys
import types

import pytest


class Recorder:
    def __init__(self):
        self.calls: list[tuple] = []

    def __getattr__(self, name):
        def record(*args):
            self.calls.append((name, *args))
            return 1

        return record


@pytest.fixture
def glue(monkeypatch):
    ksr = types.ModuleType("KSR")
    ksr.sl, ksr.hdr = Recorder(), Recorder()
    ksr.err = ksr.warn = ksr.info = ksr.notice = lambda text: ksr.logged.append(text)
    ksr.logged = []
    monkeypatch.setitem(sys.modules, "KSR", ksr)
    sys.modules.pop("kemi.kamailio", None)
    import kemi.kamailio as glue

    yield glue, ksr
    sys.modules.pop("kemi.kamailio", None)


def test_an_exception_in_a_request_route_answers_500_and_ends_the_route(glue):
    mod, ksr = glue

    class Routes:
        @mod.route("request")
        def boom(self, msg):
            raise KeyError("surprise")

    assert Routes().boom(object()) == mod.HANDLED == 0
    assert ("send_reply", 500, "Server Internal Error") in ksr.sl.calls
    assert any("internal error: KeyError" in c[1] for c in ksr.hdr.calls)
    assert "boom failed: KeyError('surprise')" in ksr.logged[0]


def test_an_exception_in_a_reply_route_is_logged_and_lets_the_reply_through(glue):
    mod, ksr = glue

    class Routes:
        @mod.route("reply")
        def boom(self, msg):
            raise ValueError("bad")

    assert Routes().boom(object()) == mod.CONTINUE == 1
    assert ksr.sl.calls == []
    assert ksr.logged


def test_a_route_that_returns_nothing_still_returns_an_int(glue):
    mod, _ = glue

    class Routes:
        @mod.route("request")
        def quiet(self, msg, *extra):
            return None

    assert Routes().quiet(object(), "rtimer-extra-argument") == 1


# -- the referee_progress rtimer: one bad entry, a failed XACK or Redis away ---------------
class FakeClient:
    """XREADGROUP answers `batches` in turn; XACK fails while `ack_fails`."""

    def __init__(self, batches, ack_fails=False, down=False):
        self.batches, self.ack_fails, self.down = list(batches), ack_fails, down
        self.acked: list[str] = []

    def call(self, *args):
        from kemi.resp import RedisUnavailable

        if self.down:
            raise RedisUnavailable("connection refused")
        if args[0] == "XREADGROUP":
            return [("stream", self.batches.pop(0))] if self.batches else []
        if args[0] == "XACK":
            if self.ack_fails:
                raise RedisUnavailable("timeout")
            self.acked.append(args[3])
        return 1


def _progress_referee(mod, client, handle):
    from dataclasses import replace

    from kemi.config import AnchoredSettings, Settings

    settings = replace(Settings(), anchored=AnchoredSettings(asterisk={"pbx1": "192.0.2.20:5060"}))
    r = object.__new__(mod.Referee)
    r.settings, r.anchored, r._client = settings, settings.anchored, client
    r._rebuilt = r._progress_ready = True
    r._progress_pending, r._progress_down = False, False
    r._progress_one = handle
    return r


def _entry(eid, call_id):
    return (eid, ["call_id", call_id, "refer_id", "1"])


def test_an_entry_that_fails_unexpectedly_is_logged_acked_and_the_rest_go_on(glue):
    mod, ksr = glue
    seen = []

    def handle(eid, fields):
        seen.append(eid)
        if eid == "1-0":
            raise KeyError("n_from")

    client = FakeClient([[_entry("1-0", "a"), _entry("2-0", "b")]])
    r = _progress_referee(mod, client, handle)
    assert r.referee_progress(object(), "rtimer") == mod.CONTINUE
    assert seen == ["1-0", "2-0"] and client.acked == ["1-0", "2-0"]
    assert any("progress 1-0 failed and is acknowledged" in t and "KeyError" in t
               for t in ksr.logged)


def test_an_entry_trimmed_while_pending_is_acked_with_a_log(glue):
    mod, ksr = glue
    client = FakeClient([[("1-0", None)]])
    r = _progress_referee(mod, client, lambda *a: pytest.fail("nothing to handle"))
    r.referee_progress(object(), "rtimer")
    assert client.acked == ["1-0"]
    assert any("1-0 trimmed" in t for t in ksr.logged)


def test_a_failed_xack_leaves_the_entry_to_be_read_again(glue):
    mod, ksr = glue
    seen = []
    client = FakeClient([[_entry("1-0", "a"), _entry("2-0", "b")]], ack_fails=True)
    r = _progress_referee(mod, client, lambda eid, f: seen.append(eid))
    assert r.referee_progress(object(), "rtimer") == mod.CONTINUE
    assert seen == ["1-0"] and r._progress_pending  # the next tick reads pending ("0")
    assert any("1-0 handled but not acknowledged" in t for t in ksr.logged)


def test_redis_down_is_logged_once_per_outage(glue):
    mod, ksr = glue
    client = FakeClient([], down=True)
    r = _progress_referee(mod, client, lambda *a: None)
    for _ in range(3):
        assert r.referee_progress(object(), "rtimer") == mod.CONTINUE
    assert sum("progress not read" in t for t in ksr.logged) == 1
    client.down = False
    r.referee_progress(object(), "rtimer")
    assert any("progress read again" in t for t in ksr.logged)


def test_a_failure_after_the_anchored_202_is_notified_never_answered_500(glue):
    mod, ksr = glue
    from kemi.transfer import ReferPlan

    r = object.__new__(mod.Referee)
    finished = []
    r._after_202 = lambda *a: (_ for _ in ()).throw(KeyError("dial"))
    r._finish_unqueued = lambda cid, rid, rec, nosub, why: finished.append((cid, rid, why))
    plan = object.__new__(ReferPlan)
    object.__setattr__(plan, "call_id", "c1")
    object.__setattr__(plan, "refer_id", "7")
    object.__setattr__(plan, "nosub_requested", False)
    object.__setattr__(plan, "fields", {})
    assert r._accept_anchored(plan, "pbx1", duplicate=False, now=0.0) == mod.HANDLED
    assert [c[1] for c in ksr.sl.calls] == [202]  # one final response, the 202
    assert finished == [("c1", "7", "failed: KeyError('dial')")]
    assert any("accepted for anchored pbx1, then failed" in t for t in ksr.logged)
