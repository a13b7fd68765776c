"""asterisk-testsuite attended-transfer scenarios (RFC 3891 Replaces), unmodified, through
Kamailio + referee with the dialog index on.

Each was written as a SIPp 3PCC pair against Asterisk: the referer (bob) calls, its twin
calls a second party and hands back that call's Call-ID and tags (sendCmd/recvCmd), and
the referer REFERs its peer with `Refer-To: <uri?Replaces=REMOTE<callid>;to-tag;from-tag>`.
Through a proxy both of bob's calls are real dialogs the proxy indexed, so referee judges
the Replaces itself: the REFER's sender must be a party to the dialog it names, and the
transferee's INVITE with Replaces is tied to the approved transfer.  The parties Asterisk
stood for are ours (tests/conformance/counterparts.py), registered under the users the
scenarios dial.
"""

from __future__ import annotations

import pytest

from kemi.core.dialogs import DialogState
from kemi.storage.dialogs import DialogStore
from tests.conformance.conftest import ASTERISK, BOTH_CONFIGS, twin_address
from tests.conformance.counterparts import REFER_TO_TWIN, Party, messages, received
from tests.e2e.parties import wait_for

CONTRIB = ASTERISK / "contrib/sipp/transfer"


def ok(codes, run):
    assert set(codes.values()) == {0}, f"{codes}\n{run.report()}"


def dialog(run, call_id: str, caller_tag: str = "1"):
    """The dialog index's record of one of the scenarios' calls (their From-tag is
    SIPp's [call_number]: 1)."""
    return DialogStore(run.lab.rcli).get(call_id, caller_tag)


def transferee() -> Party:
    """Our party where Asterisk answered bob's first call and took his REFER.  It is
    `transfer` (From, Contact): the scenarios dial `stasis` / `call_c` but address the
    call, and so the REFER, To `sip:transfer@...`; referee knows a transferee by the
    REFER's To, so that is who places the INVITE with Replaces.  (Registered under the
    user dialled.)"""
    return Party("transfer")


