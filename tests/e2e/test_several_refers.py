"""Several REFERs in one dialog (issue 3 item 4): a failed attempt, then another.

Andrew transfers McKenzie to Marsha, who is busy; the call with McKenzie survives, and
Andrew transfers her again, to Mary, who answers.  Each REFER is its own transfer,
named by its CSeq (`Event: refer;id=<CSeq>`, RFC 3515 2.4.6): the first closes failed
with Marsha's 486, the second succeeded with Mary's 200, and no NOTIFY of one is
counted against the other.  Real pjsua2 phones through the real proxy (both configs).
"""

from __future__ import annotations

import time

from tests.e2e.test_real_phones import aor, establish, hang_up, phones, seen  # noqa: F401


def finished_records(lab, count: int, timeout_s: float = 5.0) -> list[dict[str, str]]:
    deadline = time.monotonic() + timeout_s
    while len(done := lab.finished()) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(done) == count, f"finished: {done}\nopen: {lab.records()}"
    return sorted(done, key=lambda r: int(r["refer_id"]))


def test_a_failed_refer_then_a_second_one_are_two_transfers_kept_apart(lab, phones):  # noqa: F811
    andrew, mckenzie, marsha, mary = phones(
        andrew="pjsua2", mckenzie="pjsua2", marsha="pjsua2", mary="pjsua2"
    )
    a_call, m_call = establish(andrew, mckenzie)

    # First attempt: Marsha is busy.
    andrew.transfer(a_call, marsha.aor)
    assert andrew.wait_refer_response(a_call) == 202
    s_call = marsha.wait_incoming(5)
    seen(andrew, a_call, 100)
    marsha.reject(s_call, 486)
    assert andrew.wait_transfer_final(a_call, 5) == 486
    first = finished_records(lab, 1)[0]
    assert first["state"] == "failed", first
    assert andrew.call_state(a_call) == "confirmed"
    assert mckenzie.call_state(m_call) == "confirmed"

    # Second attempt in the same dialog: Mary answers.
    andrew.transfer(a_call, mary.aor)
    assert andrew.wait_refer_response(a_call) == 202
    y_call = mary.wait_incoming(5)
    mary.answer(y_call, 180)
    mary.answer(y_call, 200)
    mary.wait_state(y_call, "confirmed")
    andrew.wait_for(
        lambda: andrew.transfer_events(a_call).count(200) >= 1, 5, "the second transfer's 200"
    )

    failed, succeeded = finished_records(lab, 2)
    assert failed["call_id"] == succeeded["call_id"]  # one dialog ...
    assert int(failed["refer_id"]) < int(succeeded["refer_id"])  # ... two REFERs by CSeq
    assert failed["refer_id"] == first["refer_id"]
    assert (failed["state"], failed["target"]) == ("failed", aor(marsha)), failed
    assert failed["final_sipfrag"].startswith("486"), failed
    assert (succeeded["state"], succeeded["target"]) == ("succeeded", aor(mary)), succeeded
    assert succeeded["final_sipfrag"].startswith("200"), succeeded
    # No NOTIFY of one was counted against the other: the first's ladder holds no
    # success (the second's 200) and nothing refused; the second's holds no failure.
    def ladder(record):
        return [line.split("|") for line in lab.store.log(record["call_id"], record["refer_id"])]

    first_ladder, second_ladder = ladder(failed), ladder(succeeded)
    assert "notify-failure" in [e[1] for e in first_ladder], first_ladder
    assert "notify-success" not in [e[1] for e in first_ladder], first_ladder
    assert "illegal" not in [e[4] for e in first_ladder], first_ladder
    assert "notify-success" in [e[1] for e in second_ladder], second_ladder
    assert "notify-failure" not in [e[1] for e in second_ladder], second_ladder

    hang_up(andrew, a_call)
    mckenzie.wait_state(m_call, "disconnected")
    hang_up(mary, y_call)
