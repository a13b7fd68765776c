"""kemi.kamailio.unstored with an in-memory htable: what a node remembers of the REFERs it
relayed while Redis was away, so the transferees' INVITEs can still be tied (kemi.core
.transfer.tie_invite judges them as it judges Redis's open transfers).  End to end:
tests/e2e/test_redis_outage.py (fail open)."""

from __future__ import annotations

import time
from types import SimpleNamespace

from kemi.core.transfer import parse_uri_lenient, tie_invite
from tests.kemi.kamailio.test_answers import table  # noqa: F401 - the in-memory htable


def _plan(call_id: str, refer_id: str = "2", target: str = "marsha@example.com"):
    return SimpleNamespace(call_id=call_id, refer_id=refer_id, target=target,
                           transferee="mckenzie@example.com",
                           fields={"referred_by": "<sip:andrew@example.com>"})


def test_a_remembered_transfer_ties_its_invite_once(table):  # noqa: F811
    from kemi.kamailio import unstored

    unstored.remember(_plan("c1"), open_s=600)
    [t] = unstored.open_for("mckenzie@example.com", open_s=600)
    assert (t.call_id, t.refer_id, t.target, t.invite_call_id) == (
        "c1", "2", "marsha@example.com", "")
    tie = tie_invite([t], parse_uri_lenient("sip:marsha@example.com"), invite_call_id="i1")
    assert (tie.call_id, tie.refer_id) == ("c1", "2")

    unstored.tied("mckenzie@example.com", "c1", "2", "i1")
    [t] = unstored.open_for("mckenzie@example.com", open_s=600)
    assert t.invite_call_id == "i1"  # a second INVITE is not tied to it
    assert unstored.open_for("andrew@example.com", open_s=600) == []


def test_what_is_past_its_open_time_is_forgotten(table):  # noqa: F811
    from kemi.kamailio import unstored

    unstored.remember(_plan("old"), open_s=600)
    time.sleep(0.02)
    assert unstored.open_for("mckenzie@example.com", open_s=0.01) == []
    assert table.sht_get("referee", "unstored:mckenzie@example.com") is None


def test_an_unreadable_entry_is_no_transfer(table):  # noqa: F811
    from kemi.kamailio import unstored

    table.sht_sets("referee", "unstored:mckenzie@example.com", "{not json")
    assert unstored.open_for("mckenzie@example.com", open_s=600) == []
    unstored.remember(_plan("c2"), open_s=600)
    assert [t.call_id for t in unstored.open_for("mckenzie@example.com", 600)] == ["c2"]