@pytest.mark.parametrize("dlab", BOTH_CONFIGS, indirect=True)
def test_contrib_referer_and_referee_attended_transfer_succeeds(drun):
    """contrib/sipp/transfer referer.xml (bob) calls `stasis` (our transferee); its
    3PCC twin referee.xml calls `1000` (our target) with Call-ID REMOTE<bob's Call-ID>
    and hands back that call's tags; bob REFERs stasis to 1000 with a Replaces naming
    the twin's call.  bob is a party to that call: referee relays the REFER and records
    the replaced dialog; our transferee calls 1000 with the Replaces, referee ties that
    INVITE to the transfer, 1000 accepts it and BYEs the replaced call (the twin waits
    for that BYE), the transferee NOTIFYs 200 and bob hangs up.  Both scenarios pass."""
    run = drun
    pcc = twin_address()
    target = (Party("1000").takes_invite(replacing="replacing").answers_it()
              .waits_for("replaced").hangs_up().goto("end")
              .label("replacing").accepts_replacing().takes_bye().label("end"))
    stasis = (transferee().takes_invite().answers_it().takes_attended_refer()
              .notify(100)
              .calls_replacing()
              .notify(200, "terminated;reason=noresource")
              .takes_bye()
              .hangs_up_replacing())
    ours_target = run.ours("1000", target, register=("1000",), calls=2)
    ours_stasis = run.ours("stasis", stasis, register=("stasis",))
    twin = run.third_party(CONTRIB / "referee.xml", extra=("-3pcc", pcc))
    referer = run.third_party(CONTRIB / "referer.xml", extra=("-3pcc", pcc))
    ok(run.play_twins(ours_target, ours_stasis, twin=twin, caller=referer), run)

    [answered] = received(referer.messages_path, "INVITE", status=200)
    bob_call = answered.header("Call-ID")
    replaced = "REMOTE" + bob_call
    [refer] = received(ours_stasis.messages_path, "REFER")
    assert "?Replaces=REMOTE" in refer.header("Refer-To")
    [new_call] = [m for m in received(ours_target.messages_path, "INVITE")
                  if m.header("Replaces")]
    consult = dialog(run, replaced)
    assert new_call.header("Replaces") == (
        f"{replaced};to-tag={consult.callee_tag};from-tag=1")
    # referee: the transfer, the replaced dialog it named, and the INVITE tied to it.
    record = run.transfer()
    assert record["state"] == "succeeded", f"{record}\n{run.report()}"
    assert record["transferor"] == "bob@127.0.0.1"
    assert record["transferee"] == "transfer@127.0.0.1"
    assert record["target"] == "1000@127.0.0.1"
    assert record["replaces"] == replaced
    assert record["replaces_dialog"] == "known" and record["replaces_state"] == "confirmed"
    assert record["invite_call_id"] == f"xfer///{bob_call}"
    assert record["invite_reply"] == "200" and record["final_sipfrag"] == "200 OK"
    assert (f"with Replaces from transfer@127.0.0.1 tied to transfer {bob_call}/"
            in run.lab.kamailio.log())
    # The proxy's workers may record the middle in any order (a NOTIFY held for its turn
    # is recorded once it has left, possibly after the transferor's BYE); the transfer's
    # events, then what the transferor answered to the final NOTIFY, noted by the sweep.
    key = (record["call_id"], record["refer_id"])
    assert wait_for(lambda: "final_notify_reply" in run.lab.store.get(*key), 4)
    record = run.lab.store.get(*key)
    ladder = run.ladder(record)
    events = [step for step in ladder if step[0] != "note"]
    assert events[0] == ("refer", "refer-seen", "applied")
    assert events[1] == ("refer-accepted", "accepted", "applied")
    assert sorted(event for event, _, _ in events[2:]) == [
        "bye-transferor", "invite", "invite-2xx", "notify-success", "notify-trying"]
    assert [step for step in ladder if step[0] == "note"] == [
        ("note", "succeeded", "noted")]
    assert record["final_notify_reply"] == "200"
    # The dialog index: the replaced call ended by its callee's BYE, bob's by his.
    assert consult.state is DialogState.TERMINATED and consult.ended_by == "bye-callee"
    original = dialog(run, bob_call)
    assert original.state is DialogState.TERMINATED and original.ended_by == "bye-caller"
    # ... and the call that replaced it, indexed too, ended by the transferee's BYE.
    new = dialog(run, f"xfer///{bob_call}", _tag(new_call.header("From")))
    assert (new.caller, new.callee) == ("transfer@127.0.0.1", "1000@127.0.0.1")
    assert new.state is DialogState.TERMINATED and new.ended_by == "bye-caller"


@pytest.mark.parametrize("dlab", BOTH_CONFIGS, indirect=True)
def test_contrib_twin_call_named_by_a_refer_from_someone_not_in_it_is_403(drun):
    """The same REFER from a party NOT in the dialog it names: eve (ours, a 3PCC
    controller playing referer.xml's part) calls stasis, starts the unmodified twin
    referee.xml (bob calls 1000) and REFERs stasis with a Replaces naming bob's call,
    exactly as referer.xml builds it from what the twin hands back.  The identifiers are
    right, and visible to anyone on the path: referee answers 403 itself, stasis never
    sees the REFER, nothing is recorded, and bob's call goes on until 1000 hangs it up
    (the twin, waiting for that BYE, passes)."""
    run = drun
    pcc = twin_address()
    eve = (Party("eve").calls("stasis")
           .tells_twin("Call-ID: REMOTE[call_id]", "Start the Echo Leg").hears_twin()
           .refers(REFER_TO_TWIN, expect=403, referred_by="<sip:eve@[remote_ip]>")
           .pause(1500).hangs_up())  # the twin must end first: it quits with eve
    stasis = transferee().takes_invite().answers_it().takes_bye()
    # 1000 ends bob's call once eve's REFER is long answered (~1 s after the ACK).
    target = Party("1000").takes_invite().answers_it().pause(2000).hangs_up()
    ours_stasis = run.ours("stasis", stasis, register=("stasis",))
    ours_target = run.ours("1000", target, register=("1000",))
    twin = run.third_party(CONTRIB / "referee.xml", extra=("-3pcc", pcc))
    ours_eve = run.ours("eve", eve, extra=("-3pcc", pcc))
    ok(run.play_twins(ours_stasis, ours_target, twin=twin, caller=ours_eve), run)

    [refused] = received(ours_eve.messages_path, "REFER", status=403)
    assert refused.header("Warning") == (
        '399 referee "eve@127.0.0.1 is not a party to the dialog named in Replaces; '
        'a Replaces taken from the wire is no authority"')
    assert received(ours_stasis.messages_path, "REFER") == []
    assert run.lab.records() == []
    [answered] = received(twin.messages_path, "INVITE", status=200)
    consult = dialog(run, answered.header("Call-ID"))
    assert consult.state is DialogState.TERMINATED and consult.ended_by == "bye-callee"


