"""The whole anchored flow, Kamailio side and Asterisk side together, nothing stood in for
but Asterisk itself:

* real Kamailio (both example configs) + real Redis; SIPp plays the customer PBX "A" and
  Asterisk's SIP side of its dialog with A (the Call-ID is the one Asterisk used in the
  recording, so the AMI events name this very dialog);
* the real AMI controller (agi.ami, `referee asterisk run`'s controller) reads the
  MoveJob referee's Kamailio queued when it answered A's REFER 202;
* Asterisk's AMI is the recorded session (../shared/asterisk-ami), replayed byte for byte
  by tests.support.ami_replay: it moves nothing until the controller sends the Setvars and
  the dual Redirect, then plays what Asterisk did (the target rings, answers or is busy).

What A hears is what the target did: NOTIFY 100 at once (Kamailio), 180 when the target
rang, 200 only when it answered, or its 486; the controller releases A's leg after the
tenant's release timer once the target answered; Asterisk's BYE to A then arrives
renumbered past referee's NOTIFYs, so A never answers 500 Invalid CSeq.
"""

from __future__ import annotations

import time

import pytest

from agi.ami import AmiController
from kemi.cli.demo.kamailio_node import free_udp_port
from kemi.config import AsteriskSettings, RedisSettings, Settings
from tests.e2e.parties import finish, received, sip_messages, wait_for
from tests.e2e.test_anchored import NODE, PREFIX, anchored_settings
from tests.support import anchored as parties
from tests.support import transcript
from tests.support.ami_replay import ReplayPeer, cast, response_to
from tests.support.anchored import A_CSEQ, ASTERISK_CSEQ

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:asterisk.manager")

SETVAR_OK = response_to(transcript.ami("a-target-answers"), "Setvar")


@pytest.fixture(params=["kamailio.cfg", "kamailio-native.cfg"])
def world(request, tmp_path, redis_server):
    from tests.e2e.conftest import make_lab

    started: list = []

    def start(recording: str, ours: set[str]):
        ast_port = free_udp_port()
        lab = make_lab(tmp_path, redis_server, request.param)
        conf = lab.kamailio.referee_config
        conf.write_text(conf.read_text() + anchored_settings(ast_port))
        lab.kamailio.defines = ("WITH_ANCHORED",)
        lab.kamailio.start()
        started.append(lab.kamailio)
        lab.policy("tenant", "set", "default", "--bye-wait", "1")  # release A after 1 s

        tr = transcript.ami(recording)
        who = cast(tr)
        peer = ReplayPeer(tr, ours, reuse={"Setvar": SETVAR_OK}, scale=0.1).start()
        started.append(peer)
        settings = Settings(
            redis=RedisSettings(url=redis_server.url, prefix=PREFIX),
            asterisk=AsteriskSettings(
                name="pbx1", ami_port=peer.port, ami_user="referee", ami_secret="s3cret",
                transfer_context="ami-xfer", hold_context="ami-hold", hold_exten="hold",
                recall_context="ami-recall"),
        )
        controller = AmiController(settings, block_ms=100, consumer="it",
                                   connect_timeout_s=1.0)
        controller.start()
        started.append(controller)
        # A's REFER comes while P and A are bridged: the controller has seen that call.
        assert wait_for(lambda: _pair_known(controller, who.call_id), 10), "no P<->A bridge"
        return lab, peer, controller, who, ast_port

    yield start
    for thing in reversed(started):
        thing.stop()


def _pair_known(controller, call_id: str) -> bool:
    try:
        return controller.follower.channels.find_pair(call_id) is not None
    except RuntimeError:  # the table changed under us: not yet
        return False


def _sip_parties(lab, ast_port: int, call_id: str, notifies: int, then: list[str]):
    a_port = free_udp_port()
    lab.register("pbxa", a_port)
    ast_uri = f"sip:asterisk@127.0.0.1:{ast_port}"
    pa = lab.party("pbxa", parties.PbxA(ast_uri, notifies=notifies, then=then).xml(),
                   port=a_port).start()
    # Asterisk's Call-ID in the recording: SIPp takes a literal -cid_str for its one call.
    pz = lab.party("asterisk", parties.Asterisk(then=then).xml(), port=ast_port,
                   extra=("-cid_str", call_id)).start()
    return pa, pz


def _state(lab, call_id: str, state: str, timeout_s: float = 15.0) -> dict[str, str]:
    def check():
        rec = lab.store.get(call_id, str(A_CSEQ)) or {}
        return rec if rec.get("state") == state else None
    rec = wait_for(check, timeout_s)
    assert rec, (lab.store.get(call_id, str(A_CSEQ)), lab.kamailio.log()[-3000:])
    return rec


