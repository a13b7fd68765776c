"""agi.plan without I/O: scripted replies in, commands and outcome out, for every outcome."""

from __future__ import annotations

import pytest

from agi.plan import (
    BRIDGED,
    CALLER_GONE,
    ERROR,
    FALLBACK,
    RECONNECTED,
    TARGET_FAILED,
    WAIT,
    AnchoredRun,
    Command,
    Note,
    RelayedRun,
    bare_uri,
    dial_template,
    drive,
)
from agi.session import Reply, parse_reply

XID = "7@a84b4c76e66710@pc33.example.com"
PEER = "PJSIP/pbx-00000030"

UNSET = "200 result=0"
DEAD = "511 Command Not Permitted on a dead channel or intercept routine"


def val(v: str) -> str:
    return f"200 result=1 ({v})"


def anchored_vars(**over) -> dict[str, str]:
    v = {
        "XFER_ID": val(XID), "XFER_PEER": val(PEER), "XFER_PEER_UID": val("1795563195.58"),
        "XFER_TARGET": val("PJSIP/target"), "XFER_RECONNECT": val("bridgeapp"),
        "XFER_DIAL_TIMEOUT": val("20"), "XFER_ANNOUNCE": UNSET, "XFER_CALLERID": UNSET,
    }
    v.update(over)
    return v


class Script:
    """Answers by command line; a list value is consumed in order (same command twice)."""

    def __init__(self, answers: dict[str, str | list[str]], hangup_after: str | None = None):
        self.answers = {k: (list(v) if isinstance(v, list) else v) for k, v in answers.items()}
        self.sent: list[str] = []
        self.hangup_after = hangup_after
        self.hungup = False

    def __call__(self, cmd: Command) -> Reply:
        line = cmd.line.rstrip("\n")
        self.sent.append(line)
        key = line.removeprefix("GET VARIABLE ")
        if key not in self.answers:
            raise AssertionError(f"unexpected command {line!r}")
        a = self.answers[key]
        text = a.pop(0) if isinstance(a, list) else a
        reply = parse_reply(text, self.hungup)
        if self.hangup_after == line:
            self.hungup = True
        return reply


PREFIX = ["GET VARIABLE XFER_ID", "GET VARIABLE XFER_PEER", "GET VARIABLE XFER_PEER_UID",
          "GET VARIABLE XFER_TARGET", "GET VARIABLE XFER_RECONNECT",
          "GET VARIABLE XFER_DIAL_TIMEOUT", "GET VARIABLE XFER_ANNOUNCE",
          "GET VARIABLE XFER_CALLERID"]
DIAL = "EXEC Dial PJSIP/target,20,m"
CHECK = "CHANNEL STATUS"
FAILED = ["GET VARIABLE DIALSTATUS", "GET VARIABLE HANGUPCAUSE",
          f"GET FULL VARIABLE ${{CHANNEL_EXISTS({PEER})}}"]


def userevent(status: str) -> str:
    return f'EXEC UserEvent "XferFailed,XferId: {XID},DialStatus: {status}"'


def run_anchored(answers, **kw):
    answers = dict(answers)
    # the first CHANNEL STATUS is the check before the Dial: P is up
    later = answers.pop("CHANNEL STATUS", None)
    if isinstance(later, list):  # given in full
        answers["CHANNEL STATUS"] = later
    else:
        answers["CHANNEL STATUS"] = ["200 result=6"] + ([later] if later else [])
    script = Script({**anchored_vars(), **answers}, **kw)
    outcome, steps = drive(AnchoredRun(), script)
    notes = [s for s in steps if isinstance(s, Note)]
    return outcome, script.sent, notes


def test_answer_bridges_the_target():
    o, sent, notes = run_anchored({DIAL: "200 result=-1", "DIALSTATUS": val("ANSWER")})
    assert sent == PREFIX + [CHECK, DIAL, "GET VARIABLE DIALSTATUS"]
    assert o.result == BRIDGED and o.dialstatus == "ANSWER"
    assert notes[0].fields == {"agi_mode": "anchored", "agi_target": "PJSIP/target",
                               "agi_reconnect": "bridgeapp"}
    assert notes[-1].fields == {"agi_result": "bridged-target", "agi_dialstatus": "ANSWER"}


@pytest.mark.parametrize("status,cause", [("BUSY", "17"), ("NOANSWER", "16"),
                                          ("CONGESTION", "34"), ("CHANUNAVAIL", "18")])
