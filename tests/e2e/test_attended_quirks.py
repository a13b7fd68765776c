"""Attended-transfer quirks real phones show (ua-quirks.md, issue 3 item 5), with the
dialog index on, real Kamailio (both configs), Redis and pjsua2 phones.

* A Refer-To that names the consultation call's address-of-record, not its Contact
  (linphone does this): the transferee's INVITE with Replaces is routed like any call to
  that AoR -- through the registrar's location lookup -- and is checked and tied as usual.
* A Replaces pasted into the INVITE's Request-URI instead of sent as a header.
"""

from __future__ import annotations

from urllib.parse import quote

from kemi.dialogs import DialogState
from tests.e2e.parties import finish, received, wait_for
from tests.e2e.test_attended import Call, alab, pjsua_phones  # noqa: F401
from tests.support.attended import Replacer
from tests.support.kamailio import free_udp_port
from tests.support.scenarios import HEAD, _reply
from tests.ua.phone import parse_sip


def _tag(header_value: str) -> str:
    return header_value.split(";tag=", 1)[1].split(";", 1)[0].strip()


def test_a_refer_to_naming_the_consultation_aor_is_routed_by_the_registrar_and_succeeds(
    alab, pjsua_phones  # noqa: F811
):
    andrew, mckenzie, marsha = pjsua_phones
    a_call = andrew.call(mckenzie.aor)
    m_call = mckenzie.wait_incoming(5)
    mckenzie.answer(m_call, 200)
    andrew.wait_state(a_call, "confirmed")
    assert andrew.hold(a_call) == 200
    consult = andrew.call(marsha.aor)
    s_call = marsha.wait_incoming(5)
    marsha.answer(s_call, 200)
    andrew.wait_state(consult, "confirmed")
    marsha.wait_state(s_call, "confirmed")

    invite = parse_sip(s_call.messages[0])["headers"]

    def answer_seen():  # the phone logs the message a moment after it reports the state
        return next((parse_sip(m)["headers"] for m in list(consult.messages)
                     if m.startswith("SIP/2.0 200")
                     and "INVITE" in parse_sip(m)["headers"].get("cseq", "")), None)

    ok = wait_for(answer_seen, 5)
    assert ok, consult.messages
    consult_id = invite["call-id"]
    replaces = f"{consult_id};to-tag={_tag(ok['to'])};from-tag={_tag(ok['from'])}"
    # The AoR (what Andrew dialled), not Marsha's Contact: only the registrar knows where.
    refer_to = f"<{marsha.aor}?Replaces={quote(replaces, safe='')}>"
    assert marsha.aor.startswith("sip:marsha@127.0.0.1:")
    andrew.transfer(a_call, refer_to)

    assert andrew.wait_refer_response(a_call) == 202
    sent = parse_sip(next(m for m in m_call.messages if m.startswith("REFER ")))["headers"]
    assert sent["refer-to"].startswith(f"<{marsha.aor}?Replaces="), sent["refer-to"]
    new = marsha.replacing(s_call, 10)  # McKenzie's INVITE with Replaces reached her
    marsha.wait_state(new, "confirmed")
    marsha.wait_state(s_call, "disconnected")  # the consultation call was replaced
    andrew.wait_state(consult, "disconnected")
    assert andrew.wait_transfer_final(a_call, 5) == 200

    record = wait_for(lambda: (alab.finished() or [None])[0], 5)
    assert record and record["state"] == "succeeded", (record, alab.records())
    assert record["replaces"] == consult_id
    assert record["replaces_dialog"] == "known"
    assert record["invite_reply"] == "200"  # the routed INVITE with Replaces was tied
    if andrew.call_state(a_call) != "disconnected":
        andrew.hangup(a_call)
    marsha.hangup(new)
    marsha.wait_state(new, "disconnected")


# --------------------------------------------------------------- Replaces in the R-URI
# One transferee pastes the Refer-To's headers into its INVITE's Request-URI and sends no
# Replaces header (ua-quirks.md).  referee repairs it into the header the URI meant
# (kemi/ruri.py) and judges it like any other -- so the repair grants no authority.


def _pasted(lab, me: str, target: str, replaces: str, expect: int):
    party = lab.party(f"{me}-pasted", Replacer(me, target, replaces, expect, in_ruri=True).xml(),
                      timeout_s=10)
    rc = party.run()
    assert rc == 0, party.report() + "\n--- kamailio:\n" + lab.kamailio.log()[-4000:]
    [final] = received(party, "INVITE", status=expect)
    return final


def _uas(me: str, code: str) -> str:
    return (HEAD + f'<scenario name="{me} answers {code}">\n'
            '  <Global variables="me"/>\n'
            f'  <nop><action><assignstr assign_to="me" value="{me}"/></action></nop>\n'
            '  <recv request="INVITE"/>\n' + _reply(code) + '  <recv request="ACK"/>\n'
            '</scenario>\n')


def test_a_pasted_replaces_from_a_stranger_is_repaired_then_refused_403(alab):  # noqa: F811
    call = Call(alab, "andrew", "marsha", hold_ms=4000)
    call.wait_state(DialogState.CONFIRMED)
    final = _pasted(alab, "eve", "marsha", call.replaces(), 403)
    assert "neither a party" in (final.header("Warning") or ""), final.header("Warning")
    assert "Request-URI repaired" in alab.kamailio.log()
    call.finish()  # marsha never saw eve's INVITE; the call ended normally


def test_a_pasted_replaces_that_cannot_be_read_is_400_saying_why(alab):  # noqa: F811
    final = _pasted(alab, "eve", "marsha", "abc123?to-tag?x?from-tag?y", 400)
    warning = final.header("Warning") or ""
    assert "Request-URI" in warning and "Replaces" in warning, warning


def test_a_pasted_replaces_from_a_party_reaches_the_target_as_a_header(alab):  # noqa: F811
    call = Call(alab, "andrew", "marsha", hold_ms=4000)
    call.wait_state(DialogState.CONFIRMED)
    port = free_udp_port()
    alab.register("charlie", port)
    charlie = alab.party("charlie", _uas("charlie", "486 Busy Here"), port=port).start()
    _pasted(alab, "andrew", "charlie", call.replaces(), 486)
    finish(alab, charlie)
    [invite] = received(charlie, "INVITE")
    assert "?" not in invite.start_line, invite.start_line  # routed by the bare AoR
    assert invite.header("Replaces") == call.replaces()
    assert "replaces" in (invite.header("Require") or "")
    call.finish()
