"""asterisk/testsuite blind-transfer scenarios, unmodified, through Kamailio + referee.

Each scenario was written against Asterisk; here the far side is a SIPp party of ours
behind the proxy (tests/conformance/counterparts.py) playing the transferee (or the
transferor, or the target) the way the scenario expects Asterisk to.  Every test checks
(a) the scenario's own verdict (SIPp exit code) and (b) referee's: the transfer record in
Redis, its event ladder, or the answer referee gave the REFER.  Keys and -s values are
those of the scenario's test-config.yaml where it matters.
"""

from __future__ import annotations

import pytest

from kemi.cli.demo.kamailio_node import free_udp_port
from tests.conformance.conftest import ASTERISK, BLIND, BOTH_CONFIGS
from tests.conformance.counterparts import Party, Target, messages, received

CALLS = ASTERISK / "contrib/sipp/calls"
PJSIP = ASTERISK / "tests/channels/pjsip"
TARGET_AT_PROXY = "sip:{user}@[remote_ip]:[remote_port]"


def ok(codes, run):
    assert set(codes.values()) == {0}, f"{codes}\n{run.report()}"


@pytest.mark.parametrize("lab", BOTH_CONFIGS, indirect=True)
def test_immediate_ok_notify_sees_100_then_200_and_referee_records_succeeded(run):
    """transferer.xml answers our call, REFERs us to `test` and wants exactly a 100 Trying
    NOTIFY then a 200 OK one (it answers neither)."""
    transferer = run.third_party(BLIND / "immediate_ok_notify/sipp/transferer.xml",
                                 register="transferer", service="sipp")
    target = run.ours("test", Target("test", ring_ms=100), register=("test",))
    sipp = (
        Party("sipp").calls("transferer").takes_refer()
        .notify(100, wait=False)
        .calls_target(TARGET_AT_PROXY.format(user="test") + ";user=phone")
        .notify(200, "terminated;reason=noresource", wait=False)
        .hangs_up_target()
    )
    ok(run.play(transferer, target, caller=run.ours("sipp", sipp, register=("sipp",))), run)
    record = run.transfer()
    assert record["state"] == "succeeded"
    assert record["refer_reply"] == "202" and record["final_sipfrag"] == "200 OK"
    assert record["target"] == "test@127.0.0.1"
    assert record["invite_call_id"].startswith("xfer///")  # the new call was tied
    # The proxy's workers record concurrently: the order past the REFER may vary.
    events = [event for event, _, _ in run.ladder(record)]
    assert events[0] == "refer" and sorted(events[1:]) == [
        "invite", "invite-2xx", "notify-success", "notify-trying", "refer-accepted"]


def test_callee_refer_only_holds_refers_and_hangs_up_after_the_200_notify(run):
    """bob.xml (-s alice) answers our call, puts us on hold, REFERs us to charlie, checks
    the second NOTIFY says 200 OK, then BYEs: succeeded, the late BYE changes nothing."""
    run.audio()
    bob = run.third_party(BLIND / "callee_refer_only/sipp/bob.xml", register="bob",
                          service="alice")
    charlie = run.ours("charlie", Target("charlie"), register=("charlie",))
    alice = (
        Party("alice").calls("bob").takes_reinvite().takes_refer()
        .notify(100)
        .calls_target(TARGET_AT_PROXY.format(user="charlie") + ";user=phone")
        .notify(200, "terminated;reason=noresource")
        .takes_bye()
        .hangs_up_target()
    )
    ok(run.play(bob, charlie, caller=run.ours("alice", alice, register=("alice",))), run)
    record = run.transfer()
    assert record["state"] == "succeeded"
    assert record["transferor"] == "bob@127.0.0.1" and record["transferee"] == "alice@127.0.0.1"
    ladder = run.ladder(record)
    # Bob's 200 to the final NOTIFY and his BYE leave back to back and are taken by two
    # workers at once: which is recorded first is the proxy's race, not Bob's order (the
    # answer is left for the sweep; the BYE stores it first if it is waiting --
    # tests/kemi/kamailio/test_recorder.py holds that).  The answer is recorded, and the
    # BYE is the last event and changes nothing.
    assert [step for step in ladder if step[0] != "note"][-1] == (
        "bye-transferor", "succeeded", "ignored")
    assert record["final_notify_reply"] == "200"


