"""kemi.kamailio.answers.Answers: a REFER's 2xx noted by the reply route in one step
(kamailio-native.cfg writes the same text itself) and taken into the dialog's order state
and its deferred accepts at the dialog's next use, its next record, or by the sweep.
The end-to-end behaviour (both cfgs, real Kamailio) is in tests/e2e/test_order.py and
test_subscription_cases.py; here, with an in-memory htable, the contract of each step."""

from __future__ import annotations

import pytest

from kemi.core.order import DialogOrder, Timing


class Htable:
    """Kamailio's htable as referee uses it: get/sets/rm, slot locks (recorded), and an
    iterator; `missing` tables raise as KSR does for an undeclared one."""

    def __init__(self, ksr, missing: tuple[str, ...] = ()):
        self.ksr = ksr
        self.tables: dict[str, dict[str, str]] = {}
        self.missing = missing
        self.locks: list[tuple[str, str]] = []
        self._it: list[str] = []

    def _t(self, table: str) -> dict[str, str]:
        if table in self.missing:
            raise RuntimeError(f"no htable {table}")
        return self.tables.setdefault(table, {})

    def sht_get(self, table, key):
        return self._t(table).get(key)

    def sht_sets(self, table, key, value):
        self._t(table)[key] = value
        return 1

    def sht_rm(self, table, key):
        self._t(table).pop(key, None)
        return 1

    def sht_lock(self, table, key):
        self._t(table)
        self.locks.append((table, key))
        return 1

    def sht_unlock(self, table, key):
        return 1

    def sht_iterator_start(self, name, table):
        self._it = list(self._t(table))
        self._i = -1
        return 1

    def sht_iterator_next(self, name):
        self._i += 1
        if self._i >= len(self._it):
            return -1
        self.ksr.pv_values[f"$shtitkey({name})"] = self._it[self._i]
        return 1

    def sht_iterator_end(self, name):
        return 1


@pytest.fixture
def table(ksr):
    ksr.pv_values = {}
    ksr.pv = type("Pv", (), {"get": staticmethod(lambda spec: ksr.pv_values.get(spec))})
    ksr.htable = Htable(ksr)
    return ksr.htable


def sequencer(deferred: list):
    from kemi.kamailio.sequencer import Sequencer

    logged: list[str] = []
    seq = Sequencer(Timing(), logged.append)
    seq.on_answer = lambda cid, entry: deferred.append((cid, entry))
    return seq, logged


def test_answers_are_taken_oldest_first_and_removed(table):
    seq, _ = sequencer([])
    assert seq.note_answer("c1", "2", 202)
    assert seq.note_answer("c1", "3", 200)
    got = seq.answers.take("c1")
    assert [(r, c) for r, c, _ in got] == [("2", 202), ("3", 200)]
    assert got[0][2] <= got[1][2]
    assert table.sht_get("referee_ans", "c1") is None
    assert seq.answers.take("c1") == []


def test_a_dialog_without_answers_costs_one_read_and_no_lock(table):
    seq, _ = sequencer([])
    assert seq.answers.usable  # the process's one probe of the table (a lock)
    table.locks.clear()
    assert seq.answers.take("c1") == []
    assert table.locks == []


def test_what_the_cfg_writes_is_read_and_an_unreadable_entry_is_said_and_dropped(table):
    seq, logged = sequencer([])
    # kamailio-native.cfg: $avp(rf_id) + " " + $rs + " " + $TV(Sn) + ";"
    table.sht_sets("referee_ans", "c1", "2 202 1764930000.000123;junk;4 404 1.0;5 202 x;")
    assert seq.answers.take("c1") == [("2", 202, 1764930000.000123)]
    assert len(logged) == 3 and all("unreadable" in line for line in logged)


def test_the_dialogs_next_use_takes_its_answers_in_before_deciding(table):
    deferred: list = []
    seq, _ = sequencer(deferred)
    seq.refer_relayed("c1", "2", "andrew")
    seq.note_answer("c1", "2", 202)
    at = float(table.sht_get("referee_ans", "c1").rstrip(";").split()[2])
    seen: list = []
    seq._with("c1", lambda s: seen.append((dict(s.refers), s.final_at, list(deferred))))
    [(refers, final_at, handed_on)] = seen
    assert refers == {} and final_at == pytest.approx(at)
    # handed on as a deferred accept before the decision ran (the first NOTIFY let go
    # records it first)
    assert handed_on == [("c1", {"k": "accept", "r": "2", "c": 202, "t": pytest.approx(at)})]
    assert DialogOrder.decode(table.sht_get("referee_seq", "c1")).refers == {}