@pytest.mark.parametrize("dlab", BOTH_CONFIGS, indirect=True)
def test_contrib_transferee_calling_as_another_user_than_the_refer_named_is_403(drun):
    """The referer.xml/referee.xml pair again, with a transferee that places the call
    with Replaces as `stasis` -- the user bob dialled -- while bob's call, and so his
    REFER, is addressed To `transfer`.  referee knows a transferee by the REFER's To,
    and the twin's call (the one named) is bob's and `transfer`'s: stasis holds the
    right identifiers, from the REFER, but is neither a party nor the transferee, so
    the proxy answers its INVITE 403 and 1000 never sees it.  The transferee reports
    403 in its final NOTIFY (bob.xml takes any two NOTIFYs: both scenarios pass);
    referee records the transfer failed, and the named call goes on until 1000 ends
    it."""
    run = drun
    pcc = twin_address()
    stasis = (Party("stasis").takes_invite().answers_it().takes_attended_refer()
              .notify(100)
              .calls_replacing(final=403)
              .pause(1500)  # keeps bob (and with him the twin) up until 1000's BYE
              .notify(403, "terminated;reason=noresource")
              .takes_bye())
    target = Party("1000").takes_invite().answers_it().pause(2000).hangs_up()
    ours_stasis = run.ours("stasis", stasis, register=("stasis",))
    ours_target = run.ours("1000", target, register=("1000",))
    twin = run.third_party(CONTRIB / "referee.xml", extra=("-3pcc", pcc))
    referer = run.third_party(CONTRIB / "referer.xml", extra=("-3pcc", pcc))
    ok(run.play_twins(ours_stasis, ours_target, twin=twin, caller=referer), run)

    [refused] = received(ours_stasis.messages_path, "INVITE", status=403)
    assert refused.header("Warning") == (
        '399 referee "stasis@127.0.0.1 is neither a party to the dialog named in Replaces '
        'nor the transferee of an approved REFER naming it; a Replaces taken from the wire '
        'is no authority"')
    assert [m for m in received(ours_target.messages_path, "INVITE")
            if m.header("Replaces")] == []
    record = run.transfer()
    assert record["transferee"] == "transfer@127.0.0.1"
    assert record["state"] == "failed" and record["final_sipfrag"] == "403 Forbidden"
    assert "invite_call_id" not in record  # never tied
    [answered] = received(twin.messages_path, "INVITE", status=200)
    consult = dialog(run, answered.header("Call-ID"))
    assert consult.state is DialogState.TERMINATED and consult.ended_by == "bye-callee"