def test_caller_refer_only_refer_to_the_proxy_itself_is_not_routable(run):
    """alice.xml (-s bob) calls bob and holds him through the proxy, then sends its REFER
    to `sip:<proxy>` (no user, no Route): an Asterisk-as-B2BUA habit.  A proxy cannot
    tell whom that REFER is for, so it answers 404 before referee sees it; alice, which
    wants a 202, fails.  Checked: the part of the flow that applies (call and hold reach
    bob), the 404, and that referee recorded nothing."""
    bob = run.ours("bob", Party("bob").answers().takes_reinvite(), register=("bob",))
    alice = run.third_party(BLIND / "caller_refer_only/sipp/alice.xml", service="bob",
                            timeout_s=5)
    codes = run.play(bob, caller=alice)
    assert codes[bob.name] == 0, run.report()
    assert codes[alice.name] != 0
    [refused] = received(alice.messages_path, "REFER", status=404)
    assert refused.start_line == "SIP/2.0 404 Not here"
    assert received(bob.messages_path, "REFER") == []
    assert run.lab.records() == []


def test_caller_with_hold_481_transferor_leaves_and_the_invite_decides(run):
    """alice.xml (-s bob, custom_media_port) calls bob, holds, REFERs him to charlie,
    takes NOTIFY 100 and 183, BYEs, then answers the 183 NOTIFY 481.  Nobody may NOTIFY
    after that: referee records transferor-gone, then succeeded when charlie answers the
    tied INVITE."""
    run.audio()
    charlie = run.ours("charlie", Target("charlie", ring=183, ring_ms=1500),
                       register=("charlie",))
    bob = (
        Party("bob").answers().takes_reinvite().takes_refer()
        .notify(100)
        .calls_target(TARGET_AT_PROXY.format(user="charlie") + ";user=phone", None,
                      ringing=183)
        .notify(183, wait=False)
        .takes_bye()
        .expects(481)
        .target_answers(200)
        .hangs_up_target()
    )
    bob_sipp = run.ours("bob", bob, register=("bob",))
    alice = run.third_party(BLIND / "caller_with_hold_481/sipp/alice.xml", service="bob",
                            keys={"custom_media_port": "6004"})
    ok(run.play(bob_sipp, charlie, caller=alice), run)
    [refused] = received(bob_sipp.messages_path, "NOTIFY", status=481)
    assert refused.start_line == "SIP/2.0 481 Subscription Does Not Exist"
    record = run.transfer()
    assert record["state"] == "succeeded" and record["invite_reply"] == "200"
    assert "final_sipfrag" not in record  # no final NOTIFY: the INVITE decided
    ladder = run.ladder(record)
    assert ("bye-transferor", "transferor-gone", "applied") in ladder
    assert ("notify-481", "transferor-gone", "ignored") in ladder  # already gone
    assert ladder[-1] == ("invite-2xx", "succeeded", "applied")


def test_no_target_in_refer_is_relayed_and_fails_at_the_proxy(run):
    """transferer.xml REFERs us to `sip:<proxy>;user=phone` (no user: Asterisk sends the
    call to its `s` extension).  referee relays it: a Refer-To without a user is a valid
    target (a device, a server's default destination) and nothing unsafe; this proxy
    has no default destination, so it answers the transferee's INVITE 484, which the
    transferee reports.  The scenario (202, then any NOTIFY) passes; referee: failed."""
    transferer = run.third_party(BLIND / "no_target_in_refer/sipp/transferer.xml",
                                 register="transferer", service="sipp")
    sipp = (
        Party("sipp").calls("transferer").takes_refer()
        .notify(100, wait=False)
        .calls_target("sip:[remote_ip]:[remote_port];user=phone", 484, ringing=None)
        .notify(484, "terminated;reason=noresource", wait=False)
    )
    ok(run.play(transferer, caller=run.ours("sipp", sipp, register=("sipp",))), run)
    record = run.transfer()
    assert record["state"] == "failed"
    assert record["target"] == "127.0.0.1" and record["final_sipfrag"] == "484 Address Incomplete"
    assert ("invite", "trying", "applied") in run.ladder(record)