def test_failure_reconnects_to_the_transferor(status, cause):
    o, sent, notes = run_anchored({
        DIAL: "200 result=0", "DIALSTATUS": val(status), "HANGUPCAUSE": val(cause),
        f"GET FULL VARIABLE ${{CHANNEL_EXISTS({PEER})}}": val("1"),
        userevent(status): "200 result=0", f"EXEC Bridge {PEER}": "200 result=0",
        "BRIDGERESULT": val("SUCCESS"), "CHANNEL STATUS": "200 result=6",
    })
    assert sent == PREFIX + [CHECK, DIAL] + FAILED + [userevent(status), f"EXEC Bridge {PEER}",
                                                "GET VARIABLE BRIDGERESULT", "CHANNEL STATUS"]
    assert o.result == RECONNECTED and o.ended_by == "peer"
    assert notes[1].fields == {"agi_dialstatus": status, "agi_hangupcause": cause}
    assert notes[-1].fields == {
        "agi_result": "reconnected", "agi_dialstatus": status, "agi_hangupcause": cause,
        "agi_bridgeresult": "SUCCESS", "agi_ended_by": "peer", "agi_peer_exists": "1"}


def test_reconnect_by_uniqueid_and_caller_ends_it():
    o, sent, _ = run_anchored({
        "XFER_RECONNECT": val("bridgeapp-uid"),
        DIAL: "200 result=0", "DIALSTATUS": val("NOANSWER"), "HANGUPCAUSE": val("16"),
        f"GET FULL VARIABLE ${{CHANNEL_EXISTS({PEER})}}": val("1"),
        userevent("NOANSWER"): "200 result=0", "EXEC Bridge 1795563195.58": "200 result=0",
        "BRIDGERESULT": val("SUCCESS"), "CHANNEL STATUS": DEAD,
    })
    assert "EXEC Bridge 1795563195.58" in sent
    assert o.result == RECONNECTED and o.ended_by == "caller"


def test_caller_hangs_up_during_dial():
    o, sent, notes = run_anchored({DIAL: "200 result=-1", "DIALSTATUS": val("CANCEL"),
                                   "CHANNEL STATUS": DEAD}, hangup_after=DIAL)
    assert sent == PREFIX + [CHECK, DIAL, "GET VARIABLE DIALSTATUS", "CHANNEL STATUS"]
    assert o.result == CALLER_GONE
    assert notes[-1].fields == {"agi_result": "caller-gone", "agi_dialstatus": "CANCEL"}


def test_dial_minus_one_with_channel_up_is_a_failure_not_a_hangup():
    o, sent, _ = run_anchored({
        DIAL: "200 result=-1", "DIALSTATUS": val("CHANUNAVAIL"), "CHANNEL STATUS": "200 result=6",
        "HANGUPCAUSE": val("3"), f"GET FULL VARIABLE ${{CHANNEL_EXISTS({PEER})}}": val("0"),
        userevent("CHANUNAVAIL"): "200 result=0", "SET VARIABLE XFER_RESULT WAIT": "200 result=1",
    })
    assert o.result == WAIT and o.peer_exists is False


def test_transferor_gone_means_wait_for_the_recall():
    o, sent, notes = run_anchored({
        DIAL: "200 result=0", "DIALSTATUS": val("BUSY"), "HANGUPCAUSE": val("17"),
        f"GET FULL VARIABLE ${{CHANNEL_EXISTS({PEER})}}": val("0"),
        userevent("BUSY"): "200 result=0", "SET VARIABLE XFER_RESULT WAIT": "200 result=1",
    })
    assert sent == PREFIX + [CHECK, DIAL] + FAILED + [userevent("BUSY"),
                                                "SET VARIABLE XFER_RESULT WAIT"]
    assert o.result == WAIT
    assert notes[-1].fields["agi_result"] == "wait-recall"
    assert notes[-1].fields["agi_peer_exists"] == "0"


def test_bridge_nonexistent_falls_back_to_wait():
    o, sent, _ = run_anchored({
        DIAL: "200 result=0", "DIALSTATUS": val("BUSY"), "HANGUPCAUSE": val("17"),
        f"GET FULL VARIABLE ${{CHANNEL_EXISTS({PEER})}}": val("1"),
        userevent("BUSY"): "200 result=0", f"EXEC Bridge {PEER}": "200 result=0",
        "BRIDGERESULT": val("NONEXISTENT"), "SET VARIABLE XFER_RESULT WAIT": "200 result=1",
    })
    assert sent[-1] == "SET VARIABLE XFER_RESULT WAIT"
    assert o.result == WAIT and o.bridgeresult == "NONEXISTENT"


