"""kemi.core.order: which NOTIFY of a transfer may leave now, which waits, which goes next.

The rules as a specification, then one property: whatever the interleaving of workers
(each message reaching referee up to `skew` late, each decided message leaving up to a
little less than `grace` after the decision), what the transferor gets is the 2xx, then
the NOTIFYs in CSeq order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kemi.core.order import DialogOrder, Held, Last, OrderError, Timing

T = Timing(grace_s=0.02, window_s=0.05, refer_wait_s=4.0)
A, B = "andrew-tag", "mckenzie-tag"  # transferor, transferee


def suspended(order: DialogOrder, tag: str, cseq: int, index: int) -> None:
    assert order.attach(tag, cseq, index, index + 1000)


def test_a_notify_waits_while_its_refer_has_no_final_response():
    o = DialogOrder()
    o.refer_relayed("2", A, now=0.0)
    assert o.admit(B, 1, True, now=0.001, t=T) == "hold"


def test_the_notify_goes_once_the_2xx_is_surely_on_the_wire():
    o = DialogOrder()
    o.refer_relayed("2", A, now=0.0)
    assert o.admit(B, 1, True, now=0.001, t=T) == "hold"
    suspended(o, B, 1, 7)
    o.refer_answered("2", now=0.002)  # the 202's reply route
    assert o.release(now=0.010, t=T) == []  # within grace of the 202
    [h] = o.release(now=0.023, t=T)
    assert (h.cseq, h.tindex, h.tlabel) == (1, 7, 1007)
    assert o.held == []


def test_a_notify_after_the_2xx_and_its_grace_is_relayed_by_its_worker():
    o = DialogOrder()
    o.refer_relayed("2", A, now=0.0)
    o.refer_answered("2", now=0.01)
    assert o.admit(B, 1, True, now=0.05, t=T) == "relay"


def test_an_answer_taken_in_after_a_later_one_keeps_the_later_grace():
    # Two REFERs answered at 0.010 and 0.030; the first answer is taken in last (noted
    # answers are taken in at the dialog's next use, kemi.kamailio.sequencer.Answers).
    o = DialogOrder()
    o.refer_relayed("2", A, now=0.0)
    o.refer_relayed("3", A, now=0.001)
    o.refer_answered("3", now=0.030)
    o.refer_answered("2", now=0.010)
    assert o.final_at == 0.030
    assert o.admit(B, 1, True, now=0.040, t=T) == "hold"  # within grace of 0.030


def test_the_transferors_own_requests_are_never_held_for_his_refer():
    o = DialogOrder()
    o.refer_relayed("2", A, now=0.0)
    assert o.admit(A, 3, True, now=0.001, t=T) == "relay"


def test_a_refer_unanswered_too_long_holds_nothing_back():
    o = DialogOrder()
    o.refer_relayed("2", A, now=0.0)
    assert o.admit(B, 1, True, now=T.refer_wait_s + 0.1, t=T) == "relay"


def test_the_next_cseq_goes_at_once_once_the_previous_is_sent():
    o = DialogOrder()
    assert o.admit(B, 5, True, now=1.0, t=T) == "relay"
    o.mark_sent(B, 5)  # its worker's t_relay returned
    assert o.admit(B, 6, False, now=1.0001, t=T) == "relay"


def test_the_next_cseq_waits_while_the_previous_is_not_sent():
    o = DialogOrder()
    assert o.admit(B, 5, True, now=1.0, t=T) == "relay"
    assert o.admit(B, 6, False, now=1.001, t=T) == "hold"
    suspended(o, B, 6, 1)
    assert o.release(now=1.002, t=T) == []
    o.mark_sent(B, 5)
    assert [h.cseq for h in o.release(now=1.003, t=T)] == [6]


def test_a_previous_never_marked_sent_holds_the_next_for_grace_only():
    """Its worker failed between deciding and marking: the next goes after grace."""
    o = DialogOrder()
    o.admit(B, 5, True, now=1.0, t=T)
    assert o.admit(B, 6, False, now=1.019, t=T) == "hold"
    suspended(o, B, 6, 1)
    assert [h.cseq for h in o.release(now=1.021, t=T)] == [6]


def test_marking_an_older_cseq_sent_does_not_mark_the_newest():
    o = DialogOrder()
    o.admit(B, 5, True, now=1.0, t=T)
    o.mark_sent(B, 4)
    assert o.last[B] == Last(5, 1.0, False)


def test_a_first_notify_that_is_not_100_waits_for_an_earlier_one():
    o = DialogOrder()
    assert o.admit(B, 6, False, now=1.0, t=T) == "hold"  # a 180: is its 100 coming?
    suspended(o, B, 6, 1)
    assert o.admit(B, 5, True, now=1.002, t=T) == "hold"  # the 100 queues before it
    suspended(o, B, 5, 2)
    assert [h.cseq for h in o.release(now=1.01, t=T)] == [5, 6]


def test_a_first_notify_alone_goes_after_the_window():
    o = DialogOrder()
    assert o.admit(B, 6, False, now=1.0, t=T) == "hold"
    suspended(o, B, 6, 1)
    assert o.release(now=1.04, t=T) == []
    assert [h.cseq for h in o.release(now=1.051, t=T)] == [6]


def test_a_gap_in_cseq_waits_for_the_window_then_goes():
    o = DialogOrder()
    o.admit(B, 5, True, now=1.0, t=T)
    o.mark_sent(B, 5)
    assert o.admit(B, 7, False, now=1.5, t=T) == "hold"  # 6 was a re-INVITE, say
    suspended(o, B, 7, 1)
    assert o.release(now=1.52, t=T) == []
    assert [h.cseq for h in o.release(now=1.551, t=T)] == [7]


def test_once_one_waits_every_later_one_queues_behind_it():
    o = DialogOrder()
    o.admit(B, 5, True, now=1.0, t=T)  # decided, never marked sent
    assert o.admit(B, 6, False, now=1.001, t=T) == "hold"
    assert o.admit(B, 7, False, now=1.5, t=T) == "hold"  # long after, still behind 6
    suspended(o, B, 7, 2)
    assert o.release(now=1.6, t=T) == []  # 6 is not suspended yet: nothing passes it
    suspended(o, B, 6, 1)
    assert [h.cseq for h in o.release(now=1.6, t=T)] == [6, 7]


def test_a_late_lower_cseq_is_relayed_at_once():
    o = DialogOrder()
    o.admit(B, 5, True, now=1.0, t=T)
    assert o.admit(B, 4, False, now=1.001, t=T) == "relay"
    assert o.last[B].cseq == 5


def test_a_withdrawn_place_lets_the_queue_move():
    o = DialogOrder()
    o.admit(B, 5, True, now=1.0, t=T)
    assert o.admit(B, 6, False, now=1.001, t=T) == "hold"
    o.withdraw(B, 6, now=1.002)  # tm could not suspend it: its worker relays it
    assert o.held == [] and o.last[B] == Last(6, 1.002, False)


def test_a_retry_waits_for_its_time():
    o = DialogOrder()
    o.hold(Held(B, 5, 1, 2, since=1.0, not_before=1.25))
    assert o.release(now=1.2, t=T) == []
    assert [h.cseq for h in o.release(now=1.26, t=T)] == [5]


def test_a_release_is_capped_and_the_rest_stay_held_in_order():
    o = DialogOrder()
    for cseq in (1, 2, 3):
        o.hold(Held(B, cseq, cseq, cseq, since=0.0, first=cseq == 1))
    assert [h.cseq for h in o.release(now=1.0, t=T, limit=2)] == [1, 2]
    assert [h.cseq for h in o.held] == [3]
    o.mark_sent(B, 2)
    assert [h.cseq for h in o.release(now=1.001, t=T, limit=2)] == [3]


def test_stale_entries_are_dropped_and_returned():
    o = DialogOrder()
    o.refer_relayed("2", A, now=0.0)
    o.hold(Held(B, 5, 1, 2, since=0.0))
    stale = o.forget_stale(now=50.0, t=T, held_limit_s=40.0)
    assert [h.cseq for h in stale] == [5]
    assert o.held == [] and o.refers == {}


def test_the_state_survives_shared_memory():
    o = DialogOrder()
    o.refer_relayed("2", A, now=1.5)
    o.admit(B, 5, True, now=1.0, t=T)
    o.mark_sent(B, 5)
    o.hold(Held(B, 7, 3, 4, since=2.0, first=False, not_before=2.5))
    assert DialogOrder.decode(o.encode()) == o
    o.admit(B, 8, False, now=2.1, t=T)
    assert o.attach(B, 8, 5, 6, note='{"e":"notify-trying"}')
    assert DialogOrder.decode(o.encode()) == o  # the glue's note kept while it waits


def test_a_held_notify_keeps_the_glues_note_until_it_is_released():
    o = DialogOrder()
    o.refer_relayed("2", A, now=0.0)
    assert o.admit(B, 1, True, now=0.001, t=T) == "hold"
    assert o.attach(B, 1, 7, 8, note="recorded by the timer")
    o.refer_answered("2", now=0.002)
    [h] = o.release(now=0.030, t=T)
    assert h.note == "recorded by the timer"


def test_an_unreadable_state_says_so():
    for text in ("{", '{"r": 1}', '{"r":{},"f":0,"l":{},"h":[["x"]]}'):
        try:
            DialogOrder.decode(text)
        except OrderError as exc:
            assert "order state unreadable" in str(exc)
        else:
            raise AssertionError(f"{text!r} was read")


# -- the property ---------------------------------------------------------------------

TICK = 0.01
SKEW = 0.04  # a message may reach referee's code this much after the one sent before it
SEND = 0.019  # a decided message is on the wire, and marked sent, within this (< grace)


@st.composite
def transfers(draw):
    n = draw(st.integers(1, 4))
    gaps = draw(st.lists(st.sampled_from([0.0, 0.0, 0.001, 0.005, 0.03, 0.2]),
                         min_size=n, max_size=n))
    sent, t = [], draw(st.sampled_from([0.0, 0.001, 0.01]))  # after the 202
    for g in gaps:
        t += g
        sent.append(t)
    skews = draw(st.lists(st.floats(0, SKEW), min_size=n + 1, max_size=n + 1))
    sends = draw(st.lists(st.floats(0, SEND), min_size=n + 1, max_size=n + 1))
    return sent, skews, sends


@settings(max_examples=400, deadline=None)
@given(transfers())
def test_whatever_the_workers_do_the_transferor_gets_202_then_notifies_in_cseq_order(case):
    sent, skews, sends = case
    o = DialogOrder()
    o.refer_relayed("2", A, now=-1.0)
    # (time, kind, index): the 202's reply route runs at skews[0]; NOTIFY i reaches its
    # worker at sent[i] + skew; the timer ticks every TICK.
    arrivals = [(skews[0], "202", -1)]
    arrivals += [(sent[i] + skews[i + 1], "notify", i) for i in range(len(sent))]
    horizon = max(a[0] for a in arrivals) + 1.0
    ticks = [(k * TICK, "tick", 0) for k in range(int(horizon / TICK) + 1)]
    wire: dict[int, float] = {}
    events = sorted(arrivals + ticks)
    while events:
        now, kind, i = events.pop(0)
        if kind == "202":
            o.refer_answered("2", now)
            wire[-1] = now + sends[0]
        elif kind == "notify":
            cseq = 100 + i
            if o.admit(B, cseq, i == 0, now, T) == "relay":
                wire[i] = now + sends[i + 1]  # its worker relays it, then marks it sent
                events = sorted([*events, (wire[i], "sent", i)])
            else:
                assert o.attach(B, cseq, i, i)
        elif kind == "sent":
            o.mark_sent(B, 100 + i)
        else:
            for k, h in enumerate(o.release(now, T)):
                # One process, one after another, each marked sent once it is out.
                wire[h.tindex] = now + (k + 1) * 1e-6
                events = sorted([*events, (wire[h.tindex], "sent", h.tindex)])
    assert set(wire) == {-1, *range(len(sent))}, f"never sent: {o.held}"
    order = sorted(wire, key=wire.get)
    assert order == [-1, *range(len(sent))], wire
