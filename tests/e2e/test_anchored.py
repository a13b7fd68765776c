"""Anchored transfers through a real Kamailio with both example configs: a SIPp "Asterisk"
calls the customer PBX "A" through the proxy; A's REFER is answered 202 by referee (mode
accept) and never reaches Asterisk; the test plays the Asterisk side's controller (reads
the MoveJob, writes Progress); A gets truthful NOTIFYs, and Asterisk's later requests
(session-timer UPDATE, BYE) reach A renumbered past those NOTIFYs while Asterisk sees
A's replies with its own numbers.  Also: a failed target, Refer-Sub: false, Redis down,
and mode relay (the REFER goes to Asterisk with X-Transfer-Id)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from kemi.cli.demo.kamailio_node import free_udp_port
from kemi.core.anchor import PROGRESS_GROUP, MoveJob, Progress, jobs_key, progress_key
from tests.e2e.conftest import CFGS, ON_CLUSTER, close_lab, make_lab, redis_for
from tests.e2e.parties import finish, received, sip_messages, wait_for
from tests.support import anchored as parties
from tests.support.anchored import A_CSEQ, ASTERISK_CSEQ

NODE = "kam-test"
PREFIX = "referee"


class AnchoredLab:
    def __init__(self, lab, asterisk_port: int):
        self.lab = lab
        self.asterisk_port = asterisk_port
        self.a_port = free_udp_port()

    @property
    def asterisk_uri(self) -> str:
        return f"sip:asterisk@127.0.0.1:{self.asterisk_port}"

    def start(self, a: parties.PbxA, ast: parties.Asterisk):
        lab = self.lab
        lab.register("pbxa", self.a_port)
        extra, call_id = parties.cid_args(f"anch{time.monotonic_ns()}")
        pa = lab.party("pbxa", a.xml(), port=self.a_port).start()
        pz = lab.party("asterisk", ast.xml(), port=self.asterisk_port, extra=extra).start()
        return pa, pz, call_id

    def job(self, timeout_s: float = 5.0) -> MoveJob | None:
        def read():
            return self.lab.rcli.xrange(jobs_key(PREFIX, "pbx1"))
        entries = wait_for(read, timeout_s)
        if not entries:
            return None
        assert len(entries) == 1, entries
        return MoveJob.from_fields(entries[0][1])

    def progress(self, job: MoveJob, code: int, reason: str, final: bool) -> None:
        p = Progress(job.call_id, job.refer_id, code, reason, final, time.time(), "test")
        self.lab.rcli.xadd(job.reply_to, p.to_fields())

    def state_is(self, call_id: str, refer_id: str, state: str, timeout_s: float = 5.0):
        def check():
            record = self.lab.store.get(call_id, refer_id) or {}
            return record if record.get("state") == state else None
        record = wait_for(check, timeout_s)
        assert record, (state, self.lab.store.get(call_id, refer_id),
                        self.lab.kamailio.log()[-3000:])
        return record

    def notified(self, a, count: int, timeout_s: float = 5.0) -> None:
        """Wait until A has answered `count` NOTIFYs (a transfer is recorded before its
        NOTIFY leaves, so its state alone does not say the NOTIFY is out; and A's SIPp
        must be past the NOTIFY before Asterisk's next request reaches it)."""
        def answered():
            return len({m.cseq for m in sip_messages(a.messages())
                        if m.direction == "sent" and m.status and m.method == "NOTIFY"})
        ok = wait_for(lambda: answered() >= count, timeout_s)
        assert ok, a.messages()[-3000:]

    def events(self, call_id: str, refer_id: str) -> list[tuple[str, str, str, str]]:
        """The transfer's state-machine events; the CSeq notes beside them left out."""
        out = []
        for line in self.lab.store.log(call_id, refer_id):
            _ts, event, old, new, outcome, _detail = line.split("|", 5)
            if event != "note":
                out.append((event, old, new, outcome))
        return out

    def htables_empty_of(self, call_id: str) -> None:
        """Nothing of the ended dialog in shared memory but its CSeq state (referee_x),
        which outlives the BYE kemi.kamailio.anchored.cseq.SHIFT_KEEP_S for a late final NOTIFY."""
        for table in ("referee_cs", "referee"):
            dump = self.lab.kamailio.kamcmd("htable.dump", table)
            assert call_id not in dump, (table, dump)


def anchored_settings(port: int, mode: str = "accept") -> str:
    return (
        "[anchored]\n"
        f'asterisk = {{ pbx1 = "127.0.0.1:{port}" }}\n'
        f'mode = "{mode}"\n'
        'dial = "PJSIP/{user}@carrier"\n'
        f'node = "{NODE}"\n'
    )


@pytest.fixture(params=[*CFGS, ON_CLUSTER])
def anchored_lab(request, tmp_path, redis_server):
    labs = []

    def start(mode: str = "accept", kamailio: str = "", more: str = "") -> AnchoredLab:
        port = free_udp_port()
        lab = make_lab(tmp_path, *redis_for(request, redis_server), kamailio=kamailio)
        conf = lab.kamailio.referee_config
        conf.write_text(conf.read_text() + anchored_settings(port, mode) + more)
        lab.kamailio.defines = ("WITH_ANCHORED",)  # kamailio.cfg's global reply route
        lab.kamailio.start()
        labs.append(lab)
        return AnchoredLab(lab, port)

    yield start
    for lab in labs:
        lab.kamailio.stop()
        close_lab(lab)
        assert not lab.kamailio.python_errors(), "\n".join(lab.kamailio.python_errors())


def _check_notify(n, ast_uri: str, a_tag: str, ast_tag: str, frag: str, terminated: bool):
    assert n.body == f"SIP/2.0 {frag}"
    assert n.header("Event") == f"refer;id={A_CSEQ}"
    state = n.header("Subscription-State")
    if terminated:
        assert state == "terminated;reason=noresource"
    else:
        assert state.startswith("active;expires=")
    assert n.header("Content-Type") == "message/sipfrag;version=2.0"
    assert n.header("From") == f"<{ast_uri}>;tag={ast_tag}"
    assert n.header("To").endswith(f";tag={a_tag}")
    assert n.header("Contact") == f"<{ast_uri}>"


def test_accept_notifies_truthfully_and_asterisk_requests_are_renumbered(anchored_lab):
    al = anchored_lab()
    then = ["UPDATE", "INVITE", "BYE"]  # session refresh, a re-INVITE (+ ACK), release
    pa, pz, call_id = al.start(parties.PbxA(al.asterisk_uri, then=then),
                               parties.Asterisk(then=then))
    job = al.job()
    assert job is not None, al.lab.kamailio.log()[-4000:]
    assert job.call_id == call_id
    assert job.refer_id == str(A_CSEQ)
    assert job.target == "sip:2000@127.0.0.1"
    assert job.dial == "PJSIP/2000@carrier"
    assert job.transferor == "pbxa@127.0.0.1"
    assert job.reply_to == progress_key(PREFIX, NODE)
    assert job.on_failure == "reconnect" and job.dial_timeout_s > 0
    assert job.recall_uri == f"sip:pbxa@127.0.0.1:{pa.port}"  # A's Contact: a recall's R-URI
    rid = job.refer_id
    al.state_is(call_id, rid, "trying")  # NOTIFY 100 sent and recorded at once
    al.progress(job, 180, "Ringing", False)
    al.state_is(call_id, rid, "ringing")
    al.progress(job, 200, "OK", True)
    record = al.state_is(call_id, rid, "succeeded")
    al.notified(pa, 3)
    parties.go(al.asterisk_port, call_id)
    finish(al.lab, pa, pz)

    # A: 202 from referee, three NOTIFYs numbered right after Asterisk's INVITE, then
    # Asterisk's UPDATE, re-INVITE (and its ACK) and BYE renumbered past them (A's
    # scenario refuses any step back, and an ACK not matching its INVITE).
    [accepted] = received(pa, "REFER", status=202)
    assert accepted.header("Server") == "referee"  # answered by the proxy itself
    assert accepted.header("Refer-Sub") is None
    notifies = received(pa, "NOTIFY")
    assert [n.cseq for n in notifies] == [ASTERISK_CSEQ + 1, ASTERISK_CSEQ + 2,
                                          ASTERISK_CSEQ + 3]
    invite = received(pa, "INVITE")[0]
    ast_tag = invite.header("From").split(";tag=")[1]
    a_tag = accepted.header("From").split(";tag=")[1]
    for n, frag, term in zip(notifies, ["100 Trying", "180 Ringing", "200 OK"],
                             [False, False, True], strict=True):
        _check_notify(n, al.asterisk_uri, a_tag, ast_tag, frag, term)
    [update] = received(pa, "UPDATE")
    [_, reinvite] = received(pa, "INVITE")
    [_, ack] = received(pa, "ACK")
    [bye] = received(pa, "BYE")
    assert [update.cseq, reinvite.cseq, ack.cseq, bye.cseq] == [
        ASTERISK_CSEQ + 4, ASTERISK_CSEQ + 5, ASTERISK_CSEQ + 5, ASTERISK_CSEQ + 6]
    assert all(m.status != 500 for m in sip_messages(pa.messages()))

    # Asterisk: never saw the REFER; A's replies carry Asterisk's own numbers.
    assert received(pz, "REFER") == []
    [ok_update] = received(pz, "UPDATE", status=200)
    [_, ok_reinvite] = received(pz, "INVITE", status=200)
    [ok_bye] = received(pz, "BYE", status=200)
    assert ok_update.header("CSeq") == f"{ASTERISK_CSEQ + 1} UPDATE"
    assert ok_reinvite.header("CSeq") == f"{ASTERISK_CSEQ + 2} INVITE"
    assert ok_bye.header("CSeq") == f"{ASTERISK_CSEQ + 3} BYE"

    record = al.lab.store.get(call_id, rid)  # the final NOTIFY's CSeq is noted after it
    assert record["anchored"] == "pbx1" and record["anchor_mode"] == "accept"
    assert record["final_sipfrag"] == "200 OK"
    assert record["notify_cseq"] == str(ASTERISK_CSEQ + 3)
    assert al.events(call_id, rid) == [
        ("refer", "new", "refer-seen", "applied"),
        ("refer-accepted", "refer-seen", "accepted", "applied"),
        ("notify-trying", "accepted", "trying", "applied"),
        ("notify-ringing", "trying", "ringing", "applied"),
        ("notify-success", "ringing", "succeeded", "applied"),
        ("bye-transferee", "succeeded", "succeeded", "ignored"),  # Asterisk released A
    ]
    # Issue 10.6: the BYE's From is P's identity, but it was Asterisk releasing A.
    assert record["ended_by"] == "asterisk"
    assert al.lab.store.log(call_id, rid)[-1].endswith(
        "BYE from the asterisk (A's leg released by Asterisk)")
    pending = al.lab.rcli.xpending(job.reply_to, PROGRESS_GROUP)
    assert pending["pending"] == 0
    al.htables_empty_of(call_id)


def test_target_fails_final_notify_486_and_record_failed(anchored_lab):
    al = anchored_lab()
    pa, pz, call_id = al.start(parties.PbxA(al.asterisk_uri, notifies=2, then=["BYE"]),
                               parties.Asterisk(then=["BYE"]))
    job = al.job()
    assert job is not None, al.lab.kamailio.log()[-4000:]
    al.state_is(call_id, job.refer_id, "trying")
    al.progress(job, 486, "Busy Here", True)
    record = al.state_is(call_id, job.refer_id, "failed")
    al.notified(pa, 2)
    parties.go(al.asterisk_port, call_id)
    finish(al.lab, pa, pz)
    notifies = received(pa, "NOTIFY")
    assert [n.body for n in notifies] == ["SIP/2.0 100 Trying", "SIP/2.0 486 Busy Here"]
    assert notifies[1].header("Subscription-State") == "terminated;reason=noresource"
    [bye] = received(pa, "BYE")
    assert bye.cseq == ASTERISK_CSEQ + 3
    [ok_bye] = received(pz, "BYE", status=200)
    assert ok_bye.cseq == ASTERISK_CSEQ + 1
    assert record["final_sipfrag"] == "486 Busy Here"
    assert [e[0] for e in al.events(call_id, job.refer_id)] == [
        "refer", "refer-accepted", "notify-trying", "notify-failure", "bye-transferee"]


def test_progress_reported_together_is_notified_one_per_tick_in_order(anchored_lab):
    """The Asterisk side may report ringing and the outcome within one poll; A still gets
    them one at a time (the next a tick later, after it answered the first), in order."""
    al = anchored_lab()
    pa, pz, call_id = al.start(parties.PbxA(al.asterisk_uri, notifies=3, then=["BYE"]),
                               parties.Asterisk(then=["BYE"]))
    job = al.job()
    assert job is not None, al.lab.kamailio.log()[-4000:]
    al.notified(pa, 1)
    al.progress(job, 180, "Ringing", False)
    al.progress(job, 486, "Busy Here", True)
    al.state_is(call_id, job.refer_id, "failed")
    al.notified(pa, 3)
    parties.go(al.asterisk_port, call_id)
    finish(al.lab, pa, pz)
    notifies = received(pa, "NOTIFY")
    assert [n.body for n in notifies] == [
        "SIP/2.0 100 Trying", "SIP/2.0 180 Ringing", "SIP/2.0 486 Busy Here"]
    times = [m.at for m in sip_messages(pa.messages())
             if m.direction == "received" and m.is_request and m.method == "NOTIFY"]
    assert (times[2] - times[1]).total_seconds() >= 0.1, times  # a progress tick apart


def test_refer_sub_false_gets_202_echo_and_no_notify_at_all(anchored_lab):
    al = anchored_lab()
    pa, pz, call_id = al.start(
        parties.PbxA(al.asterisk_uri, refer_sub_false=True, notifies=0, then=["BYE"]),
        parties.Asterisk(then=["BYE"]),
    )
    job = al.job()
    assert job is not None, al.lab.kamailio.log()[-4000:]
    al.state_is(call_id, job.refer_id, "accepted-nosub")
    al.progress(job, 180, "Ringing", False)
    al.state_is(call_id, job.refer_id, "calling-nosub")
    al.progress(job, 200, "OK", True)
    al.state_is(call_id, job.refer_id, "succeeded")
    parties.go(al.asterisk_port, call_id)
    finish(al.lab, pa, pz)
    [accepted] = received(pa, "REFER", status=202)
    assert accepted.header("Refer-Sub") == "false"
    assert received(pa, "NOTIFY") == []
    [bye] = received(pa, "BYE")
    assert bye.cseq == ASTERISK_CSEQ + 1  # nothing was put in front: no renumbering
    assert [e[0] for e in al.events(call_id, job.refer_id)] == [
        "refer", "refer-accepted-nosub", "invite", "invite-2xx", "bye-transferee"]


# A single Redis stopped and started again; a Cluster going down is another story
# (tests/kemi/storage/test_cluster.py: a hung node, the breaker).
@pytest.mark.parametrize("anchored_lab", CFGS, indirect=True)
def test_redis_down_refer_gets_503_and_nothing_reaches_asterisk(anchored_lab):
    al = anchored_lab()
    al.lab.redis.stop()
    pa, pz, call_id = al.start(
        parties.PbxA(al.asterisk_uri, expect_refer=503, notifies=0, then=[],
                     bye_after_refer=True),
        parties.Asterisk(wait_for_go=False, then=[], expect_bye=True),
    )
    finish(al.lab, pa, pz)
    [refused] = received(pa, "REFER", status=503)
    assert refused.header("Retry-After") == "30"
    assert received(pz, "REFER") == []
    al.lab.redis.start()
    assert al.lab.records() == []


def test_relay_mode_sends_the_refer_to_asterisk_with_x_transfer_id(anchored_lab):
    al = anchored_lab(mode="relay")
    pa, pz, call_id = al.start(
        parties.PbxA(al.asterisk_uri, notifies=0, then=["BYE"]),
        parties.Asterisk(expect_refer=True, wait_for_go=False, then=["BYE"]),
    )
    finish(al.lab, pa, pz)
    [refer] = received(pz, "REFER")
    assert refer.header("X-Transfer-Id") == f"{A_CSEQ}@{call_id}"
    [accepted] = received(pa, "REFER", status=202)
    assert accepted.header("Server") != "referee"  # Asterisk's own 202, relayed
    [bye] = received(pa, "BYE")
    assert bye.cseq == ASTERISK_CSEQ + 1
    record = al.lab.store.get(call_id, A_CSEQ)
    assert record["anchored"] == "pbx1" and record["anchor_mode"] == "relay"
    assert record["state"] == "accepted"
    assert al.lab.rcli.xlen(jobs_key(PREFIX, "pbx1")) == 0


def _relayed(al, a: parties.PbxA, notify: list[str], notify_ruri: str = "[$acontact]",
             answers: tuple[int, ...] = ()):
    pa, pz, call_id = al.start(
        a, parties.Asterisk(expect_refer=True, wait_for_go=False, then=["BYE"],
                            notify=notify, notify_ruri=notify_ruri, notify_answers=answers))
    finish(al.lab, pa, pz)
    return pa, call_id


def _final_noted(al, call_id: str, field: str):
    """The transferor's answer to the final NOTIFY is stored by the sweep."""
    def noted():
        record = al.lab.store.get(call_id, A_CSEQ) or {}
        return record if field in record else None
    record = wait_for(noted, 5)
    assert record, (al.lab.store.get(call_id, A_CSEQ), al.lab.kamailio.log()[-3000:])
    return record


def test_relayed_notifies_sent_in_one_millisecond_reach_a_in_the_order_sent(anchored_lab):
    """Issue 10.3: Asterisk sent NOTIFY 524 (100) and 525 (183) in the same millisecond;
    A (strict as pjsip) got 525 first and answered 524 `500 Invalid CSeq`.  Here all
    three leave Asterisk back to back and A must see each above the one before."""
    al = anchored_lab(mode="relay")
    a = parties.PbxA(al.asterisk_uri, notifies=3, burst=True, then=["BYE"])
    pa, call_id = _relayed(al, a, ["100 Trying", "183 Session Progress", "200 OK"])
    got = received(pa, "NOTIFY")
    assert [n.cseq for n in got] == [ASTERISK_CSEQ + 1, ASTERISK_CSEQ + 2, ASTERISK_CSEQ + 3]
    assert [n.body.strip() for n in got] == [
        "SIP/2.0 100 Trying", "SIP/2.0 183 Session Progress", "SIP/2.0 200 OK"]
    record = _final_noted(al, call_id, "final_notify_reply")
    assert record["state"] == "succeeded" and record["final_notify_reply"] == "200"


def test_relayed_notify_to_a_contact_rewritten_to_the_proxy_is_routed_to_a(anchored_lab):
    """Issue 10.2: with pjsip's rewrite_contact = yes Asterisk's NOTIFYs go to the
    address A's 200 came from -- the proxy itself -- and the proxy answered `404 Not
    here` while the record said succeeded.  referee routes such a NOTIFY to the
    transferor of its transfer (the Contact of A's REFER), so A learns the outcome."""
    al = anchored_lab(mode="relay")
    a = parties.PbxA(al.asterisk_uri, notifies=2, burst=True, then=["BYE"])
    pa, call_id = _relayed(al, a, ["100 Trying", "200 OK"],
                           notify_ruri="sip:pbxa@[remote_ip]:[remote_port]")
    got = received(pa, "NOTIFY")
    assert [n.body.strip() for n in got] == ["SIP/2.0 100 Trying", "SIP/2.0 200 OK"]
    assert got[0].start_line == f"NOTIFY sip:pbxa@127.0.0.1:{al.a_port} SIP/2.0"
    record = _final_noted(al, call_id, "final_notify_reply")
    assert record["state"] == "succeeded" and record["final_notify_reply"] == "200"


def test_relayed_final_notify_a_refuses_is_recorded_as_not_learnt(anchored_lab):
    """The record says what A got: a final NOTIFY the transferor refused leaves the
    transfer's outcome (Asterisk's) beside the fact that A never learnt it."""
    al = anchored_lab(mode="relay")
    pa, call_id = _relayed(
        al, parties.PbxA(al.asterisk_uri, notifies=2, notify_481_at=2, burst=True,
                          then=["BYE"]),
        ["100 Trying", "200 OK"], answers=(200, 481))
    assert len(received(pa, "NOTIFY")) == 2
    record = _final_noted(al, call_id, "final_notify_reply")
    assert record["final_notify_reply"] == "481"
    assert record["final_sipfrag"] == "200 OK"
    assert "refused 481 by the transferor" in al.lab.kamailio.log()


def test_a_hanging_up_itself_is_recorded_as_the_transferor_ending_the_call(anchored_lab):
    """Issue 10.6, the other side: A's own BYE is the transferor's."""
    al = anchored_lab()
    pa, pz, call_id = al.start(
        parties.PbxA(al.asterisk_uri, notifies=1, then=[], bye_after_refer=True),
        parties.Asterisk(wait_for_go=False, then=[], expect_bye=True),
    )
    job = al.job()
    assert job is not None, al.lab.kamailio.log()[-4000:]
    finish(al.lab, pa, pz)
    record = al.state_is(call_id, job.refer_id, "transferor-gone")
    assert record["ended_by"] == "transferor"


def test_a_final_notify_after_asterisks_bye_is_numbered_right_after_it(anchored_lab):
    """Issue 10.5: when a final NOTIFY still comes after Asterisk's BYE to A, its CSeq
    follows the BYE's by one -- the renumbering state outlives the BYE a while -- rather
    than jumping kemi.core.cseq.REBUILD_MARGIN (1000) as after a restart."""
    al = anchored_lab()
    pa, pz, call_id = al.start(
        parties.PbxA(al.asterisk_uri, notifies=1, then=["BYE", "NOTIFY"]),
        parties.Asterisk(then=["BYE"]),
    )
    job = al.job()
    assert job is not None, al.lab.kamailio.log()[-4000:]
    al.notified(pa, 1)
    parties.go(al.asterisk_port, call_id)
    assert wait_for(lambda: received(pa, "BYE"), 5), pa.messages()[-2000:]
    al.progress(job, 487, "Request Terminated", True)
    finish(al.lab, pa, pz)
    [bye] = received(pa, "BYE")
    first, last = received(pa, "NOTIFY")
    assert bye.cseq == first.cseq + 1 and last.cseq == bye.cseq + 1
    assert last.body == "SIP/2.0 487 Request Terminated"


def test_a_481_to_a_notify_ends_the_subscription_and_the_outcome_is_still_recorded(
        anchored_lab):
    al = anchored_lab()
    pa, pz, call_id = al.start(
        parties.PbxA(al.asterisk_uri, notifies=2, notify_481_at=2, then=["BYE"]),
        parties.Asterisk(then=["BYE"]),
    )
    job = al.job()
    assert job is not None, al.lab.kamailio.log()[-4000:]
    al.state_is(call_id, job.refer_id, "trying")
    al.progress(job, 180, "Ringing", False)
    al.state_is(call_id, job.refer_id, "transferor-gone")
    al.progress(job, 200, "OK", True)  # no NOTIFY any more: the subscription is over
    record = al.state_is(call_id, job.refer_id, "succeeded")
    al.notified(pa, 2)
    parties.go(al.asterisk_port, call_id)
    finish(al.lab, pa, pz)
    assert len(received(pa, "NOTIFY")) == 2
    [bye] = received(pa, "BYE")
    assert bye.cseq == ASTERISK_CSEQ + 3
    assert record["notify_reply"] == "481"
    assert [e[:3] for e in al.events(call_id, job.refer_id)] == [
        ("refer", "new", "refer-seen"),
        ("refer-accepted", "refer-seen", "accepted"),
        ("notify-trying", "accepted", "trying"),
        ("notify-ringing", "trying", "ringing"),
        ("notify-481", "ringing", "transferor-gone"),
        ("notify-success", "transferor-gone", "succeeded"),
        ("bye-transferee", "succeeded", "succeeded"),
    ]


def test_restart_between_the_final_notify_and_asterisks_bye_keeps_renumbering(
        anchored_lab):
    al = anchored_lab()
    pa, pz, call_id = al.start(parties.PbxA(al.asterisk_uri, notifies=2, then=["BYE"]),
                               parties.Asterisk(then=["BYE"]))
    job = al.job()
    assert job is not None, al.lab.kamailio.log()[-4000:]
    al.progress(job, 200, "OK", True)
    al.state_is(call_id, job.refer_id, "succeeded")
    al.notified(pa, 2)
    al.lab.kamailio.stop()
    al.lab.kamailio.start()  # same port; the htables start empty
    restored = wait_for(lambda: call_id in al.lab.kamailio.kamcmd(
        "htable.dump", "referee_x"), 3.0)
    assert restored, al.lab.kamailio.log()[-3000:]
    parties.go(al.asterisk_port, call_id)
    finish(al.lab, pa, pz)
    notifies = received(pa, "NOTIFY")
    [bye] = received(pa, "BYE")
    assert bye.cseq > notifies[-1].cseq  # a jump is legal; a step back is the failure
    [ok_bye] = received(pz, "BYE", status=200)
    assert ok_bye.cseq == ASTERISK_CSEQ + 1
    al.htables_empty_of(call_id)


def test_no_outcome_from_asterisk_expires_and_referee_ends_the_subscription(anchored_lab):
    al = anchored_lab(more="[transfer]\nmax_open_s = 2\n")
    pa, pz, call_id = al.start(parties.PbxA(al.asterisk_uri, notifies=2, then=["BYE"]),
                               parties.Asterisk(then=["BYE"]))
    job = al.job()
    assert job is not None, al.lab.kamailio.log()[-4000:]
    al.state_is(call_id, job.refer_id, "expired", timeout_s=6.0)
    al.notified(pa, 2)
    parties.go(al.asterisk_port, call_id)
    finish(al.lab, pa, pz)
    last = received(pa, "NOTIFY")[-1]
    assert last.body == "SIP/2.0 408 Request Timeout"
    assert last.header("Subscription-State") == "terminated;reason=noresource"
    [bye] = received(pa, "BYE")
    assert bye.cseq == ASTERISK_CSEQ + 3


def test_native_cfg_without_with_anchored_relays_and_says_why(tmp_path, redis_server):
    """[anchored] set but the drop-in started without -A WITH_ANCHORED: ordinary calls
    keep paying nothing, and a REFER to the Asterisk is relayed rather than accepted
    with NOTIFYs nobody could number."""
    port = free_udp_port()
    lab = make_lab(tmp_path, redis_server, "kamailio-native.cfg")
    conf = lab.kamailio.referee_config
    conf.write_text(conf.read_text() + anchored_settings(port, "accept"))
    lab.kamailio.start()
    try:
        al = AnchoredLab(lab, port)
        pa, pz, call_id = al.start(
            parties.PbxA(al.asterisk_uri, notifies=0, then=["BYE"]),
            parties.Asterisk(expect_refer=True, wait_for_go=False, then=["BYE"]),
        )
        finish(lab, pa, pz)
        [refer] = received(pz, "REFER")
        assert refer.header("X-Transfer-Id") == f"{A_CSEQ}@{call_id}"
        record = lab.store.get(call_id, A_CSEQ)
        assert record["anchor_mode"] == "relay"
        assert record["anchor_fallback"] == "cfg-without-anchored-mode"
        assert "needs -A WITH_ANCHORED" in lab.kamailio.log()
    finally:
        lab.kamailio.stop()
    assert not lab.kamailio.python_errors(), "\n".join(lab.kamailio.python_errors())


def test_asterisks_out_of_dialog_requests_leave_no_cseq_behind(anchored_lab):
    """Only INVITE dialogs carry a REFER: a qualify OPTIONS (a new Call-ID each minute)
    from a listed Asterisk must not sit in referee_cs for a day."""
    al = anchored_lab()
    port = al.lab.kamailio.port
    call_id = f"qualify-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", al.asterisk_port))
        s.settimeout(2.0)
        s.sendto((
            f"OPTIONS sip:pbxa@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{al.asterisk_port};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:asterisk@127.0.0.1>;tag={uuid.uuid4().hex[:8]}\r\n"
            f"To: <sip:pbxa@127.0.0.1:{port}>\r\n"
            f"Call-ID: {call_id}\r\n"
            "CSeq: 4711 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        ).encode(), ("127.0.0.1", port))
        assert s.recv(65535).startswith(b"SIP/2.0 ")  # answered: the cfg has run
    assert call_id not in al.lab.kamailio.kamcmd("htable.dump", "referee_cs")


def test_an_operator_ending_a_stuck_transfer_sends_a_its_final_notify(anchored_lab):
    """`referee transfer end`: the Asterisk side never reports; the operator ends the
    transfer, the node that accepted it NOTIFYs A 487 (terminated) in the dialog's
    numbering, and the record is final with that sipfrag."""
    al = anchored_lab()
    pa, pz, call_id = al.start(parties.PbxA(al.asterisk_uri, notifies=2, then=["BYE"]),
                               parties.Asterisk(then=["BYE"]))
    job = al.job()
    assert job is not None, al.lab.kamailio.log()[-4000:]
    al.state_is(call_id, job.refer_id, "trying")
    out = subprocess.run(
        [str(Path(sys.prefix) / "bin" / "referee"), "--config",
         str(al.lab.kamailio.referee_config), "transfer", "end", call_id, job.refer_id],
        capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr + al.lab.kamailio.log()[-3000:]
    assert f"node {NODE} sent the transferor NOTIFY 487 Request Terminated" in out.stdout
    record = al.state_is(call_id, job.refer_id, "failed")
    assert record["final_sipfrag"] == "487 Request Terminated"
    al.notified(pa, 2)
    parties.go(al.asterisk_port, call_id)
    finish(al.lab, pa, pz)
    last = received(pa, "NOTIFY")[-1]
    assert last.body == "SIP/2.0 487 Request Terminated"
    assert last.header("Subscription-State") == "terminated;reason=noresource"
    [bye] = received(pa, "BYE")
    assert bye.cseq == ASTERISK_CSEQ + 3  # numbered after both NOTIFYs


# Counted with one Redis's MONITOR; a Cluster spreads the trips over its nodes (what
# they are there: bench/README.md, Cluster, and tests/kemi/storage/test_cluster.py).
@pytest.mark.parametrize("anchored_lab", CFGS, indirect=True)
def test_an_accepted_refer_takes_two_round_trips_up_to_its_move_job(anchored_lab):
    """The create, which records the accept with it (referee sends the 202 right after,
    and A's answer to the NOTIFY 100 must find the transfer accepted); then the NOTIFY's
    event, the dialog listed for a restart and the move job in one trip.  It took five,
    then three.  Each trip through ndb_redis is one EVALSHA of the packed runner, seen
    here with Redis' MONITOR."""
    import threading

    al = anchored_lab()
    seen: list[str] = []
    stop = threading.Event()

    def watch(monitor):
        try:
            for m in monitor.listen():
                seen.append(m["command"])
                if stop.is_set():
                    return
        except Exception:  # noqa: BLE001 - the connection closed under it at the end
            return

    with al.lab.rcli.monitor() as monitor:
        threading.Thread(target=watch, args=(monitor,), daemon=True).start()
        pa, pz, call_id = al.start(parties.PbxA(al.asterisk_uri, notifies=2, then=["BYE"]),
                                   parties.Asterisk(then=["BYE"]))
        job = al.job()
        assert job is not None, al.lab.kamailio.log()[-4000:]
        al.state_is(call_id, job.refer_id, "trying")
        stop.set()
        al.progress(job, 200, "OK", True)
        al.state_is(call_id, job.refer_id, "succeeded")
    al.notified(pa, 2)
    parties.go(al.asterisk_port, call_id)
    finish(al.lab, pa, pz)
    trips = [c for c in seen if c.startswith(("EVALSHA ", "EVAL ")) and call_id in c]
    queued = next(n for n, c in enumerate(trips) if jobs_key(PREFIX, "pbx1") in c)
    assert queued == 1, trips[: queued + 1]
    assert "refer-accepted" in trips[0] and "202 by referee (anchored)" in trips[0]
    assert "XADD" in trips[1] and "HSET" in trips[1]  # the job, the dialog listed
    assert "notify-trying" in trips[1]
    log = [line.split("|")[1:5] for line in al.lab.store.log(call_id, job.refer_id)]
    assert log[:3] == [["refer", "new", "refer-seen", "applied"],
                       ["refer-accepted", "refer-seen", "accepted", "applied"],
                       ["notify-trying", "accepted", "trying", "applied"]]
