"""kemi.kamailio.sequencer.Sequencer when the cfg lacks its htable: ordering off in the
process, said once, and the table never touched again (Kamailio 5.6's htable logs an
ERROR for each use of an undeclared table and answers sht_lock with -1, not an
exception).  The order itself, end to end: tests/e2e/test_order*.py."""

from __future__ import annotations

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