@pytest.mark.parametrize("dlab", BOTH_CONFIGS, indirect=True)
def test_contrib_referer_uas_stops_at_its_hold_sent_to_the_proxy_itself(drun):
    """referer_uas.xml answers a call, puts it on hold, and would then play referer.xml's
    part (start the twin, REFER `call_c` with a Replaces naming the twin's call).  Its
    hold re-INVITE goes to `sip:<proxy address>` with no user and no Route -- to the
    B2BUA it was written for, the peer of every call -- from which no proxy can tell
    whom it is for: the proxy's routing answers **404 Not here** (referee is not asked)
    and referer_uas aborts there (and tells the twin, which never calls).  Its REFER is
    never sent, so referee has nothing to judge: no transfer record; the call our
    `call_c` placed to it is indexed, confirmed.  (The same REFER, sent by a party of a
    real dialog, is what the referer.xml tests above check.)"""
    run = drun
    pcc = twin_address()
    call_c = Party("call_c").calls("bob")  # and leaves the call up: nobody to hang up
    referer = run.third_party(CONTRIB / "referer_uas.xml", register="bob",
                              extra=("-3pcc", pcc), timeout_s=5)
    twin = run.third_party(CONTRIB / "referee.xml", extra=("-3pcc", pcc), timeout_s=5)
    ours = run.ours("call_c", call_c, register=("call_c",), timeout_s=5)
    codes = run.play_twins(referer, twin=twin, caller=ours)
    assert codes[ours.name] == 0, run.report()
    assert codes[referer.name] != 0 and codes[twin.name] != 0
    [hold] = [m for m in messages(referer.messages_path)
              if m.direction == "sent" and m.method == "INVITE" and m.is_request]
    assert hold.start_line == f"INVITE sip:{run.lab.kamailio.address} SIP/2.0"
    assert "while expecting '100' (index 4), received 'SIP/2.0 404 Not here" in (
        referer.errors())
    assert "internal-cmd: abort_call" in referer.messages()
    assert not [m for m in messages(twin.messages_path) if m.direction == "sent"]
    assert run.lab.records() == []
    [call] = received(ours.messages_path, "INVITE", status=200)
    assert dialog(run, call.header("Call-ID"), _tag(call.header("From"))).state is (
        DialogState.CONFIRMED)


def _tag(name_addr: str) -> str:
    return name_addr.split(";tag=")[1].split(";")[0]


CALLER_LOCAL = (ASTERISK / "tests/channels/pjsip/transfers/attended_transfer/nominal/"
                "caller_local/sipp")


@pytest.mark.parametrize("dlab", BOTH_CONFIGS, indirect=True)
def test_caller_local_referer_and_referee_attended_transfer_succeeds(drun):
    """caller_local referer.xml (bob) calls `call_c` and holds it; its 3PCC twin
    referee.xml calls `call_c` too and hands back that call's tags; bob REFERs the first
    call to `call_c` with a Replaces naming the second, takes two NOTIFYs, hangs up, and
    waits for the twin's "done" command, which the twin sends once its call is BYEd.

    In Asterisk's test both calls went to one uas.xml (-m 2); through a proxy both reach
    the one UA registered as call_c (ours): it is the transferee of the first call and
    the target of the second, so the transfer's new call goes from call_c to call_c
    (SIPp plays both ends in the first call, see Party.calls_replacing).  It ends the
    replaced call only after bob's BYE: bob's scenario takes the twin's command at its
    very end and fails on one that comes earlier (RFC 3891 sets no time for that BYE)."""
    run = drun
    pcc = twin_address()
    call_c = (transferee().takes_invite(later="second").answers_it()
              .takes_reinvite()  # bob's hold
              .takes_attended_refer()
              .notify(100)
              .calls_replacing(self_target=True)
              .notify(200, "terminated;reason=noresource")
              .takes_bye()
              .raises("replaced")
              .hangs_up_replacing(self_target=True)
              .goto("end")
              .label("second").answers_it().waits_for("replaced").hangs_up()
              .label("end"))
    ours = run.ours("call_c", call_c, register=("call_c",), calls=2)
    twin = run.third_party(CALLER_LOCAL / "referee.xml", extra=("-3pcc", pcc))
    referer = run.third_party(CALLER_LOCAL / "referer.xml", extra=("-3pcc", pcc))
    ok(run.play_twins(ours, twin=twin, caller=referer), run)

    bob_call = received(referer.messages_path, "INVITE", status=200)[0].header("Call-ID")
    replaced = "REMOTE" + bob_call
    [hold, self_invite] = [m for m in received(ours.messages_path, "INVITE")
                          if ";tag=" in m.header("To") or m.header("Replaces")]
    record = run.transfer()
    assert record["state"] == "succeeded", f"{record}\n{run.report()}"
    assert record["transferor"] == "bob@127.0.0.1"
    assert record["transferee"] == "transfer@127.0.0.1"
    assert record["target"] == "call_c@127.0.0.1"
    assert record["replaces"] == replaced
    assert record["replaces_dialog"] == "known" and record["replaces_state"] == "confirmed"
    assert record["invite_call_id"] == f"xfer///{bob_call}"
    assert record["invite_reply"] == "200" and record["final_sipfrag"] == "200 OK"
    consult = dialog(run, replaced)
    assert self_invite.header("Replaces") == (
        f"{replaced};to-tag={consult.callee_tag};from-tag=1")
    assert consult.state is DialogState.TERMINATED and consult.ended_by == "bye-callee"
    assert dialog(run, bob_call).ended_by == "bye-caller"
    # What uas.xml (Asterisk's call_c) could not have taken here: bob's hold re-INVITE
    # and his REFER reach call_c itself (Asterisk consumed both), and no INVITE carries
    # the connected-line identity uas.xml checks -- a B2BUA's re-INVITE.
    assert hold.header("P-Asserted-Identity") is None
    assert hold.header("Remote-Party-ID") is None