@pytest.mark.parametrize("lab", BOTH_CONFIGS, indirect=True)
def test_disallow_referee_declines_603_and_the_call_goes_on(run):
    """bob.xml (-s alice) REFERs alice and wants 603 (Asterisk's allow_transfer=no), sends
    a stray ACK for it, then BYEs; alice.xml (-s bob) only calls and is hung up.  Here the
    operator's policy says no transfers, with 603: referee answers the REFER itself."""
    out = run.lab.policy("policy", "add", "--action", "deny", "--any", "--code", "603",
                         "--name", "no-transfers", "--reason", "Transfers Disabled")
    assert "no-transfers" in out
    bob = run.third_party(BLIND / "disallow/sipp/bob.xml", register="bob", service="alice")
    alice = run.third_party(BLIND / "disallow/sipp/alice.xml", register="alice", service="bob")
    ok(run.play(bob, caller=alice), run)
    [declined] = received(bob.messages_path, "REFER", status=603)
    assert declined.start_line == "SIP/2.0 603 Transfers Disabled"
    assert declined.header("Warning").startswith('399 referee "denied by rule ')
    assert received(alice.messages_path, "REFER") == []
    assert run.lab.records() == []


def test_transferer_reinvite_after_a_failed_transfer_reaches_the_transferee(run):
    """transferer.xml REFERs us to bad_exten, which does not exist (the proxy answers our
    INVITE 404; Asterisk's test used an extension that hangs up); it takes our two
    NOTIFYs, then re-INVITEs the original call.  It allows no provisional response to
    that re-INVITE (it was written against a UA), but a stateful proxy answers every
    INVITE 100 Trying at once (Kamailio tm, RFC 3261 16.2): the scenario aborts there.
    Checked: referee's verdict (failed, 404) and what the Asterisk test is about -- after
    the failed transfer the original call still carries a re-INVITE, which reaches the
    transferee and is answered 200."""
    transferer = run.third_party(BLIND / "off_nominal/transferer_reinvite/sipp/transferer.xml",
                                 register="transferer", service="sipp", timeout_s=8)
    sipp = (
        Party("sipp").calls("transferer").takes_refer()
        .notify(100)
        .calls_target(TARGET_AT_PROXY.format(user="bad_exten") + ";user=phone", 404,
                      ringing=None)
        .notify(404, "terminated;reason=noresource")
        .takes_reinvite(ack=False)
    )
    ours = run.ours("sipp", sipp, register=("sipp",))
    codes = run.play(transferer, caller=ours)
    assert codes[ours.name] == 0, run.report()
    assert codes[transferer.name] != 0
    assert "received 'SIP/2.0 100 " in transferer.errors()
    reinvites = [m for m in received(ours.messages_path, "INVITE") if m.header("CSeq")
                 .endswith("INVITE") and ";tag=" in m.header("To")]
    assert len(reinvites) == 1
    record = run.transfer()
    assert record["state"] == "failed"
    assert record["final_sipfrag"] == "404 Not Found"


def test_uac_blind_transfer_caller_refers_callee_to_an_extension(run):
    """contrib uac-blind-transfer.xml (-s mckenzie, -key transfer_target 1000) calls us,
    REFERs us to extension 1000 with Referred-By and Diversion, takes two NOTIFYs, BYEs.
    A national extension is no PSTN number: the default policy allows it."""
    ext = run.ours("1000", Target("1000"), register=("1000",))
    mckenzie = (
        Party("mckenzie").answers().takes_refer(expect="Diversion: <sip:sipp@")
        .calls_target(TARGET_AT_PROXY.format(user="1000") + ";user=phone",
                      notify_ringing=True)
        .notify(200, "terminated;reason=noresource")
        .takes_bye()
        .hangs_up_target()
    )
    mk = run.ours("mckenzie", mckenzie, register=("mckenzie",))
    sipp = run.third_party(CALLS / "uac-blind-transfer.xml", service="mckenzie",
                           keys={"transfer_target": "1000"})
    ok(run.play(mk, ext, caller=sipp), run)
    record = run.transfer()
    assert record["state"] == "succeeded" and record["target"] == "1000@127.0.0.1"
    assert record["rule"] == "tenant default default allow"


def test_uas_blind_transfer_callee_refers_caller(run):
    """contrib uas-blind-transfer.xml answers our call and REFERs us to extension 1000."""
    transferor = run.third_party(CALLS / "uas-blind-transfer.xml", register="transferor",
                                 service="sipp", keys={"transfer_target": "1000"})
    ext = run.ours("1000", Target("1000"), register=("1000",))
    sipp = (
        Party("sipp").calls("transferor").takes_refer()
        .calls_target(TARGET_AT_PROXY.format(user="1000") + ";user=phone",
                      notify_ringing=True)
        .notify(200, "terminated;reason=noresource")
        .takes_bye()
        .hangs_up_target()
    )
    ok(run.play(transferor, ext, caller=run.ours("sipp", sipp, register=("sipp",))), run)
    assert run.transfer()["state"] == "succeeded"