@pytest.mark.parametrize("mode", ["wait", "amibridge-in-agi"])
def test_wait_mode_leaves_the_bridge_to_the_controller(mode):
    o, sent, _ = run_anchored({
        "XFER_RECONNECT": val(mode),
        DIAL: "200 result=0", "DIALSTATUS": val("BUSY"), "HANGUPCAUSE": val("17"),
        f"GET FULL VARIABLE ${{CHANNEL_EXISTS({PEER})}}": val("1"),
        userevent("BUSY"): "200 result=0", "SET VARIABLE XFER_RESULT WAIT": "200 result=1",
    })
    assert o.result == WAIT and o.peer_exists is True
    assert not any("Bridge" in s or "MusicOnHold" in s for s in sent)


def test_fallback_sends_p_to_the_operators_location():
    o, sent, notes = run_anchored({
        "XFER_RECONNECT": val("fallback"), "XFER_FALLBACK": val("operator,s,1"),
        DIAL: "200 result=0", "DIALSTATUS": val("NOANSWER"), "HANGUPCAUSE": val("16"),
        f"GET FULL VARIABLE ${{CHANNEL_EXISTS({PEER})}}": val("1"),
        userevent("NOANSWER"): "200 result=0", "SET CONTEXT operator": "200 result=0",
        "SET EXTENSION s": "200 result=0", "SET PRIORITY 1": "200 result=0",
    })
    assert sent[:9] == PREFIX + ["GET VARIABLE XFER_FALLBACK"]
    assert sent[-3:] == ["SET CONTEXT operator", "SET EXTENSION s", "SET PRIORITY 1"]
    assert o.result == FALLBACK
    assert notes[-1].fields["agi_fallback"] == "operator,s,1"


def test_fallback_with_a_bad_label_is_an_error():
    o, _, notes = run_anchored({
        "XFER_RECONNECT": val("fallback"), "XFER_FALLBACK": val("operator,s,nosuchlabel"),
        DIAL: "200 result=0", "DIALSTATUS": val("NOANSWER"), "HANGUPCAUSE": val("16"),
        f"GET FULL VARIABLE ${{CHANNEL_EXISTS({PEER})}}": val("1"),
        userevent("NOANSWER"): "200 result=0", "SET CONTEXT operator": "200 result=0",
        "SET EXTENSION s": "200 result=0",
        "SET PRIORITY nosuchlabel": "520 End of proper usage.",
    })
    assert o.result == ERROR and "SET PRIORITY" in o.error
    assert notes[-1].fields["agi_result"] == "error"


def test_bad_fallback_value_reconnects_instead():
    o, sent, _ = run_anchored({
        "XFER_RECONNECT": val("fallback"), "XFER_FALLBACK": val("operator"),
        DIAL: "200 result=0", "DIALSTATUS": val("BUSY"), "HANGUPCAUSE": val("17"),
        f"GET FULL VARIABLE ${{CHANNEL_EXISTS({PEER})}}": val("1"),
        userevent("BUSY"): "200 result=0", f"EXEC Bridge {PEER}": "200 result=0",
        "BRIDGERESULT": val("SUCCESS"), "CHANNEL STATUS": DEAD,
    })
    assert o.result == RECONNECTED
    assert any("XFER_FALLBACK" in s for s in o.steps)


def test_announcement_and_caller_id():
    o, sent, _ = run_anchored({
        "XFER_ANNOUNCE": val("custom/transferring"), "XFER_CALLERID": val("+4930123456"),
        "EXEC Playback custom/transferring": "200 result=0",
        "SET VARIABLE CALLERID(num) +4930123456": "200 result=1",
        DIAL: "200 result=-1", "DIALSTATUS": val("ANSWER"),
    })
    assert sent[8:] == ["EXEC Playback custom/transferring",
                        "SET VARIABLE CALLERID(num) +4930123456", CHECK, DIAL,
                        "GET VARIABLE DIALSTATUS"]
    assert o.result == BRIDGED


def test_caller_hangs_up_during_the_announcement():
    o, sent, _ = run_anchored({"XFER_ANNOUNCE": val("beep"), "EXEC Playback beep": "200 result=-1",
                               "CHANNEL STATUS": [DEAD]})
    assert sent[-2:] == ["EXEC Playback beep", "CHANNEL STATUS"]
    assert o.result == CALLER_GONE


def test_unsafe_variables_are_not_used():
    o, sent, _ = run_anchored({
        "XFER_ANNOUNCE": val("beep,x"), "XFER_CALLERID": val("1 2"),
        "XFER_DIAL_TIMEOUT": val("soon"),
        "EXEC Dial PJSIP/target,30,m": "200 result=-1", "DIALSTATUS": val("ANSWER"),
    })
    assert "EXEC Dial PJSIP/target,30,m" in sent
    assert not any("Playback" in s or "CALLERID" in s for s in sent[8:])
    assert o.result == BRIDGED and len(o.plan.problems) == 3


