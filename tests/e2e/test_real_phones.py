"""Blind transfers between real phones (pjsua2, baresip, linphone) through referee's Kamailio.

Andrew calls McKenzie, then blind-transfers McKenzie to Marsha.  The proxy is the real
Kamailio of the `lab` fixture running the project's example configs (both of them) with
referee, Redis and a policy DB; the phones are the drivers of tests/ua/phone.py, each in
its own process.  What the transferor learnt is read off the wire (the sipfrags of the
NOTIFYs it accepted), what referee concluded from its transfer record in Redis.

The phones' domain is the proxy's own address *with its port*: the example configs'
registrar serves only Request-URIs that are the proxy itself (``uri==myself``), and
Kamailio reads a URI without a port as port 5060, which the lab's proxy is not on.

Marsha rings and answers only once Andrew has seen the previous sipfrag, so each test
states the sipfrags Andrew sees one by one.  (Two NOTIFYs sent a few milliseconds apart
reach him in order whatever the proxy's workers do: tests/e2e/test_order.py.)
"""

from __future__ import annotations

import time

import pytest

from tests.ua.conftest import require_kind
from tests.ua.phone import PhoneError, make_phone, parse_sip

HOST = "127.0.0.1"


@pytest.fixture
def phones(lab, tmp_path):
    """phones(andrew="pjsua2", ...) -> started phones registered with the lab's proxy.

    pjsua2 phones do not ring by themselves: the test says when (see the module doc).
    """
    made = []

    def factory(**kinds):
        out = []
        for name, kind in kinds.items():
            require_kind(kind)
            extra = {"auto_ringing": False} if kind == "pjsua2" else {}
            phone = make_phone(
                kind, name, name, HOST, lab.kamailio.port, lab.kamailio.address,
                workdir=tmp_path / "phones" / name, **extra,
            )
            made.append(phone)
            phone.start()
            out.append(phone)
        for phone in out:
            phone.register()
        return out

    yield factory
    for phone in made:
        try:
            phone.stop()
        except PhoneError:
            pass


def aor(phone) -> str:
    """The phone's address-of-record as referee records it (user@host, no port)."""
    return f"{phone.user}@{HOST}"


def establish(andrew, mckenzie):
    """Andrew calls McKenzie, McKenzie answers; both call handles once confirmed."""
    a_call = andrew.call(mckenzie.aor)
    m_call = mckenzie.wait_incoming(5)
    mckenzie.wait_state(m_call, ("incoming", "early"))
    mckenzie.answer(m_call, 200)
    andrew.wait_state(a_call, "confirmed")
    mckenzie.wait_state(m_call, "confirmed")
    return a_call, m_call


def transfer_to_marsha(andrew, a_call, marsha, **kw):
    """Andrew REFERs his call to Marsha; the REFER is accepted and Marsha's phone rings.
    Returns Marsha's incoming call."""
    andrew.transfer(a_call, marsha.aor, **kw)
    assert andrew.wait_refer_response(a_call) == 202
    return marsha.wait_incoming(5)


def seen(andrew, a_call, code: int, timeout_s: float = 5.0) -> None:
    """Wait until Andrew has accepted a NOTIFY whose sipfrag is `code`."""
    andrew.wait_for(lambda: code in andrew.transfer_events(a_call), timeout_s,
                    f"a NOTIFY with sipfrag {code}")