def test_refer_send_to_vm_headers_reach_the_transferee_unchanged(run):
    """refer_send_to_vm refer.xml answers our call and REFERs us (to carol) with a Digium
    phone's X-Digium-Call-Feature and Diversion headers, Event and Expires; it takes two
    NOTIFYs.  referee relays those headers untouched and records succeeded."""
    bob = run.third_party(PJSIP / "refer_send_to_vm/sipp/refer.xml", register="bob")
    carol = run.ours("carol", Target("carol", ring_ms=100), register=("carol",))
    alice = (
        Party("alice").calls("bob")
        .takes_refer(expect="X-Digium-Call-Feature: feature_send_to_vm")
        .notify(100)
        .calls_target(TARGET_AT_PROXY.format(user="carol"))
        .notify(200, "terminated;reason=noresource")
        .hangs_up_target()
    )
    al = run.ours("alice", alice, register=("alice",))
    ok(run.play(bob, carol, caller=al), run)
    [refer] = received(al.messages_path, "REFER")
    assert refer.header("Diversion").endswith(';reason="send_to_vm"')
    assert refer.header("Refer-To").startswith("<sip:carol@")
    assert run.transfer()["state"] == "succeeded"


def test_no_contact_stops_at_the_proxys_100_trying_and_referee_refuses_such_a_refer(run):
    """no_contact.xml sends INVITE, UPDATE, SUBSCRIBE, REFER and NOTIFY without Contact and
    wants a bare 400 for each, in order.  Contact is end to end: a proxy relays the
    INVITE to the UA behind it (here a registered address nobody answers at; Asterisk
    checked Contact itself) and, being stateful, answers it 100 Trying at once (Kamailio
    tm, RFC 3261 16.2).  The scenario allows no provisional response: it stops there,
    before its REFER.  Checked: that stop, and referee's verdict on the part that
    applies -- an out-of-dialog REFER without Contact (ours, sent the same way) is
    refused 400 by referee itself, not relayed, nothing recorded (checklist 15)."""
    run.lab.register("alice", free_udp_port())
    client = run.third_party(PJSIP / "headers/no_contact/sipp/no_contact.xml", timeout_s=5)
    assert client.run() != 0
    first = [m for m in messages(client.messages_path) if m.direction == "received"][0]
    assert first.start_line.startswith("SIP/2.0 100 ") and first.method == "INVITE"
    assert "Aborting call on unexpected message" in client.errors()

    refer = run.ours("refer", Party("carol").refers_out_of_dialog(
        "alice", "sip:charlie@[remote_ip]:[remote_port];user=phone", expect=400))
    assert refer.run() == 0, run.report()
    [refused] = received(refer.messages_path, "REFER", status=400)
    assert refused.start_line == "SIP/2.0 400 Missing Contact"
    assert refused.header("Warning") == '399 referee "out-of-dialog REFER without Contact"'
    assert run.lab.records() == []


def test_uri_refer_transferee_gets_the_bare_refer_to_and_accepts(run):
    """uri/refer alice.xml (-s alice) calls `s` and plays the transferee of Asterisk's
    Transfer(sip:asterisk@127.0.0.2): it checks the Refer-To is that bare URI and answers
    202.  That 202 is sent with retransmissions and followed by a send (its NOTIFY), so
    SIPp 3.6.1 waits there for a message that never comes, whatever the far side (its
    test-config has fail-on-any: False); the NOTIFY it would send next is addressed to
    its own address with no Route, which no proxy could route anyway.  Checked: the REFER
    reached alice through referee intact (alice's check passed) and referee recorded the
    202: the transfer is accepted and awaits its NOTIFY."""
    s = run.ours("s", Party("s").answers(ring=False).refers(
        "sip:asterisk@127.0.0.2", referred_by="<sip:s@[remote_ip]>"), register=("s",))
    alice = run.third_party(PJSIP / "transfers/asterisk/uri/refer/sipp/alice.xml",
                            service="alice", timeout_s=3)
    codes = run.play(s, caller=alice)
    assert codes[s.name] == 0, run.report()
    assert codes[alice.name] != 0 and "timed out" in alice.errors()
    assert "regexp" not in alice.errors().lower()
    [refer] = received(alice.messages_path, "REFER")
    assert refer.header("Refer-To") == "sip:asterisk@127.0.0.2"
    record = run.transfer()
    assert record["state"] == "accepted" and record["refer_reply"] == "202"
    assert record["target"] == "asterisk@127.0.0.2"
