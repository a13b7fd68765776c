"""kemi.kamailio.anchored: once the 202 of an anchored REFER is out, a failure is told to
A by NOTIFY, never answered 500 (a second final response)."""

from __future__ import annotations


def test_a_failure_after_the_anchored_202_is_notified_never_answered_500(ksr):
    from kemi.core.transfer import ReferPlan
    from kemi.kamailio.anchored import AnchoredRoutes

    r = object.__new__(AnchoredRoutes)
    finished = []
    r._after_202 = lambda *a: (_ for _ in ()).throw(KeyError("dial"))
    r._finish_unqueued = lambda cid, rid, rec, nosub, why: finished.append((cid, rid, why))
    plan = object.__new__(ReferPlan)
    object.__setattr__(plan, "call_id", "c1")
    object.__setattr__(plan, "refer_id", "7")
    object.__setattr__(plan, "nosub_requested", False)
    object.__setattr__(plan, "fields", {})
    assert r.accept(plan, "pbx1", duplicate=False, now=0.0) == 0  # HANDLED
    assert [c[1] for c in ksr.sl.calls] == [202]  # one final response, the 202
    assert finished == [("c1", "7", "failed: KeyError('dial')")]
    assert any("accepted for anchored pbx1, then failed" in t for t in ksr.logged)
