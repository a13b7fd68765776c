"""CSeq translation of an anchored dialog (kemi.core.cseq), as A and Asterisk would see it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kemi.core.cseq import MAX_CSEQ, CSeqError, CSeqShift, parse_cseq_number


def test_the_recorded_collision_is_avoided():
    # h-proxy-notify-cseq-collision: Asterisk's INVITE 26349, two NOTIFYs, then its BYE.
    s = CSeqShift.start(26349)
    assert s.next_notify() == 26350
    assert s.next_notify() == 26351
    assert s.on_request("BYE", 26350) == 26352  # was 26350: 500 Invalid CSeq at A


def test_session_refresh_then_bye_after_three_notifies():
    s = CSeqShift.start(11538)
    notifies = [s.next_notify() for _ in range(3)]
    assert notifies == [11539, 11540, 11541]
    assert s.on_request("UPDATE", 11539) == 11542
    assert s.on_request("BYE", 11540) == 11543


def test_interleaved_asterisk_requests_and_notifies_only_increase():
    s = CSeqShift.start(100)
    seen = [s.on_request("UPDATE", 101), s.next_notify(), s.on_request("INVITE", 102),
            s.next_notify(), s.on_request("UPDATE", 103), s.next_notify(),
            s.on_request("BYE", 104)]
    assert seen == sorted(set(seen))
    assert seen == [101, 102, 103, 104, 105, 106, 107]


def test_ack_and_cancel_of_a_reinvite_keep_the_invites_translation():
    s = CSeqShift.start(15157)
    s.next_notify()
    invite = s.on_request("INVITE", 15158)
    assert invite == 15159
    s.next_notify()  # a NOTIFY between the re-INVITE and its ACK
    assert s.on_request("ACK", 15158) == invite
    assert s.on_request("CANCEL", 15158) == invite
    assert s.on_request("BYE", 15159) == 15161


def test_no_notify_means_no_change():
    s = CSeqShift.start(7)
    assert s.on_request("UPDATE", 8) == 8
    assert s.on_request("INVITE", 9) == 9
    assert s.on_request("ACK", 9) == 9
    assert s == CSeqShift(last_orig=9, last_sent=9, invite_orig=9)  # no offset appeared


def test_retransmission_does_not_move_the_state():
    s = CSeqShift.start(10)
    s.next_notify()
    assert s.on_request("UPDATE", 11) == 12
    before = s.encode()
    assert s.on_request("UPDATE", 11) == 12
    assert s.encode() == before


def test_a_request_that_would_collide_with_a_notify_is_pushed_past_it():
    s = CSeqShift(last_orig=10, last_sent=20, offset=0)  # a state that lags behind
    assert s.on_request("BYE", 11) == 21
    assert s.offset == 10
    assert s.on_request("BYE", 12) == 22


def test_encode_decode_round_trip_and_errors():
    s = CSeqShift.start(5)
    s.next_notify()
    s.on_request("INVITE", 6)
    assert CSeqShift.decode(s.encode()) == s
    for bad in ("", "1|2", "a|b|c|d|e|f", "5|4|0|0|-1|0", "5|6|-1|0|-1|0"):
        with pytest.raises(CSeqError):
            CSeqShift.decode(bad)


def test_rebuilt_state_jumps_ahead():
    s = CSeqShift.start(100)
    s.next_notify()
    r = s.rebuilt(margin=50)
    assert r.next_notify() == 152
    assert r.on_request("BYE", 101) == 153


def test_limits():
    with pytest.raises(CSeqError):
        CSeqShift.start(MAX_CSEQ + 1)
    s = CSeqShift.start(MAX_CSEQ - 1)
    assert s.next_notify() == MAX_CSEQ
    with pytest.raises(CSeqError):
        s.next_notify()


def test_parse_cseq_number():
    assert parse_cseq_number("101 INVITE") == 101
    assert parse_cseq_number(" 7") == 7
    assert parse_cseq_number(9) == 9
    for bad in (None, "", "x INVITE", "-1", "²"):
        with pytest.raises(CSeqError):
            parse_cseq_number(bad)


@given(st.integers(0, 10**6), st.lists(st.sampled_from(["req", "notify", "retrans"]),
                                       max_size=40))
def test_what_a_sees_strictly_increases(start, steps):
    """Whatever the interleaving, every new request A receives in Asterisk's direction
    has a CSeq above all before it, and a retransmission keeps its first number.  (A's
    replies get Asterisk's own number back in the glue: tests/e2e/test_anchored.py.)"""
    s = CSeqShift.start(start)
    orig = start
    sent: list[int] = []
    sent_for: dict[int, int] = {}
    for step in steps:
        if step == "notify":
            sent.append(s.next_notify())
        elif step == "req":
            orig += 1
            sent.append(s.on_request("UPDATE", orig))
            sent_for[orig] = sent[-1]
        elif orig in sent_for:  # Asterisk retransmits its newest request
            assert s.on_request("UPDATE", orig) == sent_for[orig]
    assert sent == sorted(set(sent))
