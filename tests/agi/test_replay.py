"""The transfer handler against real Asterisk 20.20.1 sessions, replayed byte for byte
(tests/support/agi_replay.py), with the record written to a real redis-server.

For each recording: the commands we send (exactly), the outcome, and the transfer record.
Where our plan legitimately differs from the lab's recorded script, the difference is
declared per test (`extra`, `alias`, `rename`; see agi_replay) and everything we do send
is answered with the recorded bytes.

Declared differences used below, all from the lab set-up (../shared/asterisk-*/README.md):
* the lab named its FastAGI scripts "amixfer" (anchored) and "transfer" (relayed); ours
  are "anchored" and "relayed", so the handler is given the lab's names too;
* the lab's XFER_ID (x-busy-1, ...) and X-Transfer-Id (abc123) are not
  <refer-cseq>@<call-id>: renamed to "1@x-busy-1" / "3@abc123" in both directions;
* the lab controller never set XFER_ANNOUNCE / XFER_CALLERID: unset variables answer
  `200 result=0` (recorded for BLINDTRANSFER in the same sessions);
* SET VARIABLE XFER_RESULT WAIT answers `200 result=1` (recorded in d-recall-originate
  and b-target-busy-ami-bridge);
* relayed: scripts that did not read `${HASH(TRANSFER_DATA,X-Transfer-Id)}` get the value
  the lab's REFER carried (X-Transfer-Id: abc123, README sec. 2; GET FULL VARIABLE of it
  recorded as `200 result=1 (abc123)` in blind-transfer-success); scripts that did not read
  SIPREFERTOHDR get the lab's Refer-To (`sip:2000@127.0.0.1`, or 2999 for the AGISIGHUP=no
  run); our Dial always has `m` and is answered as the recorded Dial of the same target and
  timeout (`m` only changes what P hears while the target rings).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest

from agi.handler import TransferHandler
from agi.plan import ANCHORED, RELAYED
from kemi.storage.resp import RespClient
from kemi.storage.transfers import TransferStore
from tests.support import transcript
from tests.support.agi_replay import ReplayPeer, split

LAB_SCRIPTS = {"amixfer": ANCHORED, "transfer": RELAYED}
UNSET = b"200 result=0\n"
OPTIONALS = {b"GET VARIABLE XFER_ANNOUNCE\n": UNSET, b"GET VARIABLE XFER_CALLERID\n": UNSET}
WAIT_SET = {b"SET VARIABLE XFER_RESULT WAIT\n": b"200 result=1\n"}
HASH_CMD = b"GET FULL VARIABLE ${HASH(TRANSFER_DATA,X-Transfer-Id)}\n"
RELAYED_ID = "3@abc123"
HASH_LAB = {HASH_CMD: f"200 result=1 ({RELAYED_ID})\n".encode()}


def recorded_value(name: str, command: bytes) -> str:
    """What Asterisk answered to a command in a recording (the text in parentheses)."""
    rec = split(transcript.agi(name))
    for e in rec.exchanges:
        if e.command.data == command:
            line = [c.data for c in e.replies if c.data != b"HANGUP\n"][0].decode()
            return line[line.index("(") + 1:line.rindex(")")]
    raise KeyError(command)


def create(store: TransferStore, call_id: str, refer_id: str) -> None:
    now = time.time()
    res = store.create(call_id, refer_id, {"refer_to": "sip:2000@127.0.0.1"}, now=now,
                       deadline=now + 600, transferor="pbx@127.0.0.1",
                       transferee="caller@127.0.0.1", target="2000@127.0.0.1")
    assert res.created


@dataclass
class Replayed:
    peer: ReplayPeer
    handler: TransferHandler

    @property
    def commands(self) -> list[str]:
        return [c.decode("utf-8").rstrip("\n") for c in self.peer.commands]

    @property
    def outcome(self):
        assert len(self.handler.outcomes) == 1
        return self.handler.outcomes[0][1]


def replay(agi_server, name: str, store, *, extra=None, alias=None, rename=None,
           scale: float = 0.01, **handler_kw) -> Replayed:
    handler = TransferHandler(store, scripts=LAB_SCRIPTS, **handler_kw)
    server = agi_server(handler)
    rec = split(transcript.agi(name), rename=rename)
    peer = ReplayPeer(rec, scale=scale, extra=extra or {}, alias=alias or {})
    peer.start(server.port).join()
    deadline = time.monotonic() + 5
    while not handler.outcomes and time.monotonic() < deadline:
        time.sleep(0.01)
    return Replayed(peer, handler)


# -- anchored (../shared/asterisk-ami)


@dataclass
class Anchored:
    name: str
    tail: list[str]  # commands after GET VARIABLE DIALSTATUS ({peer} {uid} {xid} {status})
    result: str
    fields: dict[str, str]
    extra: dict[bytes, bytes] = field(default_factory=dict)
    proves: str = ""


AFTER_FAILURE = ["GET VARIABLE HANGUPCAUSE", "GET FULL VARIABLE ${{CHANNEL_EXISTS({peer})}}",
                 'EXEC UserEvent "XferFailed,XferId: {xid},DialStatus: {status}"']
BRIDGE_BACK = AFTER_FAILURE + ["EXEC Bridge {peer}", "GET VARIABLE BRIDGERESULT",
                               "CHANNEL STATUS"]
WAIT_TAIL = AFTER_FAILURE + ["SET VARIABLE XFER_RESULT WAIT"]

ANCHORED_CASES = [
    Anchored("a-target-answers", [], "bridged-target", {"agi_dialstatus": "ANSWER"},
             proves="Dial returns -1 when the P-T call ends; DIALSTATUS ANSWER after a HANGUP "
                    "line: bridged-target, A's release left to the controller"),
    Anchored("g-dm-pai-target-answers", [], "bridged-target", {"agi_dialstatus": "ANSWER"},
             proves="same with direct_media=yes + send_pai: the AGI dialogue is unchanged"),
    Anchored("h-proxy-notify-cseq-collision", [], "bridged-target",
             {"agi_dialstatus": "ANSWER"},
             proves="the CSeq collision is a SIP-side matter; the AGI sees a normal answer"),
    Anchored("b-target-busy-bridge-app", BRIDGE_BACK, "reconnected",
             {"agi_dialstatus": "BUSY", "agi_hangupcause": "17", "agi_peer_exists": "1",
              "agi_bridgeresult": "SUCCESS", "agi_ended_by": "caller"},
             proves="486 -> EXEC Bridge to A's living channel; P hangs up later (HANGUP line "
                    "before BRIDGERESULT's reply, then 511)"),
    Anchored("b-target-busy-bridge-app-a-holds", BRIDGE_BACK, "reconnected",
             {"agi_dialstatus": "BUSY", "agi_bridgeresult": "SUCCESS",
              "agi_ended_by": "caller"},
             proves="A held before the transfer: the AGI side is the same"),
    Anchored("g-dm-pai-target-busy-bridge-app", BRIDGE_BACK, "reconnected",
             {"agi_dialstatus": "BUSY", "agi_bridgeresult": "SUCCESS"},
             proves="direct media variant of the busy reconnect"),
    Anchored("i-session-timer-noanswer-50s", BRIDGE_BACK, "reconnected",
             {"agi_dialstatus": "NOANSWER", "agi_hangupcause": "16",
              "agi_bridgeresult": "SUCCESS", "agi_ended_by": "caller"},
             proves="a 50 s ring with A parked (session refresh meanwhile), then reconnect"),
    Anchored("c-target-noanswer-bridge-app",
             AFTER_FAILURE + ["EXEC Bridge {uid}", "GET VARIABLE BRIDGERESULT",
                              "CHANNEL STATUS"],
             "reconnected",
             {"agi_dialstatus": "NOANSWER", "agi_bridgeresult": "SUCCESS",
              "agi_ended_by": "peer"},
             proves="bridge by A's Uniqueid (XFER_RECONNECT=bridgeapp-uid); A hangs up first: "
                    "CHANNEL STATUS 6"),
    Anchored("b-target-busy-ami-bridge", WAIT_TAIL, "wait-recall",
             {"agi_dialstatus": "BUSY", "agi_peer_exists": "1"},
             proves="XFER_RECONNECT=wait: the AGI ends with XFER_RESULT=WAIT, the controller "
                    "bridges with AMI"),
    Anchored("d-recall-originate", WAIT_TAIL, "wait-recall",
             {"agi_dialstatus": "BUSY", "agi_peer_exists": "0"},
             proves="A's leg gone (CHANNEL_EXISTS 0): WAIT, the controller recalls A"),
    Anchored("f-pitfall-single-redirect", WAIT_TAIL, "wait-recall",
             {"agi_dialstatus": "BUSY", "agi_peer_exists": "0"}, extra=WAIT_SET,
             proves="single Redirect killed A: we see CHANNEL_EXISTS 0 and ask for a recall "
                    "instead of the recorded script's hopeless EXEC Bridge (NONEXISTENT)"),
    Anchored("c-target-noanswer-ami-bridge-in-agi", WAIT_TAIL, "wait-recall",
             {"agi_dialstatus": "NOANSWER", "agi_peer_exists": "1"}, extra=WAIT_SET,
             proves="XFER_RECONNECT=amibridge-in-agi is read as wait: we never sit in "
                    "EXEC MusicOnHold while the controller bridges (the recorded script did, "
                    "and P was yanked away from the AGI: -1, HANGUP, 511)"),
]


@pytest.mark.parametrize("case", ANCHORED_CASES, ids=lambda c: c.name)
def test_anchored_replay(case: Anchored, agi_server, store):
    xid_lab = recorded_value(case.name, b"GET VARIABLE XFER_ID\n")
    call_id, refer_id = xid_lab, "1"
    xid = f"{refer_id}@{call_id}"
    create(store, call_id, refer_id)
    rename = {xid_lab.encode(): xid.encode()}
    r = replay(agi_server, case.name, store, extra={**OPTIONALS, **case.extra}, rename=rename)
    r.peer.check()
    peer = recorded_value(case.name, b"GET VARIABLE XFER_PEER\n")
    uid = recorded_value(case.name, b"GET VARIABLE XFER_PEER_UID\n")
    target = recorded_value(case.name, b"GET VARIABLE XFER_TARGET\n")
    timeout = recorded_value(case.name, b"GET VARIABLE XFER_DIAL_TIMEOUT\n")
    o = r.outcome
    expected = [f"GET VARIABLE {v}" for v in (
        "XFER_ID", "XFER_PEER", "XFER_PEER_UID", "XFER_TARGET", "XFER_RECONNECT",
        "XFER_DIAL_TIMEOUT", "XFER_ANNOUNCE", "XFER_CALLERID")]
    expected += ["CHANNEL STATUS", f"EXEC Dial {target},{timeout},m",
                 "GET VARIABLE DIALSTATUS"]
    expected += [t.format(peer=peer, uid=uid, xid=xid, status=o.dialstatus) for t in case.tail]
    assert r.commands == expected, case.proves
    assert r.peer.saw_half_close
    assert o.result == case.result
    record = store.get(call_id, refer_id)
    assert record["agi_result"] == case.result
    assert record["agi_mode"] == "anchored" and record["agi_target"] == target
    for key, value in case.fields.items():
        assert record[key] == value, key
    notes = [x for x in store.log(call_id, refer_id) if x.split("|")[1] == "note"]
    assert len(notes) == (2 if case.result == "bridged-target" else 3)
    assert r.handler.store_errors == 0


def test_anchored_redis_down_still_reconnects(agi_server, redis_server):
    """Redis stopped: nothing can be recorded, P is still bridged back to A."""
    redis_server.stop(kill=True)
    client = RespClient(redis_server.url, timeout_s=0.05)
    store = TransferStore(client, "referee")
    name = "b-target-busy-bridge-app"
    rename = {b"x-busy-1": b"1@x-busy-1"}
    r = replay(agi_server, name, store, extra=OPTIONALS, rename=rename)
    r.peer.check()
    assert "EXEC Bridge PJSIP/amipbx-00000030" in r.commands
    assert r.outcome.result == "reconnected"
    assert r.handler.store_errors == 3 and r.handler.notes_written == 0


def test_anchored_unknown_transfer_is_logged_not_fatal(agi_server, store):
    r = replay(agi_server, "d-recall-originate", store, extra=OPTIONALS,
               rename={b"x-recall-1": b"9@nosuchcall"})
    r.peer.check()
    assert r.outcome.result == "wait-recall"
    assert r.handler.notes_written == 0 and r.handler.store_errors == 0


# -- relayed (../shared/asterisk-agi)


@dataclass
class Relayed:
    name: str
    dial: str  # our Dial data
    recorded_dial: str  # the recorded one (alias), "" = the same
    tail: list[str]
    result: str
    fields: dict[str, str]
    extra: dict[bytes, bytes] = field(default_factory=dict)
    handler_kw: dict = field(default_factory=dict)
    head: list[str] = field(default_factory=list)  # between the id read and the Dial
    proves: str = ""


FAILED_TAIL = ["GET VARIABLE DIALSTATUS", "GET VARIABLE HANGUPCAUSE"]

RELAYED_CASES = [
    Relayed("blind-transfer-success", "PJSIP/target,20,m", "", ["GET VARIABLE DIALSTATUS"],
            "bridged-target", {"agi_dialstatus": "ANSWER"},
            handler_kw={"relayed_announce": "beep", "relayed_timeout_s": 20},
            head=["EXEC Playback beep"],
            proves="announcement + Dial with m; -1 after the call, DIALSTATUS ANSWER"),
    Relayed("blind-transfer-success-nomedia", "PJSIP/target,20,m", "PJSIP/target,20,g",
            ["GET VARIABLE DIALSTATUS"], "bridged-target", {"agi_dialstatus": "ANSWER"},
            extra=HASH_LAB, proves="Dial result 0 with ANSWER (the recorded g)"),
    Relayed("blind-transfer-success-no-ringback", "PJSIP/target,20,m", "PJSIP/target,20,g",
            ["GET VARIABLE DIALSTATUS"], "bridged-target", {"agi_dialstatus": "ANSWER"},
            extra=HASH_LAB),
    Relayed("blind-transfer-target-busy", "PJSIP/target,20,m", "PJSIP/target,20",
            FAILED_TAIL, "target-failed", {"agi_dialstatus": "BUSY", "agi_hangupcause": "17"},
            extra=HASH_LAB, proves="486: recorded truthfully though A was told 200"),
    Relayed("blind-transfer-target-busy-noring", "PJSIP/target,20,m", "PJSIP/target,20",
            FAILED_TAIL, "target-failed", {"agi_dialstatus": "BUSY", "agi_hangupcause": "17"},
            extra=HASH_LAB),
    Relayed("blind-transfer-target-busy-media", "PJSIP/target,20,m", "", FAILED_TAIL,
            "target-failed", {"agi_dialstatus": "BUSY", "agi_hangupcause": "17"},
            extra=HASH_LAB, handler_kw={"relayed_announce": "beep", "relayed_timeout_s": 20},
            head=["EXEC Playback beep"]),
    Relayed("blind-transfer-no-answer", "PJSIP/target,5,m", "PJSIP/target,5", FAILED_TAIL,
            "target-failed", {"agi_dialstatus": "NOANSWER", "agi_hangupcause": "16"},
            extra=HASH_LAB, handler_kw={"relayed_timeout_s": 5}),
    Relayed("blind-transfer-target-404", "PJSIP/target,20,m", "PJSIP/target,20", FAILED_TAIL,
            "target-failed", {"agi_dialstatus": "CHANUNAVAIL", "agi_hangupcause": "1"},
            extra=HASH_LAB),
    Relayed("blind-transfer-target-congestion", "PJSIP/target,20,m", "PJSIP/target,20",
            FAILED_TAIL, "target-failed",
            {"agi_dialstatus": "CONGESTION", "agi_hangupcause": "34"}, extra=HASH_LAB),
    Relayed("blind-transfer-target-unreachable", "PJSIP/nosuchendpoint,20,m",
            "PJSIP/nosuchendpoint,20", FAILED_TAIL, "target-failed",
            {"agi_dialstatus": "CHANUNAVAIL", "agi_hangupcause": "3"}, extra=HASH_LAB,
            handler_kw={"relayed_dial": "PJSIP/nosuchendpoint", "relayed_timeout_s": 20},
            proves="unknown endpoint: CHANUNAVAIL at once (we dial once; the recorded "
                   "second Dial to a dead host is the lab's, not our plan)"),
    Relayed("caller-hangs-up-during-dial", "PJSIP/target,30,m", "PJSIP/target,30",
            ["GET VARIABLE DIALSTATUS", "CHANNEL STATUS"], "caller-gone",
            {"agi_dialstatus": "CANCEL"},
            extra={**HASH_LAB, b"GET VARIABLE SIPREFERTOHDR\n":
                   b"200 result=1 (sip:2000@127.0.0.1)\n"},
            handler_kw={"relayed_timeout_s": 30},
            proves="-1, HANGUP line, CANCEL, 511: caller-gone, no off-by-one"),
    Relayed("caller-hangs-up-during-dial-agisighup-no", "PJSIP/target,30,m",
            "PJSIP/target,30", ["GET VARIABLE DIALSTATUS", "CHANNEL STATUS"], "caller-gone",
            {"agi_dialstatus": "CANCEL"},
            extra={**HASH_LAB, b"GET VARIABLE SIPREFERTOHDR\n":
                   b"200 result=1 (sip:2999@127.0.0.1)\n"},
            handler_kw={"relayed_timeout_s": 30, "relayed_dial": "PJSIP/target"},
            proves="AGISIGHUP=no: no HANGUP line, CHANNEL STATUS 511 tells the hangup"),
    Relayed("attended-transfer-external-replaces",
            "PJSIP/target,20,mb(xfer-add-replaces^s^1)",
            "PJSIP/target,20,b(xfer-add-replaces^s^1)", ["GET VARIABLE DIALSTATUS"],
            "bridged-target", {"agi_dialstatus": "ANSWER"},
            handler_kw={"replaces_predial": "xfer-add-replaces^s^1",
                        "relayed_dial": "PJSIP/target"},
            proves="extension external_replaces: the pre-dial handler adds Replaces"),
]


@pytest.mark.parametrize("case", RELAYED_CASES, ids=lambda c: c.name)
def test_relayed_replay(case: Relayed, agi_server, store):
    call_id, refer_id = RELAYED_ID.split("@")[1], RELAYED_ID.split("@")[0]
    create(store, call_id, refer_id)
    kw = {"relayed_dial": "PJSIP/target", "relayed_timeout_s": 20, **case.handler_kw}
    alias = {}
    if case.recorded_dial:
        alias[f"EXEC Dial {case.dial}\n".encode()] = f"EXEC Dial {case.recorded_dial}\n".encode()
    r = replay(agi_server, case.name, store, extra=case.extra, alias=alias,
               rename={b"abc123": RELAYED_ID.encode()}, **kw)
    r.peer.check()
    expected = ["GET VARIABLE SIPREFERTOHDR", "GET VARIABLE BLINDTRANSFER",
                HASH_CMD.decode().rstrip("\n"), *case.head, f"EXEC Dial {case.dial}",
                *case.tail]
    assert r.commands == expected, case.proves
    o = r.outcome
    assert o.result == case.result
    record = store.get(call_id, refer_id)
    assert record["agi_mode"] == "relayed" and record["agi_result"] == case.result
    assert record["agi_transferor_channel"].startswith("PJSIP/pbx-")
    for key, value in case.fields.items():
        assert record[key] == value, key


def test_relayed_without_transfer_id_still_dials(agi_server, store):
    """blind-transfer-no-x-headers: the REFER had no X-Transfer-Id (`200 result=1 ()`).
    Nothing can be recorded, but the media part goes on: we dial.  The lab's script never
    dialled in this run, so the replay ends at our Dial, flagged as unrecorded; every
    command before it matched the recording byte for byte."""
    handler = TransferHandler(store, scripts=LAB_SCRIPTS, relayed_dial="PJSIP/target")
    server = agi_server(handler)
    peer = ReplayPeer(split(transcript.agi("blind-transfer-no-x-headers")), scale=0.01)
    peer.start(server.port).join()
    assert [m.line for m in peer.matches] == [
        b"GET VARIABLE SIPREFERTOHDR\n", b"GET VARIABLE BLINDTRANSFER\n", HASH_CMD]
    assert len(peer.errors) == 1 and "unrecorded command b'EXEC Dial PJSIP/target,30,m\\n'" \
        in peer.errors[0]
    deadline = time.monotonic() + 5
    while not handler.outcomes and time.monotonic() < deadline:
        time.sleep(0.01)
    o = handler.outcomes[0][1]
    assert o.plan.xfer_id == "" and o.result == "error" and "connection lost" in o.error
    assert handler.notes_written == 0


# -- recordings that do not apply to the plan replay


NOT_APPLICABLE = {
    "bad-commands": "an error-path exploration (510/520, quoting, CRLF): no transfer; read "
                    "command by command in test_session",
    "caller-hangs-up-during-stream-file": "the hangup lands in a STREAM FILE; we play "
                                          "announcements with EXEC Playback and never "
                                          "STREAM FILE; read in test_session",
    "caller-hangs-up-while-agi-idle": "the server idles for 6 s; our plan never idles "
                                      "(the unsolicited HANGUP is read in test_session)",
    "pyst2-blind-transfer-success": "pyst2 quotes every argument (GET VARIABLE \"X\"), "
                                    "so no command of ours is byte-equal; read in test_session",
    "pyst2-caller-hangs-up-during-dial": "pyst2 quoting, and its replies sit one command "
                                         "late; read as a stream in test_session",
}
NO_SESSION = {
    "agi-server-down": "nothing listened on :4573: Asterisk never connected "
                       "(AGISTATUS=FAILURE, NOTIFY 503 at once)",
    "attended-transfer-local": "both legs in Asterisk: the attended transfer is a bridge "
                               "swap inside Asterisk, the AGI never runs",
    "refer-to-unknown-extension": "Refer-To names no extension in TRANSFER_CONTEXT: 404 "
                                  "sipfrag at once, no AGI",
    "e-ami-errors": "every AMI action failed on purpose, P never reached the AGI context",
}


@pytest.mark.parametrize("name", sorted(NOT_APPLICABLE))
def test_recordings_not_replayed_through_the_plan(name):
    rec = split(transcript.agi(name))
    assert rec.has_session, NOT_APPLICABLE[name]
    commands = rec.commands()
    if name.startswith("pyst2-"):
        assert all(b'"' in c for c in commands if c.startswith(b"GET VARIABLE"))
    else:
        assert not any(c.startswith(b"EXEC Dial") for c in commands), NOT_APPLICABLE[name]


@pytest.mark.parametrize("name", sorted(NO_SESSION))
def test_recordings_without_a_session(name):
    t = transcript.agi(name)
    assert t.chunks == [], NO_SESSION[name]


def test_every_recording_is_accounted_for():
    covered = ({c.name for c in ANCHORED_CASES} | {c.name for c in RELAYED_CASES}
               | set(NOT_APPLICABLE) | set(NO_SESSION) | {"blind-transfer-no-x-headers"})
    assert covered == set(transcript.names("agi"))
