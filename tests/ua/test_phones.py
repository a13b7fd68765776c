"""Prove the phone drivers of tests/ua/phone.py against a real (minimal) Kamailio.

Andrew (transferor) calls McKenzie (transferee), then blind-transfers McKenzie
to Marsha (target).  The proxy is tests/ua/minimal-proxy.cfg: a plain registrar
and record-routing stateful proxy, nothing of referee in it.
"""

from __future__ import annotations

import time

import pytest

from .conftest import DOMAIN


def uri(user: str) -> str:
    return f"sip:{user}@{DOMAIN}"


def establish(andrew, mckenzie):
    """Andrew calls McKenzie, McKenzie answers; return both call handles."""
    a_call = andrew.call(uri("mckenzie"))
    m_call = mckenzie.wait_incoming(5)
    mckenzie.wait_state(m_call, ("incoming", "early"))
    mckenzie.answer(m_call, 200)
    andrew.wait_state(a_call, "confirmed")
    mckenzie.wait_state(m_call, "confirmed")
    return a_call, m_call


# (andrew, mckenzie, marsha).  pjsua2 can play every role; baresip and
# linphone are used where their consoles can do what the role needs.
SUCCESS = [
    ("pjsua2", "pjsua2", "pjsua2"),
    ("pjsua2", "baresip", "baresip"),
    ("baresip", "pjsua2", "pjsua2"),
    ("pjsua2", "pjsua2", "linphone"),
    ("linphone", "pjsua2", "pjsua2"),
    ("baresip", "linphone", "baresip"),
]


@pytest.mark.parametrize("kinds", SUCCESS, ids=lambda k: "-".join(k))
def test_blind_transfer_succeeds(phones, kinds):
    andrew, mckenzie, marsha = phones(andrew=kinds[0], mckenzie=kinds[1], marsha=kinds[2])
    a_call, m_call = establish(andrew, mckenzie)

    andrew.transfer(a_call, uri("marsha"))
    assert andrew.wait_refer_response(a_call) == 202

    s_call = marsha.wait_incoming(5)
    marsha.wait_state(s_call, ("incoming", "early"))
    marsha.answer(s_call, 200)
    marsha.wait_state(s_call, "confirmed")

    assert andrew.wait_transfer_final(a_call, 10) == 200
    events = andrew.transfer_events(a_call)
    assert events[0] == 100 and events[-1] == 200, events
    assert set(events) <= {100, 180, 183, 200}, events

    # McKenzie's new call (made because of the REFER) is up with Marsha.
    m_new = mckenzie.wait_call(lambda c: c.origin == "transfer", 5, "McKenzie's transfer call")
    assert m_new.parent == m_call.id
    mckenzie.wait_state(m_new, "confirmed")

    if andrew.call_state(a_call) != "disconnected":  # baresip/linphone hang up by themselves
        andrew.hangup(a_call)
    andrew.wait_state(a_call, "disconnected")
    mckenzie.wait_state(m_call, "disconnected")

    time.sleep(0.3)  # nothing tears the new call down behind our back
    assert mckenzie.call_state(m_new) == "confirmed"
    assert marsha.call_state(s_call) == "confirmed"
    mckenzie.hangup(m_new)
    marsha.wait_state(s_call, "disconnected")


# (andrew, mckenzie, marsha, code Marsha rejects with)
FAILURE = [
    ("pjsua2", "pjsua2", "pjsua2", 486),
    ("pjsua2", "pjsua2", "pjsua2", 404),
    ("pjsua2", "baresip", "baresip", 486),
    ("pjsua2", "pjsua2", "linphone", 603),
    ("linphone", "pjsua2", "pjsua2", 486),
]


