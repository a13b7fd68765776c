"""kemi.kamailio.sequencer.Sequencer with an in-memory htable: when the cfg lacks its
htable, ordering off in the process, said once, and the table never touched again
(Kamailio 5.6's htable logs an ERROR for each use of an undeclared table and answers
sht_lock with -1, not an exception); and a worker holding a NOTIFY while the order timer
releases its dialog.  The order itself, end to end: tests/e2e/test_order*.py."""

from __future__ import annotations

import time

from kemi.core.order import Timing
from tests.kemi.kamailio.test_answers import table  # noqa: F401 - the in-memory htable


def test_an_undeclared_order_table_turns_ordering_off_once_and_is_left_alone(
        table):  # noqa: F811
    from kemi.kamailio.sequencer import Sequencer

    used: list[str] = []
    table.sht_lock = lambda t, key: used.append(f"lock {t}") or (-1 if t == "referee_seq" else 1)
    inner_get = table.sht_get
    table.sht_get = lambda t, key: used.append(f"get {t}") or inner_get(t, key)
    logged: list[str] = []
    seq = Sequencer(Timing(), logged.append)
    seq.refer_relayed("c1", "2", "andrew")
    assert seq.verdict("c1", "bob", 1, first=True) is None  # not sequenced: relayed as is
    assert seq.admit("c1", "bob", 1, first=True) is None
    assert [u for u in used if u.endswith("referee_seq")] == ["lock referee_seq"]
    assert len(logged) == 1
    assert "referee_seq" in logged[0] and "not declared" in logged[0]
    assert "unordered" in logged[0]


def test_a_notify_held_while_the_timer_releases_its_dialog_keeps_the_dialog_flagged(
        table):  # noqa: F811
    """The order timer releases a dialog's last held NOTIFY and clears the dialog's flag in
    referee_held; a worker holds the dialog's next NOTIFY right after the timer let go of
    the slot lock.  The flag must survive: cleared after the lock (as it was), it erased
    the new NOTIFY's flag, no tick looked at the dialog again and the NOTIFY -- a final
    one, seen once in 36 rounds of tests/e2e/test_order_phones.py -- never left."""
    from kemi.kamailio.sequencer import HELD_TABLE, SEQ_TABLE, Sequencer

    table.ksr.tmx = type("Tmx", (), {"t_suspend": staticmethod(lambda: 1)})
    tids = iter(range(10, 100))

    def suspend_next() -> None:  # a worker's t_suspend: a new transaction id each time
        n = next(tids)
        table.ksr.pv_values.update({"$T(id_index)": n, "$T(id_label)": n})

    seq = Sequencer(Timing(), lambda text: None)
    seq.refer_relayed("c1", "2", "andrew")
    suspend_next()
    assert seq.admit("c1", "mk", 1, first=True) == "hold"  # before the REFER's 2xx
    assert seq.suspend("c1", "mk", 1)
    seq.refer_answered("c1", "2")
    time.sleep(Timing().grace_s * 1.5)  # the 202 has had its head start: 1 may go

    held_meanwhile: list[int] = []
    unlock = table.sht_unlock

    def worker_between(t, key):  # the timer has just let go of the dialog's lock
        unlock(t, key)
        if t == SEQ_TABLE and not held_meanwhile:
            held_meanwhile.append(2)
            suspend_next()
            assert seq.admit("c1", "mk", 2, first=False) == "hold"  # 1 not sent yet
            assert seq.suspend("c1", "mk", 2)
        return 1

    table.sht_unlock = worker_between
    released = seq.due()
    table.sht_unlock = unlock
    assert [(cid, h.cseq) for cid, h in released] == [("c1", 1)]
    assert held_meanwhile == [2]
    assert table.sht_get(HELD_TABLE, "c1") == "1"  # the timer will look again
    seq.mark_sent("c1", "mk", 1)
    assert [(cid, h.cseq) for cid, h in seq.due()] == [("c1", 2)]
    assert table.sht_get(HELD_TABLE, "c1") is None  # nothing held any more


def test_what_the_timer_looks_at_ahead_stays_held_until_it_is_released(
        table):  # noqa: F811
    """The order timer records the NOTIFYs about to go while they are still held: the look
    ahead gives what `due` would release, with the note the worker left, and changes
    nothing -- a NOTIFY of the dialog arriving meanwhile still queues behind them."""
    from kemi.kamailio.sequencer import Sequencer

    table.ksr.tmx = type("Tmx", (), {"t_suspend": staticmethod(lambda: 1)})
    table.ksr.pv_values.update({"$T(id_index)": 10, "$T(id_label)": 11})
    seq = Sequencer(Timing(), lambda text: None)
    seq.refer_relayed("c1", "2", "andrew")
    assert seq.admit("c1", "mk", 1, first=True) == "hold"
    assert seq.suspend("c1", "mk", 1, note='{"e":"notify-trying"}')
    seq.refer_answered("c1", "2")
    time.sleep(Timing().grace_s * 1.5)

    [(cid, h)] = seq.ahead()
    assert (cid, h.cseq, h.tindex, h.tlabel, h.note) == ("c1", 1, 10, 11,
                                                         '{"e":"notify-trying"}')
    assert seq.ahead() == [(cid, h)]  # looking twice changes nothing
    assert seq.verdict("c1", "mk", 2, first=False) == "hold"  # 1 is still held
    assert [(c, d.cseq) for c, d in seq.due()] == [("c1", 1)]
    assert seq.ahead() == []
