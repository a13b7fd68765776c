"""The AMI controller (agi.ami + agi.follow) against Asterisk 20 sessions recorded in
../shared/asterisk-ami, replayed byte for byte by tests.support.ami_replay, with a real
redis-server for the job, the Progress stream and the transfer record.

Each test: the replay plays the call up to the point where the recording's controller
acted (P and A bridged); the MoveJob is XADDed then, as Kamailio would after its 202;
our controller must send the actions the recording shows (matched by type and order;
anything else fails the test), publish the right Progress and annotate the record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from agi.ami import AmiController
from kemi.config import AsteriskSettings, RedisSettings, Settings
from kemi.core.anchor import JOBS_GROUP, MoveJob, Progress, jobs_key, progress_key
from kemi.storage.resp import RespClient
from kemi.storage.transfers import TransferStore
from tests.support import transcript
from tests.support.ami_replay import Cast, ReplayPeer, cast, response_to

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:asterisk.manager")

PREFIX = "referee"
REFER_ID = "7"
SETVAR_OK = response_to(transcript.ami("a-target-answers"), "Setvar")
OUR_VARS = ["XFER_ID", "XFER_PEER", "XFER_PEER_UID", "XFER_TARGET", "XFER_RECONNECT",
            "XFER_DIAL_TIMEOUT", "XFER_ANNOUNCE", "XFER_CALLERID", "XFER_FALLBACK"]


@dataclass
class Run:
    peer: ReplayPeer
    controller: AmiController
    cast: Cast
    job: MoveJob
    redis: RespClient
    store: TransferStore

    def progress(self) -> list[Progress]:
        entries = self.redis.call("XRANGE", self.job.reply_to, "-", "+") or []
        return [Progress.from_fields(dict(zip(body[0::2], body[1::2], strict=True)))
                for _id, body in entries]

    def codes(self) -> list[tuple[int, bool]]:
        return [(p.code, p.final) for p in self.progress()]

    def record(self) -> dict[str, str]:
        return self.store.get(self.job.call_id, self.job.refer_id) or {}

    def pending(self) -> int:
        return int(self.redis.call("XPENDING", jobs_key(PREFIX, "ast1"), JOBS_GROUP)[0])


def _wait(pred, timeout: float = 8.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


@pytest.fixture
def replay(redis_server) -> Iterator:
    runs: list[Run] = []

    def start(name: str, ours, *, pick=None, until=None, release_after_s=0.15,
              on_failure="reconnect", wait_done=True, ack=True, scale=0.1) -> Run:
        tr = transcript.ami(name)
        who = cast(tr)
        redis = RespClient(redis_server.url, timeout_s=2)
        store = TransferStore(redis, prefix=PREFIX)
        now = time.time()
        store.create(who.call_id, REFER_ID, {"refer_to": "sip:2000@127.0.0.1"}, now, now + 600)
        job = MoveJob(call_id=who.call_id, refer_id=REFER_ID, target="sip:2000@127.0.0.1",
                      dial="PJSIP/amitarget", transferor="amipbx@127.0.0.1",
                      reply_to=progress_key(PREFIX, "kam1"), created_at=now,
                      dial_timeout_s=20, release_after_s=release_after_s,
                      on_failure=on_failure)

        holder: dict[str, AmiController] = {}

        def push_job() -> None:
            # The REFER comes after the call is up: let the controller see the bridge first
            # (pyst2 reads the socket byte by byte; a job racing the events would be
            # looked up with CoreShowChannels, which these recordings do not answer).
            def seen() -> bool:
                try:  # read from another thread: a table changing under us is "not yet"
                    return "c" in holder and holder["c"].follower.channels.find_pair(
                        who.call_id) is not None
                except RuntimeError:
                    return False

            _wait(seen, timeout=5)
            fields = [x for kv in job.to_fields().items() for x in kv]
            RespClient(redis_server.url, timeout_s=2).call(
                "XADD", jobs_key(PREFIX, "ast1"), "*", *fields)

        peer = ReplayPeer(tr, ours, pick=pick, reuse={"Setvar": SETVAR_OK},
                          on_first_gate=push_job, until=until, scale=scale).start()
        settings = Settings(
            redis=RedisSettings(url=redis_server.url, prefix=PREFIX),
            asterisk=AsteriskSettings(
                name="ast1", ami_port=peer.port, ami_user="referee", ami_secret="s3cret",
                transfer_context="ami-xfer", hold_context="ami-hold", hold_exten="hold",
                recall_context="ami-recall"),
        )
        controller = AmiController(settings, block_ms=100, consumer="test",
                                   connect_timeout_s=1.0)
        holder["c"] = controller
        controller.start()
        run = Run(peer, controller, who, job, redis, store)
        runs.append(run)
        if wait_done:
            assert peer.done.wait(30), "replay did not finish"
            if ack:
                assert _wait(lambda: run.pending() == 0 and controller.jobs_seen == 1), (
                    "job not acked")
        return run

    yield start
    for run in runs:
        run.controller.stop()
        run.peer.stop()


def _setvars(run: Run) -> dict[str, str]:
    sv = run.peer.sent("Setvar")
    assert {r.get("Channel") for r in sv} == {run.cast.p}, "Setvar only on P"
    return {r.get("Variable"): r.get("Value") for r in sv}


def _check_move(run: Run) -> None:
    """The 9 XFER_* variables on P, then exactly one dual Redirect."""
    assert [r.get("Variable") for r in run.peer.sent("Setvar")] == OUR_VARS
    v = _setvars(run)
    assert v["XFER_ID"] == f"{REFER_ID}@{run.cast.call_id}"
    assert v["XFER_PEER"] == run.cast.a and v["XFER_PEER_UID"] == run.cast.a_uid
    assert v["XFER_TARGET"] == "PJSIP/amitarget" and v["XFER_DIAL_TIMEOUT"] == "20"
    (redirect,) = run.peer.sent("Redirect")
    assert {k: redirect.get(k) for k in (
        "Channel", "Context", "Exten", "Priority", "ExtraChannel", "ExtraContext",
        "ExtraExten", "ExtraPriority")} == {
        "Channel": run.cast.p, "Context": "ami-xfer", "Exten": "2000", "Priority": "1",
        "ExtraChannel": run.cast.a, "ExtraContext": "ami-hold", "ExtraExten": "hold",
        "ExtraPriority": "1"}
    # Our own ActionIDs, one per action (never pyst2's reused default dict).
    ids = [r.get("ActionID") for r in run.peer.received]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("name", ["a-target-answers", "g-dm-pai-target-answers",
                                  "h-proxy-notify-cseq-collision"])
def test_target_answers_then_a_released(replay, name):
    """T answers: 180 then 200 (final), and A's leg is hung up (Cause 16) after the
    release timer, so no PBX trunk stays busy; P stays with T.  (h: the AMI side of the
    CSeq-collision run is this same flow; its SIP side is Kamailio's business.)"""
    run = replay(name, {"Setvar", "Redirect", "Hangup"})
    assert run.peer.errors == []
    _check_move(run)
    assert _setvars(run)["XFER_RECONNECT"] == "bridgeapp"
    (hangup,) = run.peer.sent("Hangup")
    assert hangup.get("Channel") == run.cast.a and hangup.get("Cause") == "16"
    assert run.codes() == [(180, False), (200, True)]
    rec = run.record()
    assert rec["ami_result"] == "a-released" and rec["ami_release"] == "hangup"
    assert rec["ami_final"] == "200" and rec["ami_p_channel"] == run.cast.p
    assert rec["ami_a_channel"] == run.cast.a and rec["ami_t_channel"].startswith("PJSIP/")
    # The release came after the answer, not before (timer shortened to 0.15 s).
    log = "\n".join(run.store.log(run.job.call_id, REFER_ID))
    assert log.index("target answered") < log.index("A released")


@pytest.mark.parametrize("name,code", [
    ("b-target-busy-bridge-app", 486),
    ("b-target-busy-bridge-app-a-holds", 486),
    ("g-dm-pai-target-busy-bridge-app", 486),
    ("c-target-noanswer-bridge-app", 480),
    ("i-session-timer-noanswer-50s", 480),
])
def test_target_fails_agi_reconnects(replay, name, code):
    """T busy / no answer: the final carries final_status(DialStatus, cause) — cause 17
    from T's HangupRequest, which comes before DialEnd; NOANSWER's cause 0 tells nothing —
    and the AGI's EXEC Bridge puts P and A back in one bridge, which the controller
    confirms from BridgeEnter of both with the same BridgeUniqueid.  It sends nothing
    after the Redirect: no Hangup, no Bridge, no Originate (they would be unrecorded)."""
    # i-: 60 s of RTCP chatter; played faster still.
    run = replay(name, {"Setvar", "Redirect"}, scale=0.04 if name.startswith("i-") else 0.1)
    assert run.peer.errors == []
    _check_move(run)
    assert run.codes() == [(180, False), (code, True)]
    rec = run.record()
    assert rec["ami_result"] == "reconnected" and rec["ami_reconnect"] == "agi"
    assert rec["ami_bridge"] and rec["ami_final"] == str(code)
    assert rec["ami_dialstatus"] == ("BUSY" if code == 486 else "NOANSWER")
    assert [r.action for r in run.peer.received] == ["Login"] + ["Setvar"] * 9 + ["Redirect"]


def test_target_busy_agi_hands_back_controller_bridges(replay):
    """b-target-busy-ami-bridge: the AGI ended with XFER_RESULT=WAIT (P parked in MOH),
    A's leg still alive: the controller sends AMI Bridge P<->A (safe: no AGI runs on P)."""
    run = replay("b-target-busy-ami-bridge", {"Setvar", "Redirect", "Bridge"})
    assert run.peer.errors == []
    _check_move(run)
    (bridge,) = run.peer.sent("Bridge")
    assert (bridge.get("Channel1"), bridge.get("Channel2")) == (run.cast.p, run.cast.a)
    assert run.codes() == [(180, False), (486, True)]
    rec = run.record()
    assert rec["ami_result"] == "reconnected" and rec["ami_reconnect"] == "ami-bridge"


def test_no_ami_bridge_while_the_agi_holds_p(replay):
    """c-target-noanswer-ami-bridge-in-agi: the recording's controller bridged P out of a
    running AGI (README §6: the AGI is left on a Surrogate channel).  Ours never does: up
    to the moment that Bridge was recorded (t=10.49 s) it has published the 480 and waits
    for the AGI (EXEC Bridge, or XFER_RESULT=WAIT) — no action after the Redirect."""
    run = replay("c-target-noanswer-ami-bridge-in-agi", {"Setvar", "Redirect", "Bridge"},
                 until=10.4, ack=False)
    time.sleep(0.3)
    assert run.peer.errors == []
    assert run.peer.sent("Bridge") == []
    assert run.codes() == [(180, False), (480, True)]
    assert run.pending() == 1  # still following: not acked
    assert run.record()["ami_result"] == "moved"


def test_recall_when_a_left(replay):
    """d-recall-originate: A hung up its parked leg, T was busy, the AGI parked P
    (XFER_RESULT=WAIT): the controller recalls A — Async Originate to A's endpoint into
    the recall context with XFER_PEER=P and its own ChannelId — and confirms the recall
    leg (Uniqueid = that ChannelId) bridged with P."""
    run = replay("d-recall-originate", {"Setvar", "Redirect", "Originate"})
    assert run.peer.errors == []
    _check_move(run)
    (orig,) = run.peer.sent("Originate")
    assert orig.get("Channel") == "PJSIP/amipbx" and orig.get("Context") == "ami-recall"
    assert orig.get("Exten") == "s" and orig.get("Priority") == "1"
    assert orig.get("Async") == "true" and orig.get("ChannelId")
    assert f"XFER_PEER={run.cast.p}" in orig.headers["Variable"]
    assert run.codes() == [(180, False), (486, True)]
    rec = run.record()
    assert rec["ami_result"] == "recalled"
    assert rec["ami_recall_channel_id"] == orig.get("ChannelId")
    assert rec["ami_recall_channel"].startswith("PJSIP/amipbx-")


def test_single_redirect_pitfall_never_ours(replay):
    """f-pitfall-single-redirect is a negative example: that controller redirected P
    alone, and Asterisk BYEd A at once.  Replayed against ours, the recorded Redirect is
    matched to our one Redirect, which is dual (ExtraChannel = A): we never send the
    single form.  The recorded consequences then play out (A gone, T busy, P hung up by
    the dialplan): 486, A noted as gone, nothing to recall (P is gone too)."""
    run = replay("f-pitfall-single-redirect", {"Setvar", "Redirect"})
    assert run.peer.errors == []
    (redirect,) = run.peer.sent("Redirect")
    assert "ExtraChannel" not in redirect.recorded  # what the recording did
    assert redirect.get("ExtraChannel") == run.cast.a  # what we do
    assert run.codes() == [(180, False), (486, True)]
    rec = run.record()
    assert "ami_a_hungup" in rec and rec["ami_result"] == "caller-gone"
    assert run.peer.sent("Originate") == [] and run.peer.sent("Hangup") == []


@pytest.mark.parametrize("index,message", [
    (0, "Channel does not exist: PJSIP/nosuch-00000099"),
    (1, "ExtraChannel does not exist: PJSIP/nosuch-00000099"),
    (2, "Priority is invalid"),
    (3, "Context not specified"),
])
def test_redirect_errors_move_nothing(replay, caplog, index, message):
    """e-ami-errors: each recorded Redirect error answers our Redirect.  Asterisk moved
    nothing (it checks ExtraChannel before moving), so P and A stay bridged; the
    controller logs the message, publishes a final 503 carrying it, records
    redirect-failed, acks the job and sends nothing more."""
    caplog.set_level(logging.ERROR, logger="referee.ami")
    run = replay("e-ami-errors", {"Setvar", "Redirect"},
                 pick={"Redirect": [index], "Setvar": []})
    assert run.peer.errors == []
    (p,) = run.progress()
    assert (p.code, p.final) == (503, True) and message in p.detail
    rec = run.record()
    assert rec["ami_result"] == "redirect-failed" and message in rec["ami_error"]
    assert any(message in r.getMessage() and "stay bridged" in r.getMessage()
               for r in caplog.records)
    assert [r.action for r in run.peer.received][-1] == "Redirect"


def test_setvar_error_no_redirect(replay, caplog):
    """e-ami-errors: Setvar answered "No such channel" (P vanished): no Redirect, final 503."""
    caplog.set_level(logging.ERROR, logger="referee.ami")
    run = replay("e-ami-errors", {"Setvar", "Redirect"},
                 pick={"Setvar": [0], "Redirect": []})
    run.peer.stop()
    assert run.peer.errors == []
    assert [r.action for r in run.peer.received] == ["Login", "Setvar"]
    (p,) = run.progress()
    assert p.code == 503 and "No such channel" in p.detail
    assert run.record()["ami_result"] == "redirect-failed"
    assert any("No such channel" in r.getMessage() for r in caplog.records)


def test_reconnects_after_ami_drop(replay, redis_server):
    """Asterisk goes away mid-session (the replay drops the connection): the controller
    logs in again (backoff) and runs the next job on the new session."""
    first = replay("a-target-answers", set(), until=0.5, wait_done=False)
    assert first.peer.done.wait(10)
    port = first.peer.port
    first.peer.stop()
    tr = transcript.ami("b-target-busy-bridge-app")
    who = cast(tr)
    store = TransferStore(RespClient(redis_server.url, timeout_s=2), prefix=PREFIX)
    now = time.time()
    store.create(who.call_id, REFER_ID, {}, now, now + 600)
    job = MoveJob(call_id=who.call_id, refer_id=REFER_ID, target="sip:2000@127.0.0.1",
                  dial="PJSIP/amitarget", transferor="a", reply_to=progress_key(PREFIX, "k2"),
                  created_at=now)

    def push() -> None:
        RespClient(redis_server.url, timeout_s=2).call(
            "XADD", jobs_key(PREFIX, "ast1"), "*",
            *[x for kv in job.to_fields().items() for x in kv])

    second = ReplayPeer(tr, {"Setvar", "Redirect"}, reuse={"Setvar": SETVAR_OK},
                        on_first_gate=push, port=port).start()
    try:
        assert second.done.wait(30)
        assert _wait(lambda: first.controller.logins == 2)
        assert second.errors == []
        assert len(second.sent("Redirect")) == 1
        assert store.get(who.call_id, REFER_ID)["ami_result"] == "reconnected"
    finally:
        second.stop()


def test_restart_reads_own_pending_jobs(replay, redis_server):
    """A controller that stopped after reading a job (never acked) starts again under the
    same consumer name: it re-reads the job, sees in the record that the transfer was
    already finished, and acks it without touching Asterisk."""
    who = cast(transcript.ami("a-target-answers"))
    r = RespClient(redis_server.url, timeout_s=2)
    key = jobs_key(PREFIX, "ast1")
    r.call("XGROUP", "CREATE", key, JOBS_GROUP, "0", "MKSTREAM")
    job = MoveJob(call_id=who.call_id, refer_id="9", target="sip:2000@x", dial="PJSIP/t",
                  transferor="a", reply_to=progress_key(PREFIX, "k"), created_at=time.time())
    r.call("XADD", key, "*", *[x for kv in job.to_fields().items() for x in kv])
    r.call("XREADGROUP", "GROUP", JOBS_GROUP, "test", "STREAMS", key, ">")  # the crash
    store = TransferStore(r, prefix=PREFIX)
    store.create(who.call_id, "9", {}, time.time(), time.time() + 600)
    store.annotate(who.call_id, "9", time.time(), {"ami_p_uid": who.p_uid,
                                                   "ami_result": "a-released",
                                                   "ami_final": "200"})
    run = replay("a-target-answers", set(), wait_done=False)
    assert _wait(lambda: int(r.call("XPENDING", key, JOBS_GROUP)[0]) == 0)
    assert run.controller.jobs_seen == 1
    assert [x.action for x in run.peer.received] == ["Login"]
    assert r.call("XLEN", progress_key(PREFIX, "k")) == 0