@pytest.mark.parametrize("kinds", FAILURE, ids=lambda k: "-".join(map(str, k)))
def test_blind_transfer_rejected_keeps_original_call(phones, kinds):
    andrew, mckenzie, marsha = phones(andrew=kinds[0], mckenzie=kinds[1], marsha=kinds[2])
    code = kinds[3]
    a_call, m_call = establish(andrew, mckenzie)

    andrew.transfer(a_call, uri("marsha"))
    s_call = marsha.wait_incoming(5)
    marsha.wait_state(s_call, ("incoming", "early"))
    marsha.reject(s_call, code)
    marsha.wait_state(s_call, "disconnected")

    assert andrew.wait_transfer_final(a_call, 10) == code
    events = andrew.transfer_events(a_call)
    assert events[0] == 100 and events[-1] == code, events

    # The original call survives and can still be re-INVITEd (hold and resume).
    assert andrew.call_state(a_call) == "confirmed"
    assert mckenzie.call_state(m_call) == "confirmed"
    first = andrew.reinvite(a_call)
    if first in (491, 500):
        # RFC 3261 14.1: 491 / 500 (with Retry-After) while the peer has an INVITE
        # transaction of its own in progress; a UA tries again.  Seen once in a full run
        # (linphone -> pjsua2 after a 486, 500; not root-caused): the call survived.
        time.sleep(1.0)
        first = andrew.reinvite(a_call)
    assert first == 200
    assert andrew.hold(a_call) == 200
    assert andrew.reinvite(a_call) == 200
    andrew.hangup(a_call)
    mckenzie.wait_state(m_call, "disconnected")


def test_pjsua2_refer_sub_false(phones):
    """Refer-Sub: false (RFC 4488): pjsua2 echoes it in the 202 and sends no NOTIFY."""
    andrew, mckenzie, marsha = phones(andrew="pjsua2", mckenzie="pjsua2", marsha="pjsua2")
    a_call, m_call = establish(andrew, mckenzie)

    andrew.transfer(a_call, uri("marsha"), refer_sub=False)
    assert andrew.wait_refer_response(a_call) == 202
    accepted = [m for m in a_call.messages if m.startswith("SIP/2.0 202")]
    assert accepted and "refer-sub: false" in accepted[0].lower()

    s_call = marsha.wait_incoming(5)
    marsha.answer(s_call, 200)
    marsha.wait_state(s_call, "confirmed")
    time.sleep(0.5)
    assert andrew.transfer_events(a_call) == []
    assert a_call.notifies == []


def test_baresip_transferor_hangs_up_even_when_transfer_fails(phones):
    """Recorded quirk: baresip 1.0.0 sends BYE after the final NOTIFY, 486 or not."""
    andrew, mckenzie, marsha = phones(andrew="baresip", mckenzie="pjsua2", marsha="pjsua2")
    a_call, m_call = establish(andrew, mckenzie)
    andrew.transfer(a_call, uri("marsha"))
    s_call = marsha.wait_incoming(5)
    marsha.reject(s_call, 486)
    assert andrew.wait_transfer_final(a_call, 10) == 486
    andrew.wait_state(a_call, "disconnected")
    mckenzie.wait_state(m_call, "disconnected")


def test_pjsua2_drops_linphone_final_notify(phones, proxy):
    """Recorded quirk: linphone's final NOTIFY says
    'Subscription-State: terminated;reason=reason=noresource', which pjsip
    rejects as a syntax error and drops: a pjsua2 transferor never sees the 200."""
    andrew, mckenzie, marsha = phones(andrew="pjsua2", mckenzie="linphone", marsha="pjsua2")
    a_call, m_call = establish(andrew, mckenzie)
    andrew.transfer(a_call, uri("marsha"))
    s_call = marsha.wait_incoming(5)
    marsha.answer(s_call, 200)
    marsha.wait_state(s_call, "confirmed")
    deadline = time.monotonic() + 5
    while "reason=reason=noresource" not in proxy.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "reason=reason=noresource" in proxy.log()
    time.sleep(0.5)
    assert 200 not in andrew.transfer_events(a_call)
    assert andrew.transfer_events(a_call)[:1] == [100]