def final_record(lab, timeout_s: float = 5.0) -> dict[str, str]:
    """The one transfer referee closed (waits: its last event may still be in flight)."""
    deadline = time.monotonic() + timeout_s
    while not (done := lab.finished()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(done) == 1, f"finished transfers: {done}\nopen: {lab.records()}"
    return done[0]


def hang_up(phone, call) -> None:
    if phone.call_state(call) != "disconnected":
        phone.hangup(call)
    phone.wait_state(call, "disconnected")


def test_pjsua2_success_andrew_sees_100_180_200_and_referee_ties_the_invite(lab, phones):
    andrew, mckenzie, marsha = phones(andrew="pjsua2", mckenzie="pjsua2", marsha="pjsua2")
    a_call, m_call = establish(andrew, mckenzie)

    s_call = transfer_to_marsha(andrew, a_call, marsha)
    seen(andrew, a_call, 100)
    marsha.answer(s_call, 180)
    seen(andrew, a_call, 180)
    marsha.answer(s_call, 200)
    marsha.wait_state(s_call, "confirmed")

    assert andrew.wait_transfer_final(a_call, 5) == 200
    assert andrew.transfer_events(a_call) == [100, 180, 200]
    m_new = mckenzie.wait_call(lambda c: c.origin == "transfer", 5, "McKenzie's transfer call")
    assert m_new.parent == m_call.id
    mckenzie.wait_state(m_new, "confirmed")

    record = final_record(lab)
    assert record["state"] == "succeeded", record
    assert record["invite_reply"] == "200", record  # pjsua2 copies Referred-By: tied
    assert record["transferee"] == aor(mckenzie)
    assert record["target"] == aor(marsha)

    hang_up(andrew, a_call)
    mckenzie.wait_state(m_call, "disconnected")
    assert mckenzie.call_state(m_new) == "confirmed"
    assert marsha.call_state(s_call) == "confirmed"
    hang_up(mckenzie, m_new)


def test_marsha_rejects_486_andrew_sees_486_record_failed_original_call_reinvites(
    lab, phones
):
    andrew, mckenzie, marsha = phones(andrew="pjsua2", mckenzie="pjsua2", marsha="pjsua2")
    a_call, m_call = establish(andrew, mckenzie)

    s_call = transfer_to_marsha(andrew, a_call, marsha)
    seen(andrew, a_call, 100)
    marsha.reject(s_call, 486)
    marsha.wait_state(s_call, "disconnected")

    assert andrew.wait_transfer_final(a_call, 5) == 486
    assert andrew.transfer_events(a_call) == [100, 486]
    assert andrew.call_state(a_call) == "confirmed"
    assert mckenzie.call_state(m_call) == "confirmed"

    record = final_record(lab)
    assert record["state"] == "failed", record
    assert record["final_sipfrag"].startswith("486"), record
    assert record["invite_reply"] == "486", record

    assert andrew.reinvite(a_call) == 200  # the original call survives the failed transfer
    hang_up(andrew, a_call)
    mckenzie.wait_state(m_call, "disconnected")


def test_baresip_transferee_without_referred_by_succeeds_by_its_notifies(lab, phones):
    """baresip copies no Referred-By into its INVITE (referee cannot tie it), numbers its
    NOTIFYs with Event: refer;id=<CSeq> and sends no 180 sipfrag."""
    andrew, mckenzie, marsha = phones(andrew="pjsua2", mckenzie="baresip", marsha="pjsua2")
    a_call, m_call = establish(andrew, mckenzie)

    s_call = transfer_to_marsha(andrew, a_call, marsha)
    invite = marsha.wait_for(lambda: s_call.messages[:1], 5, "Marsha's INVITE")[0]
    assert "referred-by" not in parse_sip(invite)["headers"]
    seen(andrew, a_call, 100)
    marsha.answer(s_call, 180)
    marsha.answer(s_call, 200)
    marsha.wait_state(s_call, "confirmed")

    assert andrew.wait_transfer_final(a_call, 5) == 200
    assert andrew.transfer_events(a_call) == [100, 200]
    assert all(";id=" in n["event"].replace(" ", "") for n in a_call.notifies)

    record = final_record(lab)
    assert record["state"] == "succeeded", record
    assert record["final_sipfrag"].startswith("200"), record
    assert "invite_reply" not in record, record  # the INVITE was never tied: NOTIFYs decided

    hang_up(andrew, a_call)
    hang_up(marsha, s_call)


def test_linphone_final_notify_is_repaired_so_a_pjsua2_transferor_sees_200(lab, phones):
    """linphone's final NOTIFY says 'Subscription-State: terminated;reason=reason=noresource',
    which pjsip refuses (tests/ua/QUIRKS.md).  referee reads it tolerantly and relays it
    with the value repaired, so the transferor learns the outcome."""
    andrew, mckenzie, marsha = phones(andrew="pjsua2", mckenzie="linphone", marsha="pjsua2")
    a_call, m_call = establish(andrew, mckenzie)

    s_call = transfer_to_marsha(andrew, a_call, marsha)
    seen(andrew, a_call, 100)
    marsha.answer(s_call, 180)
    marsha.answer(s_call, 200)
    marsha.wait_state(s_call, "confirmed")

    assert andrew.wait_transfer_final(a_call, 5) == 200
    final = a_call.notifies[-1]
    assert final["code"] == 200
    assert final["subscription_state"] == "terminated;reason=noresource"
    assert (  # what linphone sent and what referee relayed instead, in referee's log
        "Subscription-State 'terminated;reason=reason=noresource' "
        "relayed as 'terminated;reason=noresource'"
    ) in lab.kamailio.log()

    record = final_record(lab)
    assert record["state"] == "succeeded", record

    hang_up(andrew, a_call)
    hang_up(marsha, s_call)


def test_refer_sub_false_no_notify_record_succeeds_by_the_invite_2xx(lab, phones):
    andrew, mckenzie, marsha = phones(andrew="pjsua2", mckenzie="pjsua2", marsha="pjsua2")
    a_call, m_call = establish(andrew, mckenzie)

    s_call = transfer_to_marsha(andrew, a_call, marsha, refer_sub=False)
    [accepted] = [m for m in a_call.messages if m.startswith("SIP/2.0 202")]
    assert "refer-sub: false" in accepted.lower()
    marsha.answer(s_call, 180)
    marsha.answer(s_call, 200)
    marsha.wait_state(s_call, "confirmed")

    record = final_record(lab)
    assert record["state"] == "succeeded", record
    assert record["refer_sub"] == "false"
    assert record["invite_reply"] == "200", record
    assert "last_notify" not in record, record
    time.sleep(0.3)  # a NOTIFY would have arrived by now
    assert a_call.notifies == []

    hang_up(andrew, a_call)
    hang_up(marsha, s_call)
