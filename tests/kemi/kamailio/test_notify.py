"""kemi.kamailio.notify's timer side, with a stand-in KSR: a held NOTIFY is recorded by
the order timer just before it is resumed -- once, whatever the timer looks at again --
and its resumed route then knows it is recorded and for which transfer.  End to end
(the transferee's INVITE recorded after its NOTIFY): tests/e2e/test_blind_transfer.py."""

from __future__ import annotations

import json
from types import SimpleNamespace

from kemi.core.order import Held


class _Pv:
    def __init__(self) -> None:
        self.values: dict[str, object] = {}

    def get(self, spec):
        return self.values.get(spec)

    def sets(self, spec, value):
        self.values[spec] = value

    def unset(self, spec):
        self.values.pop(spec, None)


def _routes(ksr):
    from kemi.kamailio.notify import NotifyRoutes

    ksr.pv = _Pv()
    recorded: list[tuple[str, str, int]] = []

    def apply_after_accepts(call_id, refer_id, event, fields, detail, deadline, seq=None):
        recorded.append((call_id, str(event), seq))
        return SimpleNamespace(refer_id="2")

    rec = SimpleNamespace(apply_after_accepts=apply_after_accepts)
    return NotifyRoutes(SimpleNamespace(), rec), recorded, ksr.pv


def _held(cseq: int, tindex: int, note: dict | None) -> Held:
    return Held("mk", cseq, tindex, tindex + 1, 0.0, cseq == 1, 0.0,
                "" if note is None else json.dumps(note))


NOTE = {"e": "notify-trying", "r": None, "f": {"last_notify": "100"}, "dl": None,
        "d": "100 Trying", "c": 1, "t": "mk", "x": False, "a": False, "u": "sip:an@h"}


def test_a_held_notify_is_recorded_once_before_it_goes_and_its_route_knows(ksr):
    routes, recorded, pv = _routes(ksr)
    ahead = [("c1", _held(1, 10, NOTE)), ("c1", _held(2, 12, {**NOTE, "c": 2, "a": True})),
             ("c1", _held(3, 14, None))]
    routes.record_ahead(ahead)
    routes.record_ahead(ahead)  # the next tick sees it again (not released yet)
    assert recorded == [("c1", "notify-trying", 1)]  # a recorded one or one without a
    # note (a 491 retry) is not recorded here

    pv.values.update({"$T(id_index)": 10, "$T(id_label)": 11, "$ci": "c1",
                      "$avp(rf_nfy)": json.dumps(NOTE)})
    routes.resume()  # t_continue's route
    note = json.loads(pv.values["$avp(rf_nfy)"])
    assert note["a"] is True and note["r"] == "2"  # its answers go to transfer 2
    assert pv.values["$ru"] == "sip:an@h"
    routes.resumed()
    routes.record_resumed()
    assert recorded == [("c1", "notify-trying", 1)]  # not recorded a second time


def test_a_held_notify_the_timer_could_not_record_is_recorded_once_it_has_left(ksr):
    routes, recorded, pv = _routes(ksr)
    routes.record_ahead([("c1", _held(1, 10, None))])  # (a cfg older than the note)
    pv.values.update({"$T(id_index)": 10, "$T(id_label)": 11, "$ci": "c1",
                      "$avp(rf_nfy)": json.dumps(NOTE)})
    routes.resume()
    routes.resumed()
    assert recorded == []
    routes.record_resumed()
    assert recorded == [("c1", "notify-trying", 1)]


class _Order:
    """The timer's view of the sequencer: what it was asked, and when."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, float | None]] = []

    def ahead(self, limit=None, now=None):
        self.asked.append(("ahead", now))
        return []

    def due(self, limit=None, now=None):
        self.asked.append(("due", now))
        return []


def test_the_timer_looks_ahead_and_releases_at_one_instant(ksr):
    """Seen under full-suite load: a NOTIFY whose grace ran out between the look ahead
    and the release was released unrecorded, and recorded only after it left -- after
    the transferee's INVITE.  Both cfgs' timers give the two the same instant."""
    from kemi.kamailio.timers import Timers

    routes, _, _ = _routes(ksr)
    order = _Order()
    timers = Timers.__new__(Timers)
    timers.s, timers.notify = SimpleNamespace(order=order), routes
    timers.child_init()
    timers.order()  # kamailio.cfg
    assert timers.next_due() == -1  # kamailio-native.cfg's loop
    (a1, n1), (d1, m1), (a2, n2), (d2, m2) = order.asked
    assert (a1, d1, a2, d2) == ("ahead", "due", "ahead", "due")
    assert n1 is not None and n1 == m1 and n2 is not None and n2 == m2