def _answered_notifies(pa) -> int:
    return len({m.cseq for m in sip_messages(pa.messages())
                if m.direction == "sent" and m.status and m.method == "NOTIFY"})


def test_target_answers_a_hears_100_180_200_and_is_released(world):
    lab, peer, controller, who, ast_port = world("a-target-answers",
                                                 {"Setvar", "Redirect", "Hangup"})
    pa, pz = _sip_parties(lab, ast_port, who.call_id, notifies=3, then=["BYE"])

    record = _state(lab, who.call_id, "succeeded")
    assert wait_for(lambda: _answered_notifies(pa) >= 3, 5)
    # The controller hangs A's leg up after the tenant's release timer (1 s) ...
    assert wait_for(lambda: peer.sent("Hangup"), 10), peer.errors
    (hangup,) = peer.sent("Hangup")
    assert hangup.get("Channel") == who.a and hangup.get("Cause") == "16"
    # ... and Asterisk's BYE for it reaches A renumbered past the three NOTIFYs.
    parties.go(ast_port, who.call_id)
    finish(lab, pa, pz)
    assert peer.errors == []

    frags = [n.body for n in received(pa, "NOTIFY")]
    assert frags == ["SIP/2.0 100 Trying", "SIP/2.0 180 Ringing", "SIP/2.0 200 OK"]
    [bye] = received(pa, "BYE")
    assert bye.cseq == ASTERISK_CSEQ + 4
    assert all(m.status != 500 for m in sip_messages(pa.messages()))
    [ok_bye] = received(pz, "BYE", status=200)
    assert ok_bye.header("CSeq") == f"{ASTERISK_CSEQ + 1} BYE"
    assert received(pz, "REFER") == []  # Asterisk never saw the REFER

    record = wait_for(lambda: (lambda r: r if r.get("ami_result") == "a-released" else None)(
        lab.store.get(who.call_id, str(A_CSEQ)) or {}), 5)
    assert record, lab.store.get(who.call_id, str(A_CSEQ))
    assert record["state"] == "succeeded" and record["final_sipfrag"] == "200 OK"
    assert record["ami_p_channel"] == who.p and record["ami_a_channel"] == who.a
    assert record["ami_final"] == "200"
    setvars = {r.get("Variable"): r.get("Value") for r in peer.sent("Setvar")}
    assert setvars["XFER_ID"] == f"{A_CSEQ}@{who.call_id}"
    assert setvars["XFER_TARGET"] == "PJSIP/2000@carrier"
    (redirect,) = peer.sent("Redirect")
    assert (redirect.get("Channel"), redirect.get("ExtraChannel")) == (who.p, who.a)
    assert redirect.get("Exten") == "2000"


def test_target_busy_a_hears_486_and_its_call_with_p_goes_on(world):
    lab, peer, controller, who, ast_port = world("b-target-busy-bridge-app",
                                                 {"Setvar", "Redirect"})
    pa, pz = _sip_parties(lab, ast_port, who.call_id, notifies=3, then=["BYE"])

    record = _state(lab, who.call_id, "failed")
    assert wait_for(lambda: _answered_notifies(pa) >= 3, 5)
    # The AGI's EXEC Bridge put P back with A (the recording's BridgeEnter of both).
    assert wait_for(lambda: (lab.store.get(who.call_id, str(A_CSEQ)) or {}).get(
        "ami_result") == "reconnected", 10)
    time.sleep(0.3)
    assert peer.sent("Hangup") == []  # A is not released: it is talking to P again
    parties.go(ast_port, who.call_id)  # later P hangs up and Asterisk BYEs A
    finish(lab, pa, pz)
    assert peer.errors == []

    frags = [n.body for n in received(pa, "NOTIFY")]
    assert frags == ["SIP/2.0 100 Trying", "SIP/2.0 180 Ringing", "SIP/2.0 486 Busy Here"]
    [bye] = received(pa, "BYE")
    assert bye.cseq == ASTERISK_CSEQ + 4
    assert all(m.status != 500 for m in sip_messages(pa.messages()))
    record = lab.store.get(who.call_id, str(A_CSEQ))
    assert record["state"] == "failed" and record["final_sipfrag"].startswith("486")
    assert record["ami_dialstatus"] == "BUSY"
    _ = NODE  # the progress came back on this node's stream (test_anchored checks its name)