def test_caller_gone_before_the_dial_is_not_dialled():
    o, sent, _ = run_anchored({"CHANNEL STATUS": [DEAD]})
    assert sent == PREFIX + [CHECK] and o.result == CALLER_GONE


def test_relayed_hangup_line_before_the_dial_is_not_dialled():
    o, sent, _ = relayed({}, hangup_after="GET VARIABLE BLINDTRANSFER")
    assert sent == RPREFIX and o.result == CALLER_GONE


def test_missing_target_is_an_error_before_dialling():
    o, sent, notes = run_anchored({"XFER_TARGET": UNSET})
    assert sent == PREFIX and o.result == ERROR
    assert notes[-1].fields["agi_result"] == "error"


def test_connection_lost_keeps_what_was_known():
    run = AnchoredRun()
    gen = run.steps()
    answers = anchored_vars()
    step = next(gen)
    while isinstance(step, Note) or step.line.split()[-1] in answers:
        reply = None if isinstance(step, Note) else parse_reply(answers[step.line.split()[-1]])
        step = gen.send(reply)
    assert step.line == CHECK + "\n"
    o = run.lost("EOF from Asterisk")
    assert o.result == ERROR and "EOF" in o.error


# -- relayed


def relayed(answers, hangup_after=None, dial_for="PJSIP/{user}", **kw):
    script = Script({"SIPREFERTOHDR": val("sip:2000@127.0.0.1"),
                     "BLINDTRANSFER": val("PJSIP/pbx-00000045"),
                     "GET FULL VARIABLE ${HASH(TRANSFER_DATA,X-Transfer-Id)}": val(XID),
                     **answers}, hangup_after=hangup_after)
    run = RelayedRun(dial_template(dial_for), 20, **kw)
    outcome, steps = drive(run, script)
    return outcome, script.sent, [s for s in steps if isinstance(s, Note)]


RPREFIX = ["GET VARIABLE SIPREFERTOHDR", "GET VARIABLE BLINDTRANSFER",
           "GET FULL VARIABLE ${HASH(TRANSFER_DATA,X-Transfer-Id)}"]


def test_relayed_success():
    o, sent, notes = relayed({"EXEC Dial PJSIP/2000,20,m": "200 result=-1",
                              "DIALSTATUS": val("ANSWER")})
    assert sent == RPREFIX + ["EXEC Dial PJSIP/2000,20,m", "GET VARIABLE DIALSTATUS"]
    assert o.result == BRIDGED and o.plan.xfer_id == XID
    assert notes[0].fields["agi_transferor_channel"] == "PJSIP/pbx-00000045"


def test_relayed_failure_is_recorded_not_reconnected():
    o, sent, notes = relayed({"EXEC Dial PJSIP/2000,20,m": "200 result=0",
                              "DIALSTATUS": val("BUSY"), "HANGUPCAUSE": val("17")})
    assert sent[-2:] == ["GET VARIABLE DIALSTATUS", "GET VARIABLE HANGUPCAUSE"]
    assert o.result == TARGET_FAILED
    assert notes[-1].fields == {"agi_result": "target-failed", "agi_dialstatus": "BUSY",
                                "agi_hangupcause": "17"}


def test_relayed_external_replaces_uses_the_predial_handler():
    o, sent, _ = relayed({"EXEC Dial PJSIP/2000,20,mb(xfer-add-replaces^s^1)": "200 result=0",
                          "DIALSTATUS": val("ANSWER")},
                         extension="external_replaces", replaces_predial="xfer-add-replaces^s^1")
    assert o.result == BRIDGED


def test_relayed_without_refer_to_dials_nothing():
    o, sent, _ = relayed({"SIPREFERTOHDR": UNSET})
    assert o.result == ERROR and not any("Dial" in s for s in sent)


def test_relayed_dial_string_from_the_refer_to():
    """SIPREFERTOHDR bare or in <> with header parameters: {user} and {host} come from
    kemi.core.anchored.dial_string, as for anchored transfers."""
    assert bare_uri("sip:2000@127.0.0.1") == "sip:2000@127.0.0.1"
    assert bare_uri(" <sip:2000@h;user=phone>;x=1?Replaces=x") == "sip:2000@h;user=phone"
    for header, dial in (("<sip:2000@h;user=phone>", "PJSIP/2000@h"),
                         ("sip:2001@h", "PJSIP/2001@h")):
        o, sent, _ = relayed({"SIPREFERTOHDR": val(header),
                              f"EXEC Dial {dial},20,m": "200 result=0",
                              "DIALSTATUS": val("ANSWER")}, dial_for="PJSIP/{user}@{host}")
        assert f"EXEC Dial {dial},20,m" in sent and o.result == BRIDGED
