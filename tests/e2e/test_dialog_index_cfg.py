"""kamailio-native.cfg indexes ordinary calls itself (WITH_DIALOG_INDEX + ndb_redis): no
Python on the call once referee has published its script, the same records as referee's
Python path writes, and Python as the fallback when Redis forgot the script, when the cfg
has no ndb_redis, or when Redis is gone (the call goes on).  Real Kamailio, Redis, SIPp.

`referee_dialog_index_python` counts the writes the cfg handed to Python."""

from __future__ import annotations

import time

import pytest

from kemi.core.dialogs import DialogState
from kemi.storage.dialogs import DialogStore
from tests.e2e.parties import wait_for
from tests.e2e.test_attended import Call, replace, start_node
from tests.support.raw import RawUA
from tests.support.siplog import sip_messages

COUNTER = "dialog_index_python"


@pytest.fixture
def nlab(tmp_path, redis_server):
    lab = start_node(tmp_path, redis_server, "kamailio-native.cfg")
    yield lab
    lab.kamailio.stop()
    errors = lab.kamailio.python_errors()
    assert not errors, "a referee route raised:\n" + "\n".join(errors)


def call_through(lab, caller="andrew", callee="marsha") -> Call:
    call = Call(lab, caller, callee, hold_ms=0)
    call.finish()
    call.wait_state(DialogState.TERMINATED)
    return call


def handed_to_python(lab) -> int:
    return lab.stats().get(COUNTER, 0)


def test_after_the_first_write_ordinary_calls_are_indexed_without_python(nlab):
    first = call_through(nlab)
    assert 1 <= handed_to_python(nlab) <= 2  # published on the first write
    assert nlab.kamailio.kamcmd("htable.get", "referee_ix", "sha").strip()
    before = handed_to_python(nlab)
    calls = [call_through(nlab, "mckenzie", "marsha") for _ in range(3)]
    assert handed_to_python(nlab) == before
    for call in [first, *calls]:
        d = DialogStore(nlab.rcli).get(call.call_id, call.caller_tag)
        assert (d.callee_tag, d.ended_by, d.state) == (
            call.callee_tag, "bye-caller", DialogState.TERMINATED)
        assert d.caller_src.startswith("127.0.0.1:")
        assert d.callee_src == f"127.0.0.1:{call.callee_port}"
    assert DialogStore(nlab.rcli).get(calls[0].call_id, calls[0].caller_tag).caller == (
        "mckenzie@127.0.0.1")


def test_a_replaces_is_judged_against_a_dialog_the_cfg_indexed(nlab):
    call_through(nlab)  # publishes
    before = handed_to_python(nlab)
    live = Call(nlab, "andrew", "marsha")
    live.wait_state(DialogState.CONFIRMED)
    assert handed_to_python(nlab) == before
    # McKenzie is no party to it: refused before Marsha sees it.
    replace(nlab, "mckenzie", "marsha", live.replaces(), 403)
    assert live.state() == DialogState.CONFIRMED
    live.finish()


def test_after_redis_forgot_the_script_python_loads_it_and_the_cfg_goes_on(nlab):
    call_through(nlab)
    nlab.rcli.script_flush()
    before = handed_to_python(nlab)
    after_flush = call_through(nlab)
    assert handed_to_python(nlab) == before + 1  # the 180's NOSCRIPT; 200 and BYE in cfg
    assert DialogStore(nlab.rcli).get(after_flush.call_id, after_flush.caller_tag).ended_by == (
        "bye-caller")
    call_through(nlab)
    assert handed_to_python(nlab) == before + 1
    assert "NOSCRIPT" in nlab.kamailio.log()  # ndb_redis says what happened


def test_without_ndb_redis_python_writes_what_the_cfg_would(tmp_path, redis_server):
    lab = start_node(tmp_path, redis_server, "kamailio-native.cfg", start=False)
    lab.kamailio.ndb = False
    lab.kamailio.start()
    try:
        call = call_through(lab)
        assert handed_to_python(lab) == 3  # the tagged 180, the 200 and the BYE
        d = DialogStore(lab.rcli).get(call.call_id, call.caller_tag)
        assert (d.caller, d.callee, d.ended_by) == (
            "andrew@127.0.0.1", "marsha@127.0.0.1", "bye-caller")
    finally:
        lab.kamailio.stop()
    assert not lab.kamailio.python_errors()


def test_a_call_id_with_a_space_is_written_by_python_and_indexed_alike(nlab):
    """A value with a space (or a "%") would change the cfg's command words: the cfg hands
    the write to Python, which sends it hex-encoded."""
    call_through(nlab)  # published
    before = handed_to_python(nlab)
    odd = Call(nlab, "andrew", "marsha", hold_ms=0, call_id_prefix="odd id ")
    odd.finish()
    odd.wait_state(DialogState.TERMINATED)
    assert " " in odd.call_id
    assert handed_to_python(nlab) == before + 3  # its 180, 200 and BYE
    d = DialogStore(nlab.rcli).get(odd.call_id, odd.caller_tag)
    assert (d.call_id, d.caller, d.ended_by) == (odd.call_id, "andrew@127.0.0.1", "bye-caller")