class CountedWrites:
    """The htable's sht_sets, counted per table (wraps the in-memory one)."""

    def __init__(self, table: Htable):
        self.n: dict[str, int] = {}
        inner = table.sht_sets

        def sets(t, key, value):
            self.n[t] = self.n.get(t, 0) + 1
            return inner(t, key, value)

        table.sht_sets = sets


def test_a_notifys_first_look_writes_nothing_back_when_no_answer_was_taken(table):
    seq, _ = sequencer([])
    seq.refer_relayed("c1", "2", "andrew")
    before = table.sht_get("referee_seq", "c1")
    writes = CountedWrites(table)
    assert seq.verdict("c1", "bob", 1, first=True) == "hold"  # its REFER is unanswered
    assert writes.n.get("referee_seq", 0) == 0
    assert table.sht_get("referee_seq", "c1") == before
    assert seq.admit("c1", "bob", 1, first=True, hold=True) == "hold"
    assert writes.n["referee_seq"] == 1  # admit does write: it queued the NOTIFY


def test_a_notifys_first_look_stores_the_answers_it_took_in(table):
    deferred: list = []
    seq, _ = sequencer(deferred)
    seq.refer_relayed("c1", "2", "andrew")
    seq.note_answer("c1", "2", 202)
    seq.verdict("c1", "bob", 1, first=True)  # (hold or relay: the 202's grace decides)
    assert [e["r"] for _, e in deferred] == ["2"]
    # taken from referee_ans, so the order state must keep the answer: stored
    assert DialogOrder.decode(table.sht_get("referee_seq", "c1")).refers == {}
    assert table.sht_get("referee_ans", "c1") is None


def test_a_record_of_the_dialog_takes_them_itself_and_updates_the_order(table):
    deferred: list = []
    seq, _ = sequencer(deferred)
    seq.refer_relayed("c1", "2", "andrew")
    seq.note_answer("c1", "2", 202)
    [entry] = seq.fold("c1")
    assert (entry["k"], entry["r"], entry["c"]) == ("accept", "2", 202)
    assert deferred == []  # given back to the caller, which records it with its event
    assert DialogOrder.decode(table.sht_get("referee_seq", "c1")).refers == {}
    assert seq.fold("c1") == []


def test_the_sweep_takes_only_dialogs_with_an_answer_old_enough(table):
    seq, _ = sequencer([])
    table.sht_sets("referee_ans", "old", "2 202 100.0;")
    table.sht_sets("referee_ans", "fresh", "2 202 200.0;")
    got = seq.fold_due(noted_before=150.0)
    assert [(cid, e["t"]) for cid, e in got] == [("old", 100.0)]
    assert table.sht_get("referee_ans", "fresh") is not None


def test_the_sweep_takes_a_dialog_whose_notes_cannot_be_read_rather_than_let_it_expire(
        table):
    seq, logged = sequencer([])
    table.sht_sets("referee_ans", "odd", "2 202 yesterday;")
    assert seq.fold_due(noted_before=150.0) == []
    assert table.sht_get("referee_ans", "odd") is None
    assert logged and "unreadable" in logged[0]


def test_without_the_table_the_reply_route_is_told_to_do_it_the_old_way(ksr, table):
    table.missing = ("referee_ans",)
    seq, logged = sequencer([])
    assert seq.note_answer("c1", "2", 202) is False
    assert seq.note_answer("c2", "2", 202) is False
    assert seq.fold_due(0.0) == [] and seq.fold("c1") == []
    # said once per process, naming the table and what to do
    assert len(logged) == 1 and "referee_ans" in logged[0] and "declare it" in logged[0]


def test_an_undeclared_table_is_probed_once_and_never_touched_again(ksr, table):
    """Kamailio 5.6's htable does not raise for an undeclared table: sht_lock returns -1
    and every sht_get / sht_sets / iterator logs an ERROR.  One probe, then no use."""
    calls: list[str] = []
    inner_lock = table.sht_lock

    def lock(t, key):
        calls.append(f"lock {t}")
        return -1 if t == "referee_ans" else inner_lock(t, key)

    def counted(name, inner):
        def use(t, *args):
            calls.append(f"{name} {t}")
            return inner(t, *args)
        return use

    for name in ("sht_get", "sht_sets", "sht_rm", "sht_iterator_start"):
        setattr(table, name, counted(name, getattr(table, name)))
    table.sht_lock = lock
    seq, logged = sequencer([])
    assert seq.note_answer("c1", "2", 202) is False
    assert seq.note_answer("c2", "2", 202) is False
    assert seq.answers.take("c1") == [] and seq.fold_due(0.0) == []
    assert [c for c in calls if c.endswith("referee_ans")] == ["lock referee_ans"]
    assert len(logged) == 1 and "not declared" in logged[0]