def test_caller_local_uas_xml_as_call_c_stops_at_bobs_hold_and_refer(drun):
    """uas.xml (-m 2) as call_c, the way Asterisk's test used it, under the unmodified
    referer.xml/referee.xml pair.  Not applicable through a proxy, and this is exactly
    where it stops: uas.xml answers bob's call, and then wants, as the next INVITE in that
    call, Asterisk's connected-line update (P-Asserted-Identity / Remote-Party-ID
    "Charlie"), a re-INVITE only a B2BUA that bridged the transfer originates.  Through a
    proxy the next INVITE is bob's own hold re-INVITE (Asterisk kept it): the check fails
    (SIPp marks the call failed and goes on), then bob's REFER, which Asterisk consumed,
    reaches uas.xml and aborts its call (it expects a BYE); bob waits for a 202 that
    never comes.  referee's part still applies: the REFER, from a party to the twin's
    call that it names, is relayed and recorded with the replaced dialog known."""
    run = drun
    pcc = twin_address()
    uas = run.third_party(CALLER_LOCAL / "uas.xml", register="call_c", calls=2,
                          timeout_s=3)
    twin = run.third_party(CALLER_LOCAL / "referee.xml", extra=("-3pcc", pcc), timeout_s=3)
    referer = run.third_party(CALLER_LOCAL / "referer.xml", extra=("-3pcc", pcc),
                              timeout_s=3)
    codes = run.play_twins(uas, twin=twin, caller=referer)
    assert 0 not in codes.values(), f"{codes}\n{run.report()}"
    errors = uas.errors()
    no_pai = errors.index("Failed regexp match: header P-Asserted-Identity not found")
    assert "CSeq: 2 INVITE" in errors[no_pai:no_pai + 400]  # bob's hold ...
    assert len(received(referer.messages_path, "INVITE", status=200)) == 2  # ... answered
    assert "while expecting 'BYE' (index 7), received 'REFER sip:call_c@" in errors
    [refer] = [m for m in messages(referer.messages_path) if m.method == "REFER"]
    assert refer.direction == "sent"  # and nothing came back: uas.xml had aborted
    assert "referer timed out" in referer.errors()
    record = run.transfer()
    bob_call = received(referer.messages_path, "INVITE", status=200)[0].header("Call-ID")
    assert record["state"] == "refer-seen" and record["replaces"] == "REMOTE" + bob_call
    assert record["replaces_dialog"] == "known" and "refer_reply" not in record