def test_with_redis_gone_calls_go_on_unindexed_and_it_is_logged(nlab):
    call_through(nlab)  # published
    nlab.redis.stop()
    call = Call(nlab, "andrew", "marsha", hold_ms=0)
    call.finish()  # the call itself is untouched
    assert wait_for(lambda: f"dialog {call.call_id} 2xx not indexed (Redis:"
                    in nlab.kamailio.log(), 5), nlab.kamailio.log()[-3000:]


def call_took(call: Call) -> float:
    """Seconds from the caller's INVITE to the 200 for its BYE (hold 0: all proxy)."""
    msgs = sip_messages(call.caller.messages())
    start = next(m.at for m in msgs if m.direction == "sent" and m.method == "INVITE")
    end = max(m.at for m in msgs if m.direction == "received" and m.method == "BYE")
    return (end - start).total_seconds()


OPEN_S = 6  # twice what the hung calls below take (~0.3 s each): no trial in between


def test_with_redis_hung_each_worker_waits_once_then_relays_at_once_until_redis_is_back(
        tmp_path, redis_server):
    """ndb_redis' own breaker (allowed_timeouts / disable_time, set from [redis]
    breaker_failures / breaker_open_s) stops the cfg's write from waiting for a hung
    Redis in every reply route: each SIP worker pays the budget a few times, then replies
    and BYEs go through at once; once Redis answers again, calls are indexed again."""
    lab = start_node(tmp_path, redis_server, "kamailio-native.cfg",
                     redis=f"breaker_failures = 2\nbreaker_open_s = {OPEN_S}")
    try:
        # A call's own pace (the callee's gap between 180 and 200, SIPp's timers):
        normal = max(call_took(call_through(lab, callee=f"warm{i}")) for i in range(3))
        lab.redis.pause()
        paused_at = time.monotonic()
        took = []
        try:
            for i in range(6):  # each callee registers afresh: one contact per name
                call = Call(lab, "andrew", f"callee{i}", hold_ms=0)
                call.finish()  # the calls themselves go on
                if time.monotonic() - paused_at < OPEN_S - 0.5:  # no breaker's trial yet
                    took.append(call_took(call))
        finally:
            lab.redis.resume()
        assert len(took) >= 4, f"the box is too slow for this test's timing: {took}"
        # A hung write costs the cfg's try and Python's (each 2 x 50 ms: ndb_redis tries
        # again after reconnecting): in each worker until both breakers are open.  Without
        # ndb_redis' breaker every tagged reply and BYE of every call waited in the cfg.
        slow = [t for t in took if t > normal + 0.08]
        assert len(slow) <= lab.kamailio.workers, (normal, took)
        assert "not indexed (Redis:" in lab.kamailio.log()
        time.sleep(OPEN_S + 0.5)  # both breakers let a trial through
        wait_for(lambda: lab.rcli.ping(), 2)
        back = [call_through(lab, callee=f"back{i}") for i in range(3)]
        d = DialogStore(lab.rcli).get(back[-1].call_id, back[-1].caller_tag)
        assert d is not None and d.ended_by == "bye-caller", lab.kamailio.log()[-3000:]
    finally:
        lab.kamailio.stop()
    assert not lab.kamailio.python_errors()


RAW_INVITE = (
    "INVITE sip:marsha@127.0.0.1:{port} SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:{port};branch={branch};rport\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:andrew@127.0.0.1>;tag={tag}\r\n"
    "To: <sip:marsha@127.0.0.1>\r\n"
    "Call-ID: @CID@\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: <sip:andrew@127.0.0.1:{port}>\r\n"
    "Content-Length: 0\r\n\r\n"
)


def test_a_call_id_that_is_not_sip_text_is_not_indexed_as_on_pythons_path(nlab):
    """Python does not index an INVITE whose Call-ID holds a control byte ("INVITE not
    indexed"); the cfg hands such a Call-ID to Python, which says so the same way, while
    a UTF-8 Call-ID is indexed.  The call goes on either way."""
    call_through(nlab)  # published
    ua, store = RawUA(nlab.kamailio.port), DialogStore(nlab.rcli)
    try:
        for raw_id, indexed in ((b"ctl\x01id@127.0.0.1", False),
                                ("caf\u00e9-id@127.0.0.1".encode(), True)):
            f = ua.fields()
            r = ua.send(RAW_INVITE.format(**f).encode().replace(b"@CID@", raw_id),
                        answer=200)
            assert r is not None and r.code == 200, r and r.raw  # relayed, answered
            call_id = raw_id.decode("utf-8", "surrogateescape")
            if indexed:
                assert wait_for(lambda c=call_id, t=f["tag"]: store.get(c, t), 5), (
                    nlab.kamailio.log()[-2000:])
                assert store.get(call_id, f["tag"]).callee_tag == "raw"
            else:
                assert wait_for(lambda: "control character 0x01 at 3" in nlab.kamailio.log(),
                                5), nlab.kamailio.log()[-2000:]
                assert store.get(call_id, f["tag"]) is None
    finally:
        ua.close()
