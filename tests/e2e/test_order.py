"""A transfer's messages leave the proxy in the order they came (issue 8).

The transferee sends its 202 and its first NOTIFY in the same millisecond, and later the
NOTIFYs for 180 and for the final response in the same millisecond; many transfers run at
once, every SIP worker is busy and every core too (tests/support/load.py), so workers are
descheduled at random.  Without referee's ordering (kemi/core/order.py) a few transfers in
each run reached the transferor out of order (seen: 202 after NOTIFY 100, NOTIFY 200
before NOTIFY 180).  The transferor is strict (tests/support/order_scenarios):
a NOTIFY before the 202 gets 491, NOTIFYs out of sipfrag order get 500, and either fails
its SIPp call.  Through referee every call must succeed and every record must be right.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict

import pytest

from kemi.cli.demo.kamailio_node import free_udp_port
from tests.support.load import busy_cpus
from tests.support.order_scenarios import BurstTransferee, QuickTarget, StrictTransferor

LAB_ON_CLUSTER = True  # `lab` runs a third time on a Redis Cluster (tests/e2e/conftest.py)

CALLS = 120
RATE = 60  # new transfers per second: dozens overlap at any time


def run_burst(lab, final: int, calls: int = CALLS):
    mk_port, ma_port = free_udp_port(), free_udp_port()
    lab.register("mckenzie", mk_port)
    lab.register("marsha", ma_port)
    many = {"calls": calls, "timeout_s": 60}
    marsha = lab.party("marsha", QuickTarget(final).xml(), port=ma_port, **many).start()
    mckenzie = lab.party("mckenzie", BurstTransferee(target_final=final).xml(),
                         port=mk_port, **many).start()
    andrew = lab.party("andrew", StrictTransferor(final=final).xml(),
                       extra=("-r", str(RATE)), auto_answer=False, **many)
    rc = andrew.run()
    for p in (mckenzie, marsha):
        try:
            p.wait(20)
        except Exception:  # noqa: BLE001 - the transferor's result says what went wrong
            p.stop()
    return rc, andrew


def arrivals(andrew) -> dict[str, list[str]]:
    """What the transferor received of each transfer, in order: '202' for the REFER's
    answer, 'N<code>' for a NOTIFY with that sipfrag."""
    out: dict[str, list[str]] = defaultdict(list)
    for block in re.split(r"\n(?=-{20,} )", andrew.messages()):
        if "message received" not in block:
            continue
        cid = re.search(r"^Call-ID: *(\S+)", block, re.M | re.I)
        if cid is None:
            continue
        if re.search(r"^SIP/2.0 202 ", block, re.M):
            out[cid.group(1)].append("202")
        elif re.search(r"^NOTIFY ", block, re.M):
            frag = re.search(r"^SIP/2.0 (\d+) ", block.split("\n\n", 1)[-1], re.M)
            out[cid.group(1)].append(f"N{frag.group(1) if frag else '?'}")
    return out


def misordered(andrew, final: int) -> dict[str, list[str]]:
    want = ["202", "N100", "N180", f"N{final}"]
    return {cid: got for cid, got in arrivals(andrew).items() if got != want}


def wait_finished(lab, count: int, timeout_s: float = 10.0) -> list[dict[str, str]]:
    deadline = time.monotonic() + timeout_s
    while len(done := lab.store.finished(count)) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    return done


@pytest.mark.parametrize("final", [200, 486])
def test_202_and_notifies_sent_together_reach_a_strict_transferor_in_order(lab, final):
    with busy_cpus():
        rc, andrew = run_burst(lab, final)
    bad = misordered(andrew, final)
    assert not bad, f"{len(bad)} of {CALLS} transfers reached the transferor out of order: {bad}"
    assert len(arrivals(andrew)) == CALLS
    assert rc == 0, andrew.report()
    done = wait_finished(lab, CALLS)
    assert len(done) == CALLS, f"{len(done)} finished, open: {lab.records()}"
    want = "succeeded" if final < 300 else "failed"
    assert {r["state"] for r in done} == {want}
    assert {r["final_sipfrag"].split()[0] for r in done} == {str(final)}
